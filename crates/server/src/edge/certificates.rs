//! Server certificates: from files (reloaded when they change) or a
//! generated development CA.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest as _, Sha256};

/// Where the server's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSetting {
    /// PEM files: the certificate chain (leaf first) and its private key.
    /// Both are re-read when either file changes.
    Files {
        /// The certificate chain.
        cert: PathBuf,
        /// The private key.
        key: PathBuf,
    },
    /// A development CA generated once in `<data>/tls/`, and a server
    /// certificate it signs for `localhost`, `127.0.0.1`, `::1` and
    /// [`crate::ServerConfig::dev_tls_names`].
    Dev,
    /// Certificates issued and renewed automatically over ACME.
    Acme(crate::edge::acme::AcmeSetting),
}

/// A certificate problem, with the file and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("cannot use {}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The key does not fit the certificate or is of an unsupported kind.
    #[error("the private key in {} cannot be used: {reason}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Generating the development certificates failed.
    #[error("cannot generate the development certificates: {0}")]
    Generate(String),
}

/// The development CA, as printed at start so a device can pin it.
#[derive(Debug, Clone)]
pub struct DevCa {
    /// PEM file of the CA certificate.
    pub cert_pem: PathBuf,
    /// DER file of the CA certificate (what the Pico W firmware takes).
    pub cert_der: PathBuf,
    /// SHA-256 of the CA's SubjectPublicKeyInfo, hex.
    pub spki_sha256: String,
}

/// Loads PEM certificate chain and key files into a signing key.
pub(crate) fn load_files(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::File {
            path: cert.to_owned(),
            reason: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::File {
            path: cert.to_owned(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::File {
            path: cert.to_owned(),
            reason: "no CERTIFICATE block found; expected a PEM chain, leaf first".to_owned(),
        });
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
        path: key.to_owned(),
        reason: format!("{e}; expected a PEM private key (PKCS#8, PKCS#1 or SEC1)"),
    })?;
    certified(chain, der, key)
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    key_path: &Path,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key {
            path: key_path.to_owned(),
            reason: e.to_string(),
        })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| TlsError::Key {
        path: key_path.to_owned(),
        reason: format!("{e}: it does not belong to the certificate"),
    })?;
    Ok(Arc::new(ck))
}

/// Serves the current certificate; swapped in place when files change.
#[derive(Debug)]
pub(crate) struct Reloading {
    current: RwLock<Arc<CertifiedKey>>,
}

impl Reloading {
    pub(crate) fn new(key: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(key),
        })
    }

    fn set(&self, key: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = key;
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Re-reads the files when their modification time changes; a bad new pair
/// is logged and the previous certificate kept.
pub(crate) async fn watch_files(
    resolver: Arc<Reloading>,
    cert: PathBuf,
    key: PathBuf,
    every: Duration,
) {
    let mut seen = (modified(&cert), modified(&key));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let now = (modified(&cert), modified(&key));
        if now == seen {
            continue;
        }
        seen = now;
        let (c, k) = (cert.clone(), key.clone());
        match tokio::task::spawn_blocking(move || load_files(&c, &k)).await {
            Ok(Ok(new)) => {
                resolver.set(new);
                tracing::info!(cert = %cert.display(), "reloaded the TLS certificate");
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "new TLS certificate rejected; keeping the previous one")
            }
            Err(_) => return,
        }
    }
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo, hex.
/// The DNS names a certificate source serves (for the `Host` check):
/// the SANs of a certificate file, the ACME domain, the development
/// names. Unreadable files give none (loading them reports the error).
pub(crate) fn dns_names(setting: &TlsSetting, dev_names: &[String]) -> Vec<String> {
    match setting {
        TlsSetting::Files { cert, .. } => {
            let Ok(pem) = std::fs::read(cert) else {
                return Vec::new();
            };
            let Some(Ok(der)) = CertificateDer::pem_slice_iter(&pem).next() else {
                return Vec::new();
            };
            let Ok((_, parsed)) = x509_parser::parse_x509_certificate(&der) else {
                return Vec::new();
            };
            parsed
                .subject_alternative_name()
                .ok()
                .flatten()
                .map(|ext| {
                    ext.value
                        .general_names
                        .iter()
                        .filter_map(|n| match n {
                            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default()
        }
        TlsSetting::Acme(a) => vec![a.domain.clone()],
        TlsSetting::Dev => dev_names.to_vec(),
    }
}

pub(crate) fn spki_sha256(spki_der: &[u8]) -> String {
    Sha256::digest(spki_der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Creates (once) the development CA and a server certificate it signs, in
/// `<data>/tls/`. The CA is kept across restarts so pinned devices keep
/// working; the server certificate is re-issued when missing.
pub(crate) fn dev_tls(
    data_dir: &Path,
    extra_names: &[String],
) -> Result<(Arc<CertifiedKey>, DevCa), TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    let dir = data_dir.join("tls");
    let err = |e: &dyn std::fmt::Display| TlsError::Generate(e.to_string());
    std::fs::create_dir_all(&dir).map_err(|e| err(&e))?;
    let ca_key_path = dir.join("dev-ca.key");
    let ca_pem_path = dir.join("dev-ca.pem");
    let ca_der_path = dir.join("dev-ca.der");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(|e| err(&e))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ferrolink development CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    ca_params.not_after = rcgen::date_time_ymd(2044, 1, 1);
    let ca_key = match std::fs::read_to_string(&ca_key_path) {
        Ok(pem) => KeyPair::from_pem(&pem).map_err(|e| err(&e))?,
        Err(_) => {
            let key = KeyPair::generate().map_err(|e| err(&e))?;
            crate::storage::files::write_private(&ca_key_path, key.serialize_pem().as_bytes())
                .map_err(|e| err(&e))?;
            key
        }
    };
    // Self-signing the same parameters with the same key gives the same
    // subject and key, so a pinned CA keeps verifying after a restart.
    let ca_cert = ca_params.self_signed(&ca_key).map_err(|e| err(&e))?;
    if !ca_pem_path.exists() {
        std::fs::write(&ca_pem_path, ca_cert.pem()).map_err(|e| err(&e))?;
        std::fs::write(&ca_der_path, ca_cert.der()).map_err(|e| err(&e))?;
    }
    let ca_spki = rcgen::PublicKeyData::subject_public_key_info(&ca_key);
    let issuer = Issuer::new(ca_params, ca_key);
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).map_err(|e| err(&e))?;
    params.subject_alt_names.push(SanType::IpAddress(
        "127.0.0.1".parse().expect("valid address"),
    ));
    params
        .subject_alt_names
        .push(SanType::IpAddress("::1".parse().expect("valid address")));
    for name in extra_names {
        // A device on the LAN reaches the server by its address or a local
        // name; the certificate must carry exactly that.
        let bad = || {
            TlsError::Generate(format!(
                "\"{name}\" is neither a host name nor an IP address"
            ))
        };
        params.subject_alt_names.push(match name.parse() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) if is_host_name(name) => {
                SanType::DnsName(name.as_str().try_into().map_err(|_| bad())?)
            }
            Err(_) => return Err(bad()),
        });
    }
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - Duration::from_secs(3600);
    params.not_after = now + Duration::from_secs(397 * 86_400);
    let key = KeyPair::generate().map_err(|e| err(&e))?;
    let cert = params.signed_by(&key, &issuer).map_err(|e| err(&e))?;
    let ca_der: CertificateDer<'static> = std::fs::read(&ca_der_path).map_err(|e| err(&e))?.into();
    let chain = vec![cert.der().clone(), ca_der.clone()];
    let key_der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| err(&e))?;
    let ck = certified(chain, key_der, &dir.join("server.key"))?;
    Ok((
        ck,
        DevCa {
            cert_pem: ca_pem_path,
            cert_der: ca_der_path,
            spki_sha256: spki_sha256(&ca_spki),
        },
    ))
}

/// Letters, digits and inner hyphens in dot-separated labels of 1-63
/// characters, 253 at most in all.
fn is_host_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sans(ck: &CertifiedKey) -> Vec<String> {
        let (_, cert) = x509_parser::parse_x509_certificate(&ck.cert[0]).unwrap();
        let ext = cert.subject_alternative_name().unwrap().unwrap();
        ext.value
            .general_names
            .iter()
            .map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
                x509_parser::extensions::GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn the_dev_certificate_names_localhost_and_the_extra_names() {
        let dir = tempfile::tempdir().unwrap();
        let (ck, ca) = dev_tls(
            dir.path(),
            &["pico-server.lan".to_owned(), "192.168.1.20".to_owned()],
        )
        .unwrap();
        let names = sans(&ck);
        assert!(names.contains(&"localhost".to_owned()), "{names:?}");
        assert!(names.contains(&"pico-server.lan".to_owned()), "{names:?}");
        assert!(
            names.contains(&"ip:[192, 168, 1, 20]".to_owned()),
            "{names:?}"
        );
        // The CA stays the same across restarts with other names.
        let (_, again) = dev_tls(dir.path(), &[]).unwrap();
        assert_eq!(ca.spki_sha256, again.spki_sha256);
        let err = dev_tls(dir.path(), &["not a name".to_owned()]).unwrap_err();
        assert!(
            err.to_string()
                .contains("neither a host name nor an IP address"),
            "{err}"
        );
    }
}
