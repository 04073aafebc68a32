//! The floor of the footprint table: the RP2040 HAL initialised and an
//! idle loop, nothing of ferrolink. `minimal` minus this is what the device
//! client costs.

#![no_std]
#![no_main]

use core::panic::PanicInfo;

use defmt_rtt as _;

#[cortex_m_rt::entry]
fn main() -> ! {
    let _p = embassy_rp::init(Default::default());
    loop {
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(_: &PanicInfo<'_>) -> ! {
    loop {
        cortex_m::asm::wfi();
    }
}
