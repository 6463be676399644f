//! The worker threads: one single-threaded tokio runtime per thread, nginx's model.
//!
//! A connection is handed to one worker when it is accepted and lives there to the end: its
//! HTTP state, its requests, their upstream connections (each worker has its own pool, see
//! [`crate::proxy::ClientInfo::worker`]) and their timers. Nothing on the request path crosses a
//! thread, so there are no cross-thread wake-ups and no work stealing per request; tokio's
//! multi-thread scheduler measured slower (BENCHMARKS.md).
//!
//! Accepting stays on the caller's runtime; each accepted connection goes to the worker with the
//! fewest open connections (like Envoy's exact connection balancing), so long-lived keep-alive
//! and HTTP/2 connections spread evenly however bursty the accepts are.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

/// The period of [`anchor_the_timer`].
const TIMER_ANCHOR: Duration = Duration::from_secs(1);

/// How long a stopping worker waits for blocking tasks (DNS lookups) before leaving them.
const BLOCKING_GRACE: Duration = Duration::from_secs(1);

/// The running workers; dropping this stops them (their remaining tasks are dropped).
pub(crate) struct Workers {
    workers: Vec<Worker>,
}

struct Worker {
    runtime: Handle,
    open: Arc<AtomicUsize>,
    /// Dropped to stop the worker's thread.
    _stop: oneshot::Sender<()>,
}

impl Workers {
    /// Starts `count` worker threads (at least one), each with its own runtime.
    pub fn start(count: usize) -> std::io::Result<Self> {
        let mut workers = Vec::with_capacity(count.max(1));
        for index in 0..count.max(1) {
            let (stop, stopped) = oneshot::channel::<()>();
            let (ready, handle) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name(format!("worker-{index}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(error) => {
                            let _ = ready.send(Err(error));
                            return;
                        }
                    };
                    runtime.spawn(anchor_the_timer());
                    let _ = ready.send(Ok(runtime.handle().clone()));
                    // Err when the sender is dropped: that is the stop signal too.
                    let _ = runtime.block_on(stopped);
                    runtime.shutdown_timeout(BLOCKING_GRACE);
                })?;
            let runtime = handle
                .recv()
                .map_err(|_| std::io::Error::other("a worker thread exited while starting"))??;
            workers.push(Worker {
                runtime,
                open: Arc::new(AtomicUsize::new(0)),
                _stop: stop,
            });
        }
        Ok(Self { workers })
    }

    /// Runs a connection on the least loaded worker, in `set`. `serve` gets the worker's index.
    pub(crate) fn spawn_connection<F, Fut>(&self, set: &mut JoinSet<()>, serve: F)
    where
        F: FnOnce(usize) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (index, worker) = self
            .workers
            .iter()
            .enumerate()
            .min_by_key(|(_, w)| w.open.load(Ordering::Relaxed))
            .unwrap_or_else(|| unreachable!("Workers::start makes at least one"));
        let open = OpenConnection::new(Arc::clone(&worker.open));
        let connection = serve(index);
        set.spawn_on(
            async move {
                let _open = open;
                connection.await;
            },
            &worker.runtime,
        );
    }

    /// Open connections per worker, in worker order, for `/metrics`.
    pub(crate) fn open_counters(&self) -> Vec<Arc<AtomicUsize>> {
        self.workers.iter().map(|w| Arc::clone(&w.open)).collect()
    }

    /// Open connections per worker, in worker order.
    #[cfg(test)]
    pub(crate) fn open_connections(&self) -> Vec<usize> {
        self.workers
            .iter()
            .map(|w| w.open.load(Ordering::Relaxed))
            .collect()
    }
}

/// Keeps a timer due within [`TIMER_ANCHOR`] pending on the worker's runtime.
///
/// tokio's timer wakes its own thread (an eventfd write and an extra `epoll_wait`) whenever a
/// timer is set that is due before every pending one, and hyper sets a header-read timer per
/// request: with nothing else pending that was about one wake-up per request. A timer that is
/// always due within a second, sooner than any timeout of a second or more (the defaults are
/// 10 s and up), costs one wake-up per second instead.
async fn anchor_the_timer() {
    let mut tick = tokio::time::interval(TIMER_ANCHOR);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// Counts a connection against its worker until it ends (or its task is dropped).
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn new(open: Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self(open)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_go_to_the_least_loaded_worker_and_run_on_its_thread() {
        let workers = Workers::start(2).expect("start");
        let mut set = JoinSet::new();
        let (release, released) = tokio::sync::watch::channel(false);
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..4 {
            let mut released = released.clone();
            let seen_tx = seen_tx.clone();
            workers.spawn_connection(&mut set, move |index| async move {
                let thread = std::thread::current().name().map(str::to_owned);
                let _ = seen_tx.send((index, thread));
                let _ = released.wait_for(|r| *r).await;
            });
        }
        let mut placed = Vec::new();
        for _ in 0..4 {
            placed.push(seen.recv().await.expect("each connection reports"));
        }
        placed.sort();
        assert_eq!(
            placed,
            vec![
                (0, Some("worker-0".to_owned())),
                (0, Some("worker-0".to_owned())),
                (1, Some("worker-1".to_owned())),
                (1, Some("worker-1".to_owned())),
            ]
        );
        assert_eq!(workers.open_connections(), vec![2, 2]);

        release.send_replace(true);
        while set.join_next().await.is_some() {}
        assert_eq!(workers.open_connections(), vec![0, 0]);
    }

    #[tokio::test]
    async fn dropping_the_workers_drops_their_connections() {
        let workers = Workers::start(1).expect("start");
        let mut set = JoinSet::new();
        let (_never, pending) = oneshot::channel::<()>();
        workers.spawn_connection(&mut set, move |_| async move {
            let _ = pending.await;
        });
        drop(workers);
        let ended = set.join_next().await.expect("one task");
        assert!(ended.expect_err("the task was dropped").is_cancelled());
    }
}
