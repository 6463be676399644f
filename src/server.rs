//! The listeners: accept connections (TCP, TLS over TCP, Unix), serve HTTP/1.1 and HTTP/2 on
//! each, and drain on shutdown.
//!
//! Lifecycle:
//! 1. [`Server::build`] loads the TLS material, binds every `--listen` address (or takes the
//!    sockets systemd passed) and `--admin-listen`, and builds the upstream client. Nothing
//!    is served yet; once it returns the caller may say READY.
//! 2. [`Server::serve`] accepts until `shutdown` resolves. Then `/readyz` answers 503, the
//!    public listeners are closed (new connections are refused), `STOPPING=1` is sent, and
//!    in-flight requests and streams get up to `--shutdown-grace` to finish; idle keep-alive
//!    connections close at once and HTTP/2 connections get GOAWAY. When the grace runs out,
//!    streams end with a `shutting_down` error event and requests still waiting for the
//!    upstream get a 503; after a short flush whatever remains is dropped.
//!    The admin listener serves until the very end, so probes can watch the drain.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::listener::{Inherited, ListenAddr, Listener, Stream};
use crate::metrics::Metrics;
use crate::proxy::{ClientInfo, Proxy, Role};
use crate::reload::Reload;
use crate::systemd;
use crate::tls::{self, CertFiles};
use crate::upstream::Upstream;

/// How long a client may take to send its request headers (slowloris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client may take to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the grace period: time for the final error events to be written.
const FINAL_FLUSH: Duration = Duration::from_secs(1);

/// Bound listeners and the proxy they serve.
pub struct Server {
    public: Vec<Listener>,
    admin: Option<Listener>,
    proxy: Arc<Proxy>,
    tls: Option<TlsAcceptor>,
    grace: Duration,
    summary: String,
}

impl Server {
    /// Binds the configured addresses (no socket activation, no SIGHUP): for tests and embedding.
    pub async fn bind(config: Config) -> Result<Self, String> {
        Self::build(config, Vec::new(), &Reload::default()).await
    }

    /// Loads TLS material (registering it with `reload`), binds the listeners — `inherited`
    /// sockets instead of `--listen` when there are any — and builds the upstream client.
    pub async fn build(
        config: Config,
        inherited: Vec<Inherited>,
        reload: &Reload,
    ) -> Result<Self, String> {
        let provider = tls::provider();
        // TLS first: a bad certificate fails before any socket is bound.
        let tls = match config.tls_files() {
            Some((cert, key)) => {
                let files = CertFiles::load("TLS certificate", &cert, &key, Arc::clone(&provider))?;
                reload.register(files.clone());
                let server_config = tls::server_config(files, Arc::clone(&provider))?;
                Some(TlsAcceptor::from(server_config))
            }
            None => None,
        };
        let upstream_tls = upstream_tls_config(&config, provider, reload)?;

        let public = if inherited.is_empty() {
            let mut public = Vec::with_capacity(config.listen.len());
            for addr in &config.listen {
                let listener = Listener::bind(addr, config.unix_socket_mode)
                    .await
                    .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
                public.push(listener);
            }
            public
        } else {
            inherited
                .into_iter()
                .map(Listener::from_inherited)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("cannot serve the inherited sockets: {e}"))?
        };
        let admin = match &config.admin_listen {
            Some(addr) => Some(
                Listener::bind(addr, config.unix_socket_mode)
                    .await
                    .map_err(|e| format!("cannot listen on {addr} (--admin-listen): {e}"))?,
            ),
            None => None,
        };

        let grace = config.shutdown_grace;
        let upstream = Upstream::new(&config, upstream_tls);
        let mut server = Self {
            public,
            admin,
            proxy: Arc::new(Proxy::new(
                Arc::new(config.clone()),
                upstream,
                Arc::new(Metrics::default()),
            )),
            tls,
            grace,
            summary: String::new(),
        };
        server.summary = server.describe(&config);
        Ok(server)
    }

    /// The public listeners' addresses, in order.
    pub fn public_addrs(&self) -> Vec<ListenAddr> {
        self.public
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    pub fn admin_addr(&self) -> Option<ListenAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(self.proxy.metrics())
    }

    /// One line for logs and systemd's STATUS=.
    pub fn summary(&self) -> &str {
        &self.summary
    }

    fn describe(&self, config: &Config) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let listeners: Vec<String> = self
            .public
            .iter()
            .filter_map(|l| {
                let addr = l.local_addr().ok()?;
                Some(if l.is_tcp() {
                    format!("{scheme}://{addr}")
                } else {
                    addr.to_string()
                })
            })
            .collect();
        let mut line = format!("serving {}", listeners.join(", "));
        if let Some(admin) = self.admin_addr() {
            line.push_str(&format!("; admin {admin}"));
        }
        line.push_str(&format!(
            "; upstream {} ({})",
            config.upstream,
            config.upstream_shape.as_str()
        ));
        line
    }

    /// Serves until `shutdown` resolves, then drains (see the module docs).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let Server {
            public,
            admin,
            proxy,
            tls,
            grace,
            ..
        } = self;
        let builder = http_builder();
        let stop_public = CancellationToken::new();
        let stop_admin = CancellationToken::new();

        let (accepted_tx, mut accepted) = mpsc::channel(64);
        let mut accepting = JoinSet::new();
        for listener in public {
            accepting.spawn(accept_loop(
                listener,
                accepted_tx.clone(),
                stop_public.clone(),
            ));
        }
        drop(accepted_tx);
        let admin_task = admin.map(|listener| {
            tokio::spawn(admin_loop(
                listener,
                Arc::clone(&proxy),
                builder.clone(),
                stop_admin.clone(),
            ))
        });

        let graceful = GracefulShutdown::new();
        let mut connections = JoinSet::new();
        let serve_one = |connections: &mut JoinSet<()>, stream: Stream| {
            let watcher = graceful.watcher();
            let proxy = Arc::clone(&proxy);
            let builder = builder.clone();
            let tls = tls.clone();
            connections.spawn(async move {
                match (stream, tls) {
                    (Stream::Tcp(tcp, remote), Some(tls)) => {
                        let handshake =
                            tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(tcp)).await;
                        let tls_stream = match handshake {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(error)) => {
                                tracing::debug!(%error, %remote, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                        let client = ClientInfo {
                            ip: Some(remote.ip()),
                            proto: "https",
                        };
                        let conn = connection(&builder, tls_stream, proxy, client, Role::Public);
                        log_end(watcher.watch(conn).await);
                    }
                    (Stream::Tcp(tcp, remote), None) => {
                        let client = ClientInfo {
                            ip: Some(remote.ip()),
                            proto: "http",
                        };
                        let conn = connection(&builder, tcp, proxy, client, Role::Public);
                        log_end(watcher.watch(conn).await);
                    }
                    (Stream::Unix(unix), _) => {
                        let client = ClientInfo {
                            ip: None,
                            proto: "http",
                        };
                        let conn = connection(&builder, unix, proxy, client, Role::Public);
                        log_end(watcher.watch(conn).await);
                    }
                }
            });
        };

        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(stream) = accepted.recv() => serve_one(&mut connections, stream),
                // Reap finished connections so the set does not grow.
                Some(_) = connections.join_next() => {}
            }
        }

        // Drain: not ready, stop accepting (closing the sockets), then let the rest finish.
        proxy.start_draining();
        stop_public.cancel();
        while accepting.join_next().await.is_some() {}
        while let Ok(stream) = accepted.try_recv() {
            serve_one(&mut connections, stream);
        }
        let open = graceful.count();
        let status = format!(
            "draining {open} connection(s) for up to {}s",
            grace.as_secs_f64()
        );
        systemd::stopping(&status);
        tracing::info!(connections = open, "{status}");

        let drained = graceful.shutdown();
        tokio::pin!(drained);
        let in_time = tokio::select! {
            () = &mut drained => true,
            () = tokio::time::sleep(grace) => false,
        };
        if !in_time {
            tracing::warn!(
                "shutdown grace period elapsed; ending the remaining streams with an error event"
            );
            proxy.cut_remaining();
            let _ = tokio::time::timeout(FINAL_FLUSH, &mut drained).await;
        }
        stop_admin.cancel();
        if let Some(task) = admin_task {
            let _ = task.await;
        }
        // Dropping the set aborts whatever is still open.
        drop(connections);
    }
}

/// The upstream TLS configuration; a plain `http://` upstream never reads the system roots.
fn upstream_tls_config(
    config: &Config,
    provider: Arc<rustls::crypto::CryptoProvider>,
    reload: &Reload,
) -> Result<rustls::ClientConfig, String> {
    let settings = config.upstream_tls();
    if !config.upstream.is_https() && settings.ca.is_none() && settings.client_cert.is_none() {
        return rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            })
            .map_err(|e| e.to_string());
    }
    let (client_config, client_cert) = tls::client_config(&settings, provider)?;
    if let Some(files) = client_cert {
        reload.register(files);
    }
    Ok(client_config)
}

fn http_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    builder
}

/// One HTTP/1.1-or-HTTP/2 connection serving the proxy.
fn connection<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    proxy: Arc<Proxy>,
    client: ClientInfo,
    role: Role,
) -> impl hyper_util::server::graceful::GracefulConnection<Error = BoxError>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let service = service_fn(move |request| {
        let proxy = Arc::clone(&proxy);
        async move { Ok::<_, Infallible>(proxy.handle(request, client, role).await) }
    });
    builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned()
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn log_end(result: Result<(), BoxError>) {
    if let Err(error) = result {
        tracing::debug!(%error, "connection ended with an error");
    }
}

/// Accepts on one public listener until `stop`; dropping the listener on return closes it.
async fn accept_loop(listener: Listener, accepted: mpsc::Sender<Stream>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            result = listener.accept() => match result {
                Ok(stream) => stream,
                Err(error) => {
                    // Usually EMFILE: back off briefly instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if accepted.send(stream).await.is_err() {
            return;
        }
    }
}

/// The admin listener: health, readiness and metrics, served until `stop` (after the drain).
async fn admin_loop(
    listener: Listener,
    proxy: Arc<Proxy>,
    builder: auto::Builder<TokioExecutor>,
    stop: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            result = listener.accept() => match result {
                Ok(stream) => {
                    let (ip, io): (_, Box<dyn Io>) = match stream {
                        Stream::Tcp(tcp, remote) => (Some(remote.ip()), Box::new(tcp)),
                        Stream::Unix(unix) => (None, Box::new(unix)),
                    };
                    let client = ClientInfo { ip, proto: "http" };
                    let conn = connection(&builder, io, Arc::clone(&proxy), client, Role::Admin);
                    connections.spawn(async move { log_end(conn.await) });
                }
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next() => {}
        }
    }
}

/// A byte stream of either kind (the admin listener is not worth monomorphising twice).
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A server running on its own task, for tests and embedding.
pub struct RunningServer {
    /// The first public TCP listener.
    pub addr: SocketAddr,
    /// Every public listener.
    pub addrs: Vec<ListenAddr>,
    pub admin: Option<ListenAddr>,
    metrics: Arc<Metrics>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl RunningServer {
    pub async fn start(config: Config) -> Result<Self, String> {
        let server = Server::bind(config).await?;
        let addrs = server.public_addrs();
        let addr = addrs
            .iter()
            .find_map(|a| match a {
                ListenAddr::Tcp(addr) => Some(*addr),
                ListenAddr::Unix(_) => None,
            })
            .ok_or("RunningServer needs a TCP listener")?;
        let admin = server.admin_addr();
        let metrics = server.metrics();
        let (shutdown, signal) = oneshot::channel();
        let task = tokio::spawn(server.serve(async {
            let _ = signal.await;
        }));
        Ok(Self {
            addr,
            addrs,
            admin,
            metrics,
            shutdown: Some(shutdown),
            task,
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Starts the shutdown (stop accepting, drain) without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// True once the drain has finished.
    pub fn is_stopped(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops accepting and waits for the drain to finish.
    pub async fn stop(mut self) {
        self.begin_shutdown();
        let _ = (&mut self.task).await;
    }
}
