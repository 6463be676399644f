//! Secrets say where they came from (issue 14, part 1), on the real binary: the ready line and
//! `STATUS=` name each secret's source (flag, credential NAME or none) and never the secret; a
//! configured secret that cannot be read stops startup with one clear line and exit code 1; a
//! `$CREDENTIALS_DIRECTORY` holding none of the known credentials is a WARN.

use test_support::{harness, mock_upstream, process};

use bytes::Bytes;
use harness::{client, WAIT};
use http::{Request, StatusCode};
use http_body_util::Full;
use mock_upstream::Shape;
use nix::sys::signal::Signal;
use process::{field, served_tcp_addr, Notify, ProxyProcess, TempDir};

/// The proxy binary built for this test target.
const BIN: &str = test_support::proxy_bin!();

const UPSTREAM_SECRET: &str = "sk-upstream-from-credential-7f3a";
const CLIENT_SECRET: &str = "sk-client-from-flag-91c2";

/// Runs the binary with a test NOTIFY_SOCKET and `envs`; returns it, the socket (keep it
/// open: STOPPING=1 goes there too) and READY=1's STATUS.
async fn start_ready(
    dir: &TempDir,
    args: &[&str],
    envs: &[(&str, &str)],
) -> (ProxyProcess, Notify, String) {
    let notify = Notify::bind(dir);
    let socket = notify.path.to_str().expect("UTF-8 path").to_owned();
    let mut all = vec![("NOTIFY_SOCKET", socket.as_str())];
    all.extend_from_slice(envs);
    let proxy = ProxyProcess::spawn(dir, BIN, args, &all);
    let ready = notify.until("READY=1").await;
    let status = field(&ready, "STATUS").expect("STATUS= with READY=1");
    (proxy, notify, status.to_owned())
}

/// Runs the binary where it must refuse to start: its exit code and stderr.
async fn start_refused(dir: &TempDir, args: &[&str], envs: &[(&str, &str)]) -> (i32, String) {
    let mut proxy = ProxyProcess::spawn(dir, BIN, args, envs);
    let status = proxy.wait().await;
    (status.code().expect("an exit code"), proxy.stderr())
}

fn path_str(path: &std::path::Path) -> String {
    path.to_str().expect("UTF-8 path").to_owned()
}

#[tokio::test]
async fn the_ready_line_and_status_name_each_source_and_the_credential_key_reaches_upstream() {
    let mock = mock_upstream::start(Shape::Bare).await;
    let upstream = mock.base_url();
    let dir = TempDir::new("secrets-sources");
    let creds = dir.path("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(
        creds.join("upstream-api-key"),
        format!("{UPSTREAM_SECRET}\n"),
    )
    .unwrap();
    let keys = dir.path("api-keys");
    std::fs::write(&keys, format!("{CLIENT_SECRET}\n")).unwrap();
    let (keys, creds) = (path_str(&keys), path_str(&creds));

    let (mut proxy, _notify, status) = start_ready(
        &dir,
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
            "--api-keys-file",
            &keys,
        ],
        &[("CREDENTIALS_DIRECTORY", &creds)],
    )
    .await;
    let addr = served_tcp_addr(&status);
    assert_eq!(
        status,
        format!(
            "serving http://{addr}; upstream {upstream} (bare); upstream key: credential \
             upstream-api-key; client keys: flag --api-keys-file; TLS key: none"
        )
    );

    let request = Request::get(format!("http://{addr}/v1/models"))
        .header("authorization", format!("Bearer {CLIENT_SECRET}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(WAIT, client().request(request))
        .await
        .expect("a response within the wait bound")
        .expect("a response");
    assert_eq!(response.status(), StatusCode::OK);
    let seen = mock
        .state
        .last_request()
        .expect("the upstream saw the request");
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {UPSTREAM_SECRET}").as_str())
    );

    proxy.signal(Signal::SIGTERM);
    assert_eq!(proxy.wait().await.code(), Some(0));
    let log = proxy.stderr();
    assert!(
        log.contains(&format!("envelope-proxy ready: {status}")),
        "{log}"
    );
    assert!(!log.contains(" WARN "), "{log}");
    assert!(!log.contains(UPSTREAM_SECRET) && !log.contains(CLIENT_SECRET));
}

#[tokio::test]
async fn without_secrets_every_source_is_none() {
    let dir = TempDir::new("secrets-none");
    let (mut proxy, _notify, status) = start_ready(
        &dir,
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:9/v1",
        ],
        &[],
    )
    .await;
    let addr = served_tcp_addr(&status);
    assert_eq!(
        status,
        format!(
            "serving http://{addr}; upstream http://127.0.0.1:9/v1 (bare); upstream key: none; \
             client keys: none; TLS key: none"
        )
    );
    proxy.signal(Signal::SIGTERM);
    assert_eq!(proxy.wait().await.code(), Some(0));
}

/// Credentials present in the directory but unusable: each stops startup, naming the file.
#[tokio::test]
async fn a_credential_that_cannot_be_read_stops_startup_with_exit_code_1() {
    let dir = TempDir::new("secrets-bad-credential");
    let creds = dir.path("credentials");
    std::fs::create_dir(&creds).unwrap();
    let key = creds.join("upstream-api-key");
    let creds_arg = path_str(&creds);
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "http://127.0.0.1:9/v1",
    ];
    let env = [("CREDENTIALS_DIRECTORY", creds_arg.as_str())];
    let shown = key.display().to_string();

    // Empty.
    std::fs::write(&key, "").unwrap();
    let (code, stderr) = start_refused(&dir, &args, &env).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.ends_with(&format!("envelope-proxy: keys: {shown} holds no key\n")),
        "{stderr}"
    );

    // A directory.
    std::fs::remove_file(&key).unwrap();
    std::fs::create_dir(&key).unwrap();
    let (code, stderr) = start_refused(&dir, &args, &env).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.ends_with(&format!(
            "envelope-proxy: keys: {shown} is not a regular file\n"
        )),
        "{stderr}"
    );

    // Not a regular file (a device; a FIFO would also block the read).
    std::fs::remove_dir(&key).unwrap();
    std::os::unix::fs::symlink("/dev/null", &key).unwrap();
    let (code, stderr) = start_refused(&dir, &args, &env).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.ends_with(&format!(
            "envelope-proxy: keys: {shown} is not a regular file\n"
        )),
        "{stderr}"
    );

    // Unreadable: a symlink to nowhere.
    std::fs::remove_file(&key).unwrap();
    std::os::unix::fs::symlink(dir.path("missing"), &key).unwrap();
    let (code, stderr) = start_refused(&dir, &args, &env).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.ends_with(&format!(
            "envelope-proxy: keys: cannot read {shown}: No such file or directory (os error 2)\n"
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_flag_naming_an_unusable_file_stops_startup_with_exit_code_1() {
    let dir = TempDir::new("secrets-bad-flag");
    let not_a_file = path_str(&dir.0);
    let (code, stderr) = start_refused(
        &dir,
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:9/v1",
            "--upstream-api-key-file",
            &not_a_file,
        ],
        &[],
    )
    .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.ends_with(&format!(
            "envelope-proxy: keys: {not_a_file} is not a regular file\n"
        )),
        "{stderr}"
    );

    let empty = dir.path("empty-keys");
    std::fs::write(&empty, "# only a comment\n\n").unwrap();
    let empty = path_str(&empty);
    let (code, stderr) = start_refused(
        &dir,
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:9/v1",
            "--api-keys-file",
            &empty,
        ],
        &[],
    )
    .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.ends_with(&format!("envelope-proxy: keys: {empty} holds no key\n")),
        "{stderr}"
    );
}

#[tokio::test]
async fn half_a_tls_credential_pair_stops_startup() {
    let dir = TempDir::new("secrets-half-tls");
    let creds = dir.path("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("tls-cert"), "not checked\n").unwrap();
    let creds = path_str(&creds);
    let (code, stderr) = start_refused(
        &dir,
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:9/v1",
        ],
        &[("CREDENTIALS_DIRECTORY", &creds)],
    )
    .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.ends_with(&format!(
            "envelope-proxy: credential tls-cert is in {creds} but tls-key is not: pass both \
             (LoadCredential=) or neither\n"
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_credentials_directory_without_known_credentials_is_a_warning() {
    let dir = TempDir::new("secrets-unknown");
    let creds = dir.path("credentials");
    std::fs::create_dir(&creds).unwrap();
    // A typo in the LoadCredential= name: the proxy looks for upstream-api-key.
    std::fs::write(creds.join("upstream-key"), format!("{UPSTREAM_SECRET}\n")).unwrap();
    let creds = path_str(&creds);
    let (mut proxy, _notify, status) = start_ready(
        &dir,
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:9/v1",
        ],
        &[("CREDENTIALS_DIRECTORY", &creds)],
    )
    .await;
    assert!(
        status.ends_with("; upstream key: none; client keys: none; TLS key: none"),
        "{status}"
    );
    proxy.signal(Signal::SIGTERM);
    assert_eq!(proxy.wait().await.code(), Some(0));
    let log = proxy.stderr();
    let warning = log
        .lines()
        .find(|line| line.contains(" WARN "))
        .unwrap_or_else(|| panic!("a WARN line in:\n{log}"));
    assert!(
        warning.ends_with(&format!(
            "$CREDENTIALS_DIRECTORY ({creds}) holds none of the credentials envelope-proxy reads \
             (looked for upstream-api-key, api-keys, tls-cert, tls-key)"
        )),
        "{warning}"
    );
    assert!(!log.contains(UPSTREAM_SECRET));
}
