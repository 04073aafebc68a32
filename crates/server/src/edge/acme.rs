//! Automatic certificates over ACME (RFC 8555), answered with the
//! `tls-alpn-01` challenge on the server's own TLS port, so no second
//! listener is needed. Certificates and the account are kept in
//! `<data>/acme/`; renewal starts `renew_before` ahead of expiry.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The ALPN protocol of the `tls-alpn-01` challenge.
const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Settings for certificates from an ACME server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSetting {
    /// The domain to get a certificate for (clients connect to this name).
    pub domain: String,
    /// The ACME directory URL (Let's Encrypt's by default in the CLI).
    pub directory_url: String,
    /// A PEM root to trust for the ACME server's own HTTPS (for a private
    /// ACME server such as pebble); `None` uses the web PKI.
    pub directory_root: Option<PathBuf>,
    /// Renew this long before the certificate expires.
    pub renew_before: Duration,
}

/// Serves the ACME certificate, a temporary self-signed one until the first
/// is issued, and `tls-alpn-01` challenge certificates to the validator.
#[derive(Debug)]
pub(crate) struct AcmeResolver {
    current: RwLock<Arc<CertifiedKey>>,
    challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    issued: AtomicU64,
}

impl ResolvesServerCert for AcmeResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let wants_challenge = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if wants_challenge {
            let name = hello.server_name()?.to_owned();
            return self
                .challenges
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&name)
                .cloned();
        }
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

impl AcmeResolver {
    pub(crate) fn new(domain: &str) -> Result<Arc<Self>, String> {
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = rcgen::CertificateParams::new(vec![domain.to_owned()])
            .and_then(|p| p.self_signed(&key))
            .map_err(|e| e.to_string())?;
        let ck = certified(vec![cert.der().clone()], key.serialize_der())?;
        Ok(Arc::new(Self {
            current: RwLock::new(ck),
            challenges: Mutex::default(),
            issued: AtomicU64::new(0),
        }))
    }

    pub(crate) fn issued(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }
}

/// ALPN protocols the TLS listener must offer for ACME.
pub(crate) fn alpn() -> Vec<Vec<u8>> {
    vec![b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()]
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
) -> Result<Arc<CertifiedKey>, String> {
    let key = PrivateKeyDer::try_from(key_der).map_err(|e| e.to_string())?;
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// [`certified`], for an issued certificate: the key must be the
/// certificate's. (Not for challenge certificates, whose critical
/// `acmeIdentifier` extension the check's certificate parser refuses.)
fn certified_pair(
    chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
) -> Result<Arc<CertifiedKey>, String> {
    let ck = certified(chain, key_der)?;
    ck.keys_match()
        .map_err(|e| format!("the private key does not belong to the certificate: {e}"))?;
    Ok(ck)
}

/// How long the leaf of `chain` has left, and how long it was issued for
/// (seconds; left is negative when expired).
fn validity(chain: &[CertificateDer<'_>]) -> Option<(i64, i64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(chain.first()?.as_ref()).ok()?;
    let (from, until) = (
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    Some((until - now, until - from))
}

struct Store {
    dir: PathBuf,
}

/// The file holding the issued chain and its key together: one file,
/// replaced atomically, so a crash can never pair a new certificate with
/// an old key.
const PAIR_FILE: &str = "certificate.pem";

impl Store {
    /// The stored certificate and key, if both are there and belong
    /// together (earlier versions kept them in `cert.pem` and `key.pem`).
    fn load(&self) -> Option<(Arc<CertifiedKey>, i64, i64)> {
        let pem = std::fs::read(self.dir.join(PAIR_FILE))
            .or_else(|_| {
                let mut both = std::fs::read(self.dir.join("cert.pem"))?;
                both.extend(std::fs::read(self.dir.join("key.pem"))?);
                Ok::<_, std::io::Error>(both)
            })
            .ok()?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .ok()?;
        let key = PrivateKeyDer::from_pem_slice(&pem).ok()?;
        let (left, lifetime) = validity(&chain)?;
        match certified_pair(chain, key.secret_der().to_vec()) {
            Ok(ck) => Some((ck, left, lifetime)),
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "ignoring the stored ACME certificate; a new one will be issued");
                None
            }
        }
    }

    fn save(&self, chain_pem: &str, key_pem: &str) -> std::io::Result<()> {
        let both = format!("{}\n{key_pem}", chain_pem.trim_end());
        crate::storage::files::write_private(&self.dir.join(PAIR_FILE), both.as_bytes())?;
        for old in ["cert.pem", "key.pem"] {
            let _ = std::fs::remove_file(self.dir.join(old));
        }
        Ok(())
    }
}

/// Removes the challenge certificates when an issuance attempt ends, in
/// success or failure, so a stale one is never served.
struct Challenges<'a>(&'a AcmeResolver);

impl Drop for Challenges<'_> {
    fn drop(&mut self) {
        self.0
            .challenges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// Keeps a valid certificate in `resolver`: loads a stored one, issues when
/// missing or due, and retries failures every minute. Runs forever.
pub(crate) async fn maintain(setting: AcmeSetting, resolver: Arc<AcmeResolver>, data_dir: PathBuf) {
    let store = Store {
        dir: data_dir.join("acme"),
    };
    let _ = std::fs::create_dir_all(&store.dir);
    let mut due_in = match store.load() {
        Some((ck, left, lifetime)) => {
            *resolver.current.write().unwrap_or_else(|p| p.into_inner()) = ck;
            renew_in(left, lifetime, setting.renew_before)
        }
        None => Duration::ZERO,
    };
    // Failures retry after 2 s, doubling to 10 minutes (the ACME server may
    // still be starting, or rate-limiting us).
    let mut retry = Duration::from_secs(2);
    loop {
        tokio::time::sleep(due_in).await;
        match issue(&setting, &resolver, &store).await {
            Ok((left, lifetime)) => {
                resolver.issued.fetch_add(1, Ordering::Relaxed);
                tracing::info!(domain = %setting.domain, valid_for_s = left, "ACME certificate installed");
                due_in = renew_in(left, lifetime, setting.renew_before).max(Duration::from_secs(1));
                retry = Duration::from_secs(2);
            }
            Err(e) => {
                tracing::error!(domain = %setting.domain, error = %e, retry_in_s = retry.as_secs(), "ACME issuance failed");
                due_in = retry;
                retry = (retry * 2).min(Duration::from_secs(600));
            }
        }
    }
}

/// When to renew a certificate with `seconds_left` of a `lifetime`:
/// `renew_before` ahead of expiry, but never more than two thirds of the
/// lifetime ahead — a `renew_before` as long as the lifetime (30 days for
/// a 7-day certificate) would otherwise renew without pause.
fn renew_in(seconds_left: i64, lifetime: i64, renew_before: Duration) -> Duration {
    let left = u64::try_from(seconds_left).unwrap_or(0);
    let lifetime = u64::try_from(lifetime).unwrap_or(0);
    let before = renew_before.as_secs().min(lifetime / 3 * 2);
    Duration::from_secs(left.saturating_sub(before))
}

async fn account(setting: &AcmeSetting, store: &Store) -> Result<Account, String> {
    let builder = match &setting.directory_root {
        Some(root) => Account::builder_with_root(root),
        None => Account::builder(),
    }
    .map_err(|e| format!("cannot set up the ACME client: {e}"))?;
    let path = store.dir.join("account.json");
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(credentials) = serde_json::from_str::<AccountCredentials>(&text)
        && let Ok(account) = builder.from_credentials(credentials).await
    {
        return Ok(account);
    }
    let builder = match &setting.directory_root {
        Some(root) => Account::builder_with_root(root),
        None => Account::builder(),
    }
    .map_err(|e| format!("cannot set up the ACME client: {e}"))?;
    let (account, credentials) = builder
        .create(
            &NewAccount {
                contact: &[],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            setting.directory_url.clone(),
            None,
        )
        .await
        .map_err(|e| {
            format!(
                "cannot create an ACME account at {}: {e}",
                setting.directory_url
            )
        })?;
    if let Ok(text) = serde_json::to_string(&credentials) {
        let _ = crate::storage::files::write_private(&path, text.as_bytes());
    }
    Ok(account)
}

async fn issue(
    setting: &AcmeSetting,
    resolver: &AcmeResolver,
    store: &Store,
) -> Result<(i64, i64), String> {
    let account = account(setting, store).await?;
    let _challenges = Challenges(resolver);
    let identifiers = [Identifier::Dns(setting.domain.clone())];
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(|e| format!("order refused: {e}"))?;
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
        if authz.status == AuthorizationStatus::Valid {
            continue;
        }
        let mut challenge = authz
            .challenge(ChallengeType::TlsAlpn01)
            .ok_or("the ACME server offers no tls-alpn-01 challenge")?;
        let digest = challenge.key_authorization().digest();
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params = rcgen::CertificateParams::new(vec![setting.domain.clone()])
            .map_err(|e| e.to_string())?;
        params.custom_extensions =
            vec![rcgen::CustomExtension::new_acme_identifier(digest.as_ref())];
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        let ck = certified(vec![cert.der().clone()], key.serialize_der())?;
        resolver
            .challenges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(setting.domain.clone(), ck);
        challenge
            .set_ready()
            .await
            .map_err(|e| format!("challenge: {e}"))?;
    }
    let retries = RetryPolicy::default();
    let status = order
        .poll_ready(&retries)
        .await
        .map_err(|e| format!("order: {e}"))?;
    if status != OrderStatus::Ready {
        return Err(format!(
            "the order ended {status:?} (the challenge was not validated)"
        ));
    }
    let key_pem = order
        .finalize()
        .await
        .map_err(|e| format!("finalize: {e}"))?;
    let chain_pem = order
        .poll_certificate(&retries)
        .await
        .map_err(|e| format!("certificate: {e}"))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the issued chain is not PEM: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let validity = validity(&chain).unwrap_or((0, 0));
    let ck = certified_pair(chain, key.secret_der().to_vec())?;
    store.save(&chain_pem, &key_pem).map_err(|e| {
        format!(
            "cannot store the certificate in {}: {e}",
            store.dir.display()
        )
    })?;
    *resolver.current.write().unwrap_or_else(|p| p.into_inner()) = ck;
    Ok(validity)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    #[test]
    fn renewal_is_due_before_expiry_and_never_continuous() {
        let thirty = Duration::from_secs(30 * DAY as u64);
        // A 90-day certificate with 60 days left renews in 30 days.
        assert_eq!(
            renew_in(60 * DAY, 90 * DAY, thirty).as_secs(),
            30 * DAY as u64
        );
        // A 7-day certificate is renewed when a third of it is left, not
        // at once and again and again.
        assert_eq!(
            renew_in(7 * DAY, 7 * DAY, thirty).as_secs(),
            7 * DAY as u64 / 3
        );
        // Expired: now.
        assert_eq!(renew_in(-5, 90 * DAY, thirty), Duration::ZERO);
    }

    #[test]
    fn a_stored_pair_that_does_not_match_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store {
            dir: dir.path().to_owned(),
        };
        let issue = || {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["example.test".to_owned()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (cert_a, key_a) = issue();
        let (_, key_b) = issue();
        store.save(&cert_a, &key_a).unwrap();
        assert!(store.load().is_some());
        store.save(&cert_a, &key_b).unwrap();
        assert!(
            store.load().is_none(),
            "a key of another certificate is refused"
        );
        // One file, owner-only.
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join(PAIR_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
