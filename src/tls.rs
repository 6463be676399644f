//! TLS material and configurations (rustls, ring provider, TLS 1.2 and 1.3 only).
//!
//! - Inbound: [`server_config`] for `--tls-cert`/`--tls-key`, offering ALPN `h2` and
//!   `http/1.1`. The certificate comes from a [`CertFiles`] resolver, so SIGHUP swaps it for
//!   new handshakes while open connections keep theirs.
//! - Upstream: [`client_config`] trusts the operating system's roots, or only `--upstream-ca`
//!   when given (a private CA), and presents `--upstream-client-cert`/`-key` when given (mTLS,
//!   also reloaded on SIGHUP for new connections).
//!
//! There is deliberately no way to turn certificate verification off.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::ops::reload::Reloadable;

/// The one crypto provider: ring builds with only a C compiler.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its private key, read from two PEM files and re-read on reload.
pub(crate) struct CertFiles {
    what: &'static str,
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for CertFiles {
    // Never prints key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertFiles")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl CertFiles {
    /// Reads both files now; `what` names them in errors and logs ("TLS certificate").
    pub fn load(
        what: &'static str,
        cert: &Path,
        key: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<Arc<Self>, String> {
        let current = read_certified_key(cert, key, &provider)?;
        Ok(Arc::new(Self {
            what,
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            current: RwLock::new(Arc::new(current)),
        }))
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let guard = self
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(&guard)
    }
}

impl Reloadable for CertFiles {
    fn name(&self) -> &'static str {
        self.what
    }

    fn reload(&self) -> Result<(), String> {
        // Read and check everything first: a half-written file must not replace a good pair.
        let fresh = read_certified_key(&self.cert, &self.key, &self.provider)?;
        let mut guard = self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *guard = Arc::new(fresh);
        Ok(())
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for CertFiles {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let key = self.current();
        key.key.choose_scheme(sigschemes).is_some().then_some(key)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn read_certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let chain = read_certificates(cert)?;
    let private_key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{}: no usable PEM private key ({e})", key.display()))?;
    CertifiedKey::from_der(chain, private_key, provider).map_err(|e| {
        format!(
            "{} and {} do not make a usable pair: {e}",
            cert.display(),
            key.display()
        )
    })
}

/// Every certificate in a PEM file; at least one.
pub(crate) fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: cannot read PEM certificates ({e})", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate in the file",
            path.display()
        ));
    }
    Ok(certs)
}

/// The inbound TLS configuration: TLS 1.2+, ALPN h2 then http/1.1, the certificate from `files`.
pub(crate) fn server_config(
    files: Arc<CertFiles>,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(files);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What the upstream connection trusts and presents.
#[derive(Debug, Clone, Default)]
pub(crate) struct UpstreamTls {
    /// Trust only these CA certificates instead of the system roots.
    pub ca: Option<PathBuf>,
    /// Client certificate and key for mTLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// The upstream TLS configuration, and the client certificate to register for reload.
pub(crate) fn client_config(
    settings: &UpstreamTls,
    provider: Arc<CryptoProvider>,
) -> Result<(rustls::ClientConfig, Option<Arc<CertFiles>>), String> {
    let mut roots = rustls::RootCertStore::empty();
    match &settings.ca {
        Some(ca) => {
            for cert in read_certificates(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: not a usable CA certificate ({e})", ca.display()))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                // A single unparsable system certificate must not take the proxy down.
                let _ = roots.add(cert);
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    match &settings.client_cert {
        None => Ok((builder.with_no_client_auth(), None)),
        Some((cert, key)) => {
            let files = CertFiles::load("upstream client certificate", cert, key, provider)?;
            let config = builder.with_client_cert_resolver(files.clone());
            Ok((config, Some(files)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate and its key, as PEM.
    fn pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn serial(files: &CertFiles) -> Vec<u8> {
        files.current().cert[0].to_vec()
    }

    #[test]
    fn a_reload_swaps_a_good_pair_and_keeps_the_old_one_on_any_error() {
        let dir =
            std::env::temp_dir().join(format!("envelope-proxy-tls-ut-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let (first_cert, first_key) = pair();
        std::fs::write(&cert, &first_cert).unwrap();
        std::fs::write(&key, &first_key).unwrap();
        let files = CertFiles::load("TLS certificate", &cert, &key, provider()).unwrap();
        let first = serial(&files);

        let (second_cert, second_key) = pair();
        std::fs::write(&cert, &second_cert).unwrap();
        std::fs::write(&key, &second_key).unwrap();
        files.reload().unwrap();
        let second = serial(&files);
        assert_ne!(first, second);

        // A key that does not belong to the certificate.
        std::fs::write(&key, &first_key).unwrap();
        let error = files.reload().unwrap_err();
        assert!(error.contains("do not make a usable pair"), "{error}");
        // Not PEM at all.
        std::fs::write(&cert, "garbage").unwrap();
        let error = files.reload().unwrap_err();
        assert!(error.ends_with("no PEM certificate in the file"), "{error}");
        assert_eq!(serial(&files), second, "the last good pair stays in use");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
