//! The listener: accepts connections, serves HTTP/1.1 and HTTP/2 on each, and drains on shutdown.
//!
//! Shutdown stops accepting at once, lets in-flight requests and streams finish for up to
//! `grace`, then drops what remains (SSE streams never end on their own, hence the deadline).
//! Connections over `--max-connections` are still read, so that each request on them gets a
//! 503 in its own dialect instead of a hang, and are then closed.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;

use crate::api_error::ApiError;
use crate::body::ProxyBody;
use crate::config::Config;
use crate::dialect::{route, Dialect, Route};
use crate::proxy::{ClientInfo, Proxy, SetupError};
use crate::translate::error_response;

/// A bound listener and the proxy it serves.
pub struct Server {
    listener: TcpListener,
    proxy: Arc<Proxy>,
    config: Arc<Config>,
    grace: Duration,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Setup(#[from] SetupError),
}

impl Server {
    /// Builds the proxy (upstream client, keys) and binds the listen address; nothing is served yet.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let config = Arc::new(config);
        let proxy = Arc::new(Proxy::new(Arc::clone(&config))?);
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        Ok(Self {
            listener,
            proxy,
            config,
            grace: Duration::from_secs(30),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The proxy, for reloading its keys while it serves.
    pub fn proxy(&self) -> Arc<Proxy> {
        Arc::clone(&self.proxy)
    }

    /// Serves until `shutdown` resolves, then drains for up to the grace period.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let builder = connection_builder(&self.config);
        let connections = Arc::new(Semaphore::new(self.config.max_connections));
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);

        loop {
            let (stream, remote) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Usually EMFILE: back off briefly instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let io = TokioIo::new(stream);
            let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
                let connection = builder.serve_connection(io, service_fn(over_connection_limit));
                let connection = connection.into_owned();
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                continue;
            };
            let proxy = Arc::clone(&self.proxy);
            let client = ClientInfo {
                ip: remote.ip(),
                proto: "http",
            };
            let service = service_fn(move |request| {
                let proxy = Arc::clone(&proxy);
                async move { Ok::<_, Infallible>(proxy.handle(request, client).await) }
            });
            let connection = builder.serve_connection(io, service).into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, %remote, "connection ended with an error");
                }
                drop(permit);
            });
        }

        drop(self.listener);
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(self.grace) => {
                tracing::warn!("shutdown grace period elapsed; closing the remaining connections");
            }
        }
    }
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
        .max_header_list_size(config.max_header_bytes);
    builder
}

/// The answer on a connection over `--max-connections`, in the dialect its path asks for.
async fn over_connection_limit(
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let dialect = match route(request.uri().path()) {
        Route::Proxy { client, .. } => client,
        _ => Dialect::Bare,
    };
    let error = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "envelope-proxy is at its connection limit (--max-connections); retry shortly",
    )
    .with_code("proxy_overloaded");
    let mut response = error_response(dialect, &error, None);
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    Ok(response)
}

/// A server running on its own task, for tests and embedding.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub proxy: Arc<Proxy>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl RunningServer {
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let server = Server::bind(config).await?;
        let addr = server.local_addr().map_err(|source| StartError::Bind {
            addr: server.config.listen,
            source,
        })?;
        let proxy = server.proxy();
        let (shutdown, signal) = oneshot::channel();
        let task = tokio::spawn(server.serve(async {
            let _ = signal.await;
        }));
        Ok(Self {
            addr,
            proxy,
            shutdown: Some(shutdown),
            task,
        })
    }

    /// Stops accepting and waits for the drain to finish.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let _ = (&mut self.task).await;
    }
}
