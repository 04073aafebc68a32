//! `wss://` with pinned roots, a revocation list and a trusted clock.
//!
//! The server's certificate must chain to one of the pinned roots (by
//! default only Let's Encrypt's ISRG Root X1 and X2, as the official Pico W
//! firmware pins) and be valid for the URL's host name, at a time taken from
//! a [`TimeSource`] that refuses clocks reading earlier than this build. A
//! chain containing a certificate (or public key) on the revocation list is
//! refused even if otherwise valid. The TLS handshake completes — with all
//! of these checks — before the websocket opens, so the key is never sent to
//! a server that failed them.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferrolink_proto::trust::{self, BundleError};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest as _, Sha256};

/// Seconds since the Unix epoch before which no clock is believed: about
/// when ferrolink was built (shared with the device client).
pub const BUILD_FLOOR: u64 = ferrolink_proto::BUILD_FLOOR;

/// Where certificate checks get the time from.
pub trait TimeSource: Send + Sync + fmt::Debug {
    /// Seconds since the Unix epoch, or why the time cannot be trusted.
    fn now(&self) -> Result<u64, TimeError>;
}

/// The time cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimeError {
    /// The clock reads earlier than the floor: it was probably never set.
    #[error(transparent)]
    BeforeFloor(ferrolink_proto::BeforeFloor),
    /// No trusted time is available yet.
    #[error("no trusted time yet: {0}")]
    Untrusted(String),
}

fn check_floor(now: u64, floor: u64) -> Result<u64, TimeError> {
    ferrolink_proto::check_floor(now, floor).map_err(TimeError::BeforeFloor)
}

/// The system clock, trusted only when it reads at or after a floor
/// ([`BUILD_FLOOR`] by default). Right for full computers, whose clocks are
/// kept by the operating system.
#[derive(Debug, Clone)]
pub struct SystemClock {
    floor: u64,
}

impl Default for SystemClock {
    fn default() -> Self {
        Self { floor: BUILD_FLOOR }
    }
}

impl SystemClock {
    /// The system clock with another floor (seconds since the Unix epoch).
    pub fn with_floor(floor: u64) -> Self {
        Self { floor }
    }
}

impl TimeSource for SystemClock {
    fn now(&self) -> Result<u64, TimeError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        check_floor(now, self.floor)
    }
}

/// A fixed time, still held to the build floor: for devices that know the
/// time from elsewhere (an RTC set by trusted means), and for tests.
#[derive(Debug, Clone)]
pub struct FixedTime {
    now: u64,
    floor: u64,
}

impl FixedTime {
    /// `now` in seconds since the Unix epoch.
    pub fn new(now: u64) -> Self {
        Self {
            now,
            floor: BUILD_FLOOR,
        }
    }
}

impl TimeSource for FixedTime {
    fn now(&self) -> Result<u64, TimeError> {
        check_floor(self.now, self.floor)
    }
}

/// A problem with TLS settings given by the application.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// The PEM text held no usable certificate.
    #[error("no usable CERTIFICATE in the PEM text given as a root: {0}")]
    BadRoot(String),
    /// A fingerprint is not 64 hex digits.
    #[error("\"{0}\" is not a SHA-256 fingerprint (64 hex digits)")]
    BadFingerprint(String),
    /// A signer's public key is not 64 hex digits.
    #[error(
        "\"{0}\" is not a trust signing key (64 hex digits, as `ferrolink trust keygen` prints)"
    )]
    BadSigner(String),
}

/// Why a trust bundle offered by the server was not installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleOfferError {
    /// Refused: another signer, a bad signature, not newer, malformed.
    #[error("trust bundle ignored: {0}")]
    Refused(BundleError),
    /// Its roots are not usable certificates.
    #[error("trust bundle ignored: a root in it is not a usable certificate ({0})")]
    BadRoot(String),
    /// It could not be saved.
    #[error("cannot save the trust bundle to {}", path.display())]
    Save {
        /// The bundle file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A verified bundle in use: its roots replace the configured ones, its
/// fingerprints are refused too.
#[derive(Debug, Clone)]
struct Installed {
    sequence: u64,
    roots: Arc<RootCertStore>,
    revoked: HashSet<[u8; 32]>,
}

/// Where bundles are kept and who must have signed them; shared by every
/// clone of a [`TlsConfig`].
#[derive(Debug)]
struct BundleFile {
    path: PathBuf,
    signer: [u8; 32],
    installed: RwLock<Option<Installed>>,
}

impl BundleFile {
    fn installed(&self) -> Option<Installed> {
        self.installed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The roots and revocations of a verified bundle.
fn install(bundle: &trust::TrustBundle<'_>) -> Result<Installed, BundleOfferError> {
    let mut roots = RootCertStore::empty();
    for der in bundle.roots() {
        roots
            .add(CertificateDer::from(der.to_vec()))
            .map_err(|e| BundleOfferError::BadRoot(e.to_string()))?;
    }
    let revoked = bundle
        .revoked()
        .filter_map(|f| <[u8; 32]>::try_from(f).ok())
        .collect();
    Ok(Installed {
        sequence: bundle.sequence(),
        roots: Arc::new(roots),
        revoked,
    })
}

/// Which servers a client trusts. See the module docs.
#[derive(Clone)]
pub struct TlsConfig {
    roots: Arc<RootCertStore>,
    root_names: String,
    revoked: Arc<HashSet<[u8; 32]>>,
    time: Arc<dyn TimeSource>,
    bundle: Option<Arc<BundleFile>>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("roots", &self.root_names)
            .field("revoked", &self.revoked.len())
            .field("time", &self.time)
            .field("bundle", &self.trust_bundle_sequence())
            .finish()
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self::lets_encrypt()
    }
}

fn parse_fingerprint(hex: &str) -> Result<[u8; 32], TlsConfigError> {
    ferrolink_proto::revocation::parse_fingerprint(hex)
        .ok_or_else(|| TlsConfigError::BadFingerprint(hex.to_owned()))
}

fn shipped_revocations() -> HashSet<[u8; 32]> {
    ferrolink_proto::revocation::fingerprints(ferrolink_proto::revocation::SHIPPED).collect()
}

impl TlsConfig {
    /// Let's Encrypt's roots only (ISRG Root X1 and X2), the shipped
    /// revocation list, the system clock with the build floor.
    pub fn lets_encrypt() -> Self {
        let mut roots = RootCertStore::empty();
        roots.extend(
            webpki_roots::TLS_SERVER_ROOTS
                .iter()
                .filter(|ta| {
                    let subject = ta.subject.as_ref();
                    subject
                        .windows(12)
                        .any(|w| w == b"ISRG Root X1" || w == b"ISRG Root X2")
                })
                .cloned(),
        );
        Self {
            roots: Arc::new(roots),
            root_names: "ISRG Root X1, ISRG Root X2 (Let's Encrypt)".to_owned(),
            revoked: Arc::new(shipped_revocations()),
            time: Arc::new(SystemClock::default()),
            bundle: None,
        }
    }

    /// Only the roots in `pem` (for example the CA printed by
    /// `ferrolink serve --dev-tls`), instead of Let's Encrypt's.
    pub fn with_root_pem(pem: &[u8]) -> Result<Self, TlsConfigError> {
        let mut roots = RootCertStore::empty();
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| TlsConfigError::BadRoot(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| TlsConfigError::BadRoot(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(TlsConfigError::BadRoot(
                "the text has no CERTIFICATE block".to_owned(),
            ));
        }
        Ok(Self {
            roots: Arc::new(roots),
            root_names: format!("{added} root(s) given by the application"),
            ..Self::lets_encrypt()
        })
    }

    /// Also refuse chains containing a certificate, or a public key, with
    /// this SHA-256 fingerprint (hex, colons allowed).
    pub fn revoke(mut self, sha256_hex: &str) -> Result<Self, TlsConfigError> {
        let fp = parse_fingerprint(sha256_hex)?;
        Arc::make_mut(&mut self.revoked).insert(fp);
        Ok(self)
    }

    /// Keeps signed trust bundles in the file at `path`, taking only those
    /// signed by `signer` (the public key `ferrolink trust keygen` printed,
    /// hex) with a higher sequence than the one held. The bundle in the
    /// file, if it verifies, is used at once: its roots replace the ones
    /// configured, its fingerprints are refused too. After each connection
    /// the client asks the server for a newer bundle; when it installs
    /// one, it saves it (atomically) and reconnects under it. A file that
    /// does not verify is ignored, with a warning.
    pub fn trust_bundle(
        mut self,
        path: impl Into<PathBuf>,
        signer: &str,
    ) -> Result<Self, TlsConfigError> {
        let signer =
            parse_fingerprint(signer).map_err(|_| TlsConfigError::BadSigner(signer.to_owned()))?;
        let path = path.into();
        let installed = match std::fs::read(&path) {
            Ok(bytes) => match trust::verify(&bytes, &signer)
                .map_err(BundleOfferError::Refused)
                .and_then(|b| install(&b))
            {
                Ok(installed) => Some(installed),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "the stored trust bundle is not used");
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the stored trust bundle");
                None
            }
        };
        self.bundle = Some(Arc::new(BundleFile {
            path,
            signer,
            installed: RwLock::new(installed),
        }));
        Ok(self)
    }

    /// The sequence of the trust bundle in use, if any.
    pub fn trust_bundle_sequence(&self) -> Option<u64> {
        self.bundle.as_ref()?.installed().map(|i| i.sequence)
    }

    /// Whether trust bundles are kept (see [`TlsConfig::trust_bundle`]).
    pub(crate) fn keeps_bundles(&self) -> bool {
        self.bundle.is_some()
    }

    /// Takes `bytes` if it is a bundle by our signer newer than the one in
    /// use: saves it to the bundle file (write, then rename) and uses it
    /// for the next connection. Returns its sequence.
    pub(crate) fn offer_bundle(&self, bytes: &[u8]) -> Result<u64, BundleOfferError> {
        let Some(file) = &self.bundle else {
            return Err(BundleOfferError::Refused(BundleError::WrongSigner));
        };
        let current = file.installed().map(|i| i.sequence);
        let bundle =
            trust::accept(bytes, &file.signer, current).map_err(BundleOfferError::Refused)?;
        let installed = install(&bundle)?;
        let save = |source| BundleOfferError::Save {
            path: file.path.clone(),
            source,
        };
        let dir = match file.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(save)?;
        std::io::Write::write_all(&mut tmp, bytes).map_err(save)?;
        tmp.as_file().sync_all().map_err(save)?;
        tmp.persist(&file.path).map_err(|e| save(e.error))?;
        let sequence = installed.sequence;
        *file.installed.write().unwrap_or_else(|p| p.into_inner()) = Some(installed);
        Ok(sequence)
    }

    /// Where the time for certificate checks comes from.
    pub fn time_source(mut self, time: Arc<dyn TimeSource>) -> Self {
        self.time = time;
        self
    }

    pub(crate) fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let installed = self.bundle.as_ref().and_then(|b| b.installed());
        let (roots, revoked) = match installed {
            Some(i) => {
                let mut revoked = (*self.revoked).clone();
                revoked.extend(i.revoked);
                (i.roots, Arc::new(revoked))
            }
            None => (self.roots.clone(), self.revoked.clone()),
        };
        let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .expect("a verifier over a root store always builds");
        let verifier = Arc::new(PinnedVerifier {
            inner,
            revoked,
            time: self.time.clone(),
        });
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Arc::new(config)
    }

    pub(crate) fn root_names(&self) -> String {
        match self.bundle.as_ref().and_then(|b| b.installed()) {
            Some(i) => format!("{} root(s) from trust bundle {}", i.roots.len(), i.sequence),
            None => self.root_names.clone(),
        }
    }
}

/// Why the client refused a server certificate beyond what rustls says.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error(
        "certificate {position} of the server's chain is on the revocation list (SHA-256 {fingerprint})"
    )]
    Revoked {
        position: usize,
        fingerprint: String,
    },
    #[error(transparent)]
    Time(TimeError),
    #[error(
        "its handshake signature (CertificateVerify) does not verify with its certificate's key; refused as an impostor"
    )]
    HandshakeSignature,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn other(r: Refusal) -> rustls::Error {
    rustls::Error::Other(rustls::OtherError(Arc::new(r)))
}

/// rustls' standard verification, with our clock and revocation list.
#[derive(Debug)]
struct PinnedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    revoked: Arc<HashSet<[u8; 32]>>,
    time: Arc<dyn TimeSource>,
}

impl PinnedVerifier {
    fn check_revoked(
        &self,
        position: usize,
        cert: &CertificateDer<'_>,
    ) -> Result<(), rustls::Error> {
        let mut fingerprints = vec![<[u8; 32]>::from(Sha256::digest(cert.as_ref()))];
        if let Ok(parsed) = webpki::EndEntityCert::try_from(cert) {
            fingerprints.push(Sha256::digest(parsed.subject_public_key_info().as_ref()).into());
        }
        match fingerprints.iter().find(|f| self.revoked.contains(*f)) {
            Some(f) => Err(other(Refusal::Revoked {
                position,
                fingerprint: hex(f),
            })),
            None => Ok(()),
        }
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let secs = self.time.now().map_err(|e| other(Refusal::Time(e)))?;
        for (i, cert) in std::iter::once(end_entity).chain(intermediates).enumerate() {
            self.check_revoked(i, cert)?;
        }
        let now = UnixTime::since_unix_epoch(Duration::from_secs(secs));
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // rustls reports this as a certificate error; say which signature failed.
        self.inner
            .verify_tls13_signature(message, cert, dss)
            .map_err(|_| other(Refusal::HandshakeSignature))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Explains a failed TLS handshake: which check failed and what to do.
pub(crate) fn explain(e: &std::io::Error, host: &str, config: &TlsConfig) -> String {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return format!("TLS handshake with {host} failed: {e}");
    };
    match tls {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => format!(
                "refused {host}: its certificate does not chain to a pinned root (pinned: {}); if this is your own server, pin its CA",
                config.root_names()
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("refused {host}: its certificate is not valid for the name \"{host}\"")
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!(
                    "refused {host}: its certificate has expired (renew the server's certificate)"
                )
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => format!(
                "refused {host}: its certificate is not valid yet (check this device's clock and the server's certificate)"
            ),
            CertificateError::BadSignature => {
                format!("refused {host}: a signature in its certificate chain is invalid")
            }
            other => format!("refused {host}: invalid certificate ({other:?})"),
        },
        rustls::Error::Other(o) => format!("refused {host}: {}", o),
        other => format!("TLS handshake with {host} failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_pins_exactly_the_two_isrg_roots() {
        let c = TlsConfig::lets_encrypt();
        assert_eq!(c.roots.len(), 2);
    }

    #[test]
    fn a_clock_before_the_floor_is_refused() {
        let e = FixedTime::new(978_307_200).now().unwrap_err();
        assert!(matches!(e, TimeError::BeforeFloor(_)));
        assert!(e.to_string().contains("2001-01-01"), "{e}");
        assert!(SystemClock::default().now().is_ok());
        const { assert!(BUILD_FLOOR > 1_700_000_000) };
    }
}
