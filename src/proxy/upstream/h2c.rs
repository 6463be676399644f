//! HTTP/2 with prior knowledge (h2c) to an `http://` upstream (`--upstream-http2`): one worker's
//! multiplexed connections, so that an open stream costs the proxy an HTTP/2 stream (a few
//! hundred bytes of state and its share of bounded windows) instead of an HTTP/1.1 connection
//! with its fixed buffers.
//!
//! - **Streams per connection are capped here** (`--upstream-http2-max-streams`): hyper's
//!   `SendRequest` neither tells the peer's SETTINGS_MAX_CONCURRENT_STREAMS nor refuses a
//!   request beyond it — it queues it behind the others. A request takes a place on the oldest
//!   open connection with room; when every one carries the cap, a new connection is opened.
//!   A connection's room is the cap, or the upstream's own limit when that is smaller (read
//!   from the connection after each of its turns, so it applies from the second request on).
//!   Connections are opened one at a time per worker, so a burst of requests fills the
//!   connection being opened instead of each opening its own. A stream holds its place until
//!   its response body ends or is dropped ([`UpstreamBody::holding`]).
//! - **Closed connections are dropped** (GOAWAY, an error, a failed keep-alive ping): the next
//!   request goes to another connection, or a new one. A request the connection handed back
//!   unsent is tried once more elsewhere. A connection without a stream for 90 s is closed, as
//!   the HTTP/1.1 pool's idle connections are.
//! - **`--connect-timeout` bounds the whole set-up**: waiting for the connection another request
//!   is opening, resolve and TCP, the client preface, and the upstream's first frame (its
//!   SETTINGS). An upstream that accepts TCP and never answers the preface is a connect timeout.
//! - **Every buffer is bounded**, never hyper's client defaults (2 MiB stream and 5 MiB
//!   connection windows, a 1 MiB send buffer per stream): a stream's window is 64 KiB, fixed
//!   (no adaptive window), and the connection's window is the streams' windows together, so
//!   clients that stop reading and hold their streams' windows full can never use up the
//!   connection's window and lock out the others. Response heads are limited as on the
//!   HTTP/1.1 path.
//!
//! The connection itself runs as tasks on the worker's runtime (hyper's HTTP/2 client spawns
//! them; workers are single-threaded, so they stay on its thread): a response body is fed by
//! the connection's task, like the `https://` client's ([`UpstreamBody::from`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::transport::{
    address, connect_tcp, UpstreamError, UpstreamRequestBody, IDLE_TIMEOUT, UPSTREAM_READ_BUFFER,
};
use crate::config::Config;
use crate::error::BoxError;
use crate::translate::upstream_body::{has_no_body, UpstreamBody};

/// A stream's receive window: what the upstream may send on one stream before the proxy's
/// client has taken it (RFC 9113's initial 65,535, rounded to 64 KiB).
const STREAM_WINDOW: u32 = 64 * 1024;
/// Request body bytes buffered per stream for sending.
const MAX_SEND_BUF: usize = 64 * 1024;
/// The largest response head, as on the HTTP/1.1 path (whose read buffer bounds it).
const MAX_HEAD_BYTES: u32 = UPSTREAM_READ_BUFFER as u32;
/// Pings on a connection without traffic: a dead connection (a host gone without a FIN) is
/// found within interval + timeout, instead of a request waiting for --response-timeout on
/// it — and one dead connection carries many streams.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

type Connection<B> = http2::Connection<TokioIo<FirstRead>, B, TokioExecutor>;

/// What a request body must be to go out on a pooled connection (generic for the unit tests).
pub(crate) trait RequestBody:
    Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static
{
}

impl<B> RequestBody for B where B: Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static
{}

/// One worker's HTTP/2 connections to an `http://` upstream: see the module docs.
pub(crate) struct H2cPool<B = UpstreamRequestBody> {
    /// `host:port`, what the connections are made to.
    address: String,
    max_streams: usize,
    builder: http2::Builder<TokioExecutor>,
    /// Open connections, oldest first.
    connections: Mutex<Vec<Pooled<B>>>,
    /// Held while a connection is opened: one at a time.
    opening: tokio::sync::Mutex<()>,
    /// A connection without a stream for this long is closed.
    idle_timeout: Duration,
}

struct Pooled<B> {
    sender: http2::SendRequest<B>,
    load: Arc<Load>,
}

/// A connection's open streams, shared by the pool, its streams and its task.
struct Load(Mutex<LoadState>);

struct LoadState {
    streams: usize,
    /// The most streams it takes: the cap, or less when the upstream's
    /// SETTINGS_MAX_CONCURRENT_STREAMS says so (at least 1).
    room: usize,
    /// When `streams` last became 0.
    idle_since: Instant,
    /// No more requests go to it.
    closed: bool,
}

impl Load {
    fn new(room: usize) -> Self {
        Self(Mutex::new(LoadState {
            streams: 0,
            room,
            idle_since: Instant::now(),
            closed: false,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, LoadState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One stream's place on its connection, held by its response body.
struct StreamSlot(Arc<Load>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut load = self.0.lock();
        load.streams = load.streams.saturating_sub(1);
        if load.streams == 0 {
            load.idle_since = Instant::now();
        }
    }
}

impl<B: RequestBody> H2cPool<B> {
    pub(crate) fn new(config: &Config) -> Self {
        let max_streams = config.upstream_http2_max_streams;
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .adaptive_window(false)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(STREAM_WINDOW.saturating_mul(max_streams))
            .initial_max_send_streams(max_streams as usize)
            .max_send_buf_size(MAX_SEND_BUF)
            .max_header_list_size(MAX_HEAD_BYTES)
            .keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        Self {
            address: address(config),
            max_streams: max_streams as usize,
            builder,
            connections: Mutex::default(),
            opening: tokio::sync::Mutex::const_new(()),
            idle_timeout: IDLE_TIMEOUT,
        }
    }

    /// Sends `request` (its URI in absolute form: hyper makes `:scheme`, `:authority` and
    /// `:path` of it) and waits for the response head.
    pub(crate) async fn send(
        &self,
        mut request: Request<B>,
        connect_timeout: Duration,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        loop {
            let (mut sender, slot, pooled) = match self.checkout() {
                Some((sender, slot)) => (sender, slot, true),
                // Boxed: only new connections pay for the open future's size.
                None => {
                    let (sender, slot) = Box::pin(self.open(connect_timeout)).await?;
                    (sender, slot, false)
                }
            };
            let head = request.method() == Method::HEAD;
            match sender.try_send_request(request).await {
                Ok(response) => {
                    // No body, whatever `content-length` says (hyper's HTTP/1 client knows;
                    // its HTTP/2 client reports the length as the body's size).
                    let bodiless = has_no_body(head, response.status());
                    return Ok(
                        response.map(|body| UpstreamBody::holding(body, Box::new(slot), bodiless))
                    );
                }
                Err(mut error) => match error.take_message() {
                    // The connection closed before the request went out: the request is
                    // intact; try another connection. Bounded: each retry retires one.
                    Some(unsent) if pooled => {
                        slot.0.lock().closed = true;
                        request = unsent;
                    }
                    _ => {
                        let error = error.into_error();
                        return Err(UpstreamError::classify(&error, false, connect_timeout));
                    }
                },
            }
        }
    }

    fn connections(&self) -> MutexGuard<'_, Vec<Pooled<B>>> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place on the oldest open connection with room (so the newer ones empty and close).
    fn checkout(&self) -> Option<(http2::SendRequest<B>, StreamSlot)> {
        let mut connections = self.connections();
        connections.retain(|pooled| !pooled.sender.is_closed() && !pooled.load.lock().closed);
        connections.iter().find_map(|pooled| {
            let mut load = pooled.load.lock();
            if load.streams >= load.room || !pooled.sender.is_ready() {
                return None;
            }
            load.streams += 1;
            Some((pooled.sender.clone(), StreamSlot(Arc::clone(&pooled.load))))
        })
    }

    /// A place on a new connection — or on one another request opened meanwhile.
    async fn open(
        &self,
        limit: Duration,
    ) -> Result<(http2::SendRequest<B>, StreamSlot), UpstreamError> {
        let deadline = Instant::now() + limit;
        let timed_out = |what: &str| UpstreamError::ConnectTimeout {
            limit,
            detail: format!("{what} {} within {}s", self.address, limit.as_secs_f64()),
        };
        let _opening = tokio::time::timeout_at(deadline, self.opening.lock())
            .await
            .map_err(|_| timed_out("no HTTP/2 connection (waiting for another one) to"))?;
        if let Some(found) = self.checkout() {
            return Ok(found);
        }
        let stream = connect_tcp(&self.address, deadline, limit).await?;
        let (first_read, first_read_done) = oneshot::channel();
        let io = TokioIo::new(FirstRead {
            stream,
            first: Some(first_read),
        });
        let (sender, connection) = tokio::time::timeout_at(deadline, self.builder.handshake(io))
            .await
            .map_err(|_| timed_out("no HTTP/2 handshake with"))?
            .map_err(|error| UpstreamError::classify(&error, true, limit))?;
        let load = Arc::new(Load::new(self.max_streams));
        // Dropped with `sender` if the upstream fails the set-up: hyper then closes it.
        let limits = (self.max_streams, self.idle_timeout);
        tokio::spawn(drive(connection, Arc::clone(&load), limits));
        // The upstream's first frame, its SETTINGS, answers the client preface.
        match tokio::time::timeout_at(deadline, first_read_done).await {
            Ok(Ok(FirstBytes::Frames)) => {}
            Ok(Ok(FirstBytes::Http1)) => {
                load.lock().closed = true;
                return Err(UpstreamError::NotHttp2(format!(
                    "{}: answered the HTTP/2 preface in HTTP/1",
                    self.address
                )));
            }
            Ok(_) => {
                return Err(UpstreamError::Connect {
                    reason: "the connection was closed before the HTTP/2 handshake",
                    detail: format!("{}: closed before sending an HTTP/2 preface", self.address),
                })
            }
            Err(_elapsed) => {
                load.lock().closed = true;
                return Err(timed_out("no HTTP/2 SETTINGS from"));
            }
        }
        load.lock().streams = 1;
        let slot = StreamSlot(Arc::clone(&load));
        self.connections().push(Pooled {
            sender: sender.clone(),
            load,
        });
        Ok((sender, slot))
    }
}

/// Runs a connection until it closes, or until it has carried no stream for `idle_timeout`
/// (then dropping it closes it). After each turn it notes the streams the upstream allows
/// (hyper tells the connection, not its senders), so that the next request does not queue
/// behind a smaller limit than `cap`; the turns come with the requests it dispatches.
async fn drive<B: RequestBody>(
    connection: Connection<B>,
    load: Arc<Load>,
    (cap, idle_timeout): (usize, Duration),
) {
    let mut connection = std::pin::pin!(connection);
    let idle = tokio::time::sleep(idle_timeout);
    let mut idle = std::pin::pin!(idle);
    let mut turn = std::future::poll_fn(|cx| {
        let polled = connection.as_mut().poll(cx);
        load.lock().room = connection.current_max_send_streams().clamp(1, cap);
        polled
    });
    loop {
        tokio::select! {
            _ = &mut turn => break,
            () = idle.as_mut() => {
                let state = load.lock();
                if state.closed
                    || (state.streams == 0 && state.idle_since.elapsed() >= idle_timeout)
                {
                    break;
                }
                let next = if state.streams == 0 {
                    state.idle_since + idle_timeout
                } else {
                    Instant::now() + idle_timeout
                };
                drop(state);
                idle.as_mut().reset(next);
            }
        }
    }
    load.lock().closed = true;
}

/// The upstream's socket, telling once whether its first read brought bytes (`true`) or
/// ended it (`false`): the upstream answered the client preface, or will not.
struct FirstRead {
    stream: TcpStream,
    first: Option<oneshot::Sender<FirstBytes>>,
}

/// What the upstream's first read on a new connection brought.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FirstBytes {
    /// The connection closed or failed first.
    Nothing,
    /// An HTTP/1 status line: a server that does not speak HTTP/2 answered the preface.
    Http1,
    /// Anything else (an HTTP/2 server's SETTINGS frame, which h2 then checks).
    Frames,
}

impl AsyncRead for FirstRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Poll::Ready(result) = &read {
            if let Some(first) = this.first.take() {
                let bytes = buf.filled().get(before..).unwrap_or_default();
                let _ = first.send(match result {
                    Ok(()) if bytes.starts_with(b"HTTP/") => FirstBytes::Http1,
                    Ok(()) if !bytes.is_empty() => FirstBytes::Frames,
                    _ => FirstBytes::Nothing,
                });
            }
        }
        read
    }
}

impl AsyncWrite for FirstRead {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use http_body_util::{BodyExt, Empty};
    use tokio::net::TcpListener;

    const WAIT: Duration = Duration::from_secs(10);

    /// An h2c upstream answering `ok` to every request; says when its one connection ended.
    async fn upstream() -> (std::net::SocketAddr, oneshot::Receiver<Instant>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (ended, ended_rx) = oneshot::channel();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut connection = h2::server::handshake(tcp).await.expect("handshake");
            while let Some(Ok((_request, mut respond))) = connection.accept().await {
                let mut send = respond
                    .send_response(Response::new(()), false)
                    .expect("head");
                send.send_data(Bytes::from_static(b"ok"), true)
                    .expect("body");
            }
            let _ = ended.send(Instant::now());
        });
        (addr, ended_rx)
    }

    #[tokio::test]
    async fn a_connection_without_streams_is_closed_after_the_idle_time() {
        let (addr, ended) = upstream().await;
        let upstream = format!("http://{addr}/v1");
        let config =
            Config::try_parse_from(["envelope-proxy", "--upstream", &upstream]).expect("flags");
        let mut pool = H2cPool::<Empty<Bytes>>::new(&config);
        pool.idle_timeout = Duration::from_millis(300);
        let request = Request::get(format!("{upstream}/models"))
            .body(Empty::new())
            .expect("request");
        let response = tokio::time::timeout(WAIT, pool.send(request, WAIT))
            .await
            .expect("within the wait bound")
            .expect("a response");
        let body = response.into_body().collect().await.expect("body");
        assert_eq!(body.to_bytes(), "ok");
        let idle_from = Instant::now();

        let ended = tokio::time::timeout(WAIT, ended)
            .await
            .expect("the idle connection is closed within the wait bound")
            .expect("the upstream saw it end");
        assert!(ended >= idle_from + pool.idle_timeout);
        assert!(pool.checkout().is_none(), "the closed connection is gone");
    }
}
