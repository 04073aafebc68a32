//! A whole session fed arbitrary bytes after a correct websocket upgrade
//! and auth reply: it must end (EOF or an error) without panicking,
//! whatever the server sends, with small buffers.

#![no_main]

use core::cell::Cell;
use core::time::Duration;

use ferrolink_device::json::Writer;
use ferrolink_device::ws::expected_accept;
use ferrolink_device::{
    Args, Buffers, Clock, Config, Handler, HandlerError, InsecurePlaintext, Instant, Session,
};
use libfuzzer_sys::fuzz_target;

const AUTH_OK: &[u8] = b"\x81\x0d{\"auth\":\"OK\"}";

struct Scripted<'a> {
    data: &'a [u8],
    request: [u8; 512],
    request_len: usize,
    answered: bool,
}

impl embedded_io::ErrorType for Scripted<'_> {
    type Error = embedded_io::ErrorKind;
}

impl embedded_io_async::Read for Scripted<'_> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        if !self.answered {
            self.answered = true;
            let text = core::str::from_utf8(&self.request[..self.request_len]).unwrap_or("");
            let key = text
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap_or("");
            let key: [u8; 24] = key.as_bytes().try_into().unwrap_or([b'A'; 24]);
            let mut answer = [0u8; 128];
            let head = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: ";
            answer[..head.len()].copy_from_slice(head);
            answer[head.len()..head.len() + 28].copy_from_slice(&expected_accept(&key));
            let mut n = head.len() + 28;
            answer[n..n + 4].copy_from_slice(b"\r\n\r\n");
            n += 4;
            answer[n..n + AUTH_OK.len()].copy_from_slice(AUTH_OK);
            n += AUTH_OK.len();
            let n = n.min(buf.len());
            buf[..n].copy_from_slice(&answer[..n]);
            return Ok(n);
        }
        // Hand the data out in pieces whose sizes the data decides.
        let Some((&step, rest)) = self.data.split_first() else {
            return Ok(0);
        };
        let n = (usize::from(step) % 64 + 1).min(rest.len()).min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.data = &rest[n..];
        Ok(n)
    }
}

impl embedded_io_async::Write for Scripted<'_> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        if !self.answered {
            let n = buf.len().min(self.request.len() - self.request_len);
            self.request[self.request_len..self.request_len + n].copy_from_slice(&buf[..n]);
            self.request_len += n;
        }
        Ok(buf.len())
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// Time jumps a minute at every wait, so every timer fires and runs end.
struct FastClock(Cell<u64>);

impl Clock for FastClock {
    fn now(&self) -> Instant {
        Instant::from_millis(self.0.get())
    }

    async fn sleep_until(&self, at: Instant) {
        self.0.set(self.0.get().max(at.as_millis()) + 60_000);
    }
}

struct Echo;

impl Handler for Echo {
    async fn call(
        &mut self,
        _name: &str,
        args: Args<'_>,
        out: &mut Writer<'_>,
    ) -> Result<(), HandlerError> {
        let v = args
            .get(0)
            .ok_or(HandlerError::BadArguments("one argument"))?;
        out.raw(v.raw()).map_err(|_| HandlerError::Failed("full"))
    }
}

fuzz_target!(|data: &[u8]| {
    let io = InsecurePlaintext(Scripted {
        data,
        request: [0; 512],
        request_len: 0,
        answered: false,
    });
    let mut config = Config::new("device.test", 80, "key", &["echo"]);
    config.danger_allow_plaintext = true;
    let mut buffers = Buffers::<256, 256>::new();
    embassy_futures::block_on(async {
        let clock = FastClock(Cell::new(0));
        if let Ok(mut s) = Session::connect(io, clock, &config, &mut buffers, 1).await {
            let until = s.now() + Duration::from_secs(3_600);
            let _ = s.serve_until(&mut Echo, until).await;
            let _ = s
                .call(&mut Echo, "f", "[1]", "{}", Duration::from_secs(5))
                .await;
        }
    });
});
