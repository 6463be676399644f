//! envelope-proxy: a reverse proxy that translates between the bare OpenAI response dialect and
//! the envelope dialect.
//!
//! Data flows one way: `listener` / `server` (accept) → `workers` (one runtime per thread;
//! TLS, HTTP) → `dialect::route` → `proxy`
//! (upstream request) → `upstream` (client) → `translate` / `sse` (body transform) →
//! `access_log` (the body that records the request's end) → client.
//!
//! Client progress deadlines (first request head, idle, stalled readers): `progress`.
//! Operations: `systemd` (notify, watchdog), `reload` (SIGHUP), `tls`, `credentials`,
//! `metrics`, `request_id`.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod access_log;
pub mod api_error;
pub mod auth;
pub mod body;
pub mod config;
pub mod credentials;
pub mod dialect;
pub mod envelope;
pub mod error;
pub mod error_body;
pub mod headers;
pub mod listener;
pub mod metrics;
pub mod progress;
pub mod proxy;
pub mod reload;
pub mod request_body;
pub mod request_head;
pub mod request_id;
pub mod request_target;
pub mod response_body;
pub mod server;
pub mod sse;
pub mod synthetic;
pub mod systemd;
pub mod tls;
pub mod translate;
pub mod upstream;
pub mod workers;

pub use config::Config;
pub use dialect::Dialect;
pub use server::{RunningServer, Server};
