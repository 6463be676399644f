//! envelope-proxy's test support, one crate of the workspace compiled once for every test
//! target (a dev-dependency of the main crate; `publish = false`).
//!
//! - [`mock_upstream`]: the in-process mock OpenAI-compatible upstream (either dialect,
//!   driven by `x-mock-*` request headers), also served by `examples/mock-upstream.rs`.
//! - [`raw_upstream`]: a raw-socket upstream that plays a script of exact bytes.
//! - [`harness`]: a mock upstream with the proxy in front of it (in process) and a client.
//! - [`process`]: the real binary as a child process, a test `NOTIFY_SOCKET`, temp dirs.
//!   The binary's path is the test target's `env!("CARGO_BIN_EXE_envelope-proxy")` (only the
//!   main package's integration tests have it): [`proxy_bin!`] expands to it there.
//! - [`pki`]: certificates made at test time, HTTPS clients, and a TLS front for the mock.
//! - [`raw`]: raw HTTP/1.1 exchanges for requests a client library will not send.
//! - [`streams`]: the streaming body driven directly, without sockets.
//!
//! Fixtures are the main crate's `fixtures/` (see [`mock_upstream::MockState::fixtures_dir`]).

pub mod harness;
pub mod mock_upstream;
pub mod pki;
pub mod process;
pub mod raw;
pub mod raw_upstream;
pub mod streams;

/// The path of the `envelope-proxy` binary, as built for the calling integration test:
/// `env!("CARGO_BIN_EXE_envelope-proxy")`, expanded in the caller (Cargo defines it only while
/// compiling the main package's integration tests, not this crate).
#[macro_export]
macro_rules! proxy_bin {
    () => {
        env!("CARGO_BIN_EXE_envelope-proxy")
    };
}
