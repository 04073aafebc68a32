//! Signed trust bundles: the pinned roots and the revocation list, replaced
//! over the authenticated link without a firmware release.
//!
//! The operator holds an Ed25519 signing key whose public half is built
//! into the firmware (`ferrolink trust keygen`). A bundle carries a
//! sequence number that only grows (`ferrolink trust sign`); the server
//! hands the newest bundle to authenticated devices, and a client accepts
//! one only if it is signed by that key and newer than the one it holds
//! ([`accept`]), then keeps it (in flash, or a file) and never goes back.
//! A bundle's roots replace the built-in ones; its fingerprints are refused
//! in addition to the shipped list.
//!
//! Layout (all integers big-endian), parsed in place without a heap:
//!
//! ```text
//! "FLTB" | format u8 (1) | signer public key [32] | sequence u64 | issued u64 (Unix s)
//! roots u8 (1..=4)       | each: length u16 | DER certificate
//! revoked u16 (0..=1024) | each: SHA-256 [32] (of a certificate's DER or its SubjectPublicKeyInfo)
//! signature [64]         | Ed25519 by the signer over all the bytes before it
//! ```
//!
//! The signed bytes begin with the magic and the format, so a signature
//! over a bundle cannot be mistaken for one over anything else; the signing
//! key should serve no other purpose.

use ed25519_dalek::{Signature, VerifyingKey};

const MAGIC: &[u8; 4] = b"FLTB";
const FORMAT: u8 = 1;
/// Most roots in a bundle.
pub const MAX_ROOTS: usize = 4;
/// Longest root certificate (DER).
pub const MAX_ROOT_LEN: usize = 2048;
/// Most revoked fingerprints in a bundle.
pub const MAX_REVOKED: usize = 1024;
const HEADER_LEN: usize = 4 + 1 + 32 + 8 + 8;
/// Largest bundle.
pub const MAX_LEN: usize =
    HEADER_LEN + 1 + MAX_ROOTS * (2 + MAX_ROOT_LEN) + 2 + MAX_REVOKED * 32 + 64;

/// Why a bundle was not accepted. Nothing of a refused bundle is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// Not a well-formed bundle (which part, in the text).
    #[error("malformed trust bundle: {0}")]
    Malformed(&'static str),
    /// Signed by a key other than the one this client trusts.
    #[error("the trust bundle is signed by another key than the one built into this client")]
    WrongSigner,
    /// The signature does not verify: altered or forged.
    #[error("the trust bundle's signature does not verify (altered or forged)")]
    BadSignature,
    /// Not newer than the bundle in use: a replay or a rollback.
    #[error(
        "trust bundle {offered} is not newer than the one in use ({current}); ignored (a replayed or rolled-back bundle)"
    )]
    NotNewer {
        /// The sequence offered.
        offered: u64,
        /// The sequence in use.
        current: u64,
    },
}

/// A bundle whose signature was checked, borrowing its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustBundle<'a> {
    bytes: &'a [u8],
    sequence: u64,
    issued: u64,
    root_count: usize,
    roots: &'a [u8],
    revoked: &'a [u8],
}

fn be_u64(b: &[u8]) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(b);
    u64::from_be_bytes(v)
}

/// Checks that `bytes` is a bundle signed by `signer`, whatever its sequence.
pub fn verify<'a>(bytes: &'a [u8], signer: &[u8; 32]) -> Result<TrustBundle<'a>, BundleError> {
    let bad = BundleError::Malformed;
    if bytes.len() > MAX_LEN {
        return Err(bad("longer than the largest bundle"));
    }
    if bytes.len() < HEADER_LEN + 1 + 2 + 64 || &bytes[..4] != MAGIC {
        return Err(bad("not a ferrolink trust bundle"));
    }
    if bytes[4] != FORMAT {
        return Err(bad("an unknown format version (update the client)"));
    }
    if &bytes[5..37] != signer {
        return Err(BundleError::WrongSigner);
    }
    let (body, signature) = bytes.split_at(bytes.len() - 64);
    let key = VerifyingKey::from_bytes(signer).map_err(|_| BundleError::WrongSigner)?;
    let signature = Signature::from_slice(signature).map_err(|_| BundleError::BadSignature)?;
    key.verify_strict(body, &signature)
        .map_err(|_| BundleError::BadSignature)?;

    // The signature is good; the structure must still be.
    let sequence = be_u64(&body[37..45]);
    let issued = be_u64(&body[45..53]);
    let root_count = usize::from(body[HEADER_LEN]);
    if root_count == 0 || root_count > MAX_ROOTS {
        return Err(bad("it must hold 1 to 4 roots"));
    }
    let roots_start = HEADER_LEN + 1;
    let mut at = roots_start;
    for _ in 0..root_count {
        let len = body
            .get(at..at + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
            .ok_or(bad("a root is cut short"))?;
        if len == 0 || len > MAX_ROOT_LEN || at + 2 + len > body.len() {
            return Err(bad("a root is empty, too long or cut short"));
        }
        at += 2 + len;
    }
    let roots = &body[roots_start..at];
    let count = body
        .get(at..at + 2)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        .ok_or(bad("the revocation count is missing"))?;
    if count > MAX_REVOKED {
        return Err(bad("more than 1024 revoked fingerprints"));
    }
    let revoked = &body[at + 2..];
    if revoked.len() != count * 32 {
        return Err(bad("the revocation list does not match its count"));
    }
    Ok(TrustBundle {
        bytes,
        sequence,
        issued,
        root_count,
        roots,
        revoked,
    })
}

/// [`verify`], and newer than `current` (the sequence in use, if any): the
/// rule for taking a bundle offered over the link.
pub fn accept<'a>(
    bytes: &'a [u8],
    signer: &[u8; 32],
    current: Option<u64>,
) -> Result<TrustBundle<'a>, BundleError> {
    let bundle = verify(bytes, signer)?;
    match current {
        Some(current) if bundle.sequence <= current => Err(BundleError::NotNewer {
            offered: bundle.sequence,
            current,
        }),
        _ => Ok(bundle),
    }
}

/// The pinned roots of a bundle, DER.
#[derive(Debug, Clone)]
pub struct Roots<'a>(&'a [u8]);

impl<'a> Iterator for Roots<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let len = usize::from(u16::from_be_bytes([*self.0.first()?, *self.0.get(1)?]));
        let (root, rest) = self.0.get(2..)?.split_at(len);
        self.0 = rest;
        Some(root)
    }
}

impl<'a> TrustBundle<'a> {
    /// The bundle's sequence number.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// When the operator signed it (Unix seconds; informational).
    pub fn issued(&self) -> u64 {
        self.issued
    }

    /// The exact bytes, to store.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// How many roots it pins.
    pub fn root_count(&self) -> usize {
        self.root_count
    }

    /// The roots it pins (DER), replacing the built-in ones.
    pub fn roots(&self) -> Roots<'a> {
        Roots(self.roots)
    }

    /// The fingerprints it revokes, in addition to the shipped list.
    pub fn revoked(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.revoked.chunks_exact(32)
    }

    /// Whether `fingerprint` is among its revocations.
    pub fn is_revoked(&self, fingerprint: &[u8; 32]) -> bool {
        self.revoked().any(|f| f == fingerprint)
    }
}

/// Signs a bundle (the operator's side: `ferrolink trust sign`).
#[cfg(feature = "alloc")]
pub fn sign(
    key: &ed25519_dalek::SigningKey,
    sequence: u64,
    issued: u64,
    roots: &[&[u8]],
    revoked: &[[u8; 32]],
) -> Result<alloc::vec::Vec<u8>, BundleError> {
    use ed25519_dalek::Signer as _;
    let bad = BundleError::Malformed;
    if roots.is_empty() || roots.len() > MAX_ROOTS {
        return Err(bad("it must hold 1 to 4 roots"));
    }
    if revoked.len() > MAX_REVOKED {
        return Err(bad("more than 1024 revoked fingerprints"));
    }
    let mut out = alloc::vec::Vec::with_capacity(MAX_LEN);
    out.extend_from_slice(MAGIC);
    out.push(FORMAT);
    out.extend_from_slice(key.verifying_key().as_bytes());
    out.extend_from_slice(&sequence.to_be_bytes());
    out.extend_from_slice(&issued.to_be_bytes());
    out.push(roots.len() as u8);
    for root in roots {
        if root.is_empty() || root.len() > MAX_ROOT_LEN {
            return Err(bad("a root is empty or longer than 2048 bytes"));
        }
        out.extend_from_slice(&(root.len() as u16).to_be_bytes());
        out.extend_from_slice(root);
    }
    out.extend_from_slice(&(revoked.len() as u16).to_be_bytes());
    for fp in revoked {
        out.extend_from_slice(fp);
    }
    let signature = key.sign(&out);
    out.extend_from_slice(&signature.to_bytes());
    Ok(out)
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn bundle(seq: u64) -> alloc::vec::Vec<u8> {
        sign(
            &key(1),
            seq,
            1_800_000_000,
            &[b"root one", b"root two"],
            &[[7; 32]],
        )
        .unwrap()
    }

    #[test]
    fn a_signed_bundle_round_trips() {
        let bytes = bundle(3);
        let signer = key(1).verifying_key().to_bytes();
        let b = verify(&bytes, &signer).unwrap();
        assert_eq!(b.sequence(), 3);
        assert_eq!(b.issued(), 1_800_000_000);
        assert_eq!(
            b.roots().collect::<alloc::vec::Vec<_>>(),
            [&b"root one"[..], b"root two"]
        );
        assert_eq!(b.root_count(), 2);
        assert!(b.is_revoked(&[7; 32]));
        assert!(!b.is_revoked(&[8; 32]));
        assert_eq!(b.as_bytes(), &bytes[..]);
    }

    #[test]
    fn only_newer_bundles_from_the_built_in_key_are_accepted() {
        let signer = key(1).verifying_key().to_bytes();
        let other = key(2).verifying_key().to_bytes();
        let bytes = bundle(5);
        assert!(accept(&bytes, &signer, None).is_ok());
        assert!(accept(&bytes, &signer, Some(4)).is_ok());
        assert_eq!(
            accept(&bytes, &signer, Some(5)),
            Err(BundleError::NotNewer {
                offered: 5,
                current: 5
            })
        );
        assert_eq!(accept(&bytes, &other, None), Err(BundleError::WrongSigner));
        // Signed by another key that claims to be ours.
        let mut forged = sign(&key(2), 9, 0, &[b"evil root"], &[]).unwrap();
        forged[5..37].copy_from_slice(&signer);
        assert_eq!(
            accept(&forged, &signer, None),
            Err(BundleError::BadSignature)
        );
    }

    #[test]
    fn every_altered_byte_is_refused() {
        let signer = key(1).verifying_key().to_bytes();
        let bytes = bundle(1);
        for i in 0..bytes.len() {
            let mut altered = bytes.clone();
            altered[i] ^= 0x20;
            assert!(verify(&altered, &signer).is_err(), "byte {i}");
        }
        for cut in [0, 10, 60, bytes.len() - 1] {
            assert!(verify(&bytes[..cut], &signer).is_err(), "cut at {cut}");
        }
    }
}
