//! Every case against every client. A case is a man in the middle
//! (`ferrolink_testkit::mitm`) presenting some chain with some handshake,
//! plus what the client pins, revokes and believes the time to be. Each
//! refusal is checked from the server's side: no application-data byte
//! arrived, so the key did not. The control case must be accepted by every
//! client and reach the real server behind the man in the middle.
//!
//! The outcomes are the table in `docs/security.md`; this test fails when
//! the table there differs (run it with `FERROLINK_BLESS=1` to rewrite it).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use embedded_io_adapters::tokio_1::FromTokio;
use ferrolink_client::Client;
use ferrolink_client::time::{
    NetworkClock, RoughtimeQuery, RoughtimeServer as ClientRoughtimeServer, SntpQuery,
    TrustedTime as ClientTrustedTime,
};
use ferrolink_client::tls::{FixedTime, TlsConfig};
use ferrolink_device::json::Writer;
use ferrolink_device::tls::{self as device_tls, TlsBuffers, TrustConfig};
use ferrolink_device::{
    Args, Buffers, Clock, Config, Handler, HandlerError, Instant, Session, TrustedTime,
};
use ferrolink_proto::{roughtime, sntp};
use ferrolink_testkit::TestServer;
use ferrolink_testkit::mitm::{Attack, MitmServer};
use ferrolink_testkit::pki::{self, Ca, Leaf};
use ferrolink_testkit::python::PyProcess;
use ferrolink_testkit::roughtime::{Fault, RoughtimeServer};
use ferrolink_testkit::sntp::time_server;
use tokio::net::{TcpStream, UdpSocket};

/// 2001-01-01: a clock that was never set.
const UNSET_CLOCK_SECS: u64 = 978_307_200;

/// Where the client's time comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Time {
    /// The host's clock, kept by NTP.
    Host,
    /// A clock reading 2001.
    BeforeFloor,
    /// Two SNTP servers an hour apart.
    SntpDisagree,
    /// A Roughtime answer whose time is not signed by the server's key.
    RoughtimeForged,
}

/// One row of the table.
struct Case {
    name: &'static str,
    attack: Attack,
    /// The root the client pins.
    root: Ca,
    /// What the man in the middle presents.
    leaf: Leaf,
    /// SHA-256 fingerprints (hex) the client refuses.
    revoked: Vec<String>,
    time: Time,
    /// Text the device client's refusal must contain.
    device_says: &'static str,
    /// Text the tokio client's refusal must contain.
    tokio_says: &'static str,
}

const ACCEPTED: &str = "";

fn cases() -> Vec<Case> {
    let root = || Ca::root("ferrolink test root");
    let on = |name, attack, device_says, tokio_says| {
        let root = root();
        let leaf = root.leaf(&["localhost"]);
        Case {
            name,
            attack,
            root,
            leaf,
            revoked: Vec::new(),
            time: Time::Host,
            device_says,
            tokio_says,
        }
    };
    let with_leaf = |name, make: &dyn Fn(&Ca) -> Leaf, device_says, tokio_says| {
        let root = root();
        let leaf = make(&root);
        Case {
            name,
            attack: Attack::Honest,
            root,
            leaf,
            revoked: Vec::new(),
            time: Time::Host,
            device_says,
            tokio_says,
        }
    };
    let mut cases = vec![
        on(
            "honest server (control)",
            Attack::Honest,
            ACCEPTED,
            ACCEPTED,
        ),
        on(
            "no Certificate, no CertificateVerify",
            Attack::NoCertificate,
            "without sending a certificate",
            "got Finished when expecting Certificate or CertificateRequest",
        ),
        on(
            "the genuine chain without CertificateVerify",
            Attack::CertificateWithoutVerify,
            "without proving it holds the certificate's key",
            "got Finished when expecting CertificateVerify",
        ),
        on(
            "CertificateVerify with a corrupted signature",
            Attack::CorruptSignature,
            "handshake signature (CertificateVerify) does not verify",
            "handshake signature (CertificateVerify) does not verify",
        ),
        on(
            "CertificateVerify signed by another key",
            Attack::SignedByAnotherKey,
            "handshake signature (CertificateVerify) does not verify",
            "handshake signature (CertificateVerify) does not verify",
        ),
        on(
            "CertificateVerify before Certificate",
            Attack::VerifyBeforeCertificate,
            "came out of order (CertificateVerify before Certificate)",
            "got CertificateVerify when expecting Certificate",
        ),
        on(
            "Finished before CertificateVerify",
            Attack::FinishedBeforeVerify,
            "without proving it holds the certificate's key",
            "got Finished when expecting CertificateVerify",
        ),
        with_leaf(
            "certificate from an unpinned CA",
            &|_| Ca::root("another CA").leaf(&["localhost"]),
            "does not chain to a pinned root",
            "does not chain to a pinned root",
        ),
        with_leaf(
            "leaf issued by a rogue CA of the pinned root's name",
            &|_| Ca::root("ferrolink test root").leaf(&["localhost"]),
            "a signature in the server's certificate chain is invalid",
            "a signature in its certificate chain is invalid",
        ),
        with_leaf(
            "certificate for another host",
            &|root| root.leaf(&["device-gateway.example"]),
            "not valid for the host name dialled",
            "not valid for the name \"localhost\"",
        ),
        with_leaf(
            "expired certificate",
            &|root| root.leaf_valid(&["localhost"], -30 * 86_400, -86_400),
            "has expired",
            "has expired",
        ),
        with_leaf(
            "certificate not yet valid",
            &|root| root.leaf_valid(&["localhost"], 86_400, 30 * 86_400),
            "not valid yet",
            "not valid yet",
        ),
        with_leaf(
            "self-signed leaf",
            &|_| pki::self_signed(&["localhost"]),
            "does not chain to a pinned root",
            "does not chain to a pinned root",
        ),
        on(
            "plaintext answer to the ClientHello (downgrade)",
            Attack::Plaintext,
            "TLS handshake failed",
            "TLS handshake with localhost failed",
        ),
    ];
    let mut revoked_leaf = on(
        "revoked leaf",
        Attack::Honest,
        "certificate 0 of the server's chain is on the revocation list",
        "certificate 0 of the server's chain is on the revocation list",
    );
    revoked_leaf.revoked = vec![revoked_leaf.leaf.cert_sha256.clone()];
    let root_of_intermediate = root();
    let intermediate = root_of_intermediate.intermediate("issuing CA");
    let revoked_intermediate = Case {
        name: "revoked intermediate (by public key)",
        attack: Attack::Honest,
        leaf: intermediate.leaf(&["localhost"]),
        root: root_of_intermediate,
        revoked: vec![intermediate.spki_sha256.clone()],
        time: Time::Host,
        device_says: "certificate 1 of the server's chain is on the revocation list",
        tokio_says: "certificate 1 of the server's chain is on the revocation list",
    };
    let mut before_floor = on(
        "clock before the build floor",
        Attack::Honest,
        "earlier than this build",
        "earlier than this build",
    );
    before_floor.time = Time::BeforeFloor;
    let mut disagree = on(
        "SNTP servers disagree",
        Attack::Honest,
        "disagree by",
        "disagree by",
    );
    disagree.time = Time::SntpDisagree;
    let mut forged_time = on(
        "forged Roughtime answer",
        Attack::Honest,
        "not signed by the server's delegated key",
        "not signed by the server's delegated key",
    );
    forged_time.time = Time::RoughtimeForged;
    cases.splice(
        12..12,
        [
            revoked_leaf,
            revoked_intermediate,
            before_floor,
            disagree,
            forged_time,
        ],
    );
    cases
}

/// What one client did in one case.
#[derive(Debug, Clone)]
enum Outcome {
    Accepted(String),
    Refused(String),
    NotApplicable(&'static str),
}

impl Outcome {
    fn cell(&self) -> String {
        match self {
            Self::Accepted(_) => "accepted".to_owned(),
            Self::Refused(text) => format!("refused: {}", normalise(text)),
            Self::NotApplicable(why) => format!("n/a ({why})"),
        }
    }
}

/// Stable text for the table: no fingerprints, ports, source lines,
/// measured numbers or build dates.
fn normalise(text: &str) -> String {
    let (y, m, d) = ferrolink_proto::civil_date(ferrolink_proto::BUILD_FLOOR);
    let text = text
        .replace(&format!("{y:04}-{m:02}-{d:02}"), "<build date>")
        .replace('|', "\\|")
        .replace('\n', " ");
    let mut out = String::new();
    let mut rest = text.as_str();
    while !rest.is_empty() {
        let run = rest
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(rest.len());
        if run == 0 {
            let c = rest.chars().next().expect("not empty");
            out.push(c);
            rest = &rest[c.len_utf8()..];
            continue;
        }
        let token = &rest[..run];
        let digits = token.bytes().all(|b| b.is_ascii_digit());
        let after_colon = out.ends_with(':');
        if run == 64 {
            out.push_str("<sha256>");
        } else if digits && (run >= 5 || (after_colon && run >= 3)) {
            out.push('N');
        } else {
            out.push_str(token);
        }
        rest = &rest[run..];
    }
    out
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

fn hex32(hex: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
    }
    out
}

/// Two SNTP servers an hour apart.
async fn disagreeing_time_servers() -> Vec<SocketAddr> {
    vec![
        time_server(Some(0)).await,
        time_server(Some(3_600_000)).await,
    ]
}

/// Milliseconds since the clock was made, on tokio's clock.
#[derive(Debug, Clone, Copy)]
struct TokioClock(tokio::time::Instant);

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        Instant::from_millis(self.0.elapsed().as_millis() as u64)
    }

    async fn sleep_until(&self, at: Instant) {
        tokio::time::sleep_until(self.0 + Duration::from_millis(at.as_millis())).await;
    }
}

/// A device with no functions of its own.
struct NoFunctions;

impl Handler for NoFunctions {
    async fn call(
        &mut self,
        _name: &str,
        _args: Args<'_>,
        _out: &mut Writer<'_>,
    ) -> Result<(), HandlerError> {
        Err(HandlerError::NoSuchFunction)
    }
}

/// The device's trusted time for `case`, as firmware would get it (SNTP
/// over UDP with `ferrolink_proto::sntp`), or why there is none.
async fn device_time(case: &Case, clock: &TokioClock) -> Result<TrustedTime, String> {
    let unix_ms = match case.time {
        Time::Host => unix_ms(),
        Time::BeforeFloor => UNSET_CLOCK_SECS * 1000,
        Time::SntpDisagree => {
            let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
            let mut samples = Vec::new();
            for (i, server) in disagreeing_time_servers().await.into_iter().enumerate() {
                let nonce = 0x5eed_0000 + i as u64;
                let sent = clock.now().as_millis();
                socket
                    .send_to(&sntp::request(nonce), server)
                    .await
                    .expect("send");
                let mut buf = [0u8; 128];
                let (n, _) =
                    tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
                        .await
                        .expect("an answer")
                        .expect("receive");
                samples.push(
                    sntp::parse(&buf[..n], nonce, sent, clock.now().as_millis()).expect("valid"),
                );
            }
            return TrustedTime::from_sntp(&mut samples, 2, 2_000, clock.now())
                .map_err(|e| e.to_string());
        }
        Time::RoughtimeForged => {
            let server = RoughtimeServer::start(Fault::BadResponseSignature).await;
            let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
            let mut packet = [0u8; roughtime::REQUEST_LEN];
            let pending = roughtime::request(&[7; 32], &server.public_key(), &mut packet);
            socket.send_to(&packet, server.addr()).await.expect("send");
            let mut buf = [0u8; roughtime::MAX_RESPONSE_LEN];
            let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
                .await
                .expect("an answer")
                .expect("receive");
            return match pending.verify(&buf[..n], &server.public_key()) {
                Ok(_) => Ok(TrustedTime::unset()),
                Err(e) => Err(e.to_string()),
            };
        }
    };
    TrustedTime::from_trusted_source(unix_ms, clock.now()).map_err(|e| e.to_string())
}

/// The no_std device client over host TCP.
async fn device(case: &Case, mitm: &MitmServer, key: &str) -> Outcome {
    let clock = TokioClock(tokio::time::Instant::now());
    let time = match device_time(case, &clock).await {
        Ok(time) => time,
        Err(why) => {
            // Without a trusted time the device does not even dial.
            let tcp = TcpStream::connect(mitm.addr()).await.expect("connect");
            let roots = [case.root.der.as_slice()];
            let mut buffers = Box::new(TlsBuffers::<17_000, 2_048>::new());
            let e = device_tls::connect(
                FromTokio::new(tcp),
                "localhost",
                TrustConfig::pinned(&roots),
                &TrustedTime::unset(),
                clock.now(),
                rand_core::OsRng,
                &mut buffers,
            )
            .await
            .map(|_| ())
            .expect_err("no connection without a trusted time");
            return Outcome::Refused(format!("{why} ({e})"));
        }
    };
    let tcp = TcpStream::connect(mitm.addr()).await.expect("connect");
    let roots = [case.root.der.as_slice()];
    let revoked: Vec<[u8; 32]> = case.revoked.iter().map(|h| hex32(h)).collect();
    let trust = TrustConfig {
        revoked: &revoked,
        ..TrustConfig::pinned(&roots)
    };
    let mut tls_buffers = Box::new(TlsBuffers::<17_000, 2_048>::new());
    let stream = match device_tls::connect(
        FromTokio::new(tcp),
        "localhost",
        trust,
        &time,
        clock.now(),
        rand_core::OsRng,
        &mut tls_buffers,
    )
    .await
    {
        Ok(stream) => stream,
        Err(e) => return Outcome::Refused(e.to_string()),
    };
    let config = Config::new("localhost", mitm.port(), key, &[]);
    let mut buffers = Box::new(Buffers::<4096, 2048>::new());
    let mut session = match Session::connect(stream, clock, &config, &mut buffers, 7).await {
        Ok(session) => session,
        Err(e) => return Outcome::Refused(format!("after TLS: {e}")),
    };
    let echo = session
        .call(
            &mut NoFunctions,
            "anvil.private.echo",
            "[\"through\"]",
            "{}",
            Duration::from_secs(10),
        )
        .await
        .map(str::to_owned);
    Outcome::Accepted(format!("echo: {echo:?}"))
}

/// The tokio client.
async fn tokio_client(case: &Case, mitm: &MitmServer, key: &str) -> Outcome {
    let mut tls = TlsConfig::with_root_pem(case.root.pem.as_bytes()).expect("a PEM root");
    for fingerprint in &case.revoked {
        tls = tls.revoke(fingerprint).expect("a fingerprint");
    }
    let mut time_refusal = None;
    match case.time {
        Time::Host => {}
        Time::BeforeFloor => tls = tls.time_source(Arc::new(FixedTime::new(UNSET_CLOCK_SECS))),
        Time::SntpDisagree => {
            let mut query = SntpQuery::new(disagreeing_time_servers().await);
            query.timeout = Duration::from_secs(2);
            let e = NetworkClock::sntp(&query)
                .await
                .expect_err("disagreeing servers give no time");
            time_refusal = Some(e.to_string());
            tls = tls.time_source(Arc::new(ClientTrustedTime::default()));
        }
        Time::RoughtimeForged => {
            let server = RoughtimeServer::start(Fault::BadResponseSignature).await;
            let mut query = RoughtimeQuery::new(vec![ClientRoughtimeServer {
                addr: server.addr(),
                public_key: server.public_key(),
            }]);
            query.timeout = Duration::from_secs(2);
            let e = NetworkClock::roughtime(&query)
                .await
                .expect_err("a forged answer gives no time");
            time_refusal = Some(e.to_string());
            tls = tls.time_source(Arc::new(ClientTrustedTime::default()));
        }
    }
    let url = format!("wss://localhost:{}/_/uplink", mitm.port());
    match Client::builder(url, key).tls(tls).connect().await {
        Ok(client) => {
            let echo: Result<String, _> = client.call("anvil.private.echo", ("through",)).await;
            client.disconnect().await;
            Outcome::Accepted(format!("echo: {echo:?}"))
        }
        Err(e) => Outcome::Refused(match time_refusal {
            Some(why) => format!("{why} ({e})"),
            None => e.to_string(),
        }),
    }
}

/// The official `anvil-uplink` client, trusting the pinned root through
/// `SSL_CERT_FILE`. It has no revocation list and takes the time from the
/// operating system, so those cases do not apply to it.
async fn python(case: &Case, mitm: &MitmServer, key: &str, dir: &Path) -> Outcome {
    if case.time != Time::Host {
        return Outcome::NotApplicable("it uses the operating system's clock");
    }
    if !case.revoked.is_empty() {
        return Outcome::NotApplicable("it has no revocation list");
    }
    let ca = dir.join(format!("root-{}.pem", mitm.port()));
    std::fs::write(&ca, &case.root.pem).expect("write the root");
    let url = format!("wss://localhost:{}/_/uplink", mitm.port());
    let key = key.to_owned();
    let result = tokio::task::spawn_blocking(move || {
        let mut py = PyProcess::spawn_env(
            "caller.py",
            &[&url, &key, "call", "anvil.private.echo", "[\"through\"]"],
            &[("SSL_CERT_FILE", ca.as_os_str())],
        );
        py.result(Duration::from_secs(60))
    })
    .await
    .expect("the Python runner");
    match result.get("connect_error") {
        Some(e) => Outcome::Refused(e.as_str().unwrap_or_default().to_owned()),
        None => Outcome::Accepted(result.to_string()),
    }
}

/// What one client did, and what the man in the middle saw.
struct Run {
    outcome: Outcome,
    app_data_bytes: u64,
    client_finished: u64,
    seen: Vec<String>,
}

async fn run(case: &Case, client: usize, upstream: &TestServer, dir: &Path) -> Run {
    let mitm = MitmServer::start(&case.leaf, case.attack, Some(upstream.addr())).await;
    let key = &upstream.server_key;
    let outcome = match client {
        0 => device(case, &mitm, key).await,
        1 => tokio_client(case, &mitm, key).await,
        _ => python(case, &mitm, key, dir).await,
    };
    // Let the man in the middle finish reading what the client sent.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while mitm.outcomes().len() < mitm.client_hellos() as usize
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Run {
        outcome,
        app_data_bytes: mitm.app_data_bytes(),
        client_finished: mitm.client_finished(),
        seen: mitm.outcomes(),
    }
}

const CLIENTS: [&str; 3] = [
    "device client (`ferrolink-device`)",
    "tokio client (`ferrolink-client`)",
    "official `anvil-uplink` 0.7.0",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_refuses_every_man_in_the_middle() {
    let upstream = TestServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = cases();
    // Concurrently on this task: the device's futures are not `Send`.
    let runs = futures_util::future::join_all(cases.iter().map(|case| {
        let (upstream, dir) = (&upstream, dir.path());
        async move {
            let mut runs = Vec::new();
            for client in 0..CLIENTS.len() {
                runs.push(run(case, client, upstream, dir).await);
            }
            runs
        }
    }))
    .await;

    let mut failures = Vec::new();
    let mut table = format!("| case | {} |\n|---|---|---|---|\n", CLIENTS.join(" | "));
    for (case, runs) in cases.iter().zip(&runs) {
        let cells: Vec<String> = runs.iter().map(|r| r.outcome.cell()).collect();
        table.push_str(&format!("| {} | {} |\n", case.name, cells.join(" | ")));
        for (client, run) in runs.iter().enumerate() {
            let who = format!("{} / {}", case.name, CLIENTS[client]);
            let expected = [case.device_says, case.tokio_says, ""][client];
            match (
                &run.outcome,
                case.attack == Attack::Honest && case.device_says.is_empty(),
            ) {
                (Outcome::Accepted(what), true) => {
                    if !what.contains("through") {
                        failures.push(format!("{who}: accepted but the call failed: {what}"));
                    }
                    if run.client_finished == 0 || run.app_data_bytes == 0 {
                        failures.push(format!(
                            "{who}: the control reached nothing: {:?}",
                            run.seen
                        ));
                    }
                }
                (Outcome::Refused(text), false) => {
                    if !text.contains(expected) {
                        failures.push(format!(
                            "{who}: refused, but not saying {expected:?}: {text}"
                        ));
                    }
                    if run.app_data_bytes != 0 {
                        failures.push(format!(
                            "{who}: {} application-data bytes reached the man in the middle ({:?})",
                            run.app_data_bytes, run.seen
                        ));
                    }
                }
                (Outcome::NotApplicable(_), false) if client == 2 => {}
                (other, _) => {
                    failures.push(format!("{who}: unexpected {other:?} ({:?})", run.seen))
                }
            }
        }
    }
    // Only the control went through the man in the middle to the real
    // server, key and all, once per client.
    assert_eq!(upstream.key_messages_received(), 3, "{failures:#?}");
    assert!(failures.is_empty(), "{}\n\n{table}", failures.join("\n"));
    check_docs(&table);
}

const START: &str = "<!-- mitm-table:start (written by crates/mitm-suite; FERROLINK_BLESS=1 cargo test -p ferrolink-mitm-suite) -->\n";
const END: &str = "<!-- mitm-table:end -->";

/// `docs/security.md` holds `table` between the markers, or is rewritten
/// to hold it with `FERROLINK_BLESS=1`.
fn check_docs(table: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/security.md");
    let docs = std::fs::read_to_string(&path).expect("docs/security.md");
    let (Some(start), Some(end)) = (docs.find(START), docs.find(END)) else {
        panic!("docs/security.md lacks the markers {START:?} and {END:?}");
    };
    let current = &docs[start + START.len()..end];
    if current == table {
        return;
    }
    if std::env::var_os("FERROLINK_BLESS").is_some() {
        let updated = format!("{}{START}{table}{}", &docs[..start], &docs[end..]);
        std::fs::write(&path, updated).expect("write docs/security.md");
        return;
    }
    panic!(
        "the table in docs/security.md is not what the clients do now; rerun with FERROLINK_BLESS=1 to rewrite it. Now:\n{table}"
    );
}
