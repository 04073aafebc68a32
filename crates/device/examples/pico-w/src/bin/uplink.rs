//! ferrolink firmware for the Raspberry Pi Pico W.
//!
//! Joins Wi-Fi, learns the time from Roughtime servers (signed answers
//! bound to a random nonce; two must agree; SNTP only if built with
//! `FERROLINK_SNTP_FALLBACK`), connects over TLS to a ferrolink server
//! under the pinned root — or the roots of the newest signed trust bundle
//! kept in flash — with the revocation list and host name checked,
//! registers `blink_morse` (the on-board LED, driven through the CYW43
//! radio chip) and `read_temperature` (the RP2040's sensor), fetches a
//! newer trust bundle if the server has one (saved to flash; the next
//! connection uses it), and every minute logs a reading and calls the
//! app's `log_reading` with it. Reconnects with a backoff when the link
//! drops.
//!
//! Settings come from environment variables at build time; see `build.rs`
//! and `docs/device.md`.

#![no_std]
#![no_main]

use core::fmt::Write as _;
use core::time::Duration;

use cyw43::JoinOptions;
use cyw43_pio::{DEFAULT_CLOCK_DIVIDER, PioSpi};
use defmt::{Display2Format, error, info, unwrap, warn};
use embassy_executor::Spawner;
use embassy_net::dns::DnsQueryType;
use embassy_net::tcp::TcpSocket;
use embassy_net::udp::{PacketMetadata, UdpSocket};
use embassy_net::{Stack, StackResources};
use embassy_rp::adc::{self, Adc};
use embassy_rp::clocks::RoscRng;
#[cfg(feature = "trust-updates")]
use embassy_rp::flash::Flash;
use embassy_rp::gpio::{Level, Output};
use embassy_rp::peripherals::{DMA_CH0, PIO0};
use embassy_rp::pio::{InterruptHandler, Pio};
use embassy_rp::{bind_interrupts, dma};
use embassy_time::Timer;
use ferrolink_device::json::Writer;
use ferrolink_device::sntp;
use ferrolink_device::tls::{self, TlsBuffers, TrustConfig};
#[cfg(feature = "trust-updates")]
use ferrolink_device::trust::{self as bundles, TrustStore as _, TrustUpdate};
use ferrolink_device::{
    Args, Backoff, Buffers, Clock, Config, Handler, HandlerError, Instant, Session, SessionError,
    TrustedTime,
};
use static_cell::{ConstStaticCell, StaticCell};
use {defmt_rtt as _, panic_probe as _};

#[cfg(feature = "trust-updates")]
#[path = "../shared/flash_trust.rs"]
mod flash_trust;

#[cfg(feature = "trust-updates")]
use flash_trust::{FlashTrustStore, MAX_BUNDLE};

bind_interrupts!(struct Irqs {
    PIO0_IRQ_0 => InterruptHandler<PIO0>;
    DMA_IRQ_0 => dma::InterruptHandler<DMA_CH0>;
    ADC_IRQ_FIFO => adc::InterruptHandler;
});

macro_rules! env_or {
    ($name:literal, $default:expr) => {
        match option_env!($name) {
            Some(v) => v,
            None => $default,
        }
    };
}

const WIFI_SSID: &str = env_or!("WIFI_SSID", "");
const WIFI_PASSWORD: &str = env_or!("WIFI_PASSWORD", "");
const HOST: &str = env_or!("FERROLINK_HOST", "ferrolink.example");
const PORT: &str = env_or!("FERROLINK_PORT", "443");
const KEY: &str = env_or!("FERROLINK_KEY", "");

/// The pinned root (DER), chosen at build time.
static ROOT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/root.der"));
static ROOTS: [&[u8]; 1] = [ROOT];

/// Roughtime servers (host, port, long-term public key), from
/// `FERROLINK_ROUGHTIME` or the defaults in `build.rs`.
#[cfg(feature = "roughtime")]
static ROUGHTIME_SERVERS: &[(&str, u16, [u8; 32])] =
    &include!(concat!(env!("OUT_DIR"), "/roughtime.rs"));
/// Verified Roughtime answers that must overlap: two, so that one server
/// lying with its own key is caught (one, if only one is configured).
#[cfg(feature = "roughtime")]
const ROUGHTIME_NEED: usize = if ROUGHTIME_SERVERS.len() < 2 { 1 } else { 2 };
/// Fall back to SNTP (unauthenticated) when no Roughtime server answers;
/// without the `roughtime` feature, SNTP is the only source.
const SNTP_FALLBACK: bool =
    option_env!("FERROLINK_SNTP_FALLBACK").is_some() || cfg!(not(feature = "roughtime"));
/// SNTP servers on different networks; two must agree within 2 s.
const SNTP_SERVERS: [&str; 3] = ["time.cloudflare.com", "time.google.com", "pool.ntp.org"];
/// The operator's trust-bundle signing key (`FERROLINK_TRUST_SIGNER`), or
/// empty: trust updates off.
#[cfg(feature = "trust-updates")]
static SIGNER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/signer.bin"));

static FUNCTIONS: [&str; 2] = ["blink_morse", "read_temperature"];

/// The CYW43439 firmware (from the `cyw43-firmware` crate), 4-byte aligned.
static FIRMWARE: &cyw43::Aligned<cyw43::A4, [u8]> = &cyw43::Aligned(*cyw43_firmware::CYW43_43439A0);
static CLM: &cyw43::Aligned<cyw43::A4, [u8]> = &cyw43::Aligned(*cyw43_firmware::CYW43_43439A0_CLM);
static NVRAM: &cyw43::Aligned<cyw43::A4, [u8]> =
    cyw43::aligned_bytes!(concat!(env!("OUT_DIR"), "/nvram.bin"));

type Spi = PioSpi<'static, PIO0, 0>;

#[embassy_executor::task]
async fn cyw43_task(runner: cyw43::Runner<'static, cyw43::SpiBus<Output<'static>, Spi>>) -> ! {
    runner.run().await
}

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, cyw43::NetDriver<'static>>) -> ! {
    runner.run().await
}

/// `embassy_time` as the client's clock.
struct EmbassyClock;

impl Clock for EmbassyClock {
    fn now(&self) -> Instant {
        Instant::from_millis(embassy_time::Instant::now().as_millis())
    }

    async fn sleep_until(&self, at: Instant) {
        Timer::at(embassy_time::Instant::from_millis(at.as_millis())).await;
    }
}

/// The device's functions.
struct Pico {
    control: cyw43::Control<'static>,
    adc: Adc<'static, adc::Async>,
    sensor: adc::Channel<'static>,
}

/// International Morse code for A–Z and 0–9.
const MORSE: [&str; 36] = [
    ".-", "-...", "-.-.", "-..", ".", "..-.", "--.", "....", "..", ".---", "-.-", ".-..", "--",
    "-.", "---", ".--.", "--.-", ".-.", "...", "-", "..-", "...-", ".--", "-..-", "-.--", "--..",
    "-----", ".----", "..---", "...--", "....-", ".....", "-....", "--...", "---..", "----.",
];
const DOT_MS: u64 = 150;

impl Pico {
    async fn temperature(&mut self) -> Option<f32> {
        let raw = self.adc.read(&mut self.sensor).await.ok()?;
        // RP2040 datasheet 4.9.5: 27 °C at 0.706 V, falling 1.721 mV per °C,
        // with a 12-bit reading of a 3.3 V reference.
        let volts = f32::from(raw) * 3.3 / 4096.0;
        Some(27.0 - (volts - 0.706) / 0.001_721)
    }

    async fn led(&mut self, on: bool, ms: u64) {
        self.control.gpio_set(0, on).await;
        Timer::after_millis(ms).await;
    }

    async fn blink(&mut self, text: &str) -> usize {
        let mut symbols = 0;
        for c in text.chars() {
            let code = match c.to_ascii_uppercase() {
                c @ 'A'..='Z' => MORSE[c as usize - 'A' as usize],
                c @ '0'..='9' => MORSE[26 + c as usize - '0' as usize],
                _ => {
                    // A word gap (7 dots, 3 already spent after the last letter).
                    Timer::after_millis(4 * DOT_MS).await;
                    continue;
                }
            };
            for s in code.bytes() {
                let on = if s == b'.' { DOT_MS } else { 3 * DOT_MS };
                self.led(true, on).await;
                self.led(false, DOT_MS).await;
                symbols += 1;
            }
            Timer::after_millis(2 * DOT_MS).await;
        }
        symbols
    }
}

impl Handler for Pico {
    async fn call(
        &mut self,
        name: &str,
        args: Args<'_>,
        out: &mut Writer<'_>,
    ) -> Result<(), HandlerError> {
        match name {
            "read_temperature" => {
                let t = self.temperature().await.ok_or(HandlerError::Failed(
                    "the temperature sensor did not answer",
                ))?;
                write!(out, "{t:.1}").map_err(|_| HandlerError::Failed("no room for the result"))
            }
            "blink_morse" => {
                let mut buf = [0u8; 32];
                let text = args.get(0).and_then(|v| v.as_str(&mut buf)).ok_or(
                    HandlerError::BadArguments(
                        "blink_morse(text) takes a string of at most 32 bytes",
                    ),
                )?;
                let symbols = self.blink(text).await;
                write!(out, "{symbols}").map_err(|_| HandlerError::Failed("no room for the result"))
            }
            _ => Err(HandlerError::NoSuchFunction),
        }
    }
}

#[cfg(feature = "roughtime")]
/// Asks each Roughtime server once (a fresh random nonce each), verifies
/// every answer against the server's pinned key, and accepts the time where
/// enough of them overlap.
async fn roughtime_time(stack: Stack<'static>, rng: &mut RoscRng) -> Option<TrustedTime> {
    let mut rx_meta = [PacketMetadata::EMPTY; 2];
    let mut tx_meta = [PacketMetadata::EMPTY; 2];
    use ferrolink_device::roughtime;
    let mut rx_buf = [0u8; roughtime::MAX_RESPONSE_LEN];
    let mut tx_buf = [0u8; roughtime::REQUEST_LEN];
    let mut socket = UdpSocket::new(stack, &mut rx_meta, &mut rx_buf, &mut tx_meta, &mut tx_buf);
    socket
        .bind(49_152 + (rng.next_u32() % 16_000) as u16)
        .ok()?;
    let mut samples = [roughtime::Sample {
        unix_ms: 0,
        radius_ms: 0,
        at: Instant::ZERO,
    }; 4];
    let mut got = 0;
    for &(host, port, key) in ROUGHTIME_SERVERS.iter().take(samples.len()) {
        let Ok(addrs) = stack.dns_query(host, DnsQueryType::A).await else {
            warn!("time: cannot resolve {}", host);
            continue;
        };
        let Some(&addr) = addrs.first() else { continue };
        let mut nonce = [0u8; 32];
        rng.fill_bytes(&mut nonce);
        let mut packet = [0u8; roughtime::REQUEST_LEN];
        let pending = roughtime::request(&nonce, &key, &mut packet);
        let sent = EmbassyClock.now();
        if socket.send_to(&packet, (addr, port)).await.is_err() {
            continue;
        }
        let mut buf = [0u8; roughtime::MAX_RESPONSE_LEN];
        let answer = embassy_time::with_timeout(embassy_time::Duration::from_secs(2), async {
            loop {
                if let Ok((n, meta)) = socket.recv_from(&mut buf).await
                    && meta.endpoint.addr == addr
                    && meta.endpoint.port == port
                {
                    return n;
                }
            }
        })
        .await;
        let Ok(n) = answer else {
            warn!("time: no answer from {}", host);
            continue;
        };
        match pending.verify(&buf[..n], &key) {
            Ok(a) => {
                samples[got] = roughtime::Sample::new(&a, sent, EmbassyClock.now());
                got += 1;
            }
            // A forged or misdirected answer: ignored, never believed.
            Err(e) => warn!("time: {} refused: {}", host, Display2Format(&e)),
        }
    }
    match TrustedTime::from_roughtime(&samples[..got], ROUGHTIME_NEED, EmbassyClock.now()) {
        Ok(t) => Some(t),
        Err(e) => {
            warn!("time: {}", Display2Format(&e));
            None
        }
    }
}

/// Asks the SNTP servers and accepts a time two of them agree on.
async fn trusted_time(stack: Stack<'static>, rng: &mut RoscRng) -> Option<TrustedTime> {
    let mut rx_meta = [PacketMetadata::EMPTY; 4];
    let mut tx_meta = [PacketMetadata::EMPTY; 4];
    let mut rx_buf = [0u8; 256];
    let mut tx_buf = [0u8; 256];
    let mut socket = UdpSocket::new(stack, &mut rx_meta, &mut rx_buf, &mut tx_meta, &mut tx_buf);
    socket
        .bind(49_152 + (rng.next_u32() % 16_000) as u16)
        .ok()?;
    let mut samples = [sntp::Sample {
        unix_ms: 0,
        round_trip_ms: 0,
    }; 3];
    let mut got = 0;
    for server in SNTP_SERVERS {
        let Ok(addrs) = stack.dns_query(server, DnsQueryType::A).await else {
            warn!("time: cannot resolve {}", server);
            continue;
        };
        let Some(&addr) = addrs.first() else { continue };
        let nonce = rng.next_u64();
        let sent = EmbassyClock.now();
        if socket
            .send_to(&sntp::request(nonce), (addr, 123))
            .await
            .is_err()
        {
            continue;
        }
        let mut buf = [0u8; 64];
        let answer = embassy_time::with_timeout(embassy_time::Duration::from_secs(2), async {
            loop {
                // Only the server asked may answer (off-path spoofing).
                if let Ok((n, meta)) = socket.recv_from(&mut buf).await
                    && meta.endpoint.addr == addr
                    && meta.endpoint.port == 123
                {
                    return n;
                }
            }
        })
        .await;
        let Ok(n) = answer else {
            warn!("time: no answer from {}", server);
            continue;
        };
        let received = EmbassyClock.now();
        match sntp::parse(&buf[..n], nonce, sent.as_millis(), received.as_millis()) {
            Ok(s) => {
                samples[got] = s;
                // Compare every answer at one local moment: `now` below.
                samples[got].unix_ms = s.unix_ms.wrapping_sub(received.as_millis());
                got += 1;
            }
            Err(e) => warn!("time: {} answered badly: {}", server, Display2Format(&e)),
        }
    }
    let now = EmbassyClock.now();
    for s in &mut samples[..got] {
        s.unix_ms = s.unix_ms.wrapping_add(now.as_millis());
    }
    match TrustedTime::from_sntp(&mut samples[..got], 2, 2_000, now) {
        Ok(t) => Some(t),
        Err(e) => {
            warn!("time: {}", Display2Format(&e));
            None
        }
    }
}

/// Buffers that live for the whole program.
struct Memory {
    tcp_rx: [u8; 4096],
    tcp_tx: [u8; 4096],
    tls: TlsBuffers<16_640, 4096>,
    /// RX holds a trust bundle's base64 reply (4/3 of `MAX_BUNDLE`).
    #[cfg(feature = "trust-updates")]
    uplink: Buffers<6144, 2048>,
    #[cfg(not(feature = "trust-updates"))]
    uplink: Buffers<4096, 2048>,
    /// The bundle in use, read from flash at each connection.
    #[cfg(feature = "trust-updates")]
    bundle: [u8; MAX_BUNDLE],
    /// A newer bundle while it is checked.
    #[cfg(feature = "trust-updates")]
    scratch: [u8; MAX_BUNDLE],
}

/// One connection, from DNS to the session's end.
async fn run_once(
    stack: Stack<'static>,
    mem: &mut Memory,
    pico: &mut Pico,
    time: &TrustedTime,
    rng: &mut RoscRng,
    backoff: &mut Backoff,
    #[cfg(feature = "trust-updates")] store: &mut FlashTrustStore,
) -> Result<(), SessionError> {
    let port: u16 = PORT.parse().unwrap_or(443);
    let addrs = stack.dns_query(HOST, DnsQueryType::A).await.map_err(|_| {
        warn!("cannot resolve {}", HOST);
        SessionError::Closed
    })?;
    let addr = *addrs.first().ok_or(SessionError::Closed)?;
    let mut socket = TcpSocket::new(stack, &mut mem.tcp_rx, &mut mem.tcp_tx);
    socket.set_timeout(Some(embassy_time::Duration::from_secs(60)));
    socket.connect((addr, port)).await.map_err(|_| {
        warn!("TCP connection to {}:{} failed", HOST, port);
        SessionError::Closed
    })?;
    // The newest bundle in flash, if it verifies with the built-in key:
    // its roots replace the built-in one, its revocations add to the list.
    #[cfg(feature = "trust-updates")]
    let signer: Option<&[u8; 32]> = SIGNER.try_into().ok();
    #[cfg(feature = "trust-updates")]
    let held = match (signer, store.load(&mut mem.bundle).await) {
        (Some(signer), Ok(n)) if n > 0 => match bundles::verify(&mem.bundle[..n], signer) {
            Ok(b) => Some(b),
            Err(e) => {
                warn!(
                    "the trust bundle in flash is not used: {}",
                    Display2Format(&e)
                );
                None
            }
        },
        (_, Err(e)) => {
            warn!("cannot read the trust bundle in flash: {}", e);
            None
        }
        _ => None,
    };
    #[cfg(feature = "trust-updates")]
    let current = held.map(|b| b.sequence());
    #[allow(unused_mut)]
    let mut trust = TrustConfig::pinned(&ROOTS);
    #[cfg(feature = "trust-updates")]
    if let Some(b) = held {
        trust = trust.with_bundle(b);
    }
    let stream = match tls::connect(
        socket,
        HOST,
        trust,
        time,
        EmbassyClock.now(),
        &mut *rng,
        &mut mem.tls,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            error!("{}", Display2Format(&e));
            return Err(SessionError::Closed);
        }
    };
    let config = Config::new(HOST, port, KEY, &FUNCTIONS);
    let mut session = Session::connect(
        stream,
        EmbassyClock,
        &config,
        &mut mem.uplink,
        rng.next_u64(),
    )
    .await?;
    info!("connected to {} as a Pico W uplink", HOST);
    backoff.reset();
    #[cfg(feature = "trust-updates")]
    if let Some(signer) = signer {
        match session
            .update_trust(
                pico,
                store,
                signer,
                current,
                &mut mem.scratch,
                Duration::from_secs(10),
            )
            .await
        {
            Ok(TrustUpdate::Current) => {}
            Ok(TrustUpdate::Updated { sequence }) => {
                info!("trust bundle {} saved; reconnecting under it", sequence);
                return Ok(());
            }
            // Refused bundles change nothing; say why and carry on.
            Err(e) => warn!("{}", Display2Format(&e)),
        }
    }
    loop {
        let next = session.now() + Duration::from_secs(60);
        session.serve_until(pico, next).await?;
        let Some(t) = pico.temperature().await else {
            continue;
        };
        info!("temperature: {} °C", t);
        let mut args = [0u8; 32];
        let mut w = Writer::new(&mut args);
        let _ = write!(w, "[{t:.1}]");
        let len = w.len();
        let args = core::str::from_utf8(&args[..len]).unwrap_or("[]");
        match session
            .call(pico, "log_reading", args, "{}", Duration::from_secs(10))
            .await
        {
            Ok(r) => info!("log_reading: {}", r),
            Err(ferrolink_device::CallError::Session(e)) => return Err(e),
            Err(e) => warn!("log_reading: {}", Display2Format(&e)),
        }
    }
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let p = embassy_rp::init(Default::default());
    let mut rng = RoscRng;
    info!("ferrolink Pico W firmware");
    // black_box: the check must stay a runtime one, or the radio code and
    // blobs would be optimised out of builds made without the file.
    if core::hint::black_box(NVRAM.len()) == 0 {
        error!(
            "built without the CYW43 NVRAM file; rebuild with CYW43_NVRAM=path/to/nvram_rp2040.bin"
        );
        loop {
            Timer::after_secs(3600).await;
        }
    }
    if KEY.is_empty() || WIFI_SSID.is_empty() {
        error!("built without FERROLINK_KEY or WIFI_SSID; see docs/device.md");
    }

    let pwr = Output::new(p.PIN_23, Level::Low);
    let cs = Output::new(p.PIN_25, Level::High);
    let mut pio = Pio::new(p.PIO0, Irqs);
    let spi = PioSpi::new(
        &mut pio.common,
        pio.sm0,
        DEFAULT_CLOCK_DIVIDER,
        pio.irq0,
        cs,
        p.PIN_24,
        p.PIN_29,
        dma::Channel::new(p.DMA_CH0, Irqs),
    );
    static STATE: StaticCell<cyw43::State> = StaticCell::new();
    let (net_device, mut control, runner) =
        cyw43::new(STATE.init(cyw43::State::new()), pwr, spi, FIRMWARE, NVRAM).await;
    spawner.spawn(unwrap!(cyw43_task(runner)));
    control.init(CLM).await;
    control
        .set_power_management(cyw43::PowerManagementMode::PowerSave)
        .await;

    static RESOURCES: StaticCell<StackResources<4>> = StaticCell::new();
    let (stack, runner) = embassy_net::new(
        net_device,
        embassy_net::Config::dhcpv4(Default::default()),
        RESOURCES.init(StackResources::new()),
        rng.next_u64(),
    );
    spawner.spawn(unwrap!(net_task(runner)));

    while let Err(e) = control
        .join(WIFI_SSID, JoinOptions::new(WIFI_PASSWORD.as_bytes()))
        .await
    {
        warn!("joining {} failed: {}", WIFI_SSID, e);
        Timer::after_secs(2).await;
    }
    stack.wait_config_up().await;
    info!("Wi-Fi up");

    // No connection before the time is trusted: certificate expiry means
    // nothing on a clock that was never set.
    let time = loop {
        #[cfg(feature = "roughtime")]
        if let Some(t) = roughtime_time(stack, &mut rng).await {
            info!("time trusted (Roughtime)");
            break t;
        }
        if SNTP_FALLBACK && let Some(t) = trusted_time(stack, &mut rng).await {
            warn!("time from SNTP (unauthenticated fallback)");
            break t;
        }
        Timer::after_secs(10).await;
    };
    #[cfg(feature = "trust-updates")]
    if SIGNER.len() != 32 {
        warn!("built without FERROLINK_TRUST_SIGNER: trust bundles are off");
    }
    #[cfg(feature = "trust-updates")]
    let mut store = FlashTrustStore::new(Flash::new_blocking(p.FLASH));

    let adc = Adc::new(p.ADC, Irqs, adc::Config::default());
    let sensor = adc::Channel::new_temp_sensor(p.ADC_TEMP_SENSOR);
    let mut pico = Pico {
        control,
        adc,
        sensor,
    };
    // Built in place (const), never on the stack.
    static MEMORY: ConstStaticCell<Memory> = ConstStaticCell::new(Memory {
        tcp_rx: [0; 4096],
        tcp_tx: [0; 4096],
        tls: TlsBuffers::new(),
        uplink: Buffers::new(),
        #[cfg(feature = "trust-updates")]
        bundle: [0; MAX_BUNDLE],
        #[cfg(feature = "trust-updates")]
        scratch: [0; MAX_BUNDLE],
    });
    let mem = MEMORY.take();
    let mut backoff = Backoff::default();
    loop {
        if let Err(e) = run_once(
            stack,
            mem,
            &mut pico,
            &time,
            &mut rng,
            &mut backoff,
            #[cfg(feature = "trust-updates")]
            &mut store,
        )
        .await
        {
            warn!("uplink: {}", Display2Format(&e));
            if e.is_refusal() {
                backoff.give_up_quickly();
            }
        }
        let delay = backoff.next_delay(rng.next_u32());
        Timer::after_millis(delay.as_millis() as u64).await;
    }
}
