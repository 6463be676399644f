//! [`RunningServer`]: a server on its own task, for tests and embedding.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::ops::metrics::Metrics;
use crate::proxy::Proxy;

use super::sockets::ListenAddr;
use super::{Server, StartError};

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
