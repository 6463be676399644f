//! Serving one accepted connection: the TLS handshake, HTTP/1.1 or HTTP/2 with the configured
//! limits, and the loop that closes it when the server drains or its [`Tracker`] says so.
//!
//! Every connection runs beside its [`Tracker`] (`progress.rs`): from accept to its first
//! request head it has `--header-read-timeout`, with no request open it has `--idle-timeout`,
//! and a response its client stops taking is abandoned after `--client-write-timeout`.
//!
//! A connection over `--max-connections` (its [`Slot`] says `refused`) is still read, so that
//! its first request gets a 503 in its own dialect instead of a hang, and is then closed
//! (`Connection: close` on HTTP/1.1, GOAWAY on HTTP/2).
//!
//! HTTP/2 is told from HTTP/1.1 by its connection preface, read here ([`sniff`]) rather than by
//! hyper-util's auto builder: its rewind wrapper hands hyper the first bytes alone, in a read of
//! their own, so hyper's next read found its 8 KiB buffer partly used and doubled it; each open
//! HTTP/1.1 stream held 16 KiB for a request head of a few hundred bytes. [`Prefixed`] returns
//! the bytes read here together with whatever the socket has next, in one read, and each
//! connection holds only its own protocol's state (BENCHMARKS.md has the measurement).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dialect;
use crate::proxy::response_body::{self, ResponseBody};
use crate::proxy::{ClientInfo, Handled, Proxy, ProxyResponse, Role};
use crate::translate::body::ProxyBody;
use crate::translate::synthetic::{overloaded, Limit};

use super::progress::{Abandon, Action, Tracker, Watched};
use super::sockets::Stream;
use crate::woken::Woken;

/// How long an HTTP/2 client has to answer a keep-alive ping (hyper's default).
const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// The server side of both protocols, with the configured limits; shared by every connection.
pub(super) type Protocols = Arc<Builders>;

/// hyper's HTTP/1.1 and HTTP/2 servers, as [`connection_builder`] set them up.
pub(super) struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

/// HTTP/1.1 and HTTP/2 with the configured header limits and the slowloris guard.
pub(super) fn connection_builder(config: &Config) -> Protocols {
    let mut http1 = http1::Builder::new();
    http1
        // Every request head's deadline is the progress tracker's (`progress.rs`): hyper's
        // own would arm a timer of its own for each head.
        .header_read_timeout(None)
        .max_headers(config.max_headers)
        .max_buf_size(config.max_header_bytes as usize)
        // Frames are queued for writev, not copied into hyper's write buffer: a large body goes
        // out without a copy (64 KiB responses: −5 % CPU wrapped, −9 % passed through), and the
        // buffer keeps nothing of it afterwards (tests/memory.rs). Event streams lose nothing:
        // SseBody gathers the events of one upstream read into one frame.
        .writev(true);
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_header_list_size(config.max_header_bytes)
        .max_concurrent_streams(config.max_concurrent_streams)
        .keep_alive_interval((!config.idle_timeout.is_zero()).then_some(config.idle_timeout))
        .keep_alive_timeout(HTTP2_PING_TIMEOUT);
    Arc::new(Builders { http1, http2 })
}

/// What every HTTP/2 connection starts with (RFC 9113, section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads the connection's first bytes until they either are HTTP/2's preface (`true`) or are
/// not (`false`: HTTP/1.1, as for a connection closed before sending anything); at most 24
/// bytes, a read each, so at most 24 reads. The bytes read go back to hyper in [`Prefixed`].
async fn sniff<I: AsyncRead + Unpin>(mut io: I) -> io::Result<(bool, Prefixed<I>)> {
    let mut prefix = [0; PREFACE.len()];
    let mut filled = 0;
    let http2 = loop {
        let read = io.read(&mut prefix[filled..]).await?;
        let before = filled;
        filled += read;
        if read == 0 || prefix[before..filled] != PREFACE[before..filled] {
            break false;
        }
        if filled == PREFACE.len() {
            break true;
        }
    };
    let prefixed = Prefixed {
        io,
        prefix,
        start: 0,
        end: filled,
        error: None,
    };
    Ok((http2, prefixed))
}

/// A connection's byte stream with the bytes [`sniff`] read put back in front.
///
/// The first read returns those bytes and, in the same call, whatever the socket has ready
/// after them: hyper sizes its read buffer by what it has to hold, and a read of the first
/// bytes alone would leave it too little room for the next one (it would grow the buffer to
/// twice its size for the rest of the connection's life).
pub(super) struct Prefixed<I> {
    io: I,
    prefix: [u8; PREFACE.len()],
    start: usize,
    end: usize,
    /// An error of the read that followed the prefix, reported on the next read.
    error: Option<io::Error>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(error) = this.error.take() {
            return Poll::Ready(Err(error));
        }
        let Some(rest) = this
            .prefix
            .get(this.start..this.end)
            .filter(|r| !r.is_empty())
        else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        let given = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..given]);
        this.start += given;
        if this.start == this.end && buf.remaining() > 0 {
            // Pending only registers the waker for the next read; the prefix is returned now.
            if let Poll::Ready(Err(error)) = Pin::new(&mut this.io).poll_read(cx, buf) {
                this.error = Some(error);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A connection's place under the limits, held until it closes.
pub(super) struct Slot {
    /// `None` on the admin listener, which has no connection limit.
    pub(super) permit: Option<OwnedSemaphorePermit>,
    /// Over `--max-connections` (within `--max-overflow-connections`): answered with a 503,
    /// then closed.
    pub(super) refused: bool,
}

impl Slot {
    /// Gives the place back before the connection is closed.
    fn release(&mut self) {
        self.permit = None;
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
    // The watchers are polled only when they were woken (see `woken.rs`), and live across
    // the loop's turns.
    let drained = Woken::new(drain.cancelled());
    let action = Woken::new(tracker.next_action());
    tokio::pin!(drained, action);
    let mut draining = false;
    loop {
        tokio::select! {
            biased;
            result = &mut conn => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                break;
            }
            () = &mut drained, if !draining => {
                draining = true;
                shutdown(conn.as_mut());
            }
            next = &mut action => {
                action.set(Woken::new(tracker.next_action()));
                match next {
                    Action::Shutdown => shutdown(conn.as_mut()),
                    Action::Close => break,
                }
            }
        }
    }
    drop(slot);
}

/// What an accepted connection needs from the server (a public one is handed to its worker).
pub(super) struct Accepted {
    pub(super) proxy: Arc<Proxy>,
    pub(super) builder: Protocols,
    pub(super) permit: Slot,
    pub(super) tracker: Arc<Tracker>,
    /// Cancelled when the server starts draining (the admin listener: when it stops).
    pub(super) drain: CancellationToken,
    pub(super) role: Role,
}

impl Accepted {
    /// Runs on the connection's worker: moves the socket to the worker's reactor, then serves it.
    pub(super) async fn serve(self, stream: Stream, tls: Option<TlsAcceptor>, worker: usize) {
        let stream = match stream.into_current_runtime() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, "cannot move an accepted connection to its worker");
                return;
            }
        };
        // Each kind's connection future is boxed here, on the worker: the task then holds only
        // the one this connection needs (unboxed, every plain TCP connection would pay for the
        // TLS arm's size, moved and resident; BENCHMARKS.md has the measurement).
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
    pub(super) async fn serve_http<I>(mut self, io: I, client: ClientInfo)
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        // The protocol, from the first bytes: like the TLS handshake, before the first request,
        // so a deadline or the drain closes the connection (the slot first, as in `drive`).
        let (tracker, drain) = (Arc::clone(&self.tracker), self.drain.clone());
        let slot = &mut self.permit;
        let (http2, io) = tokio::select! {
            sniffed = sniff(io) => match sniffed {
                Ok(sniffed) => sniffed,
                Err(error) => {
                    tracing::debug!(%error, client = ?client.ip, "connection failed before its first request");
                    return;
                }
            },
            () = async {
                tokio::select! {
                    _ = tracker.next_action() => {}
                    () = drain.cancelled() => {}
                }
                slot.release();
            } => return,
        };
        let proxy = Arc::clone(&self.proxy);
        let (role, refused) = (self.role, self.permit.refused);
        let service = service_fn(move |request: Request<Incoming>| {
            let open = tracker.request_started(request.version());
            let handled = if refused {
                Handled::Answered(response_body::unobserved(over_connection_limit(
                    &request, &proxy,
                )))
            } else {
                proxy.handle(request, client, role)
            };
            let watched = move |response: ProxyResponse| Ok(response.map(|body| open.watch(body)));
            // Boxed per request: hyper keeps an HTTP/1 connection's service future slot for
            // the connection's whole life (and an HTTP/2 stream's for the stream's), so unboxed
            // every open stream would hold the whole request future after its head was sent.
            // An answer is boxed ready; a forwarded request's exchange is the future itself.
            let respond: Respond = match handled {
                Handled::Answered(response) => Box::pin(std::future::ready(watched(response))),
                Handled::Forward(forward) => {
                    Box::pin(Arc::clone(&proxy).forwarded(forward, watched))
                }
            };
            respond
        });
        let io = TokioIo::new(io);
        let (slot, tracker, drain) = (self.permit, &self.tracker, &self.drain);
        if http2 {
            let conn = self.builder.http2.serve_connection(io, service);
            // Boxed: the HTTP/1.1 connections, one per open stream, need not be as large as
            // HTTP/2's state.
            Box::pin(drive(conn, |c| c.graceful_shutdown(), slot, tracker, drain)).await;
        } else {
            let conn = self.builder.http1.serve_connection(io, service);
            drive(conn, |c| c.graceful_shutdown(), slot, tracker, drain).await;
        }
    }
}

/// A request's future, as the service hands it to hyper.
type Respond =
    Pin<Box<dyn Future<Output = Result<Response<Watched<ResponseBody>>, Infallible>> + Send>>;

/// A response body the progress tracker may abandon: the access log then says
/// `client_stalled`.
impl Abandon for ResponseBody {
    fn abandon(self: Pin<&mut Self>) {
        self.client_stalled();
    }
}

/// The answer on a connection over `--max-connections`, in the dialect its path asks for.
fn over_connection_limit(request: &Request<Incoming>, proxy: &Proxy) -> Response<ProxyBody> {
    let dialect = dialect::asked_by(request.uri().path());
    overloaded(dialect, proxy.envelopes(), Limit::Connections)
}

/// A byte stream of either kind (the admin listener is not worth monomorphising twice).
pub(super) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Everything `io` yields until its end (bounded: each read moves at least one byte).
    async fn read_to_end(io: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.expect("read");
        all
    }

    #[tokio::test]
    async fn an_http1_request_comes_back_whole_in_the_first_read() {
        let request = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n";
        let (mut client, server) = tokio::io::duplex(4096);
        client.write_all(request).await.expect("write");
        let (http2, mut prefixed) = sniff(server).await.expect("sniff");
        assert!(!http2);
        // One read, as hyper does it: the sniffed bytes and the rest of the head together.
        let mut buf = vec![0; 8192];
        let read = prefixed.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..read], request);
    }

    #[tokio::test]
    async fn the_http2_preface_is_recognised_even_split_and_handed_back() {
        let (mut client, server) = tokio::io::duplex(4096);
        let (sniffed, ()) = tokio::join!(sniff(server), async {
            client.write_all(&PREFACE[..7]).await.expect("write");
            tokio::task::yield_now().await;
            client.write_all(&PREFACE[7..]).await.expect("write");
            client.write_all(b"frames").await.expect("write");
            drop(client);
        });
        let (http2, mut prefixed) = sniffed.expect("sniff");
        assert!(http2);
        assert_eq!(
            read_to_end(&mut prefixed).await,
            [&PREFACE[..], b"frames"].concat()
        );
    }

    #[tokio::test]
    async fn a_connection_closed_before_any_byte_is_http1_at_its_end() {
        let (client, server) = tokio::io::duplex(64);
        drop(client);
        let (http2, mut prefixed) = sniff(server).await.expect("sniff");
        assert!(!http2);
        assert_eq!(read_to_end(&mut prefixed).await, b"");
    }

    /// Gives `GET` in one read, then fails.
    struct BrokenAfterGet(bool);

    impl AsyncRead for BrokenAfterGet {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if std::mem::replace(&mut self.0, true) {
                return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
            }
            buf.put_slice(b"GET");
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn an_error_right_after_the_sniffed_bytes_comes_on_the_next_read() {
        let (http2, mut prefixed) = sniff(BrokenAfterGet(false)).await.expect("sniff");
        assert!(!http2);
        let mut buf = [0; 64];
        let read = prefixed
            .read(&mut buf)
            .await
            .expect("the sniffed bytes first");
        assert_eq!(&buf[..read], b"GET");
        let error = prefixed.read(&mut buf).await.expect_err("then the error");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
    }
}
