//! A firmware that only links the device client (no TLS, no network
//! stack): a session over a transport that reads and writes device memory,
//! serving two functions and making calls. Its size minus `baseline` is the
//! client's footprint (see `docs/device.md`); it is not meant to run.

#![no_std]
#![no_main]

use core::cell::Cell;
use core::time::Duration;

use ferrolink_device::{Buffers, Config, InsecurePlaintext, Session};
use static_cell::ConstStaticCell;

#[path = "../shared/min.rs"]
mod min;

use min::{FUNCTIONS, Functions, Memory, Ticks};

static BUFFERS: ConstStaticCell<Buffers<4096, 2048>> = ConstStaticCell::new(Buffers::new());

#[cortex_m_rt::entry]
fn main() -> ! {
    let _p = embassy_rp::init(Default::default());
    let mut config = Config::new("ferrolink.example", 80, "key", &FUNCTIONS);
    config.danger_allow_plaintext = true;
    let buffers = BUFFERS.take();
    embassy_futures::block_on(async {
        let io = InsecurePlaintext(Memory);
        if let Ok(mut session) =
            Session::connect(io, Ticks(Cell::new(0)), &config, buffers, 7).await
        {
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
