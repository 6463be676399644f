//! Raw HTTP/1.1 over a TCP socket, for requests a well-behaved client library will not send.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct RawResponse {
    /// 0 when the proxy closed the connection without answering.
    pub status: u16,
    pub text: String,
    pub body: String,
}

/// Writes `request` as it is and reads until the proxy closes the connection (bounded).
pub async fn exchange(addr: SocketAddr, request: &str) -> RawResponse {
    exchange_bytes(addr, request.as_bytes()).await
}

pub async fn exchange_bytes(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    stream.write_all(request).await.expect("write the request");
    let mut received = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received)).await;
    if !matches!(read, Ok(Ok(_))) {
        // A reset after a complete response is fine; a hang is not.
        assert!(
            read.is_ok(),
            "the proxy neither answered nor closed within 10 s"
        );
    }
    parse(String::from_utf8_lossy(&received).into_owned())
}

fn parse(text: String) -> RawResponse {
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    RawResponse { status, text, body }
}
