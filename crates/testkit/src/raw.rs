//! A bare websocket peer that sends exactly what a test says.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// What the server sent, as a test sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A text frame.
    Text(String),
    /// A close frame with its code and reason.
    Close(u16, String),
    /// The connection ended without a close frame.
    Eof,
}

/// A websocket client with no protocol logic.
pub struct RawClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl RawClient {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connects");
        Self { ws }
    }

    /// Connects with extra request headers (a browser's `Origin` and
    /// `Cookie`), or returns the HTTP status the upgrade was refused with.
    pub async fn connect_with_headers(url: &str, headers: &[(&str, &str)]) -> Result<Self, u16> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let mut request = url.into_client_request().expect("a websocket url");
        for (name, value) in headers {
            request.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                    .expect("header name"),
                value.parse().expect("header value"),
            );
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => Ok(Self { ws }),
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => Err(res.status().as_u16()),
            Err(e) => panic!("websocket connect failed: {e}"),
        }
    }

    /// Connects from a chosen local address (any 127.x.y.z works on
    /// loopback), to test per-address behaviour.
    pub async fn connect_from(url: &str, local: std::net::IpAddr) -> Self {
        Self::try_connect_from(url, local)
            .await
            .unwrap_or_else(|(status, body)| panic!("websocket upgrade refused: {status} {body}"))
    }

    /// Connects from a chosen local address, or returns the HTTP status and
    /// body the connection was refused with.
    pub async fn try_connect_from(
        url: &str,
        local: std::net::IpAddr,
    ) -> Result<Self, (u16, String)> {
        Self::connect_from_with_headers(url, local, &[]).await
    }

    /// [`RawClient::try_connect_from`] with extra request headers (what a
    /// reverse proxy adds).
    pub async fn connect_from_with_headers(
        url: &str,
        local: std::net::IpAddr,
        headers: &[(&str, &str)],
    ) -> Result<Self, (u16, String)> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let host = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .expect("host:port");
        let remote: std::net::SocketAddr = host.parse().expect("a ws://IP:PORT url");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind((local, 0).into())
            .expect("bind the local address");
        let tcp = socket.connect(remote).await.expect("connect");
        let mut request = url.into_client_request().expect("a websocket url");
        for (name, value) in headers {
            request.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                    .expect("header name"),
                value.parse().expect("header value"),
            );
        }
        match tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(tcp)).await {
            Ok((ws, _)) => Ok(Self { ws }),
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
                let body = res
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Err((res.status().as_u16(), body))
            }
            Err(e) => Err((0, e.to_string())),
        }
    }

    /// Connects and authenticates with `key`, returning the auth reply.
    pub async fn authenticated(url: &str, key: &str) -> (Self, serde_json::Value) {
        let mut c = Self::connect(url).await;
        c.send_json(&serde_json::json!({"key": key, "v": 8})).await;
        let reply = c.recv_json().await;
        assert_eq!(reply["auth"], "OK", "auth failed: {reply}");
        (c, reply)
    }

    /// Registers `name` and waits until the server has processed it:
    /// `REGISTER` has no acknowledgement, but an echo sent after it is
    /// answered only afterwards (frames are handled in order).
    pub async fn register(&mut self, name: &str) {
        self.send_json(&serde_json::json!({"type": "REGISTER", "name": name}))
            .await;
        self.send_json(&serde_json::json!({
            "type": "CALL", "id": "register-barrier", "command": "anvil.private.echo", "args": [name]
        }))
        .await;
        let reply = self.recv_json().await;
        assert_eq!(
            reply["id"], "register-barrier",
            "registration of {name} refused: {reply}"
        );
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws
            .send(Message::text(text.into()))
            .await
            .expect("send text");
    }

    /// Sends a JSON value as a text frame.
    pub async fn send_json(&mut self, v: &serde_json::Value) {
        self.send_text(v.to_string()).await;
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws
            .send(Message::binary(bytes))
            .await
            .expect("send binary");
    }

    /// Sends a frame, reporting failure instead of panicking.
    pub async fn try_send_text(&mut self, text: String) -> bool {
        self.ws.send(Message::text(text)).await.is_ok()
    }

    /// The next text or close, skipping pings; panics after 10 s.
    pub async fn recv(&mut self) -> Received {
        self.recv_within(Duration::from_secs(10))
            .await
            .expect("server answered within 10 s")
    }

    /// The next text or close, or `None` if nothing came within `wait`.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            return Some(match next {
                Some(Ok(Message::Text(t))) => Received::Text(t.to_string()),
                Some(Ok(Message::Close(frame))) => match frame {
                    Some(f) => Received::Close(f.code.into(), f.reason.to_string()),
                    None => Received::Close(1005, String::new()),
                },
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => Received::Eof,
            });
        }
    }

    /// The next text frame as JSON; panics on anything else.
    pub async fn recv_json(&mut self) -> serde_json::Value {
        match self.recv().await {
            Received::Text(t) => serde_json::from_str(&t).expect("server sent JSON"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Reads until a close or end of stream, returning the fatal error text
    /// (if one came) and the close frame.
    pub async fn recv_until_closed(&mut self) -> (Option<String>, Received) {
        let mut fatal = None;
        loop {
            match self.recv().await {
                Received::Text(t) => {
                    let v: serde_json::Value = serde_json::from_str(&t).expect("JSON");
                    if v.get("id").is_none()
                        && let Some(e) = v["error"].as_str()
                    {
                        fatal = Some(e.to_owned());
                    }
                }
                end => return (fatal, end),
            }
        }
    }
}

/// Opens a TLS websocket to `url` (`wss://localhost:PORT/…`) trusting only
/// `root_pem`, sends `key` and waits for the verdict.
pub async fn tls_authenticated(url: &str, key: &str, root_pem: &str) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let port: u16 = url
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .and_then(|p| p.parse().ok())
        .ok_or("url without port")?;
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls)
        .await
        .map_err(|e| e.to_string())?;
    ws.send(Message::text(format!(r#"{{"key":"{key}","v":8}}"#)))
        .await
        .map_err(|e| e.to_string())?;
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.contains("\"auth\":\"OK\"") => Ok(()),
        other => Err(format!("not authenticated: {other:?}")),
    }
}
