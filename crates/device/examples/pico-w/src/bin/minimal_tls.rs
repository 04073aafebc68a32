//! `minimal` plus TLS: the same session over `ferrolink_device::tls` with a
//! pinned root. Its size minus `minimal` is what TLS and certificate
//! verification cost (see `docs/device.md`); it is not meant to run.

#![no_std]
#![no_main]

use core::cell::Cell;
use core::time::Duration;

use embassy_rp::clocks::RoscRng;
use ferrolink_device::tls::{self, TlsBuffers, TrustConfig};
use ferrolink_device::{Buffers, Clock as _, Config, Session, TrustedTime};
use static_cell::ConstStaticCell;

#[path = "../shared/min.rs"]
mod min;

use min::{FUNCTIONS, Functions, Memory, Ticks};

static ROOT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/root.der"));
static ROOTS: [&[u8]; 1] = [ROOT];
static BUFFERS: ConstStaticCell<Buffers<4096, 2048>> = ConstStaticCell::new(Buffers::new());
static TLS_BUFFERS: ConstStaticCell<TlsBuffers<16_640, 4096>> =
    ConstStaticCell::new(TlsBuffers::new());

#[cortex_m_rt::entry]
fn main() -> ! {
    let _p = embassy_rp::init(Default::default());
    let config = Config::new("ferrolink.example", 443, "key", &FUNCTIONS);
    let buffers = BUFFERS.take();
    let tls_buffers = TLS_BUFFERS.take();
    embassy_futures::block_on(async {
        let clock = Ticks(Cell::new(0));
        // SAFETY: a single-threaded firmware reads its own static.
        let unix_ms = unsafe { core::ptr::read_volatile(core::ptr::addr_of!(min::NOW_MS)) };
        let Ok(time) = TrustedTime::from_trusted_source(unix_ms, clock.now()) else {
            return;
        };
        let trust = TrustConfig::pinned(&ROOTS);
        let Ok(stream) = tls::connect(
            Memory,
            config.host,
            trust,
            &time,
            clock.now(),
            RoscRng,
            tls_buffers,
        )
        .await
        else {
            return;
        };
        if let Ok(mut session) = Session::connect(stream, clock, &config, buffers, 7).await {
            let mut functions = Functions(0);
            loop {
                let until = session.now() + Duration::from_secs(60);
                if session.serve_until(&mut functions, until).await.is_err() {
                    break;
                }
                let r = session
                    .call(
                        &mut functions,
                        "log_reading",
                        "[21.5]",
                        "{}",
                        Duration::from_secs(10),
                    )
                    .await;
                if r.is_err() {
                    break;
                }
            }
        }
    });
    loop {
        cortex_m::asm::wfi();
    }
}
