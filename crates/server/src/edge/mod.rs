//! The network edge: the accept loop (TCP, the optional TLS handshake,
//! hyper HTTP/1.1 with upgrades), certificates and ACME.

use std::sync::Arc;

use axum::Router;
use axum::extract::ConnectInfo;
use tokio::io::AsyncWriteExt as _;

use crate::state::ServerState;

pub mod acme;
pub mod certificates;
pub(crate) mod limits;
pub(crate) mod proxy;
pub(crate) mod tls_stream;

/// Socket options of every accepted connection: no Nagle delay, and a dead
/// peer (a device that lost power or Wi-Fi without closing) noticed by the
/// kernel — keepalive probes after 30 s of silence, and unacknowledged
/// data given up after 30 s (`TCP_USER_TIMEOUT`) — so neither reads nor
/// writes wait on it for the kernel's default of about 15 minutes.
fn tune(tcp: &tokio::net::TcpStream) {
    let _ = tcp.set_nodelay(true);
    let sock = socket2::SockRef::from(tcp);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(30))
        .with_interval(std::time::Duration::from_secs(10))
        .with_retries(3);
    let _ = sock.set_tcp_keepalive(&keepalive);
    #[cfg(target_os = "linux")]
    let _ = sock.set_tcp_user_timeout(Some(std::time::Duration::from_secs(30)));
}

/// What the accept loop needs besides the listener.
pub(crate) struct Edge {
    pub(crate) router: Router,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) state: Arc<ServerState>,
}

/// The connection a request arrived on: its counted place (which a
/// websocket upgrade takes along to the connection's driver) and whether
/// the TCP peer is a trusted proxy.
#[derive(Clone, Debug)]
pub(crate) struct Connection {
    pub(crate) slot: Arc<limits::Slot>,
    pub(crate) via_proxy: bool,
}

/// Accepts connections until `stop` turns true; each is counted against
/// the connection limits, then served (after the TLS handshake, when
/// configured) by hyper with upgrades, so websocket connections continue
/// on their own tasks.
pub(crate) async fn accept_loop(
    listener: tokio::net::TcpListener,
    edge: Edge,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Edge { router, tls, state } = edge;
    let header_timeout = state.config.header_timeout;
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors or similar: back off briefly
                    // instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let via_proxy = proxy::is_trusted(peer.ip(), &state.config.trusted_proxies);
        let slot = match state.connections.accept(peer.ip(), !via_proxy, state.now()) {
            Ok(slot) => Arc::new(slot),
            Err(refusal) => {
                let text = refusal.text(state.connections.limits());
                tokio::spawn(refuse(tcp, text));
                continue;
            }
        };
        tune(&tcp);
        let router = router.clone();
        let tls = tls.clone();
        let proxies = state.config.trusted_proxies.clone();
        let proxy_header = state.config.trusted_proxy_header;
        let connection = Connection { slot, via_proxy };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    let client = if via_proxy {
                        proxy::client_address(peer, req.headers(), &proxies, proxy_header)
                    } else {
                        peer
                    };
                    req.extensions_mut().insert(ConnectInfo(client));
                    req.extensions_mut().insert(connection.clone());
                    let mut router = router.clone();
                    async move { tower::Service::call(&mut router, req).await }
                },
            );
            // A client that never finishes its request headers is dropped
            // (slowloris); websocket connections leave hyper after the upgrade.
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout);
            match tls {
                None => {
                    let _ = http
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await;
                }
                Some(config) => {
                    let handshake = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        tls_stream::accept(tcp, config),
                    );
                    match handshake.await {
                        Ok(Ok(stream)) => {
                            let _ = http
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .with_upgrades()
                                .await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// Answers a connection over the limits with a short plain-HTTP 503 that
/// says which limit (clients that speak TLS see a failed handshake, which
/// is all a refusal before the handshake can be), then closes it.
async fn refuse(mut tcp: tokio::net::TcpStream, text: String) {
    let body = format!("{text}\n");
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 5\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        tcp.write_all(response.as_bytes()).await?;
        tcp.shutdown().await
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), write).await;
}
