//! The operator's side of signed trust bundles (`ferrolink trust ...`): a
//! signing key, bundles signed with it, and their description. The format
//! and the checks clients make are in `ferrolink_proto::trust`; publishing
//! is `Store::publish_trust_bundle`, and connected clients fetch the newest
//! bundle with the built-in `ferrolink.trust.bundle`.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use ferrolink_proto::trust::{self, BundleError};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// What went wrong with a trust command, and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The key file exists already; a new key would strand devices.
    #[error(
        "{} exists; a new signing key would strand devices built with the old one (remove the file yourself if you mean it)",
        .0.display()
    )]
    KeyExists(PathBuf),
    /// A file could not be read or written.
    #[error("cannot use {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The key file does not hold a key.
    #[error("{} is not a ferrolink trust signing key (64 hex digits on one line)", .0.display())]
    BadKey(PathBuf),
    /// A root file has no certificate.
    #[error("{} holds no PEM CERTIFICATE", .0.display())]
    BadRoot(PathBuf),
    /// A fingerprint is not 64 hex digits.
    #[error("\"{0}\" is not a SHA-256 fingerprint (64 hex digits, colons allowed)")]
    BadFingerprint(String),
    /// The bundle could not be made or read.
    #[error(transparent)]
    Bundle(BundleError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrustError + '_ {
    move |source| TrustError::Io {
        path: path.to_owned(),
        source,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 32 bytes from 64 hex digits (colons and spaces ignored).
pub fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    ferrolink_proto::revocation::parse_fingerprint(text)
}

/// Creates a signing key in `path` (mode 0600, never overwriting) and
/// returns its public half.
pub fn keygen(path: &Path) -> Result<[u8; 32], TrustError> {
    if path.exists() {
        return Err(TrustError::KeyExists(path.to_owned()));
    }
    let seed: [u8; 32] = rand::random();
    let key = SigningKey::from_bytes(&seed);
    let text = format!(
        "# ferrolink trust signing key (Ed25519 seed). Keep it offline: whoever holds it decides what your devices trust.\n{}\n",
        hex(&seed)
    );
    crate::storage::files::write_private(path, text.as_bytes()).map_err(io(path))?;
    Ok(key.verifying_key().to_bytes())
}

/// Reads a key made by [`keygen`].
pub fn load_key(path: &Path) -> Result<SigningKey, TrustError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let seed = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .and_then(parse_hex32)
        .ok_or_else(|| TrustError::BadKey(path.to_owned()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Signs a bundle of the certificates in `root_files` (PEM) and the
/// `revoked` fingerprints (hex) with the key in `key_file`.
pub fn sign(
    key_file: &Path,
    sequence: u64,
    root_files: &[PathBuf],
    revoked: &[String],
) -> Result<Vec<u8>, TrustError> {
    let key = load_key(key_file)?;
    let mut roots = Vec::new();
    for file in root_files {
        let pem = std::fs::read(file).map_err(io(file))?;
        let before = roots.len();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|_| TrustError::BadRoot(file.clone()))?;
            roots.push(cert.as_ref().to_vec());
        }
        if roots.len() == before {
            return Err(TrustError::BadRoot(file.clone()));
        }
    }
    let revoked = revoked
        .iter()
        .map(|f| parse_hex32(f).ok_or_else(|| TrustError::BadFingerprint(f.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    let roots: Vec<&[u8]> = roots.iter().map(Vec::as_slice).collect();
    let issued = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    trust::sign(&key, sequence, issued, &roots, &revoked).map_err(TrustError::Bundle)
}

/// A description of a bundle whose signature was checked against the key
/// it names (or `signer`, when given).
pub fn describe(bytes: &[u8], signer: Option<[u8; 32]>) -> Result<String, TrustError> {
    let named: [u8; 32] = bytes
        .get(5..37)
        .and_then(|s| s.try_into().ok())
        .ok_or(TrustError::Bundle(BundleError::Malformed("too short")))?;
    let bundle = trust::verify(bytes, &signer.unwrap_or(named)).map_err(TrustError::Bundle)?;
    let mut out = format!(
        "trust bundle {} ({} bytes), signed by {} on {}\n",
        bundle.sequence(),
        bytes.len(),
        hex(&named),
        crate::state::format_date(bundle.issued() as i64),
    );
    for root in bundle.roots() {
        let subject = x509_parser::parse_x509_certificate(root)
            .map(|(_, c)| c.subject().to_string())
            .unwrap_or_else(|_| "(unparsable)".to_owned());
        out.push_str(&format!(
            "root: {subject} (SHA-256 {})\n",
            hex(&sha256(root))
        ));
    }
    for fp in bundle.revoked() {
        out.push_str(&format!("revoked: {}\n", hex(fp)));
    }
    Ok(out)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

/// The public key as devices are given it.
pub fn public_key_hex(key: &[u8; 32]) -> String {
    hex(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_made_once_and_signs_bundles_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        let public = keygen(&path).unwrap();
        assert!(matches!(keygen(&path), Err(TrustError::KeyExists(_))));
        let root = rcgen::generate_simple_self_signed(vec!["root".to_owned()]).unwrap();
        let pem = dir.path().join("root.pem");
        std::fs::write(&pem, root.cert.pem()).unwrap();
        let bundle = sign(&path, 4, &[pem], &["ab".repeat(32)]).unwrap();
        let b = trust::verify(&bundle, &public).unwrap();
        assert_eq!(b.sequence(), 4);
        assert!(b.is_revoked(&[0xab; 32]));
        let text = describe(&bundle, None).unwrap();
        assert!(text.starts_with("trust bundle 4"), "{text}");
        assert!(text.contains("revoked: abab"), "{text}");
        assert!(matches!(
            sign(&path, 5, &[], &["zz".to_owned()]),
            Err(TrustError::BadFingerprint(_))
        ));
    }
}
