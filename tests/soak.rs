//! A bounded soak: about a minute of mixed traffic with faults injected, against the real
//! binary. Every request must get a complete response or an error in its dialect, the proxy's
//! RSS must stay flat, and active requests, streams and client connections must return to zero.
//! `SOAK_SECONDS` shortens or lengthens the run (default 60).

use test_support::{harness, mock_upstream, process};

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use harness::{fixture, wrapped, WAIT};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use mock_upstream::Shape;
use process::TempDir;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The proxy binary built for this test target.
const BIN: &str = test_support::proxy_bin!();

const WORKERS: usize = 16;
const SCENARIOS: usize = 10;

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

struct Outcome {
    status: StatusCode,
    body: Bytes,
}

async fn send(
    client: &Client,
    addr: SocketAddr,
    path: &str,
    stream: bool,
    headers: &[(&str, &str)],
) -> Result<Outcome, String> {
    let body = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],"stream":{stream}}}"#
    );
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(WAIT, client.request(request))
        .await
        .map_err(|_| "no response headers within the wait bound".to_string())?
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    let body = tokio::time::timeout(WAIT, response.into_body().collect())
        .await
        .map_err(|_| "body did not end within the wait bound".to_string())?
        .map_err(|e| format!("body broke: {e}"))?
        .to_bytes();
    Ok(Outcome { status, body })
}

fn json(body: &Bytes) -> Result<Value, String> {
    serde_json::from_slice(body)
        .map_err(|e| format!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// Runs scenario `n` once and checks its exact outcome.
async fn scenario(n: usize, client: &Client, addr: SocketAddr) -> Result<(), String> {
    let expect = |ok: bool, what: &str| if ok { Ok(()) } else { Err(what.to_string()) };
    match n {
        0 => {
            let o = send(client, addr, "/v1/chat/completions", false, &[]).await?;
            expect(
                o.status == 200 && o.body == fixture("bare/chat_completion.json"),
                "bare pass-through",
            )
        }
        1 => {
            let o = send(client, addr, "/api/v1/chat/completions", false, &[]).await?;
            expect(
                o.status == 200 && o.body[..] == wrapped(&fixture("bare/chat_completion.json"))[..],
                "wrap",
            )
        }
        2 => {
            let o = send(
                client,
                addr,
                "/v1/chat/completions",
                true,
                &[("x-mock-behaviour", "split:37")],
            )
            .await?;
            expect(
                o.body == fixture("bare/chat_completion_stream.sse"),
                "stream pass-through",
            )
        }
        3 => {
            let o = send(client, addr, "/api/v1/chat/completions", true, &[]).await?;
            expect(
                o.status == 200 && o.body.ends_with(b"data: [DONE]\n\n"),
                "wrapped stream",
            )
        }
        4 => {
            let headers = [
                ("x-mock-fixture", "errors/openai_429_rate_limit.json"),
                ("x-mock-status", "429"),
            ];
            let o = send(client, addr, "/api/v1/chat/completions", false, &headers).await?;
            let body = json(&o.body)?;
            expect(
                o.status == 429
                    && body["error"]["code"] == "rate_limit_exceeded"
                    && body["success"] == false,
                "429 in envelope",
            )
        }
        5 => {
            let o = send(
                client,
                addr,
                "/v1/chat/completions",
                true,
                &[("x-mock-behaviour", "reset-mid-body:700")],
            )
            .await?;
            let text = String::from_utf8_lossy(&o.body);
            expect(
                text.ends_with("\"code\":\"upstream_broken\"}}\n\n") && !text.contains("[DONE]"),
                "broken stream ends with an error event",
            )
        }
        6 => {
            let o = send(
                client,
                addr,
                "/v1/chat/completions",
                false,
                &[("x-mock-behaviour", "no-response")],
            )
            .await?;
            expect(
                o.status == 502 && json(&o.body)?["error"]["type"] == "upstream_error",
                "no response is a 502",
            )
        }
        7 => {
            // A client that leaves mid-stream.
            let request = Request::post(format!("http://{addr}/v1/chat/completions"))
                .header("x-mock-behaviour", "hold")
                .body(Full::new(Bytes::from_static(br#"{"stream":true}"#)))
                .map_err(|e| e.to_string())?;
            let response = tokio::time::timeout(WAIT, client.request(request))
                .await
                .map_err(|_| "hold: no headers".to_string())?
                .map_err(|e| e.to_string())?;
            let mut body = response.into_body();
            let first = tokio::time::timeout(WAIT, body.frame())
                .await
                .map_err(|_| "hold: no first event".to_string())?;
            expect(matches!(first, Some(Ok(_))), "first event before leaving")
        }
        8 => {
            let o = send(
                client,
                addr,
                "/api/v1/chat/completions",
                false,
                &[("x-mock-behaviour", "truncate-content-length:200")],
            )
            .await?;
            expect(
                o.status == 502 && json(&o.body)?["error"]["code"] == "upstream_truncated",
                "cut-short body is a 502",
            )
        }
        _ => {
            let headers = [
                ("x-mock-fixture", "errors/cloudflare_502.html"),
                ("x-mock-status", "502"),
            ];
            let o = send(client, addr, "/v1/chat/completions", false, &headers).await?;
            expect(
                o.status == 502 && json(&o.body)?["error"]["type"] == "server_error",
                "HTML error normalised",
            )
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .map(|v| v.trim().trim_end_matches(" kB").trim().to_owned())
            })
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Established TCP connections whose local port is `port` (the proxy's side of client connections).
fn established_on(port: u16) -> usize {
    let mut count = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && fields.get(3) == Some(&"01") {
                count += 1;
            }
        }
    }
    count
}

/// One scrape of `/metrics` over a fresh connection that asks the proxy to close it, read to
/// the proxy's end of stream: when it returns, the proxy has closed its side, so the check
/// leaves no client connection of its own behind (a pooled client would keep one, or two,
/// open and race the count). Bounded by `WAIT`; `Err` says what went wrong.
async fn scrape_metrics(addr: SocketAddr) -> Result<String, String> {
    let exchange = async {
        let mut socket = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        socket
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut response = Vec::new();
        // /metrics is a few KiB; the cap only keeps a runaway answer bounded.
        socket
            .take(1 << 20)
            .read_to_end(&mut response)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok::<_, String>(response)
    };
    let response = tokio::time::timeout(WAIT, exchange)
        .await
        .map_err(|_| "/metrics did not answer and close within the wait bound".to_string())??;
    let text = String::from_utf8(response).map_err(|e| format!("not UTF-8: {e}"))?;
    if !text.starts_with("HTTP/1.1 200 ") {
        return Err(format!(
            "/metrics answered: {}",
            text.lines().next().unwrap_or("")
        ));
    }
    Ok(text)
}

/// The value of the unlabelled series `name` in a scrape.
fn metric(scrape: &str, name: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_of_mixed_traffic_with_faults_loses_nothing_and_leaks_nothing() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let mock = mock_upstream::start(Shape::Bare).await;
    let dir = TempDir::new("soak");
    let upstream = mock.base_url();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &upstream,
        "--stream-envelope",
        "wrap",
        "--log-level",
        "error",
    ];
    let (mut proxy, addr) = process::spawn_ready(&dir, BIN, &args).await;

    let deadline = Instant::now() + Duration::from_secs(seconds);
    let warm_at = Instant::now() + Duration::from_secs(seconds / 6);
    let warm_rss = Arc::new(Mutex::new(0u64));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let failures = Arc::clone(&failures);
        let warm_rss = Arc::clone(&warm_rss);
        let pid = proxy.pid();
        workers.push(tokio::spawn(async move {
            let client = harness::client();
            let mut done = 0usize;
            // Bounded by time and by count.
            while Instant::now() < deadline && done < 200_000 {
                let n = (worker + done) % SCENARIOS;
                if let Err(why) = scenario(n, &client, addr).await {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("scenario {n}: {why}"));
                }
                done += 1;
                if worker == 0 && Instant::now() >= warm_at {
                    let mut warm = warm_rss.lock().unwrap();
                    if *warm == 0 {
                        *warm = rss_kib(pid);
                    }
                }
            }
            done
        }));
    }
    let mut total = 0;
    for worker in workers {
        total += worker.await.expect("worker");
    }
    mock.state.release();
    let end_rss = rss_kib(proxy.pid());
    let warm = *warm_rss.lock().unwrap();

    // Everything in flight drains back to zero: no active request or stream, and no client
    // connection left open (the workers' clients are gone, and each scrape closes its own).
    let mut settled = false;
    // The last values seen, so a failure says which one stayed up.
    let mut last = (Err("not scraped yet".to_string()), 0);
    // Ends at the first settled poll; gives up after 20 s.
    let settle_by = Instant::now() + Duration::from_secs(20);
    while Instant::now() < settle_by {
        let scrape = scrape_metrics(addr).await.map(|text| {
            (
                metric(&text, "envelope_proxy_active_requests"),
                metric(&text, "envelope_proxy_active_streams"),
            )
        });
        let established = established_on(addr.port());
        if scrape == Ok((Some(0.0), Some(0.0))) && established == 0 {
            settled = true;
            break;
        }
        last = (scrape, established);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failures = failures.lock().unwrap().clone();
    eprintln!("soak: {total} requests in {seconds}s, RSS {warm} KiB after warm-up, {end_rss} KiB at the end, {} failures", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        total > WORKERS * SCENARIOS,
        "the soak ran only {total} requests"
    );
    assert!(
        settled,
        "active requests/streams or client connections did not return to zero: last seen \
         (active_requests, active_streams) {:?}, established client connections {}\n{}",
        last.0,
        last.1,
        proxy.stderr()
    );
    assert!(warm > 0 && end_rss > 0);
    // Flat: allocator slack allowed, growth with traffic not.
    assert!(
        end_rss <= warm * 3 / 2 + 8 * 1024,
        "RSS grew from {warm} KiB to {end_rss} KiB"
    );
    assert!(proxy.is_running(), "the proxy is still up");
}
