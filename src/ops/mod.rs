//! Operations beside the request path: what an operator sees and controls.
//!
//! - [`metrics`]: the Prometheus counters and histograms behind `/metrics`;
//! - [`access_log`]: one line per request, written when it really ends;
//! - [`logging`]: where log lines go (stderr, through a thread that never holds up a worker);
//! - [`systemd`]: readiness, status and the watchdog;
//! - [`reload`]: SIGHUP re-reads keys and certificates;
//! - [`credentials`]: where each secret comes from (flag or systemd credential).

pub(crate) mod access_log;
pub mod credentials;
pub mod logging;
pub mod metrics;
pub mod reload;
pub mod systemd;
