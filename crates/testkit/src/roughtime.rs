//! A Roughtime server (RFC 10049, version 1) on loopback UDP that lies on
//! purpose when asked. Its encoder is written here, independently of the
//! client's parser in `ferrolink_proto::roughtime`, so the two check each
//! other.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signer as _, SigningKey};
use rand_core::{OsRng, RngCore as _};
use sha2::{Digest as _, Sha512};

/// How the server misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// An honest server.
    None,
    /// The delegation's signature (by the long-term key) is corrupted.
    BadDelegationSignature,
    /// The signature over the time (by the delegated key) is corrupted.
    BadResponseSignature,
    /// The answer echoes another nonce.
    WrongNonce,
    /// The midpoint lies outside the delegated key's validity window.
    MidpointOutsideDelegation,
    /// A signed Merkle root that does not cover the request.
    WrongRoot,
    /// Validly signed, but the time is off by this many seconds: a server
    /// that lies with its own key.
    Offset(i64),
}

/// A Roughtime server on an ephemeral UDP port; stops on drop.
pub struct RoughtimeServer {
    addr: SocketAddr,
    public_key: [u8; 32],
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RoughtimeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const fn tag(name: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*name)
}

/// A tag-value message (RFC 10049 section 4): tags sorted, offsets after the count.
fn message(pairs: &[(&[u8; 4], &[u8])]) -> Vec<u8> {
    let mut pairs = pairs.to_vec();
    pairs.sort_by_key(|(t, _)| tag(t));
    let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
    let mut offset = 0u32;
    for (_, value) in &pairs[..pairs.len() - 1] {
        offset += value.len() as u32;
        out.extend_from_slice(&offset.to_le_bytes());
    }
    for (t, _) in &pairs {
        out.extend_from_slice(*t);
    }
    for (_, value) in &pairs {
        out.extend_from_slice(value);
    }
    out
}

/// The value of `name` in a message, if the message is well formed enough.
fn find<'a>(msg: &'a [u8], name: &[u8; 4]) -> Option<&'a [u8]> {
    let n = u32::from_le_bytes(msg.get(..4)?.try_into().ok()?) as usize;
    if n == 0 || n > 64 {
        return None;
    }
    let values = msg.get(8 * n..)?;
    let offset = |i: usize| -> Option<usize> {
        if i == 0 {
            return Some(0);
        }
        if i == n {
            return Some(values.len());
        }
        Some(u32::from_le_bytes(msg.get(4 * i..4 * i + 4)?.try_into().ok()?) as usize)
    };
    (0..n).find_map(|i| {
        let at = 4 * n + 4 * i;
        (msg.get(at..at + 4)? == name).then_some(())?;
        values.get(offset(i)?..offset(i + 1)?)
    })
}

fn truncated_sha512(parts: &[&[u8]]) -> Vec<u8> {
    let mut h = Sha512::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()[..32].to_vec()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

fn random_key() -> SigningKey {
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    SigningKey::from_bytes(&seed)
}

/// The response to one request packet, or `None` for a packet to ignore.
fn respond(request: &[u8], long_term: &SigningKey, fault: Fault) -> Option<Vec<u8>> {
    if request.get(..8)? != b"ROUGHTIM" {
        return None;
    }
    let msg = request.get(12..)?;
    let mut nonce = find(msg, b"NONC")?.to_vec();
    if nonce.len() != 32 || msg.len() < 1012 {
        return None;
    }
    let online = random_key();
    let now = now_secs();
    let midpoint = match fault {
        Fault::Offset(secs) => now.saturating_add_signed(secs),
        _ => now,
    };
    let (min, max) = match fault {
        Fault::MidpointOutsideDelegation => (now + 3_600, now + 7_200),
        _ => (now - 86_400, now + 86_400),
    };
    let mut root = truncated_sha512(&[&[0x00], request]);
    if fault == Fault::WrongRoot {
        root[0] ^= 1;
    }
    let srep = message(&[
        (b"VER\0", &1u32.to_le_bytes()),
        (b"RADI", &3u32.to_le_bytes()),
        (b"MIDP", &midpoint.to_le_bytes()),
        (b"VERS", &[1, 0, 0, 0, 0x0c, 0, 0, 0x80]),
        (b"ROOT", &root),
    ]);
    let dele = message(&[
        (b"PUBK", online.verifying_key().as_bytes()),
        (b"MINT", &min.to_le_bytes()),
        (b"MAXT", &max.to_le_bytes()),
    ]);
    let mut dele_sig = long_term
        .sign(&[&b"Roughtime v1 delegation signature\0"[..], &dele].concat())
        .to_bytes();
    if fault == Fault::BadDelegationSignature {
        dele_sig[10] ^= 1;
    }
    let cert = message(&[(b"SIG\0", &dele_sig), (b"DELE", &dele)]);
    let mut sig = online
        .sign(&[&b"Roughtime v1 response signature\0"[..], &srep].concat())
        .to_bytes();
    if fault == Fault::BadResponseSignature {
        sig[10] ^= 1;
    }
    if fault == Fault::WrongNonce {
        nonce[0] ^= 1;
    }
    let top = message(&[
        (b"SIG\0", &sig),
        (b"NONC", &nonce),
        (b"TYPE", &1u32.to_le_bytes()),
        (b"PATH", &[]),
        (b"SREP", &srep),
        (b"CERT", &cert),
        (b"INDX", &0u32.to_le_bytes()),
    ]);
    let mut packet = b"ROUGHTIM".to_vec();
    packet.extend_from_slice(&(top.len() as u32).to_le_bytes());
    packet.extend_from_slice(&top);
    Some(packet)
}

impl RoughtimeServer {
    /// Starts a server with a fresh long-term key that misbehaves as `fault` says.
    pub async fn start(fault: Fault) -> Self {
        let long_term = random_key();
        let public_key = long_term.verifying_key().to_bytes();
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind a UDP port");
        let addr = socket.local_addr().expect("address");
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                if let Some(reply) = respond(&buf[..n], &long_term, fault) {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        Self {
            addr,
            public_key,
            task,
        }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The long-term public key clients pin.
    pub fn public_key(&self) -> [u8; 32] {
        self.public_key
    }
}
