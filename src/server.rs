//! The listeners: accept connections (TCP, TLS over TCP, Unix), hand each to a worker thread
//! (`workers.rs`) that serves HTTP/1.1 and HTTP/2 on it, and drain on shutdown.
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
//!
//! Every connection runs beside its [`Tracker`] (`progress.rs`): from accept to its first
//! request head it has `--header-read-timeout`, with no request open it has `--idle-timeout`,
//! and a response its client stops taking is abandoned after `--client-write-timeout`.
//!
//! Connections over `--max-connections` are still read, so that the first request on them
//! gets a 503 in its own dialect instead of a hang, and are then closed (`Connection: close`
//! on HTTP/1.1, GOAWAY on HTTP/2). Beyond `--max-overflow-connections` more of those, an
//! accepted socket is closed at once. Both are counted in `/metrics` and logged, at most once
//! per [`REFUSAL_LOG_INTERVAL`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::body::ProxyBody;
use crate::config::Config;
use crate::dialect;
use crate::listener::{Inherited, ListenAddr, Listener, Stream};
use crate::metrics::{Metrics, Refusal};
use crate::progress::{Action, Limits, Tracker};
use crate::proxy::{ClientInfo, Proxy, Role, SetupError};
use crate::reload::Reload;
use crate::response_body;
use crate::synthetic::{overloaded, Limit};
use crate::systemd;
use crate::tls::{self, CertFiles};
use crate::upstream::Upstream;
use crate::workers::Workers;

/// Refused connections are logged at most this often (with the count since the last line).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How long an HTTP/2 client has to answer a keep-alive ping (hyper's default).
const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// After the grace period: time for the final error events to be written.
const FINAL_FLUSH: Duration = Duration::from_secs(1);

/// Bound listeners and the proxy they serve.
pub struct Server {
    public: Vec<Listener>,
    admin: Option<Listener>,
    proxy: Arc<Proxy>,
    workers: Workers,
    config: Arc<Config>,
    tls: Option<TlsAcceptor>,
    grace: Duration,
    summary: String,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: ListenAddr,
        source: std::io::Error,
    },
    #[error("cannot serve the inherited sockets: {0}")]
    Inherited(std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("cannot start the worker threads: {0}")]
    Workers(std::io::Error),
}

impl Server {
    /// Binds the configured addresses (no socket activation, no SIGHUP): for tests and embedding.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        Self::build(config, Vec::new(), &Reload::default()).await
    }

    /// Loads TLS material (registering it with `reload`), binds the listeners — `inherited`
    /// sockets instead of `--listen` when there are any — and builds the upstream client.
    pub async fn build(
        config: Config,
        inherited: Vec<Inherited>,
        reload: &Reload,
    ) -> Result<Self, StartError> {
        let provider = tls::provider();
        // TLS first: a bad certificate fails before any socket is bound.
        let tls = match config.tls_files() {
            Some((cert, key)) => {
                let files = CertFiles::load("TLS certificate", &cert, &key, Arc::clone(&provider))
                    .map_err(StartError::Tls)?;
                reload.register(files.clone());
                let server_config =
                    tls::server_config(files, Arc::clone(&provider)).map_err(StartError::Tls)?;
                Some(TlsAcceptor::from(server_config))
            }
            None => None,
        };
        let upstream_tls =
            upstream_tls_config(&config, provider, reload).map_err(StartError::Tls)?;
        let metrics = Arc::new(Metrics::default());
        let config = Arc::new(config);
        let worker_count = config.worker_threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, usize::from),
            usize::from,
        );
        // One upstream pool per worker, so pooled connections stay on their worker's thread.
        let upstreams = (0..worker_count)
            .map(|_| Upstream::new(&config, upstream_tls.clone()))
            .collect();
        // Keys before sockets, like TLS: a bad key file fails before anything listens.
        let proxy = Arc::new(Proxy::new(Arc::clone(&config), upstreams, metrics)?);
        if proxy.has_key_files() {
            reload.register(proxy.clone());
        }

        let public = if inherited.is_empty() {
            let mut public = Vec::with_capacity(config.listen.len());
            for addr in &config.listen {
                let listener = Listener::bind(addr, config.unix_socket_mode)
                    .await
                    .map_err(|source| StartError::Bind {
                        addr: addr.clone(),
                        source,
                    })?;
                public.push(listener);
            }
            public
        } else {
            inherited
                .into_iter()
                .map(Listener::from_inherited)
                .collect::<Result<_, _>>()
                .map_err(StartError::Inherited)?
        };
        let admin = match &config.admin_listen {
            Some(addr) => Some(
                Listener::bind(addr, config.unix_socket_mode)
                    .await
                    .map_err(|source| StartError::Bind {
                        addr: addr.clone(),
                        source,
                    })?,
            ),
            None => None,
        };

        let workers = Workers::start(worker_count).map_err(StartError::Workers)?;
        proxy.metrics().watch_workers(workers.open_counters());
        let mut server = Self {
            public,
            admin,
            proxy,
            workers,
            grace: config.shutdown_grace,
            config,
            tls,
            summary: String::new(),
        };
        server.summary = server.describe();
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

    /// The proxy, for reloading its keys while it serves.
    pub fn proxy(&self) -> Arc<Proxy> {
        Arc::clone(&self.proxy)
    }

    /// One line for logs and systemd's STATUS=.
    pub fn summary(&self) -> &str {
        &self.summary
    }

    fn describe(&self) -> String {
        let config = &self.config;
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
            workers,
            config,
            tls,
            grace,
            ..
        } = self;
        let builder = connection_builder(&config);
        let limits = Limits {
            header_read: config.header_read_timeout,
            idle: config.idle_timeout,
            client_write: config.client_write_timeout,
        };
        let limit = Arc::new(Semaphore::new(config.max_connections));
        let overflow = Arc::new(Semaphore::new(config.max_overflow_connections));
        let mut refusals = Refusals::new(Arc::clone(proxy.metrics()), &config);
        let drain = CancellationToken::new();
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
                limits,
                stop_admin.clone(),
            ))
        });

        let mut connections = JoinSet::new();
        let serve_one = |connections: &mut JoinSet<()>, refusals: &mut Refusals, stream: Stream| {
            let permit = match Arc::clone(&limit).try_acquire_owned() {
                Ok(permit) => Slot {
                    _permit: Some(permit),
                    refused: false,
                },
                Err(_) => match Arc::clone(&overflow).try_acquire_owned() {
                    Ok(permit) => {
                        refusals.refused(Refusal::MaxConnections);
                        Slot {
                            _permit: Some(permit),
                            refused: true,
                        }
                    }
                    Err(_) => {
                        refusals.refused(Refusal::MaxOverflow);
                        return;
                    }
                },
            };
            let accepted = Accepted {
                proxy: Arc::clone(&proxy),
                builder: builder.clone(),
                tracker: Tracker::new(limits, permit.refused),
                permit,
                drain: drain.clone(),
                role: Role::Public,
            };
            let tls = tls.clone();
            workers.spawn_connection(connections, move |worker| {
                accepted.serve(stream, tls, worker)
            });
        };

        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(stream) = accepted.recv() => serve_one(&mut connections, &mut refusals, stream),
                // Reap finished connections so the set does not grow.
                Some(_) = connections.join_next() => {}
            }
        }

        // Drain: not ready, stop accepting (closing the sockets), then let the rest finish.
        proxy.start_draining();
        stop_public.cancel();
        while accepting.join_next().await.is_some() {}
        while let Ok(stream) = accepted.try_recv() {
            serve_one(&mut connections, &mut refusals, stream);
        }
        let open = connections.len();
        let status = format!(
            "draining {open} connection(s) for up to {}s",
            grace.as_secs_f64()
        );
        systemd::stopping(&status);
        tracing::info!(connections = open, "{status}");

        drain.cancel();
        {
            let drained = async { while connections.join_next().await.is_some() {} };
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
        }
        stop_admin.cancel();
        if let Some(task) = admin_task {
            let _ = task.await;
        }
        // Dropping the set aborts whatever is still open; their requests log how they ended.
        drop(connections);
        proxy.records_settled(FINAL_FLUSH).await;
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

/// HTTP/1.1 and HTTP/2 with the configured header limits and the slowloris guard.
fn connection_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_headers(config.max_headers)
        .max_buf_size(config.max_header_bytes as usize);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(config.max_header_bytes)
        .max_concurrent_streams(config.max_concurrent_streams)
        .keep_alive_interval((!config.idle_timeout.is_zero()).then_some(config.idle_timeout))
        .keep_alive_timeout(HTTP2_PING_TIMEOUT);
    builder
}

/// A connection's place under the limits, held until it closes.
struct Slot {
    /// `None` on the admin listener, which has no connection limit.
    _permit: Option<OwnedSemaphorePermit>,
    /// Over `--max-connections` (within `--max-overflow-connections`): answered with a 503,
    /// then closed.
    refused: bool,
}

impl Slot {
    /// Gives the place back before the connection is closed.
    fn release(&mut self) {
        self._permit = None;
    }
}

/// Counts refused connections in the metrics and logs them, at most once per
/// [`REFUSAL_LOG_INTERVAL`] (a flood must not flood the log too).
struct Refusals {
    metrics: Arc<Metrics>,
    max_connections: usize,
    max_overflow: usize,
    last_log: Option<tokio::time::Instant>,
    /// Refused since the last log line, by [`Refusal`].
    unlogged: [u64; 2],
}

impl Refusals {
    fn new(metrics: Arc<Metrics>, config: &Config) -> Self {
        Self {
            metrics,
            max_connections: config.max_connections,
            max_overflow: config.max_overflow_connections,
            last_log: None,
            unlogged: [0; 2],
        }
    }

    fn refused(&mut self, reason: Refusal) {
        self.metrics.connection_refused(reason);
        self.unlogged[reason as usize] += 1;
        let now = tokio::time::Instant::now();
        if self
            .last_log
            .is_some_and(|last| now.duration_since(last) < REFUSAL_LOG_INTERVAL)
        {
            return;
        }
        self.last_log = Some(now);
        let [answered, closed] = std::mem::take(&mut self.unlogged);
        tracing::warn!(
            answered,
            closed,
            "refusing client connections (at --max-connections {}): {answered} answered with \
             503 and closed, {closed} closed unanswered (beyond --max-overflow-connections {}) \
             since the last report",
            self.max_connections,
            self.max_overflow,
        );
    }
}

/// Runs a connection until it ends, closing it gracefully when the server drains or the
/// tracker says so, and dropping it (closing the socket) when the tracker says so. `slot` is
/// released before the socket is closed, so a client that saw the close finds it free.
async fn drive<C, E>(
    conn: C,
    shutdown: fn(Pin<&mut C>),
    slot: Slot,
    tracker: &Tracker,
    drain: &CancellationToken,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            result = &mut conn => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                break;
            }
            () = drain.cancelled(), if !draining => {
                draining = true;
                shutdown(conn.as_mut());
            }
            action = tracker.next_action() => match action {
                Action::Shutdown => shutdown(conn.as_mut()),
                Action::Close => break,
            },
        }
    }
    drop(slot);
}

/// What an accepted connection needs from the server (a public one is handed to its worker).
struct Accepted {
    proxy: Arc<Proxy>,
    builder: auto::Builder<TokioExecutor>,
    permit: Slot,
    tracker: Arc<Tracker>,
    /// Cancelled when the server starts draining (the admin listener: when it stops).
    drain: CancellationToken,
    role: Role,
}

impl Accepted {
    /// Runs on the connection's worker: moves the socket to the worker's reactor, then serves it.
    async fn serve(self, stream: Stream, tls: Option<TlsAcceptor>, worker: usize) {
        let stream = match stream.into_current_runtime() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, "cannot move an accepted connection to its worker");
                return;
            }
        };
        // Each kind's connection future is boxed here, on the worker: the task then holds only
        // the one this connection needs (unboxed, every plain TCP connection paid for the TLS
        // arm's size: ~6 KB per task, moved and resident; BENCHMARKS.md).
        match (stream, tls) {
            (Stream::Tcp(tcp, remote), Some(tls)) => {
                let client = ClientInfo {
                    ip: Some(remote.ip()),
                    proto: "https",
                    worker,
                };
                Box::pin(self.serve_tls(tls, tcp, client)).await;
            }
            (Stream::Tcp(tcp, remote), None) => {
                let client = ClientInfo {
                    ip: Some(remote.ip()),
                    proto: "http",
                    worker,
                };
                Box::pin(self.serve_http(tcp, client)).await;
            }
            (Stream::Unix(unix), _) => {
                let client = ClientInfo {
                    ip: None,
                    proto: "http",
                    worker,
                };
                Box::pin(self.serve_http(unix, client)).await;
            }
        }
    }

    /// The TLS handshake (within the first request head's deadline, which counts from
    /// accept), then as [`Self::serve_http`].
    async fn serve_tls(mut self, tls: TlsAcceptor, tcp: tokio::net::TcpStream, client: ClientInfo) {
        let tracker = Arc::clone(&self.tracker);
        let slot = &mut self.permit;
        let tls_stream = tokio::select! {
            accepted = tls.accept(tcp) => match accepted {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::debug!(%error, client = ?client.ip, "TLS handshake failed");
                    return;
                }
            },
            // Before the first request, whatever is due means closing. The slot is released
            // inside this branch's future: `select!` drops the handshake, which owns (and so
            // closes) the socket, only after a branch completes, so a client that saw the
            // close finds the slot free (as in `drive`).
            () = async {
                tracker.next_action().await;
                slot.release();
            } => return,
        };
        self.serve_http(tls_stream, client).await;
    }

    /// Served by the proxy while it holds a connection permit, else answered with a 503 and
    /// closed.
    async fn serve_http<I>(self, io: I, client: ClientInfo)
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let tracker = Arc::clone(&self.tracker);
        let proxy = Arc::clone(&self.proxy);
        let (role, refused) = (self.role, self.permit.refused);
        let service = service_fn(move |request: Request<Incoming>| {
            let proxy = Arc::clone(&proxy);
            let open = tracker.request_started(request.version());
            // Boxed per request: hyper keeps an HTTP/1 connection's service future slot for
            // the connection's whole life (and an HTTP/2 stream's for the stream's), so unboxed
            // every open stream would hold the whole request future after its head was sent.
            Box::pin(async move {
                let response = if refused {
                    response_body::unobserved(over_connection_limit(&request))
                } else {
                    proxy.handle(request, client, role).await
                };
                Ok::<_, Infallible>(response.map(|body| open.watch(body)))
            })
        });
        let conn = self
            .builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        drive(
            conn,
            |c| c.graceful_shutdown(),
            self.permit,
            &self.tracker,
            &self.drain,
        )
        .await;
    }
}

/// The answer on a connection over `--max-connections`, in the dialect its path asks for.
fn over_connection_limit(request: &Request<Incoming>) -> Response<ProxyBody> {
    overloaded(dialect::asked_by(request.uri().path()), Limit::Connections)
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
        // Never block a shutdown behind a full queue: a connection accepted too late is closed.
        tokio::select! {
            () = stop.cancelled() => return,
            sent = accepted.send(stream) => if sent.is_err() { return },
        }
    }
}

/// The admin listener: health, readiness and metrics, served until `stop` (after the drain).
async fn admin_loop(
    listener: Listener,
    proxy: Arc<Proxy>,
    builder: auto::Builder<TokioExecutor>,
    limits: Limits,
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
                    // Admin routes never reach the upstream; the worker index is unused.
                    let client = ClientInfo { ip, proto: "http", worker: 0 };
                    // The same deadlines as public connections, without a connection limit.
                    let accepted = Accepted {
                        proxy: Arc::clone(&proxy),
                        builder: builder.clone(),
                        permit: Slot { _permit: None, refused: false },
                        tracker: Tracker::new(limits, false),
                        drain: stop.clone(),
                        role: Role::Admin,
                    };
                    connections.spawn(accepted.serve_http(io, client));
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
    pub proxy: Arc<Proxy>,
    metrics: Arc<Metrics>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl RunningServer {
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let server = Server::bind(config).await?;
        let addrs = server.public_addrs();
        let addr = addrs
            .iter()
            .find_map(|a| match a {
                ListenAddr::Tcp(addr) => Some(*addr),
                ListenAddr::Unix(_) => None,
            })
            .ok_or_else(|| {
                StartError::Inherited(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "RunningServer needs a TCP listener",
                ))
            })?;
        let admin = server.admin_addr();
        let metrics = server.metrics();
        let proxy = server.proxy();
        let (shutdown, signal) = oneshot::channel();
        let task = tokio::spawn(server.serve(async {
            let _ = signal.await;
        }));
        Ok(Self {
            addr,
            addrs,
            admin,
            proxy,
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
