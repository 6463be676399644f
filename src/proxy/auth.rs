//! Keys: who may use the proxy, and the key the proxy itself presents upstream.
//!
//! - [`ClientKeys`] (`--api-keys-file`, or the systemd credential `api-keys`): one key per line,
//!   `#` comments and blank lines ignored. Keys are kept only as SHA-256 digests and compared in
//!   constant time against every stored key, so neither timing nor length tells a client how
//!   close it came.
//! - [`UpstreamKey`] (`--upstream-api-key-file`, or the credential `upstream-api-key`): replaces
//!   the client's `Authorization`, so client keys never reach the upstream.
//!
//! A proxy key never leaves the proxy: with client keys and no upstream key, the client's
//! `Authorization` (its proxy key) is removed before the request goes upstream
//! ([`upstream_authorization`]). Without client keys, the client's own `Authorization` is the
//! upstream's business and passes through.
//!
//! Both re-read their files on [`reload`](ClientKeys::reload) (SIGHUP); a reload that fails keeps
//! the old keys and says why. Key material never appears in logs, errors or `Debug` output.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use http::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use ring::digest::{digest, SHA256};
use subtle::ConstantTimeEq;

/// Why keys could not be loaded. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no key")]
    Empty { path: PathBuf },
    #[error("{path} is not a regular file")]
    NotRegularFile { path: PathBuf },
    #[error("{path}: a key contains characters not allowed in an HTTP header")]
    InvalidCharacters { path: PathBuf },
}

fn read(path: &Path) -> Result<String, KeyError> {
    let error = |source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    };
    // A directory, FIFO or device is a misconfiguration (and a FIFO would block startup).
    if !std::fs::metadata(path).map_err(error)?.is_file() {
        return Err(KeyError::NotRegularFile {
            path: path.to_path_buf(),
        });
    }
    std::fs::read_to_string(path).map_err(error)
}

// === impl ClientKeys ===

type Digest = [u8; 32];

/// The keys clients must present as `Authorization: Bearer <key>`.
pub(crate) struct ClientKeys {
    path: PathBuf,
    digests: RwLock<Arc<Vec<Digest>>>,
}

impl std::fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKeys")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ClientKeys {
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let digests = parse_client_keys(path, &read(path)?)?;
        Ok(Self {
            path: path.to_path_buf(),
            digests: RwLock::new(Arc::new(digests)),
        })
    }

    /// Re-reads the file; on failure the keys in force stay as they were.
    pub fn reload(&self) -> Result<usize, KeyError> {
        let digests = parse_client_keys(&self.path, &read(&self.path)?)?;
        let count = digests.len();
        if let Ok(mut current) = self.digests.write() {
            *current = Arc::new(digests);
        }
        Ok(count)
    }

    /// True when the request carries `Authorization: Bearer <one of the keys>`.
    pub(crate) fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(token) = bearer_token(headers) else {
            return false;
        };
        let presented: Digest = sha256(token.as_bytes());
        let digests = match self.digests.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        };
        // Compare against every key, without stopping at a match, in constant time.
        let mut matched = subtle::Choice::from(0);
        for digest in digests.iter() {
            matched |= digest.ct_eq(&presented);
        }
        bool::from(matched)
    }
}

fn parse_client_keys(path: &Path, text: &str) -> Result<Vec<Digest>, KeyError> {
    let digests: Vec<Digest> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|key| sha256(key.as_bytes()))
        .collect();
    if digests.is_empty() {
        return Err(KeyError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(digests)
}

fn sha256(bytes: &[u8]) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive, per RFC 9110); none
/// when several `Authorization` fields were sent (only one could be checked).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let value = value.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

// === impl UpstreamKey ===

/// The key the proxy sends upstream in place of the client's.
pub(crate) struct UpstreamKey {
    path: PathBuf,
    header: RwLock<HeaderValue>,
}

impl std::fmt::Debug for UpstreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamKey")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl UpstreamKey {
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let header = parse_upstream_key(path, &read(path)?)?;
        Ok(Self {
            path: path.to_path_buf(),
            header: RwLock::new(header),
        })
    }

    pub fn reload(&self) -> Result<(), KeyError> {
        let header = parse_upstream_key(&self.path, &read(&self.path)?)?;
        if let Ok(mut current) = self.header.write() {
            *current = header;
        }
        Ok(())
    }

    /// Replaces whatever `Authorization` the client sent with the upstream key.
    pub fn apply(&self, headers: &mut HeaderMap) {
        let value = match self.header.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        headers.insert(AUTHORIZATION, value);
    }
}

/// Sets the `Authorization` the upstream gets: the upstream key when there is one; none when
/// client keys are in use (what the client sent was its proxy key); else the client's own,
/// marked sensitive like the key. Over HTTP/2, h2 keeps `Authorization` values out of its own
/// HPACK table either way; a sensitive one goes as a never-indexed literal, which also tells
/// an HTTP/2 intermediary behind the upstream URL never to index the token (RFC 7541 §7.1.3),
/// where the requests of many clients share its connections. `sent`: whether the client sent
/// an `Authorization` ([`crate::headers::Present`]).
pub(crate) fn upstream_authorization(
    headers: &mut HeaderMap,
    sent: bool,
    upstream_key: Option<&UpstreamKey>,
    client_keys_in_use: bool,
) {
    match upstream_key {
        Some(key) => key.apply(headers),
        // Removed whatever the census said: a proxy key must never go upstream.
        None if client_keys_in_use => {
            headers.remove(AUTHORIZATION);
        }
        // The client sent none: nothing to mark.
        None if !sent => {}
        None => {
            if let Some(value) = headers.get_mut(AUTHORIZATION) {
                value.set_sensitive(true);
            }
        }
    }
}

fn parse_upstream_key(path: &Path, text: &str) -> Result<HeaderValue, KeyError> {
    let key = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'))
        .ok_or_else(|| KeyError::Empty {
            path: path.to_path_buf(),
        })?;
    let mut value = HeaderValue::try_from(format!("Bearer {key}")).map_err(|_| {
        KeyError::InvalidCharacters {
            path: path.to_path_buf(),
        }
    })?;
    // Kept out of HPACK tables and printed as "Sensitive" by Debug.
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempFile(PathBuf);
    impl TempFile {
        fn new(name: &str, text: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("envelope-proxy-{}-{name}", std::process::id()));
            std::fs::write(&path, text).unwrap();
            TempFile(path)
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn auth(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn client_keys_ignore_comments_and_blank_lines() {
        let file = TempFile::new("keys", "# team a\nsk-one\n\n  sk-two  \n#sk-commented\n");
        let keys = ClientKeys::load(&file.0).unwrap();
        assert!(keys.allows(&auth("Bearer sk-one")));
        assert!(keys.allows(&auth("bearer sk-two")));
        assert!(!keys.allows(&auth("Bearer sk-commented")));
        assert!(!keys.allows(&auth("Bearer sk-on")));
        assert!(!keys.allows(&auth("Basic sk-one")));
        assert!(!keys.allows(&HeaderMap::new()));
        let mut two = auth("Bearer sk-one");
        two.append(AUTHORIZATION, HeaderValue::from_static("Bearer sk-one"));
        assert!(
            !keys.allows(&two),
            "two Authorization fields are never allowed"
        );
        assert!(!format!("{keys:?}").contains("sk-one"));
    }

    #[test]
    fn a_failed_reload_keeps_the_old_keys() {
        let file = TempFile::new("reload", "sk-old\n");
        let keys = ClientKeys::load(&file.0).unwrap();
        std::fs::write(&file.0, "# nothing\n").unwrap();
        let error = keys.reload().unwrap_err();
        assert!(matches!(error, KeyError::Empty { .. }));
        assert!(keys.allows(&auth("Bearer sk-old")));
        std::fs::write(&file.0, "sk-new\n").unwrap();
        assert_eq!(keys.reload().unwrap(), 1);
        assert!(keys.allows(&auth("Bearer sk-new")));
        assert!(!keys.allows(&auth("Bearer sk-old")));
    }

    #[test]
    fn upstream_key_replaces_the_clients_and_stays_sensitive() {
        let file = TempFile::new("upstream", "sk-upstream-secret\n");
        let key = UpstreamKey::load(&file.0).unwrap();
        let mut headers = auth("Bearer sk-client");
        key.apply(&mut headers);
        assert_eq!(headers[AUTHORIZATION], "Bearer sk-upstream-secret");
        assert!(headers[AUTHORIZATION].is_sensitive());
        assert!(!format!("{headers:?}").contains("secret"));
        assert!(!format!("{key:?}").contains("secret"));
    }

    #[test]
    fn a_proxy_key_never_goes_upstream() {
        let mut headers = auth("Bearer sk-proxy");
        upstream_authorization(&mut headers, true, None, true);
        assert_eq!(headers.get(AUTHORIZATION), None);
        let mut headers = auth("Bearer sk-for-the-upstream");
        upstream_authorization(&mut headers, true, None, false);
        assert_eq!(headers[AUTHORIZATION], "Bearer sk-for-the-upstream");
        assert!(headers[AUTHORIZATION].is_sensitive());
    }

    #[test]
    fn errors_name_the_file_never_the_key() {
        let file = TempFile::new("bad", "sk-bad\u{7f}key\n");
        let error = UpstreamKey::load(&file.0).unwrap_err().to_string();
        assert!(error.contains("characters not allowed"), "{error}");
        assert!(!error.contains("sk-bad"));
    }
}
