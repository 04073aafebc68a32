//! A hand-made TLS 1.3 server that misbehaves on purpose: the man in the
//! middle our clients must refuse.
//!
//! A library server (rustls) cannot send a handshake that breaks the
//! protocol, so this one is written on the primitives: X25519 or P-256
//! ECDHE, HKDF and HMAC with SHA-256, AES-128-GCM records and ECDSA P-256
//! signatures (RustCrypto). It speaks exactly one suite
//! (`TLS_AES_128_GCM_SHA256`) and one signature scheme
//! (`ecdsa_secp256r1_sha256`), which every client we ship offers.
//!
//! Each [`Attack`] changes the server's encrypted flight (RFC 8446 section
//! 2: `EncryptedExtensions`, `Certificate`, `CertificateVerify`,
//! `Finished`, each in its own record). Whatever the mode, the server
//! derives the keys the client would use, decrypts everything the client
//! sends and counts the application-data bytes among it
//! ([`MitmServer::app_data_bytes`]): a client that refused sent none, so
//! its key cannot have left it. Given an upstream address, the server
//! relays whatever a client sends past its handshake to the upstream (a
//! plain [`crate::TestServer`]), as a real man in the middle would: a
//! client that wrongly accepts hands its key to the real server through it
//! (which counts key messages), and the honest control case is a real
//! session, which the client must accept — that is what gives every
//! refusal its meaning.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
use aes_gcm::{Aes128Gcm, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac as _};
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::DecodePrivateKey as _;
use rand_core::OsRng;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::pki::Leaf;

/// How the server's handshake misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// A correct handshake (the control: clients must accept it).
    Honest,
    /// `EncryptedExtensions`, `Finished`: no certificate, no proof.
    NoCertificate,
    /// The genuine chain, copied, then `Finished` without `CertificateVerify`.
    CertificateWithoutVerify,
    /// `CertificateVerify` whose signature has one byte flipped.
    CorruptSignature,
    /// `CertificateVerify` validly signed, but by a key that is not the leaf's.
    SignedByAnotherKey,
    /// `CertificateVerify` (validly signed by the leaf's key) before `Certificate`.
    VerifyBeforeCertificate,
    /// `Finished` before a (validly signed) `CertificateVerify`.
    FinishedBeforeVerify,
    /// No TLS at all: the ClientHello is answered with a plaintext
    /// websocket upgrade, as a downgrading man in the middle would.
    Plaintext,
}

impl Attack {
    /// The handshake attacks (every mode but [`Attack::Honest`] and [`Attack::Plaintext`]).
    pub const HANDSHAKE: [Self; 6] = [
        Self::NoCertificate,
        Self::CertificateWithoutVerify,
        Self::CorruptSignature,
        Self::SignedByAnotherKey,
        Self::VerifyBeforeCertificate,
        Self::FinishedBeforeVerify,
    ];
}

/// What the server saw, shared with its connection tasks.
#[derive(Debug, Default)]
struct Seen {
    client_hellos: AtomicU64,
    client_finished: AtomicU64,
    app_data_bytes: AtomicU64,
    outcomes: Mutex<Vec<String>>,
}

impl Seen {
    fn outcome(&self, what: String) {
        self.outcomes.lock().expect("not poisoned").push(what);
    }
}

/// A misbehaving TLS 1.3 server on an ephemeral loopback port; stops on drop.
pub struct MitmServer {
    addr: SocketAddr,
    seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MitmServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The server's certificate material and mode, shared by its connections.
struct Setup {
    chain: Vec<Vec<u8>>,
    key: p256::ecdsa::SigningKey,
    attack: Attack,
    upstream: Option<SocketAddr>,
}

impl MitmServer {
    /// Starts a server presenting `leaf` (an ECDSA P-256 leaf) that
    /// misbehaves as `attack` says. With `upstream`, whatever a client
    /// sends past the handshake is relayed to that address.
    pub async fn start(leaf: &Leaf, attack: Attack, upstream: Option<SocketAddr>) -> Self {
        let key = p256::SecretKey::from_pkcs8_der(&leaf.key_der)
            .expect("the leaf's key is ECDSA P-256 in PKCS#8");
        let setup = Arc::new(Setup {
            chain: leaf.chain_der.clone(),
            key: key.into(),
            attack,
            upstream,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let seen = Arc::new(Seen::default());
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let (setup, seen) = (setup.clone(), seen.clone());
                    tokio::spawn(async move {
                        let outcome = match serve(tcp, &setup, &seen).await {
                            Ok(outcome) => outcome,
                            Err(e) => format!("connection error: {e}"),
                        };
                        seen.outcome(outcome);
                    });
                }
            })
        };
        Self { addr, seen, task }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// ClientHellos received: clients that dialled at all.
    pub fn client_hellos(&self) -> u64 {
        self.seen.client_hellos.load(Ordering::SeqCst)
    }

    /// Clients that completed the handshake (sent their `Finished`).
    pub fn client_finished(&self) -> u64 {
        self.seen.client_finished.load(Ordering::SeqCst)
    }

    /// Application-data bytes received (decrypted, or undecipherable
    /// records counted whole): anything a client sent past the handshake.
    pub fn app_data_bytes(&self) -> u64 {
        self.seen.app_data_bytes.load(Ordering::SeqCst)
    }

    /// How each finished connection ended, for failure messages.
    pub fn outcomes(&self) -> Vec<String> {
        self.seen.outcomes.lock().expect("not poisoned").clone()
    }
}

const HANDSHAKE: u8 = 22;
const ALERT: u8 = 21;
const CHANGE_CIPHER_SPEC: u8 = 20;
const APPLICATION_DATA: u8 = 23;
const TLS_AES_128_GCM_SHA256: u16 = 0x1301;
const ECDSA_SECP256R1_SHA256: u16 = 0x0403;
const X25519: u16 = 0x001d;
const SECP256R1: u16 = 0x0017;
/// Longest record body accepted (RFC 8446 section 5.2).
const MAX_RECORD: usize = (1 << 14) + 256;
/// How long a client may stay silent before the server gives up on it.
const IDLE: Duration = Duration::from_secs(10);

type Error = String;

/// One TLS record read off the socket.
struct Record {
    header: [u8; 5],
    body: Vec<u8>,
}

async fn read_record(
    tcp: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Result<Option<Record>, Error> {
    let mut header = [0u8; 5];
    match tokio::time::timeout(IDLE, tcp.read_exact(&mut header)).await {
        Err(_) => return Err("the client went silent".to_owned()),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok(_)) => {}
    }
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if len > MAX_RECORD {
        return Err(format!("a record of {len} bytes"));
    }
    let mut body = vec![0u8; len];
    tokio::time::timeout(IDLE, tcp.read_exact(&mut body))
        .await
        .map_err(|_| "the client went silent mid-record".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(Some(Record { header, body }))
}

/// HKDF-Expand-Label (RFC 8446 section 7.1).
fn expand_label(secret: &[u8], label: &str, context: &[u8], len: usize) -> Vec<u8> {
    let hkdf = Hkdf::<Sha256>::from_prk(secret).expect("secrets are hash-sized");
    let label = format!("tls13 {label}");
    let mut info = Vec::with_capacity(4 + label.len() + context.len());
    info.extend_from_slice(&(len as u16).to_be_bytes());
    info.push(label.len() as u8);
    info.extend_from_slice(label.as_bytes());
    info.push(context.len() as u8);
    info.extend_from_slice(context);
    let mut out = vec![0u8; len];
    hkdf.expand(&info, &mut out).expect("short output");
    out
}

fn extract(salt: &[u8], ikm: &[u8]) -> Vec<u8> {
    Hkdf::<Sha256>::extract(Some(salt), ikm).0.to_vec()
}

/// Derive-Secret (RFC 8446 section 7.1) over a transcript hash.
fn derive(secret: &[u8], label: &str, transcript: &[u8]) -> Vec<u8> {
    expand_label(secret, label, transcript, 32)
}

/// One direction's record protection.
struct Protection {
    aead: Aes128Gcm,
    iv: [u8; 12],
    seq: u64,
}

impl Protection {
    fn new(secret: &[u8]) -> Self {
        let key = expand_label(secret, "key", &[], 16);
        let iv = expand_label(secret, "iv", &[], 12);
        Self {
            aead: Aes128Gcm::new_from_slice(&key).expect("16-byte key"),
            iv: iv.try_into().expect("12-byte iv"),
            seq: 0,
        }
    }

    fn nonce(&mut self) -> [u8; 12] {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq += 1;
        nonce
    }

    /// One encrypted record carrying `data` of `content_type`.
    fn seal(&mut self, content_type: u8, data: &[u8]) -> Vec<u8> {
        let mut plain = data.to_vec();
        plain.push(content_type);
        let len = (plain.len() + 16) as u16;
        let header = [APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
        let nonce = self.nonce();
        let sealed = self
            .aead
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &header,
                },
            )
            .expect("encryption of a bounded record");
        let mut record = header.to_vec();
        record.extend_from_slice(&sealed);
        record
    }

    /// The content type and content of an encrypted record, or `None`
    /// when it does not decrypt.
    fn open(&mut self, record: &Record) -> Option<(u8, Vec<u8>)> {
        let nonce = self.nonce();
        let mut plain = self
            .aead
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &record.body,
                    aad: &record.header,
                },
            )
            .ok()?;
        while plain.last() == Some(&0) {
            plain.pop();
        }
        let content_type = plain.pop()?;
        Some((content_type, plain))
    }
}

/// A handshake message: type, 24-bit length, body.
fn handshake(msg_type: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![msg_type];
    m.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    m.extend_from_slice(body);
    m
}

/// A bounds-checked reader over a ClientHello.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err("a truncated ClientHello".to_owned());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<usize, Error> {
        Ok(usize::from(self.take(1)?[0]))
    }

    fn u16(&mut self) -> Result<usize, Error> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn vec8(&mut self) -> Result<&'a [u8], Error> {
        let n = self.u8()?;
        self.take(n)
    }

    fn vec16(&mut self) -> Result<&'a [u8], Error> {
        let n = self.u16()?;
        self.take(n)
    }
}

/// What the server needs from a ClientHello.
struct ClientHello {
    session_id: Vec<u8>,
    share: (u16, Vec<u8>),
}

fn parse_client_hello(body: &[u8]) -> Result<ClientHello, Error> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy_version, random
    let session_id = r.vec8()?.to_vec();
    let suites = r.vec16()?;
    if !suites
        .chunks(2)
        .any(|s| s == TLS_AES_128_GCM_SHA256.to_be_bytes())
    {
        return Err("the client does not offer TLS_AES_128_GCM_SHA256".to_owned());
    }
    r.vec8()?; // compression methods
    let mut extensions = Reader(r.vec16()?);
    let mut share = None;
    let mut tls13 = false;
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let mut data = Reader(extensions.vec16()?);
        match kind {
            43 => tls13 = data.vec8()?.chunks(2).any(|v| v == [3, 4]),
            51 => {
                let mut shares = Reader(data.vec16()?);
                while !shares.0.is_empty() {
                    let group = shares.u16()? as u16;
                    let key = shares.vec16()?;
                    let preferred = share.as_ref().is_none_or(|(g, _)| *g != X25519);
                    if (group == X25519 || group == SECP256R1) && preferred {
                        share = Some((group, key.to_vec()));
                    }
                }
            }
            _ => {}
        }
    }
    if !tls13 {
        return Err("the client does not offer TLS 1.3".to_owned());
    }
    let share = share.ok_or("no X25519 or P-256 key share (HelloRetryRequest not implemented)")?;
    Ok(ClientHello { session_id, share })
}

/// Our half of the key exchange: (our public share, the shared secret).
fn key_exchange(group: u16, theirs: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Error> {
    if group == X25519 {
        let theirs: [u8; 32] = theirs.try_into().map_err(|_| "a bad X25519 share")?;
        let ours = x25519_dalek::EphemeralSecret::random_from_rng(OsRng);
        let public = x25519_dalek::PublicKey::from(&ours);
        let shared = ours.diffie_hellman(&x25519_dalek::PublicKey::from(theirs));
        return Ok((public.as_bytes().to_vec(), shared.as_bytes().to_vec()));
    }
    let theirs = p256::PublicKey::from_sec1_bytes(theirs).map_err(|_| "a bad P-256 share")?;
    let ours = p256::ecdh::EphemeralSecret::random(&mut OsRng);
    let public = p256::EncodedPoint::from(ours.public_key());
    let shared = ours.diffie_hellman(&theirs);
    Ok((
        public.as_bytes().to_vec(),
        shared.raw_secret_bytes().to_vec(),
    ))
}

fn server_hello(hello: &ClientHello, share: &[u8]) -> Vec<u8> {
    let mut body = vec![3, 3];
    let mut random = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut OsRng, &mut random);
    body.extend_from_slice(&random);
    body.push(hello.session_id.len() as u8);
    body.extend_from_slice(&hello.session_id);
    body.extend_from_slice(&TLS_AES_128_GCM_SHA256.to_be_bytes());
    body.push(0);
    let mut ext = Vec::new();
    ext.extend_from_slice(&[0, 43, 0, 2, 3, 4]); // supported_versions: TLS 1.3
    ext.extend_from_slice(&[0, 51]); // key_share
    ext.extend_from_slice(&((4 + share.len()) as u16).to_be_bytes());
    ext.extend_from_slice(&hello.share.0.to_be_bytes());
    ext.extend_from_slice(&(share.len() as u16).to_be_bytes());
    ext.extend_from_slice(share);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    handshake(2, &body)
}

fn certificate(chain: &[Vec<u8>]) -> Vec<u8> {
    let mut list = Vec::new();
    for der in chain {
        list.extend_from_slice(&(der.len() as u32).to_be_bytes()[1..]);
        list.extend_from_slice(der);
        list.extend_from_slice(&[0, 0]); // no extensions
    }
    let mut body = vec![0]; // empty certificate_request_context
    body.extend_from_slice(&(list.len() as u32).to_be_bytes()[1..]);
    body.extend_from_slice(&list);
    handshake(11, &body)
}

/// `CertificateVerify` over `transcript` (RFC 8446 section 4.4.3), signed by `key`.
fn certificate_verify(key: &p256::ecdsa::SigningKey, transcript: &[u8], corrupt: bool) -> Vec<u8> {
    let mut signed = vec![0x20u8; 64];
    signed.extend_from_slice(b"TLS 1.3, server CertificateVerify\x00");
    signed.extend_from_slice(transcript);
    let signature: p256::ecdsa::Signature = key.sign(&signed);
    let mut der = signature.to_der().as_bytes().to_vec();
    if corrupt {
        // The last byte of `s`: still a well-formed DER signature.
        *der.last_mut().expect("a signature has bytes") ^= 0x01;
    }
    let mut body = ECDSA_SECP256R1_SHA256.to_be_bytes().to_vec();
    body.extend_from_slice(&(der.len() as u16).to_be_bytes());
    body.extend_from_slice(&der);
    handshake(15, &body)
}

fn finished(handshake_secret: &[u8], transcript: &[u8]) -> Vec<u8> {
    let key = expand_label(handshake_secret, "finished", &[], 32);
    let mut mac = <Hmac<Sha256> as hmac::Mac>::new_from_slice(&key).expect("any key length");
    mac.update(transcript);
    handshake(20, &mac.finalize().into_bytes())
}

/// The running transcript hash.
struct Transcript(Sha256);

impl Transcript {
    fn add(&mut self, message: &[u8]) {
        self.0.update(message);
    }

    fn hash(&self) -> Vec<u8> {
        self.0.clone().finalize().to_vec()
    }
}

fn alert_name(code: u8) -> &'static str {
    match code {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        40 => "handshake_failure",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        50 => "decode_error",
        51 => "decrypt_error",
        70 => "protocol_version",
        80 => "internal_error",
        _ => "other",
    }
}

fn describe_alert(body: &[u8]) -> String {
    let code = body.get(1).copied().unwrap_or(255);
    format!("alert {code} ({})", alert_name(code))
}

/// Serves one connection: the handshake as `setup.attack` says, then
/// reading everything the client sends. Returns how it ended.
async fn serve(mut tcp: TcpStream, setup: &Setup, seen: &Seen) -> Result<String, Error> {
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    // The ClientHello (one record is enough for every client we test).
    let Some(record) = read_record(&mut tcp).await? else {
        return Ok("closed before its ClientHello".to_owned());
    };
    if record.header[0] != HANDSHAKE || record.body.first() != Some(&1) {
        return Err("the first record is not a ClientHello".to_owned());
    }
    seen.client_hellos.fetch_add(1, Ordering::SeqCst);
    if setup.attack == Attack::Plaintext {
        return serve_plaintext(tcp, seen).await;
    }
    let client_hello = &record.body;
    let hello = parse_client_hello(client_hello.get(4..).ok_or("a short ClientHello")?)?;
    let (share, shared) = key_exchange(hello.share.0, &hello.share.1)?;
    let mut transcript = Transcript(Sha256::new());
    transcript.add(client_hello);
    let server_hello = server_hello(&hello, &share);
    transcript.add(&server_hello);
    let mut out = vec![HANDSHAKE, 3, 3];
    out.extend_from_slice(&(server_hello.len() as u16).to_be_bytes());
    out.extend_from_slice(&server_hello);

    let empty_hash = Sha256::digest([]).to_vec();
    let early = extract(&[0; 32], &[0; 32]);
    let handshake_secret = extract(&derive(&early, "derived", &empty_hash), &shared);
    let client_hs = derive(&handshake_secret, "c hs traffic", &transcript.hash());
    let server_hs = derive(&handshake_secret, "s hs traffic", &transcript.hash());
    let master = extract(&derive(&handshake_secret, "derived", &empty_hash), &[0; 32]);
    let mut seal = Protection::new(&server_hs);

    // The encrypted flight, one message per record, in the attack's order.
    let leaf_key = &setup.key;
    let other_key = p256::ecdsa::SigningKey::random(&mut OsRng);
    let mut app_secrets = None;
    let steps: &[u8] = match setup.attack {
        // E: EncryptedExtensions, C: Certificate, V: CertificateVerify,
        // X: corrupt V, O: V by another key, F: Finished.
        Attack::Honest => b"ECVF",
        Attack::NoCertificate => b"EF",
        Attack::CertificateWithoutVerify => b"ECF",
        Attack::CorruptSignature => b"ECXF",
        Attack::SignedByAnotherKey => b"ECOF",
        Attack::VerifyBeforeCertificate => b"EVCF",
        Attack::FinishedBeforeVerify => b"ECFV",
        Attack::Plaintext => unreachable!("answered above"),
    };
    for step in steps {
        let message = match step {
            b'E' => handshake(8, &[0, 0]),
            b'C' => certificate(&setup.chain),
            b'V' => certificate_verify(leaf_key, &transcript.hash(), false),
            b'X' => certificate_verify(leaf_key, &transcript.hash(), true),
            b'O' => certificate_verify(&other_key, &transcript.hash(), false),
            b'F' => finished(&server_hs, &transcript.hash()),
            _ => unreachable!("the steps above"),
        };
        transcript.add(&message);
        if *step == b'F' {
            let th = transcript.hash();
            app_secrets = Some((
                derive(&master, "c ap traffic", &th),
                derive(&master, "s ap traffic", &th),
            ));
        }
        out.extend_from_slice(&seal.seal(HANDSHAKE, &message));
    }
    tcp.write_all(&out).await.map_err(|e| e.to_string())?;
    let (client_ap, server_ap) = app_secrets.expect("every flight ends in or holds Finished");

    // The client's answer: its Finished under the handshake keys, then
    // application data under the application keys — or an alert.
    let mut open = Protection::new(&client_hs);
    let mut finished = false;
    let (mut rd, wr) = tcp.into_split();
    let mut upstream: Option<tokio::net::tcp::OwnedWriteHalf> = None;
    let mut relay = None;
    let mut wr = Some(wr);
    let mut server_ap = Some(server_ap);
    let ending = loop {
        let Some(record) = read_record(&mut rd).await? else {
            break if finished {
                "closed after the handshake"
            } else {
                "closed during the handshake"
            }
            .to_owned();
        };
        match record.header[0] {
            CHANGE_CIPHER_SPEC => continue,
            ALERT => break format!("plaintext {}", describe_alert(&record.body)),
            APPLICATION_DATA => {}
            other => break format!("an unexpected plaintext record of type {other}"),
        }
        let Some((content_type, content)) = open.open(&record) else {
            // Counted whole: bytes the client meant for somebody.
            seen.app_data_bytes
                .fetch_add(record.body.len() as u64, Ordering::SeqCst);
            break "a record that does not decrypt".to_owned();
        };
        match (content_type, finished) {
            (ALERT, _) => break describe_alert(&content),
            (HANDSHAKE, false) if content.first() == Some(&20) => {
                finished = true;
                seen.client_finished.fetch_add(1, Ordering::SeqCst);
                open = Protection::new(&client_ap);
                if let Some(addr) = setup.upstream {
                    let up = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
                    let (up_rd, up_wr) = up.into_split();
                    upstream = Some(up_wr);
                    let (wr, secret) = (wr.take(), server_ap.take());
                    let (Some(wr), Some(secret)) = (wr, secret) else {
                        unreachable!("taken once, at the client's Finished");
                    };
                    relay = Some(tokio::spawn(relay_down(
                        up_rd,
                        wr,
                        Protection::new(&secret),
                    )));
                }
            }
            (HANDSHAKE, true) => {} // post-handshake messages: ignored
            (APPLICATION_DATA, true) => {
                seen.app_data_bytes
                    .fetch_add(content.len() as u64, Ordering::SeqCst);
                if let Some(up) = upstream.as_mut()
                    && up.write_all(&content).await.is_err()
                {
                    break "the upstream closed".to_owned();
                }
            }
            (APPLICATION_DATA, false) => {
                seen.app_data_bytes
                    .fetch_add(content.len() as u64, Ordering::SeqCst);
                break "application data before the client's Finished".to_owned();
            }
            (other, _) => break format!("an unexpected inner record of type {other}"),
        }
    };
    if let Some(relay) = relay {
        relay.abort();
    }
    Ok(ending)
}

/// Upstream → client, sealed with the server's application keys.
async fn relay_down(
    mut upstream: tokio::net::tcp::OwnedReadHalf,
    mut client: tokio::net::tcp::OwnedWriteHalf,
    mut seal: Protection,
) {
    let mut buf = vec![0u8; 1 << 14];
    while let Ok(n) = upstream.read(&mut buf).await {
        if n == 0
            || client
                .write_all(&seal.seal(APPLICATION_DATA, &buf[..n]))
                .await
                .is_err()
        {
            break;
        }
    }
    let _ = client.shutdown().await;
}

/// [`Attack::Plaintext`]: a websocket upgrade in the clear, then counting
/// every byte the client sends that is not a TLS alert.
async fn serve_plaintext(mut tcp: TcpStream, seen: &Seen) -> Result<String, Error> {
    let upgrade = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    tcp.write_all(upgrade.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(IDLE, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => return Err("the client went silent".to_owned()),
        }
    }
    let mut rest = received.as_slice();
    let mut alerts = Vec::new();
    // TLS alerts in the clear are the client saying no; anything else counts.
    while rest.len() >= 7 && rest[0] == ALERT && rest[1] == 3 {
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        let Some(body) = rest.get(5..5 + len) else {
            break;
        };
        alerts.push(describe_alert(body));
        rest = &rest[5 + len..];
    }
    seen.app_data_bytes
        .fetch_add(rest.len() as u64, Ordering::SeqCst);
    Ok(if alerts.is_empty() {
        "closed after a plaintext answer".to_owned()
    } else {
        format!("plaintext {}", alerts.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 8448 section 3 (a simple 1-RTT handshake): the key schedule.
    #[test]
    fn the_key_schedule_matches_rfc_8448() {
        let hex = |s: &str| -> Vec<u8> {
            let s: String = s.split_whitespace().collect();
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let early = extract(&[0; 32], &[0; 32]);
        assert_eq!(
            early,
            hex(
                "33 ad 0a 1c 60 7e c0 3b 09 e6 cd 98 93 68 0c e2 10 ad f3 00 aa 1f 26 60 e1 b2 2e 10 f1 70 f9 2a"
            )
        );
        let empty = Sha256::digest([]).to_vec();
        let derived = derive(&early, "derived", &empty);
        assert_eq!(
            derived,
            hex(
                "6f 26 15 a1 08 c7 02 c5 67 8f 54 fc 9d ba b6 97 16 c0 76 18 9c 48 25 0c eb ea c3 57 6c 36 11 ba"
            )
        );
        let shared = hex(
            "8b d4 05 4f b5 5b 9d 63 fd fb ac f9 f0 4b 9f 0d 35 e6 d6 3f 53 75 63 ef d4 62 72 90 0f 89 49 2d",
        );
        let hs = extract(&derived, &shared);
        assert_eq!(
            hs,
            hex(
                "1d c8 26 e9 36 06 aa 6f dc 0a ad c1 2f 74 1b 01 04 6a a6 b9 9f 69 1e d2 21 a9 f0 ca 04 3f be ac"
            )
        );
        let transcript = hex(
            "86 0c 06 ed c0 78 58 ee 8e 78 f0 e7 42 8c 58 ed d6 b4 3f 2c a3 e6 e9 5f 02 ed 06 3c f0 e1 ca d8",
        );
        let server_hs = derive(&hs, "s hs traffic", &transcript);
        assert_eq!(
            server_hs,
            hex(
                "b6 7b 7d 69 0c c1 6c 4e 75 e5 42 13 cb 2d 37 b4 e9 c9 12 bc de d9 10 5d 42 be fd 59 d3 91 ad 38"
            )
        );
        assert_eq!(
            expand_label(&server_hs, "key", &[], 16),
            hex("3f ce 51 60 09 c2 17 27 d0 f2 e4 e8 6e e4 03 bc")
        );
        assert_eq!(
            expand_label(&server_hs, "iv", &[], 12),
            hex("5d 31 3e b2 67 12 76 ee 13 00 0b 30")
        );
    }
}
