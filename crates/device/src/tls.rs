//! TLS for the device: embedded-tls (TLS 1.3, heap-free) carries the
//! bytes; the server's certificate is checked here, by our verifier, not
//! by embedded-tls' own.
//!
//! The checks, in order, each a refusal before the websocket opens (so
//! long before the key is sent):
//!
//! 1. the time is trusted ([`TrustedTime`]: SNTP agreement, build floor);
//! 2. no certificate in the chain, nor its public key, is on the
//!    revocation list (the list every client ships,
//!    `ferrolink_proto::revocation`, plus the application's entries and
//!    those of a trust bundle);
//! 3. the chain leads to one of the pinned roots, with validity periods,
//!    CA constraints and the server-auth usage checked (rustls-webpki path
//!    building, no heap, with pure-Rust ECDSA P-256/P-384 from RustCrypto);
//! 4. the certificate is valid for the host name (or IP address) dialled;
//! 5. the server's `CertificateVerify` signature over the handshake is
//!    made by the key of that certificate;
//! 6. these came in TLS 1.3's order — `Certificate`, then
//!    `CertificateVerify`, then `Finished` — and none was skipped.
//!
//! The last check is ours because embedded-tls 0.19 does not make it: its
//! client accepts the server's `Finished` without having seen a
//! `Certificate` or a `CertificateVerify`, so a man in the middle who does
//! the key exchange itself could otherwise finish the handshake with no
//! certificate, or with the genuine server's public chain and no proof of
//! its key. [`connect`] returns a [`TlsStream`] only with a `ServerProof`,
//! which exists only after a verified chain and then a verified signature.
//!
//! P-384 needs the `p384` feature (default). RSA signatures are not supported (no heap-free RSA in RustCrypto), so
//! chains signed with RSA, such as Let's Encrypt's ISRG Root X1 chains, are
//! refused; pin an ECDSA root (ISRG Root X2, or the server's `--dev-tls` CA).
//! See `docs/device.md` for why embedded-tls' own verifier is not used.

use core::cell::Cell;
use core::time::Duration;

use embedded_io_async::{Read, Write};
use embedded_tls::{
    Aes128GcmSha256, CertificateEntryRef, CertificateRef, CertificateVerifyRef, CryptoProvider,
    SignatureScheme, TlsConfig, TlsConnection, TlsContext, TlsError, TlsVerifier,
};
use ferrolink_proto::Instant;
use p256::ecdsa::signature::Verifier as _;
use pki_types::{
    AlgorithmIdentifier, CertificateDer, InvalidSignature, ServerName,
    SignatureVerificationAlgorithm, UnixTime, alg_id,
};
use rand_core::CryptoRngCore;
use sha2::{Digest as _, Sha256};

use crate::protocol::ShortText;
use crate::session::{ReadGuard, Security, Transport};
use crate::time::{TimeError, TrustedTime};
use crate::trust::TrustBundle;

/// Most certificates accepted in a server's chain.
const MAX_CHAIN: usize = 6;
/// Most pinned roots.
pub const MAX_ROOTS: usize = 4;

/// Which servers the device trusts.
#[derive(Debug, Clone, Copy)]
pub struct TrustConfig<'a> {
    /// DER certificates of the pinned roots (at most [`MAX_ROOTS`]), built
    /// into the firmware.
    pub roots: &'a [&'a [u8]],
    /// SHA-256 fingerprints (of a certificate's DER or its
    /// SubjectPublicKeyInfo) refused in addition to the shipped list.
    pub revoked: &'a [[u8; 32]],
    /// A verified trust bundle (see [`crate::trust`]): when present, its
    /// roots replace `roots` and its fingerprints are refused too.
    pub bundle: Option<TrustBundle<'a>>,
}

impl<'a> TrustConfig<'a> {
    /// Trust exactly `roots` (DER), with the shipped revocation list.
    pub const fn pinned(roots: &'a [&'a [u8]]) -> Self {
        Self {
            roots,
            revoked: &[],
            bundle: None,
        }
    }

    /// Also apply `bundle` (verified with `ferrolink_proto::trust::verify`
    /// against the firmware's signing key).
    pub const fn with_bundle(mut self, bundle: TrustBundle<'a>) -> Self {
        self.bundle = Some(bundle);
        self
    }

    fn is_revoked(&self, fingerprint: &[u8; 32]) -> bool {
        is_revoked(fingerprint, self.revoked)
            || self.bundle.is_some_and(|b| b.is_revoked(fingerprint))
    }
}

/// Why the server's certificate was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The chain does not lead to a pinned root.
    #[error(
        "the server's certificate does not chain to a pinned root; if this is your own server, pin its CA"
    )]
    UnknownIssuer,
    /// A certificate of the chain has expired.
    #[error("the server's certificate has expired (renew it)")]
    Expired,
    /// A certificate of the chain is not valid yet.
    #[error(
        "the server's certificate is not valid yet (check the device's time and the server's certificate)"
    )]
    NotValidYet,
    /// Not valid for the host name dialled.
    #[error("the server's certificate is not valid for the host name dialled")]
    WrongName,
    /// On the revocation list.
    #[error("certificate {position} of the server's chain is on the revocation list")]
    Revoked {
        /// 0 is the server's own certificate.
        position: usize,
    },
    /// A certificate's signature in the chain does not verify.
    #[error("a signature in the server's certificate chain is invalid")]
    BadSignature,
    /// The handshake signature (`CertificateVerify`) does not verify with
    /// the leaf certificate's key: whoever answered does not hold it.
    #[error(
        "the server's handshake signature (CertificateVerify) does not verify with its certificate's key; refused as an impostor"
    )]
    BadHandshakeSignature,
    /// An algorithm this device cannot verify (RSA, or an unusual curve).
    #[error(
        "the server's certificate uses a signature algorithm this device cannot verify (RSA?); use an ECDSA P-256/P-384 chain"
    )]
    UnsupportedAlgorithm,
    /// A pinned root is not a usable certificate.
    #[error("a pinned root is not a usable DER certificate")]
    BadRoot,
    /// More certificates than the device accepts, or none.
    #[error("the server sent no certificate or a chain longer than {MAX_CHAIN}")]
    ChainLength,
    /// Anything else wrong with the certificate.
    #[error("the server's certificate is malformed or not for TLS server use")]
    Invalid,
    /// The handshake finished without a `Certificate`: nobody proved who
    /// they are (a man in the middle doing the key exchange itself).
    #[error(
        "the server finished the handshake without sending a certificate; refused as an impostor (TLS 1.3 requires Certificate, then CertificateVerify, then Finished)"
    )]
    NoCertificate,
    /// A chain came, but the handshake finished without a
    /// `CertificateVerify`: anyone can copy a server's public chain; only
    /// the signature proves the key.
    #[error(
        "the server sent a certificate but finished the handshake without proving it holds the certificate's key (no CertificateVerify before Finished); refused as an impostor"
    )]
    NoProofOfKey,
    /// Handshake messages in the wrong order (which ones, in the text).
    #[error(
        "the server's handshake came out of order ({0}); refused (TLS 1.3 requires Certificate, then CertificateVerify, then Finished)"
    )]
    OutOfOrder(&'static str),
}

/// Why a TLS connection was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConnectError {
    /// The time is not trusted; nothing was sent to the server.
    #[error("not connecting: {0}")]
    Time(TimeError),
    /// The server's certificate was refused.
    #[error("refused {host}: {reason}")]
    Certificate {
        /// The host dialled (cut to fit).
        host: ShortText,
        /// Which check failed.
        reason: CertError,
    },
    /// The handshake failed otherwise (transport, protocol, unsupported
    /// parameters); embedded-tls' error, formatted.
    #[error("TLS handshake failed: {0}")]
    Handshake(ShortText),
}

fn fingerprint(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Whether `fp` is on the shipped list (`ferrolink_proto::revocation`,
/// parsed in place, no heap) or in `extra`.
pub fn is_revoked(fp: &[u8; 32], extra: &[[u8; 32]]) -> bool {
    extra.contains(fp) || ferrolink_proto::revocation::is_shipped(fp)
}

/// One DER TLV at the start of a slice: tag, whole TLV, contents, rest.
type Tlv<'d> = (u8, &'d [u8], &'d [u8], &'d [u8]);

/// The DER TLV at the start of `d`.
fn tlv(d: &[u8]) -> Option<Tlv<'_>> {
    let tag = *d.first()?;
    let first = *d.get(1)?;
    let (len, head) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 3 {
            return None;
        }
        let mut len = 0usize;
        for &b in d.get(2..2 + n)? {
            len = (len << 8) | usize::from(b);
        }
        (len, 2 + n)
    };
    let end = head.checked_add(len)?;
    Some((tag, d.get(..end)?, d.get(head..end)?, d.get(end..)?))
}

/// The SubjectPublicKeyInfo (whole TLV) of a DER certificate.
pub fn spki(cert: &[u8]) -> Option<&[u8]> {
    let (_, _, cert, _) = tlv(cert)?;
    let (_, _, tbs, _) = tlv(cert)?;
    let mut rest = tbs;
    // [0] version is optional.
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.3;
    }
    // serial, signature algorithm, issuer, validity, subject
    for _ in 0..5 {
        rest = tlv(rest)?.3;
    }
    let (tag, whole, _, _) = tlv(rest)?;
    (tag == 0x30).then_some(whole)
}

const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
#[cfg(feature = "p384")]
const P384_SPKI_PREFIX: [u8; 23] = [
    0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b,
    0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
];

/// ECDSA P-256 with SHA-256, for webpki, in pure Rust.
#[derive(Debug)]
struct EcdsaP256Sha256;

impl SignatureVerificationAlgorithm for EcdsaP256Sha256 {
    fn verify_signature(&self, key: &[u8], msg: &[u8], sig: &[u8]) -> Result<(), InvalidSignature> {
        let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(key).map_err(|_| InvalidSignature)?;
        let sig = p256::ecdsa::DerSignature::try_from(sig).map_err(|_| InvalidSignature)?;
        key.verify(msg, &sig).map_err(|_| InvalidSignature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ECDSA_P256
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ECDSA_SHA256
    }
}

/// ECDSA P-384 with SHA-384, for webpki, in pure Rust.
#[cfg(feature = "p384")]
#[derive(Debug)]
struct EcdsaP384Sha384;

#[cfg(feature = "p384")]
impl SignatureVerificationAlgorithm for EcdsaP384Sha384 {
    fn verify_signature(&self, key: &[u8], msg: &[u8], sig: &[u8]) -> Result<(), InvalidSignature> {
        let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(key).map_err(|_| InvalidSignature)?;
        let sig = p384::ecdsa::DerSignature::try_from(sig).map_err(|_| InvalidSignature)?;
        key.verify(msg, &sig).map_err(|_| InvalidSignature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ECDSA_P384
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ECDSA_SHA384
    }
}

#[cfg(feature = "p384")]
static ALGORITHMS: &[&dyn SignatureVerificationAlgorithm] = &[&EcdsaP256Sha256, &EcdsaP384Sha384];
#[cfg(not(feature = "p384"))]
static ALGORITHMS: &[&dyn SignatureVerificationAlgorithm] = &[&EcdsaP256Sha256];

fn cert_error(e: webpki::Error) -> CertError {
    use webpki::Error as E;
    match e {
        E::UnknownIssuer => CertError::UnknownIssuer,
        E::CertExpired { .. } => CertError::Expired,
        E::CertNotValidYet { .. } => CertError::NotValidYet,
        E::CertNotValidForName(_) => CertError::WrongName,
        E::InvalidSignatureForPublicKey => CertError::BadSignature,
        E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => CertError::UnsupportedAlgorithm,
        _ => CertError::Invalid,
    }
}

/// The server's public key, kept from the certificate check for the
/// handshake signature check.
#[derive(Debug, Clone, Copy)]
enum LeafKey {
    P256([u8; 65]),
    #[cfg(feature = "p384")]
    P384([u8; 97]),
}

/// How far the server has got in proving who it is, in the order TLS 1.3
/// requires (RFC 8446 section 4.4.1): a chain, then a signature with its
/// leaf's key over the handshake so far, then `Finished`.
enum Proof {
    AwaitingCertificate,
    /// The chain passed; the signature must be over `transcript` (the
    /// handshake up to and including the `Certificate` message).
    AwaitingSignature {
        leaf: LeafKey,
        transcript: Sha256,
    },
    Proven,
    Refused(CertError),
}

/// Evidence that the server passed every check of the module docs in
/// order; only [`PinnedVerifier::finish`] makes one, and a [`TlsStream`]
/// cannot exist without it.
#[derive(Debug)]
struct ServerProof(());

/// The certificate checks of the module docs, as embedded-tls' verifier.
struct PinnedVerifier<'a> {
    host: &'a str,
    trust: TrustConfig<'a>,
    now: u64,
    proof: Proof,
}

impl PinnedVerifier<'_> {
    fn check_chain(&self, cert: &CertificateRef<'_>) -> Result<LeafKey, CertError> {
        let mut ders: [&[u8]; MAX_CHAIN] = [&[]; MAX_CHAIN];
        let mut n = 0;
        for entry in cert.entries.iter() {
            let CertificateEntryRef::X509(der) = entry else {
                return Err(CertError::Invalid);
            };
            *ders.get_mut(n).ok_or(CertError::ChainLength)? = der;
            n += 1;
        }
        if n == 0 {
            return Err(CertError::ChainLength);
        }
        for (position, der) in ders[..n].iter().enumerate() {
            let revoked = self.trust.is_revoked(&fingerprint(der))
                || spki(der).is_some_and(|k| self.trust.is_revoked(&fingerprint(k)));
            if revoked {
                return Err(CertError::Revoked { position });
            }
        }
        let mut pinned: [&[u8]; MAX_ROOTS] = [&[]; MAX_ROOTS];
        let mut roots = 0;
        let mut source = self.trust.roots.iter().copied();
        let mut from_bundle = self.trust.bundle.map(|b| b.roots());
        let all: &mut dyn Iterator<Item = &[u8]> = match from_bundle.as_mut() {
            Some(bundle) => bundle,
            None => &mut source,
        };
        for root in all {
            *pinned.get_mut(roots).ok_or(CertError::BadRoot)? = root;
            roots += 1;
        }
        if roots == 0 {
            return Err(CertError::BadRoot);
        }
        let root_ders: [CertificateDer<'_>; MAX_ROOTS] =
            core::array::from_fn(|i| CertificateDer::from(pinned[i]));
        let mut anchors: [Option<pki_types::TrustAnchor<'_>>; MAX_ROOTS] = Default::default();
        for (slot, der) in anchors.iter_mut().zip(&root_ders[..roots]) {
            *slot = Some(webpki::anchor_from_trusted_cert(der).map_err(|_| CertError::BadRoot)?);
        }
        let anchors: [pki_types::TrustAnchor<'_>; MAX_ROOTS] = anchors.map(|a| {
            a.unwrap_or(pki_types::TrustAnchor {
                subject: (&[][..]).into(),
                subject_public_key_info: (&[][..]).into(),
                name_constraints: None,
            })
        });
        let chain: [CertificateDer<'_>; MAX_CHAIN] =
            core::array::from_fn(|i| CertificateDer::from(ders[i]));
        let ee = webpki::EndEntityCert::try_from(&chain[0]).map_err(cert_error)?;
        let time = UnixTime::since_unix_epoch(Duration::from_secs(self.now));
        ee.verify_for_usage(
            ALGORITHMS,
            &anchors[..roots],
            &chain[1..n],
            time,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(cert_error)?;
        let name = ServerName::try_from(self.host).map_err(|_| CertError::WrongName)?;
        ee.verify_is_valid_for_subject_name(&name)
            .map_err(cert_error)?;
        let key = spki(ders[0]).ok_or(CertError::Invalid)?;
        if let Some(point) = key.strip_prefix(&P256_SPKI_PREFIX[..]) {
            return point
                .try_into()
                .map(LeafKey::P256)
                .map_err(|_| CertError::Invalid);
        }
        #[cfg(feature = "p384")]
        if let Some(point) = key.strip_prefix(&P384_SPKI_PREFIX[..]) {
            return point
                .try_into()
                .map(LeafKey::P384)
                .map_err(|_| CertError::Invalid);
        }
        Err(CertError::UnsupportedAlgorithm)
    }

    fn check_signature(
        leaf: LeafKey,
        transcript: Sha256,
        verify: &CertificateVerifyRef<'_>,
    ) -> Result<(), CertError> {
        // RFC 8446 section 4.4.3: 64 spaces, the context string, a zero
        // byte (in the literal), then the transcript hash.
        let mut msg = [0x20u8; 64 + 34 + 32];
        msg[64..98].copy_from_slice(b"TLS 1.3, server CertificateVerify\x00");
        msg[98..].copy_from_slice(&transcript.finalize());
        let ok = match (verify.signature_scheme, leaf) {
            (SignatureScheme::EcdsaSecp256r1Sha256, LeafKey::P256(k)) => {
                EcdsaP256Sha256.verify_signature(&k, &msg, verify.signature)
            }
            #[cfg(feature = "p384")]
            (SignatureScheme::EcdsaSecp384r1Sha384, LeafKey::P384(k)) => {
                EcdsaP384Sha384.verify_signature(&k, &msg, verify.signature)
            }
            _ => return Err(CertError::UnsupportedAlgorithm),
        };
        ok.map_err(|_| CertError::BadHandshakeSignature)
    }

    /// Records a refusal (the first one stands) and tells embedded-tls.
    fn refuse(&mut self, reason: CertError, alert: TlsError) -> Result<(), TlsError> {
        if !matches!(self.proof, Proof::Refused(_)) {
            self.proof = Proof::Refused(reason);
        }
        Err(alert)
    }

    /// After embedded-tls says the handshake is complete: the proof, or
    /// why there is none. `Finished` arriving before the chain or the
    /// signature leaves the state short of `Proven`.
    fn finish(&self) -> Result<ServerProof, CertError> {
        match self.proof {
            Proof::Proven => Ok(ServerProof(())),
            Proof::AwaitingCertificate => Err(CertError::NoCertificate),
            Proof::AwaitingSignature { .. } => Err(CertError::NoProofOfKey),
            Proof::Refused(reason) => Err(reason),
        }
    }

    /// The reason of a refusal, if this verifier made one.
    fn refusal(&self) -> Option<CertError> {
        match self.proof {
            Proof::Refused(reason) => Some(reason),
            _ => None,
        }
    }
}

impl TlsVerifier<Aes128GcmSha256> for PinnedVerifier<'_> {
    fn set_hostname_verification(&mut self, _hostname: &str) -> Result<(), TlsError> {
        // The name is fixed when the verifier is made; nothing to change.
        Ok(())
    }

    fn verify_certificate(
        &mut self,
        transcript: &Sha256,
        cert: CertificateRef<'_>,
    ) -> Result<(), TlsError> {
        match self.proof {
            Proof::AwaitingCertificate => {}
            Proof::AwaitingSignature { .. } | Proof::Proven => {
                return self.refuse(
                    CertError::OutOfOrder("a second Certificate"),
                    TlsError::InvalidHandshake,
                );
            }
            Proof::Refused(_) => return Err(TlsError::InvalidCertificate),
        }
        match self.check_chain(&cert) {
            Ok(leaf) => {
                // embedded-tls adds each message to the transcript before
                // handing it over, so this hash ends with the Certificate.
                self.proof = Proof::AwaitingSignature {
                    leaf,
                    transcript: transcript.clone(),
                };
                Ok(())
            }
            Err(e) => self.refuse(e, TlsError::InvalidCertificate),
        }
    }

    fn verify_signature(&mut self, verify: CertificateVerifyRef<'_>) -> Result<(), TlsError> {
        let (leaf, transcript) = match &self.proof {
            Proof::AwaitingSignature { leaf, transcript } => (*leaf, transcript.clone()),
            Proof::AwaitingCertificate => {
                return self.refuse(
                    CertError::OutOfOrder("CertificateVerify before Certificate"),
                    TlsError::InvalidHandshake,
                );
            }
            Proof::Proven => {
                return self.refuse(
                    CertError::OutOfOrder("a second CertificateVerify"),
                    TlsError::InvalidHandshake,
                );
            }
            Proof::Refused(_) => return Err(TlsError::InvalidSignature),
        };
        match Self::check_signature(leaf, transcript, &verify) {
            Ok(()) => {
                self.proof = Proof::Proven;
                Ok(())
            }
            Err(e) => self.refuse(e, TlsError::InvalidSignature),
        }
    }
}

struct Provider<'a, R> {
    rng: R,
    verifier: PinnedVerifier<'a>,
}

impl<R: CryptoRngCore> CryptoProvider for &mut Provider<'_, R> {
    type CipherSuite = Aes128GcmSha256;
    type Signature = &'static [u8];

    fn rng(&mut self) -> impl CryptoRngCore {
        &mut self.rng
    }

    fn verifier(&mut self) -> Result<&mut impl TlsVerifier<Aes128GcmSha256>, TlsError> {
        Ok(&mut self.verifier)
    }
}

/// Record buffers for TLS. A server may send records of up to 16 KiB plus
/// overhead (16 640 bytes), so `READ` should be at least that; `WRITE`
/// bounds each record sent (at least the ClientHello, ~500 bytes).
#[derive(Debug)]
pub struct TlsBuffers<const READ: usize, const WRITE: usize> {
    read: [u8; READ],
    write: [u8; WRITE],
    /// Set while a TLS record is part-way read (see [`RecordGate`]).
    mid_record: Cell<bool>,
}

impl<const READ: usize, const WRITE: usize> TlsBuffers<READ, WRITE> {
    /// Zeroed buffers (const, for a `static`).
    pub const fn new() -> Self {
        Self {
            read: [0; READ],
            write: [0; WRITE],
            mid_record: Cell::new(false),
        }
    }
}

/// The socket as embedded-tls sees it, tracking TLS record boundaries.
///
/// embedded-tls keeps a record's header in a local variable while it reads
/// the body, so a read dropped part-way through a record loses the header
/// and the stream with it. The gate collects each 5-byte header in itself
/// (so a read dropped while waiting for one loses nothing) and flags the
/// time between handing out a header and the last byte of its body, during
/// which the session does not drop a read ([`TlsGuard`]).
struct RecordGate<'a, S> {
    socket: S,
    mid_record: &'a Cell<bool>,
    header: [u8; 5],
    collected: usize,
    handed: usize,
    body_left: usize,
}

impl<S: embedded_io::ErrorType> embedded_io::ErrorType for RecordGate<'_, S> {
    type Error = S::Error;
}

impl<S: Read> Read for RecordGate<'_, S> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, S::Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.handed == 5 && self.body_left == 0 {
            // The previous record is complete.
            self.collected = 0;
            self.handed = 0;
        }
        while self.collected < 5 {
            let n = self.socket.read(&mut self.header[self.collected..]).await?;
            if n == 0 {
                return Ok(0);
            }
            self.collected += n;
            if self.collected == 5 {
                self.body_left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
            }
        }
        if self.handed < 5 {
            let n = (5 - self.handed).min(buf.len());
            buf[..n].copy_from_slice(&self.header[self.handed..self.handed + n]);
            self.handed += n;
            self.mid_record.set(self.handed < 5 || self.body_left > 0);
            return Ok(n);
        }
        let want = buf.len().min(self.body_left);
        let n = self.socket.read(&mut buf[..want]).await?;
        self.body_left -= n.min(self.body_left);
        self.mid_record.set(self.body_left > 0);
        Ok(n)
    }
}

impl<S: Write> Write for RecordGate<'_, S> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, S::Error> {
        self.socket.write(buf).await
    }

    async fn flush(&mut self) -> Result<(), S::Error> {
        self.socket.flush().await
    }
}

/// The [`ReadGuard`] of a [`TlsStream`]: busy while a record is part-way read.
#[derive(Debug, Clone, Copy)]
pub struct TlsGuard<'a>(&'a Cell<bool>);

impl ReadGuard for TlsGuard<'_> {
    fn busy(&self) -> bool {
        self.0.get()
    }
}

impl<const READ: usize, const WRITE: usize> Default for TlsBuffers<READ, WRITE> {
    fn default() -> Self {
        Self::new()
    }
}

/// A TLS session whose server passed every check of the module docs; the
/// only [`Transport`] that reports [`Security::VerifiedTls`].
pub struct TlsStream<'a, S: Read + Write + 'a> {
    inner: TlsConnection<'a, RecordGate<'a, S>, Aes128GcmSha256>,
    mid_record: &'a Cell<bool>,
    _proof: ServerProof,
}

impl<S: Read + Write> core::fmt::Debug for TlsStream<'_, S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("TlsStream")
    }
}

/// Errors of an open [`TlsStream`] (record layer or transport).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsIoError(embedded_io::ErrorKind);

impl core::fmt::Display for TlsIoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "TLS stream error ({:?})", self.0)
    }
}

impl core::error::Error for TlsIoError {}

impl embedded_io::Error for TlsIoError {
    fn kind(&self) -> embedded_io::ErrorKind {
        self.0
    }
}

fn tls_io(e: TlsError) -> TlsIoError {
    match e {
        TlsError::ConnectionClosed => TlsIoError(embedded_io::ErrorKind::ConnectionReset),
        other => TlsIoError(embedded_io::Error::kind(&other)),
    }
}

impl<S: Read + Write> embedded_io::ErrorType for TlsStream<'_, S> {
    type Error = TlsIoError;
}

impl<S: Read + Write> Read for TlsStream<'_, S> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, TlsIoError> {
        match self.inner.read(buf).await {
            // A close_notify is the end of the stream.
            Err(TlsError::ConnectionClosed) => Ok(0),
            other => other.map_err(tls_io),
        }
    }
}

impl<S: Read + Write> Write for TlsStream<'_, S> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, TlsIoError> {
        self.inner.write(buf).await.map_err(tls_io)
    }

    async fn flush(&mut self) -> Result<(), TlsIoError> {
        self.inner.flush().await.map_err(tls_io)
    }
}

impl<'a, S: Read + Write> Transport for TlsStream<'a, S> {
    type Guard = TlsGuard<'a>;

    fn security(&self) -> Security {
        Security::VerifiedTls
    }

    fn read_guard(&self) -> TlsGuard<'a> {
        TlsGuard(self.mid_record)
    }
}

/// Opens TLS over `socket` to `host` and checks the server (module docs).
/// Refuses before sending anything when `time` is not trusted at `now`.
pub async fn connect<
    'a,
    S: Read + Write + 'a,
    R: CryptoRngCore,
    const READ: usize,
    const WRITE: usize,
>(
    socket: S,
    host: &'a str,
    trust: TrustConfig<'a>,
    time: &TrustedTime,
    now: Instant,
    rng: R,
    buffers: &'a mut TlsBuffers<READ, WRITE>,
) -> Result<TlsStream<'a, S>, TlsConnectError> {
    let secs = time.unix_secs(now).map_err(TlsConnectError::Time)?;
    let config = TlsConfig::new().with_server_name(host);
    let mut provider = Provider {
        rng,
        verifier: PinnedVerifier {
            host,
            trust,
            now: secs,
            proof: Proof::AwaitingCertificate,
        },
    };
    let TlsBuffers {
        read,
        write,
        mid_record,
    } = buffers;
    let mid_record: &'a Cell<bool> = mid_record;
    mid_record.set(false);
    let gate = RecordGate {
        socket,
        mid_record,
        header: [0; 5],
        collected: 0,
        handed: 0,
        body_left: 0,
    };
    let mut inner = TlsConnection::new(gate, read, write);
    let refused = |reason| TlsConnectError::Certificate {
        host: ShortText::new(host),
        reason,
    };
    match inner.open(TlsContext::new(&config, &mut provider)).await {
        // embedded-tls' word that the handshake is complete is not enough:
        // the chain and the signature must both have been verified, in order.
        Ok(()) => match provider.verifier.finish() {
            Ok(proof) => Ok(TlsStream {
                inner,
                mid_record,
                _proof: proof,
            }),
            Err(reason) => Err(refused(reason)),
        },
        Err(e) => Err(match provider.verifier.refusal() {
            Some(reason) => refused(reason),
            None => {
                use core::fmt::Write as _;
                let mut buf = [0u8; 96];
                let mut w = crate::json::Writer::new(&mut buf);
                let _ = write!(w, "{e:?}");
                TlsConnectError::Handshake(ShortText::new(w.as_str()))
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_list_parses_without_a_heap() {
        assert!(!is_revoked(&[0u8; 32], &[]));
        assert!(is_revoked(&[7u8; 32], &[[7u8; 32]]));
    }

    fn verifier(proof: Proof) -> PinnedVerifier<'static> {
        PinnedVerifier {
            host: "localhost",
            trust: TrustConfig::pinned(&[]),
            now: 0,
            proof,
        }
    }

    fn awaiting_signature() -> Proof {
        Proof::AwaitingSignature {
            leaf: LeafKey::P256([4; 65]),
            transcript: Sha256::new(),
        }
    }

    // Issue 10: embedded-tls completes the handshake without these.
    #[test]
    fn a_handshake_finished_without_the_proof_is_refused() {
        let e = verifier(Proof::AwaitingCertificate).finish().unwrap_err();
        assert_eq!(e, CertError::NoCertificate);
        assert!(std::string::ToString::to_string(&e).contains("without sending a certificate"));
        let e = verifier(awaiting_signature()).finish().unwrap_err();
        assert_eq!(e, CertError::NoProofOfKey);
        assert!(verifier(Proof::Proven).finish().is_ok());
        let refused = verifier(Proof::Refused(CertError::Expired));
        assert_eq!(refused.finish().unwrap_err(), CertError::Expired);
    }

    #[test]
    fn a_certificate_verify_out_of_order_is_refused() {
        let cv = || CertificateVerifyRef {
            signature_scheme: SignatureScheme::EcdsaSecp256r1Sha256,
            signature: &[0x30, 0x00],
        };
        let mut v = verifier(Proof::AwaitingCertificate);
        assert!(v.verify_signature(cv()).is_err());
        assert_eq!(
            v.finish().unwrap_err(),
            CertError::OutOfOrder("CertificateVerify before Certificate")
        );
        let mut v = verifier(Proof::Proven);
        assert!(v.verify_signature(cv()).is_err());
        assert_eq!(
            v.finish().unwrap_err(),
            CertError::OutOfOrder("a second CertificateVerify")
        );
        // A bad signature is a refusal, and it stays the reason.
        let mut v = verifier(awaiting_signature());
        assert!(v.verify_signature(cv()).is_err());
        assert!(v.verify_signature(cv()).is_err());
        assert_eq!(v.finish().unwrap_err(), CertError::BadHandshakeSignature);
    }

    #[test]
    fn der_walk_refuses_truncated_input() {
        for cut in [0, 1, 2, 10] {
            assert_eq!(spki(&[0x30, 0x82, 0x01, 0x00][..cut.min(4)]), None);
        }
    }
}
