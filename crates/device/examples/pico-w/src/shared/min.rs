//! Pieces shared by the `minimal` and `minimal-tls` size-measurement
//! firmwares: a transport over device memory, a clock that needs no timer,
//! two functions.

use core::cell::Cell;
use core::panic::PanicInfo;

use defmt_rtt as _;

use ferrolink_device::json::Writer;
use ferrolink_device::{Args, Clock, Handler, HandlerError, Instant};

/// Bytes the optimiser cannot see through: a stand-in for a network stack.
pub(crate) struct Memory;

static mut WIRE: [u8; 64] = [0; 64];

impl embedded_io::ErrorType for Memory {
    type Error = embedded_io::ErrorKind;
}

impl embedded_io_async::Read for Memory {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let n = buf.len().min(64);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            // SAFETY: a single-threaded firmware reads its own static.
            *b = unsafe { core::ptr::read_volatile(core::ptr::addr_of!(WIRE[i])) };
        }
        Ok(n)
    }
}

impl embedded_io_async::Write for Memory {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        for (i, b) in buf.iter().take(64).enumerate() {
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(core::ptr::addr_of_mut!(WIRE[i]), *b) };
        }
        Ok(buf.len())
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// A clock that jumps to every deadline (no timer needed to measure size).
pub(crate) struct Ticks(pub(crate) Cell<u64>);

impl Clock for Ticks {
    fn now(&self) -> Instant {
        Instant::from_millis(self.0.get())
    }

    async fn sleep_until(&self, at: Instant) {
        self.0.set(self.0.get().max(at.as_millis()));
    }
}

pub(crate) struct Functions(pub(crate) u32);

impl Handler for Functions {
    async fn call(
        &mut self,
        name: &str,
        args: Args<'_>,
        out: &mut Writer<'_>,
    ) -> Result<(), HandlerError> {
        use core::fmt::Write as _;
        match name {
            "read_temperature" => {
                write!(out, "{}", self.0).map_err(|_| HandlerError::Failed("full"))
            }
            "blink_morse" => {
                let mut buf = [0u8; 32];
                let text = args
                    .get(0)
                    .and_then(|v| v.as_str(&mut buf))
                    .ok_or(HandlerError::BadArguments("blink_morse(text)"))?;
                self.0 += text.len() as u32;
                out.string(text).map_err(|_| HandlerError::Failed("full"))
            }
            _ => Err(HandlerError::NoSuchFunction),
        }
    }
}

pub(crate) static FUNCTIONS: [&str; 2] = ["blink_morse", "read_temperature"];

#[panic_handler]
fn panic(_: &PanicInfo<'_>) -> ! {
    loop {
        cortex_m::asm::wfi();
    }
}

/// A wall-clock time the optimiser cannot see (for `minimal-tls`).
#[allow(dead_code)]
pub(crate) static mut NOW_MS: u64 = 0;
