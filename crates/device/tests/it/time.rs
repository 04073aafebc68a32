//! Trusted time from Roughtime, as the firmware gets it: a request per
//! server over UDP (`ferrolink_proto::roughtime`), each answer verified
//! against the server's pinned key, the overlap accepted by `TrustedTime`.
//! The device refuses to connect until that has succeeded.

use std::time::Duration;

use embedded_io_adapters::tokio_1::FromTokio;
use ferrolink_device::time::TimeError;
use ferrolink_device::tls::{self, TlsBuffers, TlsConnectError, TrustConfig};
use ferrolink_device::{Clock as _, TrustedTime};
use ferrolink_proto::roughtime;
use ferrolink_testkit::TestServer;
use ferrolink_testkit::TlsSetting;
use ferrolink_testkit::roughtime::{Fault, RoughtimeServer};
use tokio::net::{TcpStream, UdpSocket};

use crate::support::TokioClock;

/// Asks each server in turn, as the Pico W firmware does; returns the
/// trusted time, or every reason it is not.
async fn roughtime_time(
    servers: &[&RoughtimeServer],
    need: usize,
    clock: &TokioClock,
) -> Result<TrustedTime, String> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut samples = Vec::new();
    let mut refused = Vec::new();
    for server in servers {
        let mut packet = [0u8; roughtime::REQUEST_LEN];
        let nonce: [u8; 32] =
            std::array::from_fn(|_| rand_core::RngCore::next_u32(&mut rand_core::OsRng) as u8);
        let pending = roughtime::request(&nonce, &server.public_key(), &mut packet);
        let sent = clock.now();
        socket.send_to(&packet, server.addr()).await.unwrap();
        let mut buf = [0u8; roughtime::MAX_RESPONSE_LEN];
        let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf)).await
        else {
            refused.push("no answer".to_owned());
            continue;
        };
        match pending.verify(&buf[..n], &server.public_key()) {
            Ok(answer) => samples.push(roughtime::Sample::new(&answer, sent, clock.now())),
            Err(e) => refused.push(e.to_string()),
        }
    }
    TrustedTime::from_roughtime(&samples, need, clock.now())
        .map_err(|e| format!("{e} ({})", refused.join("; ")))
}

#[tokio::test]
async fn a_verified_roughtime_answer_is_a_trusted_time() {
    let clock = TokioClock::new();
    let server = RoughtimeServer::start(Fault::None).await;
    let time = roughtime_time(&[&server], 1, &clock).await.unwrap();
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(time.unix_secs(clock.now()).unwrap().abs_diff(host) <= 5);
}

#[tokio::test]
async fn forged_or_lying_roughtime_answers_give_no_time() {
    let clock = TokioClock::new();
    for (fault, says) in [
        (Fault::BadDelegationSignature, "pinned key"),
        (Fault::BadResponseSignature, "delegated key"),
        (Fault::WrongNonce, "nonce mismatch"),
        (
            Fault::MidpointOutsideDelegation,
            "outside the delegation's validity",
        ),
        (Fault::WrongRoot, "does not cover our request"),
    ] {
        let server = RoughtimeServer::start(fault).await;
        let e = roughtime_time(&[&server], 1, &clock).await.unwrap_err();
        assert!(e.contains(says), "{fault:?}: {e}");
    }
    // Two servers that do not overlap: one lies with its own key.
    let honest = RoughtimeServer::start(Fault::None).await;
    let liar = RoughtimeServer::start(Fault::Offset(-7_200)).await;
    let e = roughtime_time(&[&honest, &liar], 2, &clock)
        .await
        .unwrap_err();
    assert!(e.contains("disagree"), "{e}");
}

async fn connect(
    server: &TestServer,
    roots: &[&[u8]],
    time: TrustedTime,
    clock: &TokioClock,
) -> Result<(), TlsConnectError> {
    let tcp = TcpStream::connect(server.addr()).await.unwrap();
    let mut buffers = Box::new(TlsBuffers::<17_000, 2_048>::new());
    tls::connect(
        FromTokio::new(tcp),
        "localhost",
        TrustConfig::pinned(roots),
        &time,
        clock.now(),
        rand_core::OsRng,
        &mut buffers,
    )
    .await
    .map(|_| ())
}

#[tokio::test]
async fn the_device_does_not_connect_until_roughtime_is_trusted() {
    let server = TestServer::start_with(|c| c.tls = Some(TlsSetting::Dev)).await;
    let ca = std::fs::read(server.data_dir().join("tls/dev-ca.der")).unwrap();
    let roots = [ca.as_slice()];
    let clock = TokioClock::new();
    // A forger on the network: no time, so no connection.
    let forger = RoughtimeServer::start(Fault::BadResponseSignature).await;
    assert!(roughtime_time(&[&forger], 1, &clock).await.is_err());
    assert_eq!(
        connect(&server, &roots, TrustedTime::unset(), &clock).await,
        Err(TlsConnectError::Time(TimeError::NotSet))
    );
    let honest = RoughtimeServer::start(Fault::None).await;
    let time = roughtime_time(&[&honest], 1, &clock).await.unwrap();
    connect(&server, &roots, time, &clock).await.unwrap();
    assert_eq!(
        server.key_messages_received(),
        0,
        "TLS only, no session yet"
    );
}
