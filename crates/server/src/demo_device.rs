//! `ferrolink device-sim`: a simulated Pico W, built on `ferrolink-client`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use ferrolink_client::{CallErrorKind, CallOptions, Client, HandlerError, ReconnectPolicy};

/// Morse code of a character, or `None` for characters without one.
fn morse(c: char) -> Option<&'static str> {
    const LETTERS: [&str; 26] = [
        ".-", "-...", "-.-.", "-..", ".", "..-.", "--.", "....", "..", ".---", "-.-", ".-..", "--",
        "-.", "---", ".--.", "--.-", ".-.", "...", "-", "..-", "...-", ".--", "-..-", "-.--",
        "--..",
    ];
    const DIGITS: [&str; 10] = [
        "-----", ".----", "..---", "...--", "....-", ".....", "-....", "--...", "---..", "----.",
    ];
    let c = c.to_ascii_uppercase();
    match c {
        'A'..='Z' => Some(LETTERS[c as usize - 'A' as usize]),
        '0'..='9' => Some(DIGITS[c as usize - '0' as usize]),
        '.' => Some(".-.-.-"),
        ',' => Some("--..--"),
        '?' => Some("..--.."),
        '!' => Some("-.-.--"),
        _ => None,
    }
}

/// The pattern for `text`: letters separated by spaces, words by " / ".
pub(crate) fn morse_pattern(text: &str) -> String {
    text.split_whitespace()
        .map(|word| word.chars().filter_map(morse).collect::<Vec<_>>().join(" "))
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" / ")
}

/// On/off timings in units (dot = 1 on, dash = 3 on, gaps 1/3/7 off), as
/// the LED would blink them.
pub(crate) fn morse_timing(pattern: &str) -> Vec<(bool, u32)> {
    let mut out: Vec<(bool, u32)> = Vec::new();
    let gap = |out: &mut Vec<(bool, u32)>, units: u32| match out.last_mut() {
        Some((false, u)) => *u = (*u).max(units),
        Some(_) => out.push((false, units)),
        None => {}
    };
    for token in pattern.split(' ') {
        match token {
            "/" => gap(&mut out, 7),
            letter => {
                gap(&mut out, 3);
                for (i, symbol) in letter.chars().enumerate() {
                    if i > 0 {
                        gap(&mut out, 1);
                    }
                    out.push((true, if symbol == '-' { 3 } else { 1 }));
                }
            }
        }
    }
    out
}

/// What the simulated device does besides answering calls.
pub(crate) struct SimOptions<'a> {
    /// Its name in output and events.
    pub(crate) name: &'a str,
    /// How often a reading is logged to `log_function`.
    pub(crate) log_every: Duration,
    /// The app function readings are logged to.
    pub(crate) log_function: &'a str,
    /// How often a `temperature` event goes to every browser session of
    /// the app (`None`: never).
    pub(crate) events_every: Option<Duration>,
}

/// Registers the simulated device's functions and runs until Ctrl-C (or
/// forever, when embedded in `serve --demo`).
pub(crate) async fn run(url: &str, key: &str, options: SimOptions<'_>) -> Result<Client> {
    let SimOptions {
        name,
        log_every,
        log_function,
        events_every,
    } = options;
    let started = Instant::now();
    let led = Arc::new(AtomicBool::new(false));
    let tag = name.to_owned();
    let led_for_set = led.clone();
    let client = Client::builder(url, key)
        .reconnect(ReconnectPolicy::default())
        .register("blink_morse", move |(text,): (String,)| {
            let tag = tag.clone();
            async move {
                let pattern = morse_pattern(&text);
                if pattern.is_empty() {
                    return Err(HandlerError::new(
                        "ValueError",
                        format!("nothing to blink in {text:?}"),
                    ));
                }
                let unit_ms = 200;
                let timing: Vec<String> = morse_timing(&pattern)
                    .iter()
                    .map(|(on, units)| {
                        format!("{} {}ms", if *on { "on" } else { "off" }, units * unit_ms)
                    })
                    .collect();
                say(format_args!("[{tag}] blink_morse({text:?}) -> {pattern}"));
                say(format_args!("[{tag}]   LED: {}", timing.join(", ")));
                Ok(pattern)
            }
        })
        .register("read_temperature", move |(): ()| async move {
            Ok::<_, HandlerError>(temperature(started.elapsed()))
        })
        .register("set_led", move |(on,): (bool,)| {
            let led = led_for_set.clone();
            async move {
                led.store(on, Ordering::Relaxed);
                Ok::<_, HandlerError>(on)
            }
        })
        .connect()
        .await
        .with_context(|| format!("device {name} cannot connect to {url}"))?;
    say(format_args!(
        "device {name} connected to {url}: blink_morse(text), read_temperature(), set_led(on)"
    ));
    let logger = client.clone();
    let function = log_function.to_owned();
    let tag = name.to_owned();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(log_every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let reading = temperature(started.elapsed());
            match logger
                .call::<serde_json::Value>(&function, (reading,))
                .await
            {
                Ok(_) => say(format_args!(
                    "[{tag}] logged {reading:.2} °C via {function}"
                )),
                // No app function to log to yet: that is fine for a demo.
                Err(e) if e.kind() == CallErrorKind::NoSuchFunction => {}
                Err(e) if e.kind() == CallErrorKind::NotConnected => {}
                Err(e) => tracing::warn!(device = %tag, error = %e, "logging a reading failed"),
            }
        }
    });
    if let Some(every) = events_every {
        let events = client.clone();
        let tag = name.to_owned();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let payload = serde_json::json!({
                    "celsius": temperature(started.elapsed()),
                    "device": tag,
                });
                let options = CallOptions::default().kwargs(serde_json::json!({ "channel": "*" }));
                match events
                    .call_with::<serde_json::Value>(
                        "anvil.private.raise_event",
                        ("temperature", payload),
                        options,
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.kind() == CallErrorKind::NotConnected => {}
                    Err(e) => tracing::warn!(device = %tag, error = %e, "raising an event failed"),
                }
            }
        });
    }
    Ok(client)
}

/// The demo app's server code, as an uplink with the app's server key:
/// `log_reading(celsius)` stores the reading, with the time it arrived, in
/// the `readings` table (which the demo page charts).
pub(crate) async fn app_logic(url: &str, key: &str) -> Result<Client> {
    let client = Client::builder(url, key)
        .reconnect(ReconnectPolicy::default())
        .register_raw(
            "log_reading",
            |request: ferrolink_client::Request| async move {
                let celsius = request
                    .args
                    .get(0)
                    .and_then(serde_json::Value::as_f64)
                    .ok_or_else(|| {
                        HandlerError::new("TypeError", "log_reading(celsius) takes a number")
                    })?;
                let now = time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339)
                    .map_err(|e| HandlerError::new("ValueError", e.to_string()))?;
                let id = request
                    .context
                    .client()
                    .table("readings")
                    .add_row(serde_json::json!({ "t": now, "celsius": celsius }))
                    .await
                    .map_err(|e| HandlerError::new("anvil.tables.TableError", e.to_string()))?;
                Ok(id)
            },
        )
        .connect()
        .await
        .with_context(|| format!("the demo app's logic cannot connect to {url}"))?;
    say(format_args!(
        "demo app logic connected: log_reading(celsius) stores readings in table \"readings\""
    ));
    Ok(client)
}

/// Prints a line; a closed stdout (the terminal went away) is not an error
/// for a device that should keep serving.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// A plausible room temperature drifting slowly, with a little noise.
fn temperature(elapsed: Duration) -> f64 {
    let t = elapsed.as_secs_f64();
    let noise: f64 = rand::random::<f64>() * 0.2 - 0.1;
    let value = 21.0 + 1.5 * (t / 120.0).sin() + noise;
    (value * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sos_in_morse() {
        assert_eq!(morse_pattern("sos"), "... --- ...");
        assert_eq!(morse_pattern("Hi 2"), ".... .. / ..---");
        assert_eq!(morse_pattern("§§"), "");
    }

    #[test]
    fn timing_uses_standard_units() {
        let t = morse_timing(".- /  -");
        assert_eq!(
            t,
            vec![(true, 1), (false, 1), (true, 3), (false, 7), (true, 3)]
        );
    }

    #[test]
    fn temperature_is_plausible() {
        for s in [0, 60, 600, 6000] {
            let v = temperature(Duration::from_secs(s));
            assert!((19.0..23.0).contains(&v), "{v}");
        }
    }
}
