//! The listener's TLS: a server certificate that follows its files
//! (cert-manager style rotation: re-read when their content changes and on
//! SIGHUP; an invalid new pair is refused and the old one kept), and, with
//! `auth.clientCA`, client certificates verified by rustls'
//! `WebPkiClientVerifier`. Clients without a certificate are still
//! accepted at the TLS layer, so the other authentication methods work.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use super::listen::ListenError;
use super::watch::Reloadable;
use crate::config::TlsFiles;
use crate::oci::{Algorithm, Digest};

/// The certificate and key in force, and the content hash they were read at.
struct Loaded {
    key: Arc<CertifiedKey>,
    fingerprint: Digest,
}

/// A `ResolvesServerCert` over the files in `tls:`.
pub struct RotatingCert {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Loaded>,
}

impl std::fmt::Debug for RotatingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotatingCert")
            .field("cert", &self.files.cert)
            .field("key", &self.files.key)
            .finish_non_exhaustive()
    }
}

/// Both files' bytes, hashed together (a rotation writes both).
fn read_pair(files: &TlsFiles) -> Result<(Vec<u8>, Vec<u8>, Digest), String> {
    let cert = std::fs::read(&files.cert).map_err(|e| format!("certificate {}: {e}", files.cert.display()))?;
    let key = std::fs::read(&files.key).map_err(|e| format!("key {}: {e}", files.key.display()))?;
    let mut both = Vec::with_capacity(cert.len() + key.len() + 1);
    both.extend_from_slice(&cert);
    both.push(0);
    both.extend_from_slice(&key);
    let fingerprint = Digest::of(Algorithm::Sha256, &both);
    Ok((cert, key, fingerprint))
}

fn certified_key(files: &TlsFiles, cert: &[u8], key: &[u8], provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate {}: {e}", files.cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "certificate {}: no certificate in the file",
            files.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("key {}: {e}", files.key.display()))?;
    // `from_der` checks that the key belongs to the certificate.
    CertifiedKey::from_der(chain, key, provider).map_err(|e| format!("{}: {e}", files.cert.display()))
}

impl RotatingCert {
    fn new(files: &TlsFiles, provider: Arc<CryptoProvider>) -> Result<RotatingCert, String> {
        let (cert, key, fingerprint) = read_pair(files)?;
        let key = Arc::new(certified_key(files, &cert, &key, &provider)?);
        Ok(RotatingCert {
            files: files.clone(),
            provider,
            current: RwLock::new(Loaded { key, fingerprint }),
        })
    }

    fn fingerprint(&self) -> Option<Digest> {
        self.current.read().ok().map(|c| c.fingerprint.clone())
    }
}

impl ResolvesServerCert for RotatingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.key.clone())
    }
}

impl Reloadable for RotatingCert {
    fn what(&self) -> &'static str {
        "TLS certificate"
    }

    fn reload(&self, force: bool) -> Result<bool, String> {
        let (cert, key, fingerprint) = read_pair(&self.files)?;
        if !force && self.fingerprint().as_ref() == Some(&fingerprint) {
            return Ok(false);
        }
        let key = Arc::new(certified_key(&self.files, &cert, &key, &self.provider)?);
        let mut slot = self
            .current
            .write()
            .map_err(|_| "certificate lock poisoned".to_owned())?;
        *slot = Loaded { key, fingerprint };
        Ok(true)
    }
}

/// The acceptor (ALPN h2 + http/1.1) and its rotating certificate.
pub(super) fn acceptor(
    files: &TlsFiles,
    client_ca: Option<&Path>,
) -> Result<(TlsAcceptor, Arc<RotatingCert>), ListenError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cert = Arc::new(RotatingCert::new(files, provider.clone()).map_err(ListenError::Tls)?);
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ListenError::Tls(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => builder.with_client_cert_verifier(client_verifier(path, provider)?),
    };
    let mut config = builder.with_cert_resolver(cert.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), cert))
}

/// Client certificates chaining to the bundle are verified; clients
/// without one are accepted (they authenticate otherwise, or not at all).
fn client_verifier(
    path: &Path,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, ListenError> {
    let tls = |m: String| ListenError::Tls(format!("clientCA {}: {m}", path.display()));
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_file_iter(path).map_err(|e| tls(e.to_string()))? {
        roots
            .add(der.map_err(|e| tls(e.to_string()))?)
            .map_err(|e| tls(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(tls("no CA certificate in the file".to_owned()));
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls(e.to_string()))
}
