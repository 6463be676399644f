//! The client side: the pooled connections to the configured upstream, one pool per worker
//! thread (`listen/workers.rs`), so a pooled connection is only ever used on the thread that
//! opened it.
//!
//! - `http://` upstreams: HTTP/1.1 connections the worker owns ([`OwnPool`]). A request drives
//!   its connection itself — while waiting for the response head here, then from its response
//!   body (`translate/upstream_body.rs`) — so no task runs per connection and no channel hop
//!   separates the socket from the response. A body that ended whole gives its connection back
//!   for the next request (most recently used first); idle connections are checked before use,
//!   swept every second while there are any, and dropped after 90 s (`upstream/idle.rs`).
//! - `http://` upstreams with `--upstream-http2`: HTTP/2 with prior knowledge (h2c), the
//!   streams multiplexed over a few connections per worker (`upstream/h2c.rs`).
//! - `https://` upstreams: hyper-util's pooled client with rustls and ALPN (HTTP/2 when the
//!   upstream offers it, else HTTP/1.1).
//!
//! `--connect-timeout` bounds the whole connection set-up — DNS, TCP and the TLS (or HTTP/2)
//! handshake — so an upstream that accepts TCP and then stays silent is a connect timeout, not
//! a response timeout. Transport failures are classified once into [`UpstreamError`]
//! (`upstream/transport.rs`, with the TCP connection both `http://` pools share).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use hyper::client::conn::http1;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;

use crate::config::Config;
use crate::error::BoxError;
use crate::translate::upstream_body::{has_no_body, DriveConnection, UpstreamBody};
use crate::woken::HeldWakes;

mod h2c;
mod idle;
mod transport;

use idle::{Connection, IdleConnections};

pub(crate) use transport::UpstreamError;
use transport::{address, connect_tcp, UpstreamRequestBody, IDLE_TIMEOUT, UPSTREAM_READ_BUFFER};

type HttpsClient = Client<ConnectDeadline<HttpsConnector<HttpConnector>>, UpstreamRequestBody>;

/// One worker's way to the upstream.
pub struct Upstream {
    client: UpstreamClient,
    connect_timeout: Duration,
    response_timeout: Duration,
}

enum UpstreamClient {
    /// `http://`: HTTP/1.1 connections driven by the requests that use them.
    Own(OwnPool),
    /// `http://` with `--upstream-http2`: multiplexed HTTP/2 connections.
    H2c(Box<h2c::H2cPool>),
    /// `https://`: hyper-util's client, which runs a task per connection.
    Shared(Box<HttpsClient>),
}

/// A connector whose every connection attempt (resolve, connect, TLS handshake) must finish
/// within `limit`; else it fails with an `io::ErrorKind::TimedOut` error.
#[derive(Clone)]
pub(crate) struct ConnectDeadline<C> {
    inner: C,
    limit: Duration,
}

impl<C> tower_service::Service<Uri> for ConnectDeadline<C>
where
    C: tower_service::Service<Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_elapsed) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no connection (DNS, TCP and TLS) within {}s",
                        limit.as_secs_f64()
                    ),
                )
                .into()),
            }
        })
    }
}

impl Upstream {
    /// `tls` comes from [`crate::tls::client_config`] (system roots or `--upstream-ca`).
    pub fn new(config: &Config, tls: rustls::ClientConfig) -> Self {
        let client = if config.upstream.is_https() {
            UpstreamClient::Shared(Box::new(shared_client(config, tls)))
        } else if config.upstream_http2 {
            UpstreamClient::H2c(Box::new(h2c::H2cPool::new(config)))
        } else {
            UpstreamClient::Own(OwnPool::new(config))
        };
        Self {
            client,
            connect_timeout: config.connect_timeout,
            response_timeout: config.response_timeout,
        }
    }

    /// Sends `request` and waits for the response headers. The caller bounds the wait by
    /// [`Upstream::response_timeout`] (with its own deadline, on one timer).
    pub async fn send(
        &self,
        request: Request<UpstreamRequestBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        match &self.client {
            UpstreamClient::Own(pool) => pool.send(request, self.connect_timeout).await,
            UpstreamClient::H2c(pool) => pool.send(request, self.connect_timeout).await,
            UpstreamClient::Shared(client) => {
                let head = request.method() == http::Method::HEAD;
                match client.request(request).await {
                    Ok(response) => {
                        // Over HTTP/2 hyper reports a HEAD's (or 304's) `content-length` as
                        // its body's size: the body is marked empty, as on the h2c path.
                        let bodiless = has_no_body(head, response.status());
                        Ok(response.map(|body| UpstreamBody::from(body).bodiless(bodiless)))
                    }
                    Err(error) => Err(UpstreamError::classify(
                        &error,
                        error.is_connect(),
                        self.connect_timeout,
                    )),
                }
            }
        }
    }

    /// `--response-timeout`: the longest wait for the response headers.
    pub fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// The `Host` an upstream request gets where the proxy writes it itself (HTTP/1.1 to an
    /// `http://` upstream); `None` where the client sets it from the URI, or HTTP/2 sends
    /// `:authority` instead.
    pub(crate) fn host(&self) -> Option<&HeaderValue> {
        match &self.client {
            UpstreamClient::Own(pool) => Some(&pool.host),
            UpstreamClient::H2c(_) | UpstreamClient::Shared(_) => None,
        }
    }
}

/// hyper-util's pooled client for `https://` upstreams.
fn shared_client(config: &Config, tls: rustls::ClientConfig) -> HttpsClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));

    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    let connector = ConnectDeadline {
        inner: connector,
        limit: config.connect_timeout,
    };

    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .http1_max_buf_size(UPSTREAM_READ_BUFFER)
        .build(connector)
}

/// One worker's HTTP/1.1 connections to an `http://` upstream: see the module docs.
struct OwnPool {
    /// `host:port`, what the connection is made to.
    address: String,
    /// The `Host` header (the port only when it is not 80), as hyper-util sends it.
    host: HeaderValue,
    idle: IdleConnections,
}

impl OwnPool {
    fn new(config: &Config) -> Self {
        let authority = &config.upstream.authority;
        let host = match authority.port_u16() {
            Some(port) if port != 80 => format!("{}:{port}", authority.host()),
            _ => authority.host().to_owned(),
        };
        Self {
            address: address(config),
            host: HeaderValue::try_from(host).unwrap_or_else(|_| HeaderValue::from_static("")),
            idle: IdleConnections::default(),
        }
    }

    async fn send(
        &self,
        mut request: Request<UpstreamRequestBody>,
        connect_timeout: Duration,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        // Origin form and a Host header, as hyper-util's client sends HTTP/1.1 requests (the
        // request path writes it already: `Upstream::host`). The path is taken, not cloned: a
        // clone would allocate its buffer's count.
        let path = std::mem::take(request.uri_mut())
            .into_parts()
            .path_and_query
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *request.uri_mut() = Uri::from(path);
        if !request.headers().contains_key(header::HOST) {
            request
                .headers_mut()
                .insert(header::HOST, self.host.clone());
        }
        loop {
            let (mut used, pooled) = match self.idle.take() {
                Some(idle) => (idle, true),
                // Boxed: only new connections pay for the connect future's size; inline, every
                // request's future would carry (and move) it.
                None => (Box::pin(self.connect(connect_timeout)).await?, false),
            };
            let sending = used.sender.try_send_request(request);
            tokio::pin!(sending);
            let mut connection = Some(used.connection);
            // The request's own task drives the connection while it waits for the head; the
            // connection's wake-ups to itself (the head handed over) are held back.
            let wakes = HeldWakes::new();
            let sent = std::future::poll_fn(|cx| {
                wakes.ask(cx, |cx| {
                    if let Some(driven) = connection.as_mut() {
                        if driven.as_mut().poll(cx).is_ready() {
                            connection = None;
                        }
                    }
                    sending.as_mut().poll(cx)
                })
            })
            .await;
            match sent {
                Ok(response) => {
                    let Some(connection) = connection else {
                        // The connection already ended: nothing feeds the body but its channel.
                        return Ok(response.map(UpstreamBody::from));
                    };
                    let driver = Box::new(InUse {
                        sender: used.sender,
                        connection,
                        pool: self.idle.clone(),
                    });
                    return Ok(response.map(|body| UpstreamBody::driven(body, driver, wakes)));
                }
                Err(mut error) => match error.take_message() {
                    // A pooled connection the upstream closed before the request went out:
                    // the request is intact; try the next connection (or a new one).
                    Some(unsent) if pooled => request = unsent,
                    _ => {
                        let error = error.into_error();
                        return Err(UpstreamError::classify(&error, false, connect_timeout));
                    }
                },
            }
        }
    }

    /// A new connection: resolve, TCP, handshake, all within `--connect-timeout`.
    async fn connect(&self, limit: Duration) -> Result<Connection, UpstreamError> {
        let stream = connect_tcp(&self.address, Instant::now() + limit, limit).await?;
        let (sender, connection) = http1::Builder::new()
            .max_buf_size(UPSTREAM_READ_BUFFER)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|error| UpstreamError::classify(&error, true, limit))?;
        Ok(Connection {
            sender,
            connection: Box::pin(connection),
        })
    }
}

/// A connection while a request uses it: driven by the response body, pooled again after it.
struct InUse {
    sender: http1::SendRequest<UpstreamRequestBody>,
    connection: idle::OwnConnection,
    pool: IdleConnections,
}

impl DriveConnection for InUse {
    fn poll_connection(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.connection.as_mut().poll(cx).map(|_| ())
    }

    fn body_done(self: Box<Self>) {
        let InUse {
            sender,
            connection,
            pool,
        } = *self;
        pool.put_back(Connection { sender, connection });
    }
}
