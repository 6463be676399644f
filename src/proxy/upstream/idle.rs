//! One worker's idle HTTP/1.1 connections to an `http://` upstream ([`IdleConnections`]): the
//! most recently used is taken first, the oldest goes when [`MAX_IDLE`] wait, and none is kept
//! past [`IDLE_TIMEOUT`].
//!
//! No task runs per connection (a request drives its connection itself, see `upstream.rs`), so
//! nothing would notice an idle connection end: one the upstream closed (a server's keep-alive
//! timeout; uvicorn's, under vLLM, is 5 s) would stay in CLOSE_WAIT, with its descriptor and
//! buffers, until the next request looked at it — forever on a proxy that went quiet after a
//! burst. So while any connection is idle, a sweep on the worker's runtime looks at them every
//! [`SWEEP_PERIOD`] and drops the ended and the expired ones. Polling an idle connection costs
//! no syscall unless its socket became readable (tokio keeps the readiness epoll reported).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Waker};
use std::time::Duration;

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::transport::{UpstreamRequestBody, IDLE_TIMEOUT};

/// The most idle connections one worker keeps; the oldest go first.
const MAX_IDLE: usize = 256;

/// How often idle connections are looked at while there are any (see the module docs): how
/// long one the upstream closed may stay half-closed here.
const SWEEP_PERIOD: Duration = Duration::from_secs(1);

/// An HTTP/1.1 connection to the upstream, driven by whoever polls it.
pub(super) type OwnConnection =
    Pin<Box<http1::Connection<TokioIo<TcpStream>, UpstreamRequestBody>>>;

/// A connection's two halves: the one that sends requests and the one that drives the socket.
pub(super) struct Connection {
    pub sender: http1::SendRequest<UpstreamRequestBody>,
    pub connection: OwnConnection,
}

impl Connection {
    /// True when the connection has ended (closed by the upstream, or a stray byte from it,
    /// which ends it too). One poll, whose wake-up is not kept: whoever uses the connection
    /// next polls it again.
    fn has_ended(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.connection.as_mut().poll(&mut cx).is_ready()
    }
}

/// One worker's idle connections; see the module docs. Cloned handles share them.
#[derive(Clone, Default)]
pub(super) struct IdleConnections(Arc<Mutex<List>>);

#[derive(Default)]
struct List {
    /// Oldest first.
    waiting: VecDeque<Waiting>,
    /// A sweep runs (it ends when no connection is left).
    swept: bool,
}

struct Waiting {
    connection: Connection,
    since: Instant,
}

impl IdleConnections {
    /// The most recently used idle connection that is still open and ready.
    pub fn take(&self) -> Option<Connection> {
        let mut list = self.lock();
        list.drop_expired();
        while let Some(mut waiting) = list.waiting.pop_back() {
            if waiting.connection.has_ended() {
                continue;
            }
            if waiting.connection.sender.is_ready() {
                return Some(waiting.connection);
            }
        }
        None
    }

    /// Keeps `connection`, whose last response ended whole, for a next request; starts a sweep
    /// on the current runtime if none runs (without one, as when a runtime shuts down, the
    /// connections are looked at only when taken).
    pub fn put_back(&self, connection: Connection) {
        let mut list = self.lock();
        if list.waiting.len() >= MAX_IDLE {
            list.waiting.pop_front();
        }
        list.waiting.push_back(Waiting {
            connection,
            since: Instant::now(),
        });
        if list.swept {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            list.swept = true;
            drop(list);
            runtime.spawn(sweep(Arc::downgrade(&self.0)));
        }
    }

    fn lock(&self) -> MutexGuard<'_, List> {
        lock(&self.0)
    }

    /// Idle connections kept now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().waiting.len()
    }
}

fn lock(list: &Mutex<List>) -> MutexGuard<'_, List> {
    // Nothing panics while holding the lock; a poisoned one still holds consistent data.
    list.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl List {
    fn drop_expired(&mut self) {
        while self
            .waiting
            .front()
            .is_some_and(|oldest| oldest.since.elapsed() >= IDLE_TIMEOUT)
        {
            self.waiting.pop_front();
        }
    }
}

/// Every [`SWEEP_PERIOD`], drops the ended and expired connections of `list`; stops once none
/// is left (the next one put back starts another sweep) or the pool is gone.
async fn sweep(list: Weak<Mutex<List>>) {
    loop {
        tokio::time::sleep(SWEEP_PERIOD).await;
        let Some(list) = list.upgrade() else {
            return;
        };
        let mut list = lock(&list);
        list.drop_expired();
        list.waiting
            .retain_mut(|waiting| !waiting.connection.has_ended());
        if list.waiting.is_empty() {
            list.swept = false;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connection to a fresh listener, and the listener's end of it.
    async fn connected() -> (Connection, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("address"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let (sender, connection) = http1::handshake(TokioIo::new(client))
            .await
            .expect("handshake");
        let connection = Connection {
            sender,
            connection: Box::pin(connection),
        };
        (connection, server)
    }

    #[tokio::test]
    async fn a_sweep_closes_the_connections_the_upstream_closed_and_keeps_the_others() {
        let idle = IdleConnections::default();
        let (open, _open_end) = connected().await;
        let (closed, mut closed_end) = connected().await;
        idle.put_back(open);
        idle.put_back(closed);
        assert_eq!(idle.len(), 2);
        // The upstream closes one (FIN) and waits for ours: with no request to look at the
        // pool, only the sweep can see it.
        closed_end.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        let read = tokio::time::timeout(SWEEP_PERIOD * 10, closed_end.read_to_end(&mut rest)).await;
        assert!(
            matches!(read, Ok(Ok(0))),
            "the sweep closed our end: {read:?}"
        );
        assert_eq!(idle.len(), 1);
        // The open one is still there, and taken.
        assert!(idle.take().is_some());
        assert_eq!(idle.len(), 0);
    }

    #[tokio::test]
    async fn the_sweep_ends_with_the_last_connection_and_starts_again_with_the_next() {
        let idle = IdleConnections::default();
        let (first, _first_end) = connected().await;
        idle.put_back(first);
        assert!(idle.lock().swept);
        assert!(idle.take().is_some());
        // Nothing idle: the sweep's next look ends it (waited for within a generous bound).
        let ended = tokio::time::timeout(SWEEP_PERIOD * 10, async {
            while idle.lock().swept {
                tokio::time::sleep(SWEEP_PERIOD / 10).await;
            }
        })
        .await;
        assert!(ended.is_ok(), "the sweep ended");
        let (second, _second_end) = connected().await;
        idle.put_back(second);
        assert!(idle.lock().swept);
    }
}
