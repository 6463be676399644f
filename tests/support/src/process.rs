//! The real `envelope-proxy` binary as a child process, and a test `NOTIFY_SOCKET`.
//!
//! [`Notify`] is a Unix datagram socket in a temporary directory that the test reads, as
//! systemd would. [`ProxyProcess`] runs the binary with its stderr in a file (printed when a
//! test fails), signals it with `kill(2)` (nix), and kills it if the test ends early.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::net::UnixDatagram;

use crate::harness::WAIT;

/// The binary to measure: `$ENVELOPE_PROXY_BIN` (e.g. target/release/envelope-proxy), else
/// `built` (the test target's [`crate::proxy_bin!`]).
pub fn measured_bin(built: &str) -> String {
    std::env::var("ENVELOPE_PROXY_BIN").unwrap_or_else(|_| built.to_owned())
}

/// A fresh, empty directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "envelope-proxy-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test NOTIFY_SOCKET: every datagram the proxy sends, in order.
pub struct Notify {
    socket: UnixDatagram,
    pub path: PathBuf,
}

impl Notify {
    pub fn bind(dir: &TempDir) -> Self {
        let path = dir.path("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        Self { socket, path }
    }

    /// The next datagram, within the wait bound.
    pub async fn next(&self) -> String {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.socket.recv(&mut buf))
            .await
            .expect("a notification within the wait bound")
            .expect("recv on the notify socket");
        String::from_utf8(buf[..n].to_vec()).expect("UTF-8 notification")
    }

    /// Reads datagrams until one contains `line` (a whole line, e.g. `READY=1`); returns it.
    pub async fn until(&self, line: &str) -> String {
        loop {
            let message = self.next().await;
            if message.lines().any(|l| l == line) {
                return message;
            }
        }
    }
}

/// The value of `KEY=` in a notification.
pub fn field<'a>(message: &'a str, key: &str) -> Option<&'a str> {
    message
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// The first `http(s)://IP:PORT` address in a `STATUS=serving …` line.
pub fn served_tcp_addr(status: &str) -> std::net::SocketAddr {
    let start = status.find("://").expect("a TCP listener in STATUS") + 3;
    let rest = &status[start..];
    let end = rest.find([',', ';']).unwrap_or(rest.len());
    rest[..end].parse().expect("IP:PORT in STATUS")
}

pub struct ProxyProcess {
    child: Child,
    stderr_path: PathBuf,
    exited: Option<ExitStatus>,
}

/// Runs `program args…` with a notify socket and waits for `READY=1`: the process, and the
/// address of its first TCP listener (from the `STATUS=` line).
pub async fn spawn_ready(
    dir: &TempDir,
    program: &str,
    args: &[&str],
) -> (ProxyProcess, std::net::SocketAddr) {
    let notify = Notify::bind(dir);
    let socket = notify.path.to_str().expect("UTF-8 path").to_owned();
    let proxy = ProxyProcess::spawn(dir, program, args, &[("NOTIFY_SOCKET", &socket)]);
    let ready = notify.until("READY=1").await;
    let addr = served_tcp_addr(field(&ready, "STATUS").expect("STATUS"));
    (proxy, addr)
}

impl ProxyProcess {
    /// Runs `program args…` (the proxy binary, or a wrapper that execs it) with `envs`,
    /// NOTIFY_SOCKET unset unless given.
    pub fn spawn(dir: &TempDir, program: &str, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let stderr_path = dir.path("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut command = Command::new(program);
        command
            .args(args)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr));
        for (key, value) in envs {
            command.env(key, value);
        }
        let child = command.spawn().expect("spawn the proxy");
        Self {
            child,
            stderr_path,
            exited: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: Signal) {
        let pid = i32::try_from(self.child.id()).expect("pid fits i32");
        kill(Pid::from_raw(pid), signal).expect("signal the proxy");
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits for the process to exit, within the wait bound.
    pub async fn wait(&mut self) -> ExitStatus {
        if let Some(status) = self.exited {
            return status;
        }
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exited = Some(status);
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the proxy did not exit within the wait bound; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if self.exited.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            if std::thread::panicking() {
                eprintln!("--- proxy stderr ---\n{}", self.stderr());
            }
        }
    }
}

/// Polls until a TCP connection to `addr` is refused, within the wait bound.
pub async fn until_refused(addr: std::net::SocketAddr) {
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => return,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "{addr} still accepts connections"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A loopback port that was free a moment ago (for tools that cannot bind port 0).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

pub fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}
