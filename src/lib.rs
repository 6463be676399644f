//! envelope-proxy: a reverse proxy that translates between the bare OpenAI response dialect and
//! the envelope dialect.
//!
//! One request flows through the folders in order (ARCHITECTURE.md walks through it):
//! - `listen/`: sockets, TLS handshakes, worker threads, serving one connection, the progress
//!   deadlines, accept and drain;
//! - `proxy/`: route, request checks, client keys, the upstream request, the response guard;
//! - `translate/`: the upstream's response in the client's dialect (JSON bodies, error bodies,
//!   event streams), and the responses the proxy makes itself;
//! - `ops/` beside them: metrics, the access log, systemd, reload, credentials.
//!
//! Shared by all: `config` (flags), `dialect`, `error` (the error model), `headers`, `tls`.
// No `unsafe` but where it is allowed, each a measured win in the JSON check's long texts
// (`translate/json_check`): code compiled for AVX2, called on a CPU found to have it, and the
// SSE2 and AVX2 intrinsics that make a block's mask.
#![deny(unsafe_code)]
#![deny(rust_2018_idioms)]
// The docs are for maintainers (`cargo doc --document-private-items`): they link freely.
#![allow(rustdoc::private_intra_doc_links)]

pub mod config;
mod dialect;
pub mod error;
mod headers;
pub mod listen;
pub mod ops;
pub mod proxy;
mod tls;
pub mod translate;
mod woken;

pub use config::Config;
pub use dialect::Dialect;
pub use listen::{RunningServer, Server};
