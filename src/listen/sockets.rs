//! Listening sockets: TCP and Unix, bound by the proxy or inherited from systemd.
//!
//! - [`ListenAddr`] is what `--listen` / `--admin-listen` accept: `IP:PORT`, `[IPv6]:PORT` or
//!   `unix:/path`.
//! - [`Listener::bind`] binds one; a Unix socket gets `--unix-socket-mode` and its file is
//!   removed again when the listener is dropped (a stale file left by a crash is replaced,
//!   a live one is refused).
//! - [`take_inherited`] takes the sockets systemd passed (`LISTEN_FDS`/`LISTEN_PID`, socket
//!   activation). It goes through the `listenfd` crate, which checks that each descriptor is
//!   a listening stream socket of the right family before owning it, so this crate needs no
//!   `unsafe`. It must run before any thread starts: it unsets the two variables.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// One address to listen on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl ListenAddr {
    /// `IP:PORT`, `[IPv6]:PORT` or `unix:/absolute/path`.
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        if let Some(path) = value.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(format!(
                    "`{value}`: a Unix socket path must be absolute (unix:/run/envelope-proxy/proxy.sock)"
                ));
            }
            return Ok(ListenAddr::Unix(path));
        }
        value.parse().map(ListenAddr::Tcp).map_err(|_| {
            format!(
                "`{value}` is not IP:PORT, [IPv6]:PORT or unix:/path (host names are not resolved)"
            )
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A socket systemd passed us, still in its std form (no runtime is needed to hold it).
#[derive(Debug)]
pub enum Inherited {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// Takes every socket passed by socket activation, in order; empty when there are none.
///
/// A descriptor that is neither a TCP nor a Unix stream socket is an error: serving fewer
/// sockets than the unit declares would fail silently.
pub fn take_inherited() -> io::Result<Vec<Inherited>> {
    let mut fds = listenfd::ListenFd::from_env();
    let mut sockets = Vec::with_capacity(fds.len());
    for index in 0..fds.len() {
        // Ask for TCP first; an error means "not TCP" and leaves the descriptor in place.
        if let Ok(Some(tcp)) = fds.take_tcp_listener(index) {
            sockets.push(Inherited::Tcp(tcp));
            continue;
        }
        match fds.take_unix_listener(index) {
            Ok(Some(unix)) => sockets.push(Inherited::Unix(unix)),
            Ok(None) => {}
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "inherited descriptor {} (LISTEN_FDS) is not a TCP or Unix stream socket",
                        index + 3
                    ),
                ))
            }
        }
    }
    Ok(sockets)
}

/// A listening socket.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix {
        listener: UnixListener,
        /// The socket file we created and remove on drop; `None` when inherited.
        owned_path: Option<PathBuf>,
    },
}

/// An accepted connection.
pub(crate) enum Stream {
    Tcp(TcpStream, SocketAddr),
    Unix(UnixStream),
}

impl Stream {
    /// Moves the socket to the reactor of the runtime this is called on. A connection accepted
    /// on one runtime and served on another would otherwise have each of its readiness events
    /// dispatched by the accepting thread and forwarded to the serving one (an eventfd write
    /// and a wake-up per event).
    pub(crate) fn into_current_runtime(self) -> io::Result<Self> {
        Ok(match self {
            Stream::Tcp(tcp, remote) => Stream::Tcp(TcpStream::from_std(tcp.into_std()?)?, remote),
            Stream::Unix(unix) => Stream::Unix(UnixStream::from_std(unix.into_std()?)?),
        })
    }
}

impl Listener {
    /// Binds `addr`; a Unix socket file gets `unix_mode` permissions.
    pub async fn bind(addr: &ListenAddr, unix_mode: u32) -> io::Result<Self> {
        match addr {
            ListenAddr::Tcp(addr) => Ok(Listener::Tcp(TcpListener::bind(addr).await?)),
            ListenAddr::Unix(path) => {
                remove_stale_socket(path)?;
                let listener = UnixListener::bind(path)?;
                let owned = Listener::Unix {
                    listener,
                    owned_path: Some(path.clone()),
                };
                // bind() created the file under the umask (never wider); now set what was asked.
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(unix_mode))?;
                Ok(owned)
            }
        }
    }

    /// Registers an inherited socket with the runtime.
    pub(crate) fn from_inherited(socket: Inherited) -> io::Result<Self> {
        match socket {
            Inherited::Tcp(tcp) => {
                tcp.set_nonblocking(true)?;
                Ok(Listener::Tcp(TcpListener::from_std(tcp)?))
            }
            Inherited::Unix(unix) => {
                unix.set_nonblocking(true)?;
                Ok(Listener::Unix {
                    listener: UnixListener::from_std(unix)?,
                    owned_path: None,
                })
            }
        }
    }

    pub async fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(listener) => {
                let (stream, remote) = listener.accept().await?;
                // Streamed tokens are small writes: send them at once.
                let _ = stream.set_nodelay(true);
                Ok(Stream::Tcp(stream, remote))
            }
            Listener::Unix { listener, .. } => Ok(Stream::Unix(listener.accept().await?.0)),
        }
    }

    /// The bound address, as `--listen` would spell it.
    pub fn local_addr(&self) -> io::Result<ListenAddr> {
        match self {
            Listener::Tcp(listener) => listener.local_addr().map(ListenAddr::Tcp),
            Listener::Unix { listener, .. } => {
                let addr = listener.local_addr()?;
                let path = addr
                    .as_pathname()
                    .map_or_else(|| PathBuf::from("(unnamed)"), std::path::Path::to_path_buf);
                Ok(ListenAddr::Unix(path))
            }
        }
    }

    pub(crate) fn is_tcp(&self) -> bool {
        matches!(self, Listener::Tcp(_))
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix {
            owned_path: Some(path),
            ..
        } = self
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A socket file left by a process that died is replaced; one that still answers is not.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    if !metadata.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another process is listening on {}", path.display()),
        )),
        Err(_) => std::fs::remove_file(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse() {
        assert_eq!(
            ListenAddr::parse("127.0.0.1:8080").unwrap(),
            ListenAddr::Tcp("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            ListenAddr::parse("[::1]:443").unwrap(),
            ListenAddr::Tcp("[::1]:443".parse().unwrap())
        );
        assert_eq!(
            ListenAddr::parse("unix:/run/envelope-proxy/proxy.sock").unwrap(),
            ListenAddr::Unix("/run/envelope-proxy/proxy.sock".into())
        );
        assert_eq!(
            ListenAddr::parse("unix:/run/x.sock").unwrap().to_string(),
            "unix:/run/x.sock"
        );
        for bad in ["localhost:8080", "8080", "unix:relative.sock", ""] {
            assert!(ListenAddr::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn unix_sockets_get_their_mode_replace_stale_files_and_are_removed() {
        let dir = std::env::temp_dir().join(format!("envelope-proxy-ut-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("proxy.sock");
        let addr = ListenAddr::Unix(path.clone());

        let first = Listener::bind(&addr, 0o660).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        // A live socket is not taken over.
        let err = Listener::bind(&addr, 0o660).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        drop(first);
        assert!(
            !path.exists(),
            "the socket file is removed with the listener"
        );

        // A stale socket file (its listener gone without cleanup) is replaced.
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale);
        assert!(path.exists());
        let second = Listener::bind(&addr, 0o600).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(second);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
