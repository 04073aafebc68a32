//! A tokio clock, device functions and connection helpers for the tests.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use embedded_io_adapters::tokio_1::FromTokio;
use ferrolink_device::json::Writer;
use ferrolink_device::{
    Args, Buffers, Clock, Config, Handler, HandlerError, InsecurePlaintext, Instant, Session,
    SessionError, TrustedTime,
};
use ferrolink_testkit::TestServer;
use tokio::net::TcpStream;

/// Bound on every wait in these tests.
pub(crate) const WAIT: Duration = Duration::from_secs(60);

/// Milliseconds since the clock was made, on tokio's clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokioClock(tokio::time::Instant);

impl TokioClock {
    pub(crate) fn new() -> Self {
        Self(tokio::time::Instant::now())
    }

    /// `d` from now.
    pub(crate) fn after(&self, d: Duration) -> Instant {
        self.now() + d
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        Instant::from_millis(self.0.elapsed().as_millis() as u64)
    }

    async fn sleep_until(&self, at: Instant) {
        tokio::time::sleep_until(self.0 + Duration::from_millis(at.as_millis())).await;
    }
}

/// The wall clock as a trusted time (the host's clock is kept by NTP).
pub(crate) fn host_time(clock: &TokioClock) -> TrustedTime {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    TrustedTime::from_trusted_source(ms, clock.now()).unwrap()
}

/// What the Pico W example registers, plus a few for the tests.
pub(crate) const FUNCTIONS: &[&str] = &["read_temperature", "blink_morse", "add", "echo", "fail"];

/// Device functions that record what they were asked.
#[derive(Debug, Default)]
pub(crate) struct Device {
    pub(crate) blinked: Vec<String>,
}

impl Handler for Device {
    async fn call(
        &mut self,
        name: &str,
        args: Args<'_>,
        out: &mut Writer<'_>,
    ) -> Result<(), HandlerError> {
        use std::fmt::Write as _;
        match name {
            "read_temperature" => out.raw("21.5").map_err(|_| HandlerError::Failed("full")),
            "blink_morse" => {
                let mut buf = [0u8; 64];
                let text = args
                    .get(0)
                    .and_then(|v| v.as_str(&mut buf))
                    .ok_or(HandlerError::BadArguments("blink_morse(text: str)"))?;
                self.blinked.push(text.to_owned());
                write!(out, "{}", text.len()).map_err(|_| HandlerError::Failed("full"))
            }
            "add" => {
                let a = args.get(0).and_then(|v| v.as_f64());
                let b = args.get(1).and_then(|v| v.as_f64());
                let (Some(a), Some(b)) = (a, b) else {
                    return Err(HandlerError::BadArguments("add(a, b) takes two numbers"));
                };
                write!(out, "{}", a + b).map_err(|_| HandlerError::Failed("full"))
            }
            "echo" => {
                let v = args.get(0).map_or("null", |v| v.raw());
                out.raw(v).map_err(|_| HandlerError::Failed("full"))
            }
            "fail" => Err(HandlerError::Failed("failed on purpose")),
            _ => Err(HandlerError::NoSuchFunction),
        }
    }
}

pub(crate) type Plain = InsecurePlaintext<FromTokio<TcpStream>>;

/// A plaintext config for the test server.
pub(crate) fn plain_config<'a>(server: &TestServer, key: &'a str) -> Config<'a> {
    let mut config = Config::new("127.0.0.1", server.port(), key, FUNCTIONS);
    config.danger_allow_plaintext = true;
    config
}

pub(crate) async fn tcp(server: &TestServer) -> std::io::Result<Plain> {
    let stream = TcpStream::connect(server.addr()).await?;
    stream.set_nodelay(true)?;
    Ok(InsecurePlaintext(FromTokio::new(stream)))
}

pub(crate) type Bufs = Buffers<4096, 2048>;

/// Connects over plain TCP and waits until the server has taken the
/// registrations (an echo round trip after them).
pub(crate) async fn connect_plain<'b>(
    server: &TestServer,
    config: &Config<'b>,
    buffers: &'b mut Bufs,
) -> Result<Session<'b, Plain, TokioClock>, SessionError> {
    let io = tcp(server).await.map_err(|_| SessionError::Closed)?;
    let mut session = Session::connect(io, TokioClock::new(), config, buffers, rand_seed()).await?;
    barrier(&mut session).await;
    Ok(session)
}

/// An echo round trip: everything sent before it has been processed.
pub(crate) async fn barrier<T: ferrolink_device::Transport>(
    session: &mut Session<'_, T, TokioClock>,
) {
    let r = session
        .call(
            &mut Device::default(),
            "anvil.private.echo",
            "[\"barrier\"]",
            "{}",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(r, "\"barrier\"");
}

pub(crate) fn rand_seed() -> u64 {
    use rand_core::RngCore as _;
    rand_core::OsRng.next_u64()
}

/// Serves `device` on `session` until `done` finishes (bounded by [`WAIT`]),
/// in slices so no operation is ever cancelled half-way.
pub(crate) async fn serve_while<T, R>(
    session: &mut Session<'_, T, TokioClock>,
    device: &mut Device,
    done: tokio::task::JoinHandle<R>,
) -> R
where
    T: ferrolink_device::Transport,
{
    let deadline = session.now() + WAIT;
    while !done.is_finished() {
        assert!(session.now() < deadline, "gave up waiting");
        let slice = session.now() + Duration::from_millis(100);
        session.serve_until(device, slice).await.unwrap();
    }
    done.await.unwrap()
}
