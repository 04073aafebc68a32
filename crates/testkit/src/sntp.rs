//! Time servers on loopback that answer real SNTP requests, honestly or not.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use ferrolink_proto::sntp;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock reads after 1970")
        .as_millis() as u64
}

/// A UDP time server on `127.0.0.1` answering with the real time plus
/// `skew_ms` (or not at all, with `None`); it runs until the runtime ends.
pub async fn time_server(skew_ms: Option<i64>) -> SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind a UDP port");
    let addr = socket.local_addr().expect("address");
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let (Some(skew), true) = (skew_ms, n >= sntp::PACKET_LEN) else {
                continue;
            };
            let mut request = [0u8; sntp::PACKET_LEN];
            request.copy_from_slice(&buf[..sntp::PACKET_LEN]);
            let t = (unix_ms() as i64 + skew) as u64;
            let _ = socket.send_to(&sntp::response(&request, t, 2), from).await;
        }
    });
    addr
}
