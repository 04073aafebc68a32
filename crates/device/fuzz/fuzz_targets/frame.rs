//! Arbitrary bytes into the websocket frame parser, and every complete
//! frame's payload into the message decoder and the connection state
//! machine: no panic, and a reported frame always fits what was given.

#![no_main]

use ferrolink_device::protocol::{Connection, Timing};
use ferrolink_device::ws::parse_frame;
use ferrolink_device::{Instant, message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cap, mut rest)) = data.split_first() else {
        return;
    };
    let capacity = usize::from(cap) * 16;
    let mut conn = Connection::new(Timing::default(), Instant::ZERO);
    let mut now = 0;
    while let Ok(Some(h)) = parse_frame(rest, capacity) {
        assert!(h.total_len() <= rest.len() && h.total_len() <= capacity);
        let payload = &rest[h.header_len..h.total_len()];
        if let Ok(text) = core::str::from_utf8(payload) {
            let _ = message::decode(text);
            now += 1_000;
            if conn.handle_text(Instant::from_millis(now), text).is_err() {
                conn = Connection::new(Timing::default(), Instant::from_millis(now));
            }
            let _ = conn.handle_timeout(Instant::from_millis(now));
        }
        if h.total_len() == 0 {
            break;
        }
        rest = &rest[h.total_len()..];
    }
});
