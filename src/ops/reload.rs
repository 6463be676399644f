//! Reloading files on SIGHUP without dropping connections.
//!
//! Anything read from a file that an operator may replace while the proxy runs (the TLS
//! certificate and key today; the key files of `--api-keys-file` / `--upstream-api-key-file`
//! subscribe the same way) implements [`Reloadable`] and is registered once at startup:
//!
//! ```
//! # use std::sync::Arc;
//! # use envelope_proxy::ops::reload::{Reload, Reloadable};
//! struct KeyFile;
//! impl Reloadable for KeyFile {
//!     fn name(&self) -> &'static str { "api keys" }
//!     fn reload(&self) -> Result<(), String> { Ok(()) /* read, validate, then swap */ }
//! }
//! let reload = Reload::default();
//! reload.register(Arc::new(KeyFile));
//! assert!(reload.reload_all().is_empty());
//! ```
//!
//! The contract for a [`Reloadable`]: read and validate the new material completely, then swap
//! it in; on any error return it and keep serving with the old material. Connections already
//! open keep what they started with (a TLS session keeps its certificate). SIGHUP calls
//! [`Reload::reload_all`], which logs each outcome and returns the failures.

use std::sync::{Arc, Mutex};

/// Something re-read from disk on SIGHUP.
pub trait Reloadable: Send + Sync {
    /// Names the material in logs: "TLS certificate", "api keys".
    fn name(&self) -> &'static str;
    /// Re-reads the material; on error the old material stays in use.
    fn reload(&self) -> Result<(), String>;
}

/// The registry SIGHUP goes through; cheap to clone.
#[derive(Clone, Default)]
pub struct Reload {
    items: Arc<Mutex<Vec<Arc<dyn Reloadable>>>>,
}

/// One failed reload: what, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadFailure {
    pub name: &'static str,
    pub error: String,
}

impl Reload {
    pub fn register(&self, item: Arc<dyn Reloadable>) {
        self.items().push(item);
    }

    /// Reloads everything registered, logs each outcome, and returns the failures.
    pub fn reload_all(&self) -> Vec<ReloadFailure> {
        // Clone the list so a slow reload never holds the lock against register().
        let items: Vec<Arc<dyn Reloadable>> = self.items().clone();
        let mut failures = Vec::new();
        for item in items {
            match item.reload() {
                Ok(()) => tracing::info!(what = item.name(), "reloaded"),
                Err(error) => {
                    tracing::error!(what = item.name(), %error, "reload failed; keeping the previous one");
                    failures.push(ReloadFailure {
                        name: item.name(),
                        error,
                    });
                }
            }
        }
        failures
    }

    fn items(&self) -> std::sync::MutexGuard<'_, Vec<Arc<dyn Reloadable>>> {
        // A panic in another reload must not disable reloading.
        self.items
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Flaky {
        calls: AtomicUsize,
    }

    impl Reloadable for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        fn reload(&self) -> Result<(), String> {
            match self.calls.fetch_add(1, Ordering::SeqCst) {
                0 => Ok(()),
                _ => Err("file is empty".into()),
            }
        }
    }

    #[test]
    fn every_item_is_reloaded_and_failures_are_reported() {
        let reload = Reload::default();
        let flaky = Arc::new(Flaky {
            calls: AtomicUsize::new(0),
        });
        reload.register(flaky.clone());
        assert_eq!(reload.reload_all(), []);
        assert_eq!(
            reload.reload_all(),
            [ReloadFailure {
                name: "flaky",
                error: "file is empty".into()
            }]
        );
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 2);
    }
}
