//! Server-side TLS over TCP on rustls' unbuffered API, so that an idle
//! connection holds rustls' connection state and nothing more.
//!
//! tokio-rustls (over rustls' buffered API) keeps a 4 KiB read buffer in
//! every connection for as long as it lives. Here the ciphertext read, the
//! ciphertext waiting to be written and the plaintext not yet read are
//! buffers taken from the per-thread pool (`crate::buffers`) and given
//! back as soon as they are empty, as the websocket layer above does with
//! its own.
//!
//! The handshake ([`accept`]) and every later read and write run the same
//! step ([`ServerTls::step`]): rustls processes the buffered ciphertext
//! until it needs input from the peer, has records to send (handshake
//! messages, session tickets, alerts, key updates — queued in order
//! before any later application data) or may encrypt application data.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::buffers;

/// Most ciphertext held unprocessed: a record is at most 16 KiB plus its
/// overhead, and rustls joins handshake messages of up to 64 KiB.
const MAX_INCOMING: usize = 128 * 1024;

/// Room asked for before each read: a whole record and its header.
const READ_ROOM: usize = 16 * 1024 + 512;

/// Plaintext encrypted per write, and the ciphertext queued before a
/// write waits for the socket.
const WRITE_CHUNK: usize = 64 * 1024;

/// Bytes a record adds to its plaintext, at most (header, nonce, tag,
/// content type; TLS 1.2 and 1.3).
const RECORD_OVERHEAD: usize = 64;

/// A server-side TLS connection over TCP.
pub(crate) struct ServerTls {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// Ciphertext read; the bytes before `in_pos` are processed.
    incoming: Vec<u8>,
    in_pos: usize,
    /// Ciphertext to write; the bytes before `out_pos` are written.
    outgoing: Vec<u8>,
    out_pos: usize,
    /// Plaintext decrypted; the bytes before `plain_pos` were read.
    plain: Vec<u8>,
    plain_pos: usize,
    /// The peer will send nothing more (close_notify, or the stream ended).
    read_done: bool,
    /// Our close_notify is queued.
    write_done: bool,
}

/// What the caller of [`ServerTls::step`] wants besides processing.
#[derive(Clone, Copy)]
enum Want<'a> {
    /// Nothing: process what was read.
    Process,
    /// Encrypt this application data.
    Write(&'a [u8]),
    /// Queue a close_notify alert.
    CloseNotify,
}

/// Where a step stopped.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// The handshake needs more input from the peer.
    NeedInput,
    /// Everything buffered was processed; application data may be
    /// written (and `Want::Write`'s bytes were, `Want::CloseNotify`'s
    /// alert was queued).
    Ready,
    /// Both sides have closed.
    Closed,
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Runs the TLS handshake with the client on `tcp`.
pub(crate) async fn accept(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
) -> io::Result<ServerTls> {
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let mut tls = ServerTls {
        tcp,
        conn,
        incoming: Vec::new(),
        in_pos: 0,
        outgoing: Vec::new(),
        out_pos: 0,
        plain: Vec::new(),
        plain_pos: 0,
        read_done: false,
        write_done: false,
    };
    std::future::poll_fn(|cx| tls.poll_handshake(cx)).await?;
    Ok(tls)
}

/// Appends to `buf` what `write` puts into the room it is given, starting
/// with `room` bytes and growing when `write` answers that it needs more.
fn append(
    buf: &mut Vec<u8>,
    mut room: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) -> io::Result<()> {
    if buf.capacity() == 0 {
        *buf = buffers::take(room);
    }
    loop {
        let start = buf.len();
        buf.resize(start + room, 0);
        match write(&mut buf[start..]) {
            Ok(n) => {
                buf.truncate(start + n);
                return Ok(());
            }
            Err(Some(need)) if need > room => {
                buf.truncate(start);
                room = need;
            }
            Err(_) => {
                buf.truncate(start);
                return Err(io::Error::other("TLS: a record could not be encoded"));
            }
        }
    }
}

fn encode_room(e: EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

fn encrypt_room(e: EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

impl ServerTls {
    /// Processes the ciphertext read so far and does what `want` asks,
    /// queueing every record rustls produces on the way.
    fn step(&mut self, want: Want<'_>) -> io::Result<Step> {
        loop {
            let UnbufferedStatus { discard, state } = self
                .conn
                .process_tls_records(&mut self.incoming[self.in_pos..]);
            let mut done = None;
            let mut failed = None;
            match state {
                Err(e) => failed = Some(tls_error(e)),
                Ok(ConnectionState::ReadTraffic(mut records)) => {
                    while let Some(record) = records.next_record() {
                        match record {
                            Ok(record) => {
                                if self.plain.capacity() == 0 {
                                    self.plain = buffers::take(record.payload.len());
                                }
                                self.plain.extend_from_slice(record.payload);
                            }
                            Err(e) => {
                                failed = Some(tls_error(e));
                                break;
                            }
                        }
                    }
                }
                Ok(ConnectionState::EncodeTlsData(mut record)) => {
                    if let Err(e) = append(&mut self.outgoing, 1024, |room| {
                        record.encode(room).map_err(encode_room)
                    }) {
                        failed = Some(e);
                    }
                }
                // The records are queued in `outgoing`, in order, ahead of
                // anything encrypted later; they are written before this
                // connection waits for the peer.
                Ok(ConnectionState::TransmitTlsData(sent)) => sent.done(),
                Ok(ConnectionState::BlockedHandshake) => done = Some(Step::NeedInput),
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    let queued = match want {
                        Want::Process => Ok(()),
                        Want::Write(data) => append(
                            &mut self.outgoing,
                            data.len() + RECORD_OVERHEAD * (data.len() / 16384 + 1),
                            |room| traffic.encrypt(data, room).map_err(encrypt_room),
                        ),
                        Want::CloseNotify => append(&mut self.outgoing, RECORD_OVERHEAD, |room| {
                            traffic.queue_close_notify(room).map_err(encrypt_room)
                        }),
                    };
                    match queued {
                        Ok(()) => done = Some(Step::Ready),
                        Err(e) => failed = Some(e),
                    }
                }
                Ok(ConnectionState::PeerClosed) => self.read_done = true,
                Ok(ConnectionState::Closed) => {
                    self.read_done = true;
                    done = Some(Step::Closed);
                }
                Ok(_) => {
                    failed = Some(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "TLS: early data, which this server does not accept",
                    ));
                }
            }
            self.in_pos += discard;
            if self.in_pos >= self.incoming.len() {
                buffers::give(std::mem::take(&mut self.incoming));
                self.in_pos = 0;
            }
            if let Some(e) = failed {
                self.queue_alert();
                return Err(e);
            }
            if let Some(step) = done {
                return Ok(step);
            }
        }
    }

    /// After an error: queues the alert rustls prepared for the peer, if
    /// any, so that the peer learns why (written on a best-effort basis).
    fn queue_alert(&mut self) {
        for _ in 0..4 {
            let status = self.conn.process_tls_records(&mut []);
            match status.state {
                Ok(ConnectionState::EncodeTlsData(mut record)) => {
                    let _ = append(&mut self.outgoing, 64, |room| {
                        record.encode(room).map_err(encode_room)
                    });
                }
                Ok(ConnectionState::TransmitTlsData(sent)) => sent.done(),
                _ => return,
            }
        }
    }

    /// Reads more ciphertext. `Ready(Ok(()))` with `read_done` set at the
    /// end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.incoming.len() - self.in_pos >= MAX_INCOMING {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS: over 128 KiB of records arrived without completing one",
            )));
        }
        if self.in_pos > 0 {
            self.incoming.drain(..self.in_pos);
            self.in_pos = 0;
        }
        if self.incoming.capacity() == 0 {
            self.incoming = buffers::take(READ_ROOM);
        } else {
            self.incoming.reserve(READ_ROOM);
        }
        let mut read = ReadBuf::uninit(self.incoming.spare_capacity_mut());
        let polled = Pin::new(&mut self.tcp).poll_read(cx, &mut read);
        let n = read.filled().len();
        // SAFETY: `poll_read` initialised the first `n` spare bytes.
        unsafe { self.incoming.set_len(self.incoming.len() + n) };
        if self.incoming.is_empty() {
            // Nothing is waiting: an idle connection holds no buffer.
            buffers::give(std::mem::take(&mut self.incoming));
        }
        ready!(polled)?;
        if n == 0 {
            self.read_done = true;
            if !self.incoming.is_empty() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "TLS: the connection ended inside a record",
                )));
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Writes the queued ciphertext; `Ready(Ok(()))` once all of it is
    /// written (the buffer is then given back).
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        buffers::give(std::mem::take(&mut self.outgoing));
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }

    /// Starts writing the queued ciphertext, failing only on an error
    /// (a full socket is waited on later).
    fn push_out(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.poll_write_out(cx) {
            Poll::Ready(Err(e)) => Err(e),
            _ => Ok(()),
        }
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let step = match self.step(Want::Process) {
                Ok(step) => step,
                Err(e) => {
                    let _ = self.poll_write_out(cx);
                    return Poll::Ready(Err(e));
                }
            };
            match step {
                // Done once our last flight (and the session tickets) is out.
                Step::Ready => return self.poll_write_out(cx),
                Step::Closed => return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into())),
                Step::NeedInput => {
                    self.push_out(cx)?;
                    ready!(self.poll_fill(cx))?;
                    if self.read_done {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the client closed the connection during the TLS handshake",
                        )));
                    }
                }
            }
        }
    }
}

impl AsyncRead for ServerTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plain_pos < this.plain.len() {
                let n = buf.remaining().min(this.plain.len() - this.plain_pos);
                buf.put_slice(&this.plain[this.plain_pos..this.plain_pos + n]);
                this.plain_pos += n;
                if this.plain_pos == this.plain.len() {
                    buffers::give(std::mem::take(&mut this.plain));
                    this.plain_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.read_done {
                return Poll::Ready(Ok(()));
            }
            this.step(Want::Process)?;
            if !this.plain.is_empty() || this.read_done {
                continue;
            }
            // Answers rustls owes the peer (key updates, alerts) go out
            // before waiting for it.
            this.push_out(cx)?;
            ready!(this.poll_fill(cx))?;
        }
    }
}

impl AsyncWrite for ServerTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write_done {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // Bound what waits for the socket before taking more.
        if this.outgoing.len() - this.out_pos >= WRITE_CHUNK {
            ready!(this.poll_write_out(cx))?;
        }
        let take = data.len().min(WRITE_CHUNK);
        match this.step(Want::Write(&data[..take]))? {
            Step::Ready => {
                this.push_out(cx)?;
                Poll::Ready(Ok(take))
            }
            Step::Closed => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            Step::NeedInput => Poll::Ready(Err(io::Error::other(
                "TLS: application data written before the handshake completed",
            ))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_done {
            this.write_done = true;
            this.step(Want::CloseNotify)?;
        }
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A server config for `localhost` and a client config trusting it.
    fn configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        configs_for(rustls::DEFAULT_VERSIONS)
    }

    /// The same, with the client offering only `versions`.
    fn configs_for(
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let der = CertificateDer::from(cert.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// A connected TCP pair: (client side, server side).
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    async fn handshake(
        client: Arc<rustls::ClientConfig>,
        server: Arc<rustls::ServerConfig>,
    ) -> (tokio_rustls::client::TlsStream<TcpStream>, ServerTls) {
        let (c, s) = tcp_pair().await;
        let connector = tokio_rustls::TlsConnector::from(client);
        let name = ServerName::try_from("localhost").unwrap();
        let (c, s) = tokio::join!(connector.connect(name, c), accept(s, server));
        (c.unwrap(), s.unwrap())
    }

    fn holds_no_buffer(tls: &ServerTls) -> bool {
        tls.incoming.capacity() == 0 && tls.outgoing.capacity() == 0 && tls.plain.capacity() == 0
    }

    #[tokio::test]
    async fn a_megabyte_each_way_arrives_intact_and_idle_holds_no_buffer() {
        let (server_config, client_config) = configs();
        let (mut client, mut server) = handshake(client_config, server_config).await;
        assert!(holds_no_buffer(&server), "after the handshake");
        let sent: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let to_server = sent.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&to_server).await.unwrap();
            client.flush().await.unwrap();
            let mut back = vec![0; to_server.len()];
            client.read_exact(&mut back).await.unwrap();
            (client, back)
        });
        let mut got = vec![0; sent.len()];
        server.read_exact(&mut got).await.unwrap();
        assert!(got == sent, "the server read what the client wrote");
        server.write_all(&got).await.unwrap();
        server.flush().await.unwrap();
        let (mut client, back) = writer.await.unwrap();
        assert!(back == sent, "the client read what the server wrote");
        assert!(
            holds_no_buffer(&server),
            "once everything was read and written"
        );
        // A read that waits for the peer holds no buffer while it waits.
        let mut one = [0u8; 1];
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(50), server.read(&mut one)).await;
        assert!(waited.is_err(), "nothing to read");
        assert!(holds_no_buffer(&server), "while waiting for the peer");

        // A close_notify from the client is the end of the stream, and
        // ours reaches the client as a clean end.
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        server.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn a_tls_1_2_client_is_served_too() {
        let (server_config, client) = configs_for(&[&rustls::version::TLS12]);
        let (mut client, mut server) = handshake(client, server_config).await;
        assert_eq!(
            client.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        client.write_all(b"twelve").await.unwrap();
        client.flush().await.unwrap();
        let mut got = [0u8; 6];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"twelve");
        server.write_all(b"back").await.unwrap();
        server.flush().await.unwrap();
        let mut back = [0u8; 4];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
    }

    #[tokio::test]
    async fn a_key_update_from_the_client_is_answered_and_traffic_goes_on() {
        let (server_config, client_config) = configs();
        let (mut client, mut server) = handshake(client_config, server_config).await;
        for round in 0..3u8 {
            client.get_mut().1.refresh_traffic_keys().unwrap();
            client.write_all(&[round; 100]).await.unwrap();
            client.flush().await.unwrap();
            let mut got = [0u8; 100];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(got, [round; 100]);
            // Our answer goes out under the new keys, ahead of this reply.
            server.write_all(&[round + 10; 50]).await.unwrap();
            server.flush().await.unwrap();
            let mut back = [0u8; 50];
            client.read_exact(&mut back).await.unwrap();
            assert_eq!(back, [round + 10; 50]);
        }
    }

    #[tokio::test]
    async fn many_small_records_in_one_read_are_all_delivered() {
        let (server_config, client_config) = configs();
        let (mut client, mut server) = handshake(client_config, server_config).await;
        // One record per write, all sent before the server reads.
        for i in 0..2_000u32 {
            client.write_all(&i.to_le_bytes()).await.unwrap();
            client.flush().await.unwrap();
        }
        let mut got = vec![0; 8_000];
        server.read_exact(&mut got).await.unwrap();
        for (i, chunk) in got.chunks(4).enumerate() {
            assert_eq!(u32::from_le_bytes(chunk.try_into().unwrap()), i as u32);
        }
        assert!(holds_no_buffer(&server));
    }

    #[tokio::test]
    async fn a_client_hello_sent_a_byte_at_a_time_still_completes() {
        let (server_config, client_config) = configs();
        let (c, s) = tcp_pair().await;
        // A relay that passes the client's bytes on one at a time.
        let (relay_near, relay_far) = tcp_pair().await;
        let server = tokio::spawn(accept(s, server_config));
        let connector = tokio_rustls::TlsConnector::from(client_config);
        let name = ServerName::try_from("localhost").unwrap();
        let client = tokio::spawn(connector.connect(name, relay_near));
        let (mut far_read, mut far_write) = relay_far.into_split();
        let (mut c_read, mut c_write) = c.into_split();
        tokio::spawn(async move {
            let mut byte = [0u8; 1];
            while far_read.read_exact(&mut byte).await.is_ok() {
                if c_write.write_all(&byte).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut c_read, &mut far_write).await;
        });
        let mut server = server.await.unwrap().unwrap();
        let mut client = client.await.unwrap().unwrap();
        client.write_all(b"hello").await.unwrap();
        client.flush().await.unwrap();
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }

    #[tokio::test]
    async fn bytes_that_are_not_tls_fail_the_handshake_with_an_alert() {
        let (server_config, _) = configs();
        let (mut c, s) = tcp_pair().await;
        c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let err = accept(s, server_config).await.err().expect("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        // The client is told: a TLS alert record (content type 21).
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            c.read_to_end(&mut answer),
        )
        .await;
        assert_eq!(answer.first(), Some(&21), "an alert record: {answer:?}");
    }

    #[tokio::test]
    async fn a_record_claiming_more_than_tls_allows_is_refused_without_buffering_it() {
        let (server_config, client_config) = configs();
        let (mut client, mut server) = handshake(client_config, server_config).await;
        client.write_all(b"ok").await.unwrap();
        client.flush().await.unwrap();
        let mut got = [0u8; 2];
        server.read_exact(&mut got).await.unwrap();
        // Under the TLS session, write a record header for 65,535 bytes of
        // application data (over the 16 KiB + 256 TLS allows) on the raw
        // socket, then some of them.
        let raw = client.get_mut().0;
        raw.write_all(&[23, 3, 3, 0xff, 0xff]).await.unwrap();
        raw.write_all(&[0u8; 20_000]).await.unwrap();
        let mut buf = [0u8; 16];
        let err = server.read(&mut buf).await.expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(
            server.incoming.len() <= MAX_INCOMING,
            "buffered at most the bound"
        );
    }

    #[tokio::test]
    async fn a_connection_cut_inside_a_record_is_an_error_and_mid_handshake_too() {
        let (server_config, client_config) = configs();
        let (mut client, mut server) = handshake(client_config, server_config.clone()).await;
        let raw = client.get_mut().0;
        raw.write_all(&[23, 3, 3, 0x00, 0x40, 1, 2, 3])
            .await
            .unwrap();
        raw.shutdown().await.unwrap();
        let mut buf = [0u8; 16];
        let err = server
            .read(&mut buf)
            .await
            .expect_err("an error, not an end");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");

        // A client that sends half a ClientHello and closes.
        let (mut c, s) = tcp_pair().await;
        c.write_all(&[22, 3, 1, 0x01, 0x00, 1, 0, 0]).await.unwrap();
        c.shutdown().await.unwrap();
        let err = accept(s, server_config).await.err().expect("refused");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    }

    #[tokio::test]
    async fn a_client_trusting_another_root_is_refused_and_the_server_sees_why() {
        let (server_config, _) = configs();
        let (_, other_client) = configs();
        let (c, s) = tcp_pair().await;
        let connector = tokio_rustls::TlsConnector::from(other_client);
        let name = ServerName::try_from("localhost").unwrap();
        let (c, s) = tokio::join!(connector.connect(name, c), accept(s, server_config));
        assert!(c.is_err(), "the client refuses an unknown certificate");
        let err = s.err().expect("the server's handshake fails");
        assert!(err.to_string().contains("alert"), "{err}");
    }
}
