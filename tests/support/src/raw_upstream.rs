//! A raw-socket upstream that misbehaves on purpose.
//!
//! It listens on `127.0.0.1:0` and, for each accepted connection, plays a script of
//! [`Step`]s: read one request head (and its body), send exact bytes, wait for the test, close
//! cleanly, reset, or hold the connection until the test ends. Nothing is checked or fixed on the
//! way out, so a test can send what no HTTP library would: both `Transfer-Encoding` and
//! `Content-Length`, a body shorter than its length, a gzip body whatever was asked for, a
//! `101`, a close in the middle of an event.
//!
//! ```ignore
//! let up = RawUpstream::start(vec![
//!     Step::ReadRequest,
//!     Step::send(response("200 OK", &[("content-length", "100")], b"short")),
//!     Step::Close,
//! ]).await;
//! // ... point the proxy at up.url() ...
//! assert_eq!(up.requests()[0].header("accept-encoding"), Some("identity"));
//! ```
//!
//! [`Step::Wait`] lets a test pace the upstream: e.g. reset only once the client has seen the
//! first event (`go.notify_one()` before the upstream waits is remembered, so there is no race).
//!
//! The proxy pools upstream connections: a response that the script follows with
//! [`Step::Close`] should say `connection: close`, so the next request opens a new connection
//! (and plays the script again) instead of racing the close on the old one.
//!
//! Every request head read is recorded ([`RawUpstream::requests`]). Reads are bounded (a head
//! over 64 KiB, or a body over 1 MiB, ends the connection). Dropping the [`RawUpstream`]
//! stops the listener and every connection, held ones included.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;

/// One thing the upstream does on a connection, in order.
#[derive(Debug, Clone)]
pub enum Step {
    /// Read a request head (up to `\r\n\r\n`) and the body its `Content-Length` or chunked
    /// framing announces; record it. Ends the connection if the peer closes first.
    ReadRequest,
    /// Write these bytes exactly (and flush).
    Send(Bytes),
    /// Wait until the test calls `notify_one()` on it (a notification sent earlier counts).
    Wait(Arc<Notify>),
    /// Close cleanly (FIN) and stop.
    Close,
    /// Close the writing half (FIN) and go on: the peer may still write, or close its end.
    CloseWrite,
    /// Read (and drop) whatever comes until the peer closes its end, then tell
    /// [`RawUpstream::peer_closed`] and stop.
    AwaitPeerClose,
    /// Reset the connection (`SO_LINGER` 0, then close: the peer gets RST) and stop.
    Reset,
    /// Keep the connection open, doing nothing, until the upstream is dropped.
    Hold,
}

impl Step {
    pub fn send(bytes: impl Into<Bytes>) -> Self {
        Step::Send(bytes.into())
    }
}

/// A request the upstream read.
#[derive(Debug, Clone)]
pub struct Received {
    /// Header names lower-cased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The running upstream; see the module docs.
pub struct RawUpstream {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    accepted: Arc<AtomicUsize>,
    peer_closes: Arc<Notify>,
    task: JoinHandle<()>,
}

impl RawUpstream {
    /// Every connection plays `script`.
    pub async fn start(script: Vec<Step>) -> Self {
        Self::start_with(move |_| script.clone()).await
    }

    /// Connection number `n` (from 0) plays `script(n)`.
    pub async fn start_with(script: impl Fn(usize) -> Vec<Step> + Send + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the raw upstream");
        let addr = listener.local_addr().expect("raw upstream address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let peer_closes = Arc::new(Notify::new());
        let (log, count) = (Arc::clone(&received), Arc::clone(&accepted));
        let closes = Arc::clone(&peer_closes);
        let task = tokio::spawn(async move {
            // Dropped (and so aborted) with this task: held connections end with the test.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let n = count.fetch_add(1, Ordering::SeqCst);
                let (log, closes) = (Arc::clone(&log), Arc::clone(&closes));
                connections.spawn(play(stream, script(n), log, closes));
                // Reap finished connections so the set stays small.
                while connections.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            received,
            accepted,
            peer_closes,
            task,
        }
    }

    /// `http://127.0.0.1:PORT/v1`, the proxy's `--upstream`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The requests read so far, in order.
    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().expect("request log").clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Waits until a peer closed its end during [`Step::AwaitPeerClose`] (one that did before
    /// the call counts).
    pub async fn peer_closed(&self) {
        self.peer_closes.notified().await;
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn play(
    mut stream: TcpStream,
    script: Vec<Step>,
    log: Arc<Mutex<Vec<Received>>>,
    peer_closes: Arc<Notify>,
) {
    let mut buffered = Vec::new();
    for step in script {
        match step {
            Step::ReadRequest => match read_request(&mut stream, &mut buffered).await {
                Some(request) => log.lock().expect("request log").push(request),
                None => return,
            },
            Step::Send(bytes) => {
                if stream.write_all(&bytes).await.is_err() || stream.flush().await.is_err() {
                    return;
                }
            }
            Step::Wait(go) => go.notified().await,
            Step::Close => break,
            Step::CloseWrite => {
                if stream.shutdown().await.is_err() {
                    return;
                }
            }
            Step::AwaitPeerClose => {
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                peer_closes.notify_one();
                return;
            }
            Step::Reset => {
                let _ = stream.set_zero_linger();
                return;
            }
            Step::Hold => std::future::pending::<()>().await,
        }
    }
    // A clean close: FIN, then let the peer finish reading.
    let _ = stream.shutdown().await;
}

/// Reads one request; `buffered` keeps bytes read past it (a pipelined next request).
async fn read_request(stream: &mut TcpStream, buffered: &mut Vec<u8>) -> Option<Received> {
    let head_end = loop {
        if let Some(at) = find(buffered, b"\r\n\r\n") {
            break at + 4;
        }
        if buffered.len() > MAX_HEAD || !fill(stream, buffered).await {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buffered[..head_end]).into_owned();
    buffered.drain(..head_end);
    let mut lines = head.split("\r\n");
    // The request line: tests look at the headers and the body only.
    lines.next();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut request = Received {
        headers,
        body: Vec::new(),
    };
    let chunked = request
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    if chunked {
        // Kept as it came (chunk sizes included), up to the last chunk and its blank line.
        let end = loop {
            if let Some(at) = find(buffered, b"0\r\n\r\n") {
                break at + 5;
            }
            if buffered.len() > MAX_BODY || !fill(stream, buffered).await {
                return None;
            }
        };
        request.body = buffered.drain(..end).collect();
    } else {
        let length: usize = request
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if length > MAX_BODY {
            return None;
        }
        while buffered.len() < length {
            if !fill(stream, buffered).await {
                return None;
            }
        }
        request.body = buffered.drain(..length).collect();
    }
    Some(request)
}

/// Reads more bytes; false when the peer closed or the read failed.
async fn fill(stream: &mut TcpStream, buffered: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buffered.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

// === Building responses, byte for byte ===

/// A response head: `HTTP/1.1 <status>`, the headers exactly as given, the blank line.
/// Nothing is added (no `Content-Length`, no `Date`).
pub fn head(status: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// [`head`] followed by `body`.
pub fn response(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = head(status, headers);
    out.extend_from_slice(body);
    out
}

/// One chunk of a chunked body (`data` must not be empty: that is [`LAST_CHUNK`]).
pub fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// The end of a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// `body` as one gzip member.
pub fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(body).expect("gzip in memory");
    encoder.finish().expect("gzip in memory")
}

/// Decodes a gzip body whole.
pub fn gunzip(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut out)
        .expect("a complete gzip body");
    out
}
