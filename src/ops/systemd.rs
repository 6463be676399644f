//! systemd integration through the `sd_notify` protocol (the `sd-notify` crate).
//!
//! `READY=1` once every listener is bound, `STOPPING=1` when the drain starts,
//! `RELOADING=1`…`READY=1` around a SIGHUP reload, `STATUS=` one-line summaries, and
//! `WATCHDOG=1` at half of `WATCHDOG_USEC` when the unit sets `WatchdogSec=`. The pings come
//! from a task on the runtime, so a wedged runtime stops them and systemd restarts the
//! service. Without `NOTIFY_SOCKET` every call is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;

/// Sends `states`; a failure is logged, never fatal (the service manager may have gone away).
fn send(states: &[NotifyState<'_>]) {
    // `false`: keep NOTIFY_SOCKET, later notifications need it.
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::warn!(%error, "cannot notify the service manager");
    }
}

/// Every listener is bound: the service is up.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// The drain has started.
pub(crate) fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// A reload has started; [`ready`] ends it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// The interval at which to ping the watchdog, when the service manager asked for pings.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec / 2))
    } else {
        None
    }
}

/// Pings the watchdog every `interval` for as long as the runtime runs.
pub fn spawn_watchdog(interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        loop {
            ticks.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    })
}
