//! envelope-proxy: a reverse proxy that translates between the bare OpenAI response dialect and
//! the envelope dialect.
//!
//! Data flows one way: `server` (listener) → `dialect::route` → `proxy` (upstream request) →
//! `upstream` (client) → `translate` / `sse` (body transform) → client.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod api_error;
pub mod auth;
pub mod body;
pub mod config;
pub mod dialect;
pub mod envelope;
pub mod headers;
pub mod proxy;
pub mod request_target;
pub mod server;
pub mod sse;
pub mod translate;
pub mod upstream;

pub use config::Config;
pub use dialect::Dialect;
pub use server::{RunningServer, Server};
