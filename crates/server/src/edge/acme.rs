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

/// Seconds until the leaf of `chain` expires (negative when expired).
fn seconds_left(chain: &[CertificateDer<'_>]) -> Option<i64> {
    let leaf = chain.first()?;
    let cert = webpki_not_after(leaf)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    Some(cert - now)
}

/// `notAfter` of a certificate.
fn webpki_not_after(der: &CertificateDer<'_>) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

struct Store {
    dir: PathBuf,
}

impl Store {
    fn load_cert(&self) -> Option<(Vec<CertificateDer<'static>>, Vec<u8>)> {
        let chain: Vec<_> = CertificateDer::pem_file_iter(self.dir.join("cert.pem"))
            .ok()?
            .collect::<Result<_, _>>()
            .ok()?;
        let key = PrivateKeyDer::from_pem_file(self.dir.join("key.pem")).ok()?;
        Some((chain, key.secret_der().to_vec()))
    }
}

/// Keeps a valid certificate in `resolver`: loads a stored one, issues when
/// missing or due, and retries failures every minute. Runs forever.
pub(crate) async fn maintain(setting: AcmeSetting, resolver: Arc<AcmeResolver>, data_dir: PathBuf) {
    let store = Store {
        dir: data_dir.join("acme"),
    };
    let _ = std::fs::create_dir_all(&store.dir);
    let mut due_in = match store.load_cert() {
        Some((chain, key)) => {
            let left = seconds_left(&chain).unwrap_or(0);
            if let Ok(ck) = certified(chain, key) {
                *resolver.current.write().unwrap_or_else(|p| p.into_inner()) = ck;
            }
            renew_in(left, setting.renew_before)
        }
        None => Duration::ZERO,
    };
    // Failures retry after 2 s, doubling to 10 minutes (the ACME server may
    // still be starting, or rate-limiting us).
    let mut retry = Duration::from_secs(2);
    loop {
        tokio::time::sleep(due_in).await;
        match issue(&setting, &resolver, &store).await {
            Ok(left) => {
                resolver.issued.fetch_add(1, Ordering::Relaxed);
                tracing::info!(domain = %setting.domain, valid_for_s = left, "ACME certificate installed");
                due_in = renew_in(left, setting.renew_before).max(Duration::from_secs(1));
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

fn renew_in(seconds_left: i64, renew_before: Duration) -> Duration {
    let left = u64::try_from(seconds_left).unwrap_or(0);
    Duration::from_secs(left.saturating_sub(renew_before.as_secs()))
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
) -> Result<i64, String> {
    let account = account(setting, store).await?;
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
    resolver
        .challenges
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
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
    let left = seconds_left(&chain).unwrap_or(0);
    let ck = certified(chain, key.secret_der().to_vec())?;
    std::fs::write(store.dir.join("cert.pem"), &chain_pem).map_err(|e| e.to_string())?;
    crate::storage::files::write_private(&store.dir.join("key.pem"), key_pem.as_bytes())
        .map_err(|e| e.to_string())?;
    *resolver.current.write().unwrap_or_else(|p| p.into_inner()) = ck;
    Ok(left)
}
