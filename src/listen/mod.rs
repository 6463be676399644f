//! The listening side: bind the sockets, build the server, serve until shutdown, then drain.
//!
//! Lifecycle:
//! 1. [`Server::build`] (this file) loads the TLS material, binds every `--listen` address (or
//!    takes the sockets systemd passed) and `--admin-listen`, and builds the upstream clients.
//!    Nothing is served yet; once it returns the caller may say READY.
//! 2. [`Server::serve`] (`serve.rs`) accepts until `shutdown` resolves, hands each connection
//!    to a worker thread (`workers.rs`) that serves it (`connection.rs`), then drains.
//! 3. [`RunningServer`] (`handle.rs`) runs a server on its own task, for tests and embedding.
//!
//! The other files: `sockets.rs` (TCP and Unix listeners, systemd's sockets), `progress.rs`
//! (the per-connection deadlines).

mod connection;
mod handle;
mod progress;
mod serve;
pub(crate) mod sockets;
mod workers;

pub use handle::RunningServer;
use sockets::Listener;
pub use sockets::{take_inherited, Inherited, ListenAddr};

use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::ops::metrics::Metrics;
use crate::ops::reload::Reload;
use crate::proxy::upstream::Upstream;
use crate::proxy::{Proxy, SetupError};
use crate::tls::{self, CertFiles};
use workers::Workers;

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
        let metrics = Arc::new(Metrics::new(config.metrics_max_models));
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
    pub(crate) fn public_addrs(&self) -> Vec<ListenAddr> {
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
