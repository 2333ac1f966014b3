//! The listener's TLS: a server certificate that follows its files
//! (cert-manager style rotation: re-read when their content changes and on
//! SIGHUP; an invalid new pair is refused and the old one kept), and, with
//! `auth.clientCA`, client certificates verified by rustls'
//! `WebPkiClientVerifier`, whose bundle follows its file the same way.
//! Clients without a certificate are still accepted at the TLS layer, so
//! the other authentication methods work.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::UnixTime;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
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

/// What the listener's TLS reloads: the server certificate, and the
/// client CA bundle when `auth.clientCA` is set.
pub(super) struct Rotating {
    pub cert: Arc<RotatingCert>,
    pub client_ca: Option<Arc<RotatingClientCa>>,
}

/// The acceptor (ALPN h2 + http/1.1) and what rotates under it.
pub(super) fn acceptor(files: &TlsFiles, client_ca: Option<&Path>) -> Result<(TlsAcceptor, Rotating), ListenError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cert = Arc::new(RotatingCert::new(files, provider.clone()).map_err(ListenError::Tls)?);
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ListenError::Tls(e.to_string()))?;
    let client_ca = client_ca
        .map(|path| RotatingClientCa::new(path, provider).map(Arc::new))
        .transpose()
        .map_err(ListenError::Tls)?;
    let builder = match &client_ca {
        None => builder.with_no_client_auth(),
        Some(verifier) => builder.with_client_cert_verifier(verifier.clone()),
    };
    let mut config = builder.with_cert_resolver(cert.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), Rotating { cert, client_ca }))
}

/// Client certificates chaining to the bundle are verified; clients
/// without one are accepted (they authenticate otherwise, or not at all).
fn client_verifier(
    path: &Path,
    bundle: &[u8],
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let err = |m: String| format!("clientCA {}: {m}", path.display());
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(bundle) {
        roots
            .add(der.map_err(|e| err(e.to_string()))?)
            .map_err(|e| err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(err("no CA certificate in the file".to_owned()));
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| err(e.to_string()))
}

/// The client CA bundle in force, and the content hash it was read at.
struct LoadedCa {
    verifier: Arc<dyn ClientCertVerifier>,
    fingerprint: Digest,
}

/// A `ClientCertVerifier` over the `auth.clientCA` file that follows it
/// like [`RotatingCert`] follows the server's: a CA added or removed in the
/// bundle applies to the next handshake, with no restart. It sends no CA
/// names in its certificate request (the names would have to outlive a
/// reload); clients send the one certificate they are configured with.
pub struct RotatingClientCa {
    path: std::path::PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<LoadedCa>,
}

impl std::fmt::Debug for RotatingClientCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotatingClientCa")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RotatingClientCa {
    fn new(path: &Path, provider: Arc<CryptoProvider>) -> Result<RotatingClientCa, String> {
        let (loaded, _) = Self::read(path, &provider, None)?;
        let loaded = loaded.ok_or_else(|| format!("clientCA {}: not read", path.display()))?;
        Ok(RotatingClientCa {
            path: path.to_owned(),
            provider,
            current: RwLock::new(loaded),
        })
    }

    /// The bundle as a verifier, unless its content hash is `unchanged`.
    fn read(
        path: &Path,
        provider: &Arc<CryptoProvider>,
        unchanged: Option<&Digest>,
    ) -> Result<(Option<LoadedCa>, Digest), String> {
        let bundle = std::fs::read(path).map_err(|e| format!("clientCA {}: {e}", path.display()))?;
        let fingerprint = Digest::of(Algorithm::Sha256, &bundle);
        if unchanged == Some(&fingerprint) {
            return Ok((None, fingerprint));
        }
        let verifier = client_verifier(path, &bundle, provider.clone())?;
        Ok((
            Some(LoadedCa {
                verifier,
                fingerprint: fingerprint.clone(),
            }),
            fingerprint,
        ))
    }

    fn verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        self.current
            .read()
            .map(|c| c.verifier.clone())
            .map_err(|_| rustls::Error::General("client CA lock poisoned".into()))
    }
}

impl Reloadable for RotatingClientCa {
    fn what(&self) -> &'static str {
        "client CA bundle"
    }

    fn reload(&self, force: bool) -> Result<bool, String> {
        let known = if force {
            None
        } else {
            self.current.read().ok().map(|c| c.fingerprint.clone())
        };
        let (loaded, _) = Self::read(&self.path, &self.provider, known.as_ref())?;
        let Some(loaded) = loaded else {
            return Ok(false);
        };
        let mut slot = self.current.write().map_err(|_| "client CA lock poisoned".to_owned())?;
        *slot = loaded;
        Ok(true)
    }
}

impl ClientCertVerifier for RotatingClientCa {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verifier()?.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
