//! Test certificates: CAs, intermediates and server leaves, valid or
//! broken on purpose (wrong name, expired, not yet valid, self-signed).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData as _,
};

/// A certificate authority (root or intermediate).
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
    /// The CA certificate, DER.
    pub der: Vec<u8>,
    /// SHA-256 of the CA's public key, hex.
    pub spki_sha256: String,
    /// What a server sends after its leaf: this CA and its ancestors,
    /// roots excluded (PEM, DER).
    chain: Vec<(String, Vec<u8>)>,
}

/// A server certificate with its key.
pub struct Leaf {
    /// Leaf, then intermediates (PEM), as a server sends them.
    pub chain_pem: String,
    /// The same chain, DER.
    pub chain_der: Vec<Vec<u8>>,
    /// The private key, PEM.
    pub key_pem: String,
    /// The private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
    /// SHA-256 of the leaf certificate's DER, hex.
    pub cert_sha256: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2050, 1, 1);
    p
}

impl Ca {
    /// A new root CA.
    pub fn root(name: &str) -> Self {
        Self::root_with_key(name, KeyPair::generate().expect("key"))
    }

    /// A new root CA with an ECDSA P-384 key (as Let's Encrypt's ISRG Root X2).
    pub fn root_p384(name: &str) -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
        Self::root_with_key(name, key)
    }

    fn root_with_key(name: &str, key: KeyPair) -> Self {
        let params = ca_params(name);
        let cert = params.self_signed(&key).expect("self-signed CA");
        Self {
            spki_sha256: sha256_hex(&key.subject_public_key_info()),
            pem: cert.pem(),
            der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
            chain: Vec::new(),
        }
    }

    /// An intermediate CA signed by this one.
    pub fn intermediate(&self, name: &str) -> Self {
        self.intermediate_with_key(name, KeyPair::generate().expect("key"))
    }

    /// An intermediate CA with an ECDSA P-384 key (as Let's Encrypt's E5–E9).
    pub fn intermediate_p384(&self, name: &str) -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
        self.intermediate_with_key(name, key)
    }

    fn intermediate_with_key(&self, name: &str, key: KeyPair) -> Self {
        let params = ca_params(name);
        let cert = params.signed_by(&key, &self.issuer).expect("intermediate");
        let mut chain = vec![(cert.pem(), cert.der().to_vec())];
        chain.extend(self.chain.iter().cloned());
        Self {
            spki_sha256: sha256_hex(&key.subject_public_key_info()),
            pem: cert.pem(),
            der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
            chain,
        }
    }

    /// A server certificate for `names`, valid from `not_before` to
    /// `not_after` (seconds relative to now; negative is the past).
    pub fn leaf_valid(&self, names: &[&str], not_before: i64, not_after: i64) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let params = leaf_params(names, not_before, not_after);
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        let mut chain_pem = cert.pem();
        let mut chain_der = vec![cert.der().to_vec()];
        for (pem, der) in &self.chain {
            chain_pem.push_str(pem);
            chain_der.push(der.clone());
        }
        Leaf {
            chain_pem,
            chain_der,
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
            cert_sha256: sha256_hex(cert.der()),
        }
    }

    /// A server certificate for `names`, valid for a year from an hour ago.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_valid(names, -3600, 365 * 86_400)
    }
}

fn leaf_params(names: &[&str], not_before: i64, not_after: i64) -> CertificateParams {
    let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("names");
    p.distinguished_name
        .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = time::OffsetDateTime::now_utc();
    let at = |secs: i64| {
        if secs >= 0 {
            now + Duration::from_secs(secs as u64)
        } else {
            now - Duration::from_secs(secs.unsigned_abs())
        }
    };
    p.not_before = at(not_before);
    p.not_after = at(not_after);
    p
}

/// A self-signed server certificate (no CA at all).
pub fn self_signed(names: &[&str]) -> Leaf {
    let key = KeyPair::generate().expect("key");
    let cert = leaf_params(names, -3600, 86_400)
        .self_signed(&key)
        .expect("self-signed");
    Leaf {
        chain_pem: cert.pem(),
        chain_der: vec![cert.der().to_vec()],
        key_pem: key.serialize_pem(),
        key_der: key.serialize_der(),
        cert_sha256: sha256_hex(cert.der()),
    }
}

impl Leaf {
    /// Writes `cert.pem` and `key.pem` into `dir`, returning their paths.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, &self.chain_pem).expect("write cert");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }
}
