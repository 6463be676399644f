//! Where each secret comes from: a flag, a systemd credential (`LoadCredential=`), or nowhere.
//!
//! systemd copies each credential into a private directory only the service can read and
//! names it in `$CREDENTIALS_DIRECTORY`. Secrets are read from there, never from environment
//! variables (which `systemctl show` and `/proc/PID/environ` expose).
//!
//! A credential counts as present when *anything* by its name is in the directory: a file the
//! service cannot read, a dangling symlink or a directory then fails the load with a clear
//! error instead of being skipped (skipping it silently sent upstream requests without a key).
//! [`Sources`] names the source of every secret for the ready line and systemd's `STATUS=`;
//! it never holds key material.

use std::fmt;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// The client keys file (`--api-keys-file`).
pub(crate) const CLIENT_KEYS_CREDENTIAL: &str = "api-keys";
/// The upstream key file (`--upstream-api-key-file`).
pub(crate) const UPSTREAM_KEY_CREDENTIAL: &str = "upstream-api-key";
pub(crate) const TLS_CERT_CREDENTIAL: &str = "tls-cert";
pub(crate) const TLS_KEY_CREDENTIAL: &str = "tls-key";

/// Every credential name the proxy reads, in the order they are reported.
pub(crate) const KNOWN: [&str; 4] = [
    UPSTREAM_KEY_CREDENTIAL,
    CLIENT_KEYS_CREDENTIAL,
    TLS_CERT_CREDENTIAL,
    TLS_KEY_CREDENTIAL,
];

/// `$CREDENTIALS_DIRECTORY`, when set and not empty.
pub fn directory() -> Option<PathBuf> {
    std::env::var_os("CREDENTIALS_DIRECTORY")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
}

/// `$CREDENTIALS_DIRECTORY/<name>` when the variable is set and something by that name is
/// there (or cannot be looked for): its load then reports what is wrong with it.
pub fn find(name: &str) -> Option<PathBuf> {
    let path = directory()?.join(name);
    match path.symlink_metadata() {
        Err(error) if error.kind() == ErrorKind::NotFound => None,
        _ => Some(path),
    }
}

/// The file to use: the flag's, else the credential `name` if one was passed to the service.
pub(crate) fn flag_or_credential(flag: Option<&Path>, name: &str) -> Option<PathBuf> {
    match flag {
        Some(path) => Some(path.to_path_buf()),
        None => find(name),
    }
}

/// Where one secret comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flag(&'static str),
    Credential(&'static str),
    None,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(flag) => write!(f, "flag {flag}"),
            Source::Credential(name) => write!(f, "credential {name}"),
            Source::None => f.write_str("none"),
        }
    }
}

/// The source of every secret, resolved the way the server loads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sources {
    pub upstream_key: Source,
    pub client_keys: Source,
    pub tls_key: Source,
}

/// A credential configuration the proxy refuses to start with.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "credential {present} is in {dir} but {missing} is not: pass both (LoadCredential=) or neither"
    )]
    HalfTlsPair {
        present: &'static str,
        missing: &'static str,
        dir: String,
    },
}

/// Which secrets' flags were given (`Config::secret_sources` fills it in).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FlagsGiven {
    pub upstream_key: bool,
    pub client_keys: bool,
    pub tls_key: bool,
}

impl Sources {
    /// Resolves each secret: its flag first, else its credential, else none.
    pub(crate) fn resolve(flags: FlagsGiven) -> Result<Self, SourceError> {
        let pick = |flag: bool, flag_name, credential| {
            if flag {
                Source::Flag(flag_name)
            } else if find(credential).is_some() {
                Source::Credential(credential)
            } else {
                Source::None
            }
        };
        let upstream_key = pick(
            flags.upstream_key,
            "--upstream-api-key-file",
            UPSTREAM_KEY_CREDENTIAL,
        );
        let client_keys = pick(flags.client_keys, "--api-keys-file", CLIENT_KEYS_CREDENTIAL);
        // clap requires --tls-cert and --tls-key together; the credentials must pair up too,
        // or a half-configured HTTPS listener would silently serve plain HTTP.
        let tls_key = if flags.tls_key {
            Source::Flag("--tls-key")
        } else {
            match (find(TLS_CERT_CREDENTIAL), find(TLS_KEY_CREDENTIAL)) {
                (Some(_), Some(_)) => Source::Credential(TLS_KEY_CREDENTIAL),
                (None, None) => Source::None,
                (cert, _) => {
                    let (present, missing) = if cert.is_some() {
                        (TLS_CERT_CREDENTIAL, TLS_KEY_CREDENTIAL)
                    } else {
                        (TLS_KEY_CREDENTIAL, TLS_CERT_CREDENTIAL)
                    };
                    return Err(SourceError::HalfTlsPair {
                        present,
                        missing,
                        dir: directory().unwrap_or_default().display().to_string(),
                    });
                }
            }
        };
        Ok(Self {
            upstream_key,
            client_keys,
            tls_key,
        })
    }
}

impl fmt::Display for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "upstream key: {}; client keys: {}; TLS key: {}",
            self.upstream_key, self.client_keys, self.tls_key
        )
    }
}

/// The WARN line for a `$CREDENTIALS_DIRECTORY` that holds none of the credentials the proxy
/// reads (a typo in `LoadCredential=` names, or a unit meant for another service).
pub fn none_found_warning() -> Option<String> {
    let dir = directory()?;
    if KNOWN.iter().any(|name| find(name).is_some()) {
        return None;
    }
    Some(format!(
        "$CREDENTIALS_DIRECTORY ({}) holds none of the credentials envelope-proxy reads (looked for {})",
        dir.display(),
        KNOWN.join(", ")
    ))
}
