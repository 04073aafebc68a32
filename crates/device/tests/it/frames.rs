//! Property tests: whatever bytes arrive, the device's parsers never panic,
//! never read or write outside their buffers, and report frames that fit.

use std::time::Duration;

use ferrolink_device::json::{self, Writer};
use ferrolink_device::message;
use ferrolink_device::protocol::{Connection, Timing};
use ferrolink_device::ws::{self, Opcode};
use ferrolink_device::{Buffers, Clock, Config, InsecurePlaintext, Instant, Session};
use proptest::prelude::*;

use crate::support::Device;

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_make_the_frame_parser_overflow(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
        capacity in 0usize..400,
    ) {
        if let Ok(Some(h)) = ws::parse_frame(&bytes, capacity) {
            prop_assert!(h.total_len() <= bytes.len());
            prop_assert!(h.total_len() <= capacity);
            prop_assert!(h.header_len == 2 || h.header_len == 4 || h.header_len == 10);
        }
    }

    #[test]
    fn server_frames_parse_back_to_their_lengths(
        len in prop_oneof![0usize..300, 65_500usize..65_600],
        fill in any::<u8>(),
        text in any::<bool>(),
    ) {
        let payload = vec![fill; len];
        // An unmasked server frame, built independently of the parser.
        let mut frame = vec![if text { 0x81 } else { 0x82 }];
        let n = payload.len();
        if n < 126 {
            frame.push(n as u8);
        } else if n < 65_536 {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
        frame.extend_from_slice(&payload);
        let h = ws::parse_frame(&frame, frame.len()).unwrap().unwrap();
        prop_assert_eq!(h.opcode, if text { Opcode::Text } else { Opcode::Binary });
        prop_assert_eq!(h.total_len(), frame.len());
        prop_assert_eq!(&frame[h.header_len..], &payload[..]);
        prop_assert!(ws::parse_frame(&frame, frame.len() - 1).is_err());
    }

    #[test]
    fn sealed_frames_unmask_to_their_payload(
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        mask in any::<[u8; 4]>(),
    ) {
        let mut buf = vec![0u8; ws::MAX_HEADER + payload.len()];
        buf[ws::MAX_HEADER..].copy_from_slice(&payload);
        let start = ws::seal_frame(&mut buf, Opcode::Text, payload.len(), mask).unwrap();
        // Clear the mask bit and unmask: a server-side view of the frame.
        let frame = &mut buf[start..];
        frame[1] &= 0x7f;
        let header = frame.len() - payload.len();
        let masked: Vec<u8> = frame[header..].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
        prop_assert_eq!(&masked, &payload);
    }

    #[test]
    fn arbitrary_text_never_panics_the_decoder_or_the_connection(text in ".{0,200}") {
        let _ = json::validate(&text);
        let _ = message::decode(&text);
        let mut small = [0u8; 8];
        if let Ok(s) = json::unescape(&text, &mut small) {
            prop_assert!(s.len() <= 8);
        }
        let mut c = Connection::new(Timing::default(), Instant::ZERO);
        let _ = c.handle_text(Instant::from_millis(1), &text);
        let _ = c.handle_text(Instant::from_millis(2), r#"{"auth":"OK"}"#);
        let _ = c.handle_text(Instant::from_millis(3), &text);
        let _ = c.handle_timeout(Instant::from_millis(60_000));
    }

    #[test]
    fn json_like_text_never_panics_the_decoder(
        tokens in proptest::collection::vec(proptest::sample::select(TOKENS), 0..40),
    ) {
        let text = tokens.concat();
        let _ = message::decode(&text);
        let mut buf = [0u8; 32];
        let mut w = Writer::new(&mut buf);
        let _ = w.string(&text);
        prop_assert!(w.len() <= 32);
    }

}

proptest! {
    // Each case runs a whole session on its own runtime: fewer cases.
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_after_the_handshake_end_the_session_cleanly(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async {
            let mut script = vec![AUTH_OK_FRAME.to_vec()];
            script.extend(chunks);
            let io = InsecurePlaintext(Scripted::new(script));
            let mut config = Config::new("device.test", 80, "key", &["f"]);
            config.danger_allow_plaintext = true;
            let mut buffers = Buffers::<256, 256>::new();
            let clock = FastClock::default();
            if let Ok(mut s) = Session::connect(io, clock, &config, &mut buffers, 1).await {
                // Bounded: the script ends (EOF) or the fast clock runs out.
                let until = s.now() + Duration::from_secs(3_600);
                let _ = s.serve_until(&mut Device::default(), until).await;
            }
        });
    }
}

/// Pieces of protocol messages, shuffled into almost-valid frames.
const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"type\"",
    "\"CALL\"",
    "\"id\"",
    "\"d-1\"",
    "\"d-x\"",
    "\"command\"",
    "\"args\"",
    "\"kwargs\"",
    "\"objects\"",
    "\"auth\"",
    "\"OK\"",
    "\"error\"",
    "\"response\"",
    "\"message\"",
    "1",
    "-0.5e3",
    "null",
    "true",
    "\"\\u00e9\"",
    "\"\\ud83d\"",
    "\"\\",
];

/// `{"auth":"OK"}` as an unmasked server text frame.
const AUTH_OK_FRAME: &[u8] = b"\x81\x0d{\"auth\":\"OK\"}";

/// A transport that answers the upgrade correctly, then plays a script of
/// reads and ends (EOF); writes are accepted and dropped.
struct Scripted {
    script: std::collections::VecDeque<Vec<u8>>,
    request: Vec<u8>,
    answered: bool,
}

impl Scripted {
    fn new(script: Vec<Vec<u8>>) -> Self {
        Self {
            script: script.into(),
            request: Vec::new(),
            answered: false,
        }
    }
}

impl embedded_io::ErrorType for Scripted {
    type Error = embedded_io::ErrorKind;
}

impl embedded_io_async::Read for Scripted {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let chunk = if !self.answered {
            self.answered = true;
            let text = String::from_utf8_lossy(&self.request).into_owned();
            let key = text
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap_or("")
                .as_bytes();
            let key: [u8; 24] = key.try_into().unwrap_or([b'A'; 24]);
            let accept = ws::expected_accept(&key);
            let mut head = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: ".to_vec();
            head.extend_from_slice(&accept);
            head.extend_from_slice(b"\r\n\r\n");
            head
        } else {
            match self.script.pop_front() {
                Some(c) => c,
                None => return Ok(0),
            }
        };
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        if n < chunk.len() {
            self.script.push_front(chunk[n..].to_vec());
        }
        Ok(n)
    }
}

impl embedded_io_async::Write for Scripted {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        if !self.answered {
            self.request.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// A clock that jumps ahead a minute whenever anyone sleeps, so timers
/// fire at once and the run stays bounded.
#[derive(Default)]
struct FastClock(std::cell::Cell<u64>);

impl Clock for FastClock {
    fn now(&self) -> Instant {
        Instant::from_millis(self.0.get())
    }

    async fn sleep_until(&self, at: Instant) {
        self.0.set(self.0.get().max(at.as_millis()) + 60_000);
        tokio::task::yield_now().await;
    }
}
