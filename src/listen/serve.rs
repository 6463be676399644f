//! Accept and drain: [`Server::serve`] accepts on every public listener until shutdown, gives
//! each connection a place under the limits and a worker, then drains.
//!
//! On shutdown `/readyz` answers 503, the public listeners are closed (new connections are
//! refused), `STOPPING=1` is sent, and in-flight requests and streams get up to
//! `--shutdown-grace` to finish; idle keep-alive connections close at once and HTTP/2
//! connections get GOAWAY. When the grace runs out, streams end with a `shutting_down` error
//! event and requests still waiting for the upstream get a 503; after a short flush whatever
//! remains is dropped. The admin listener serves until the very end, so probes can watch the
//! drain.
//!
//! Connections over `--max-connections` are answered with a 503 and closed (`connection.rs`);
//! beyond `--max-overflow-connections` more of those, an accepted socket is closed at once.
//! Both are counted in `/metrics` and logged, at most once per [`REFUSAL_LOG_INTERVAL`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::ops::metrics::{Metrics, Refusal};
use crate::ops::systemd;
use crate::proxy::{ClientInfo, Proxy, Role};

use super::connection::{connection_builder, Accepted, Io, Protocols, Slot};
use super::progress::{Limits, Tracker};
use super::sockets::{Listener, Stream};
use super::Server;

/// Refused connections are logged at most this often (with the count since the last line).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// After the grace period: time for the final error events to be written.
const FINAL_FLUSH: Duration = Duration::from_secs(1);

impl Server {
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
                    permit: Some(permit),
                    refused: false,
                },
                Err(_) => match Arc::clone(&overflow).try_acquire_owned() {
                    Ok(permit) => {
                        refusals.refused(Refusal::MaxConnections);
                        Slot {
                            permit: Some(permit),
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
    builder: Protocols,
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
                        permit: Slot { permit: None, refused: false },
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
