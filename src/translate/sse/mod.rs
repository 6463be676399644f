//! Server-Sent Events: framing, per-event translation, and the streaming response body.
//!
//! - [`framer`] cuts the upstream byte stream into whole events without copying;
//! - [`transform`] decides what each event becomes in the client's dialect, and keeps the
//!   stream's stats (with [`first_token`], which finds the first event with content);
//! - [`body`] is the response body that drives both, adds the error event that ends a broken
//!   or truncated stream, and enforces the idle timeout and keep-alives.

pub mod body;
mod first_token;
pub mod framer;
pub mod transform;

pub use body::{SseBody, StreamSettings};
pub use transform::EventMode;
