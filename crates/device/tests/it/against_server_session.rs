//! The device's sans-IO `Connection` back to back with the server's
//! `ServerSession` (both from the protocol core, no sockets), on a virtual
//! clock: the handshake, registrations, calls both ways, and an hour of
//! heartbeats that keep the server's idle deadline from ever firing.

use std::time::Duration;

use ferrolink_device::json::Writer;
use ferrolink_device::message;
use ferrolink_device::protocol::{Connection, Due, Event, Timing};
use ferrolink_proto::encode::{self, AppInfo, CallOrigin, OutgoingCall};
use ferrolink_proto::message::Outcome;
use ferrolink_proto::message::Privilege;
use ferrolink_proto::server_session::{Inbound, ServerSession, SessionConfig};
use ferrolink_proto::{Instant, wire};

const APP: AppInfo<'static> = AppInfo {
    id: "sim",
    environment: "sim",
};

fn written(f: impl FnOnce(&mut Writer<'_>)) -> String {
    let mut buf = [0u8; 512];
    let mut w = Writer::new(&mut buf);
    f(&mut w);
    w.as_str().to_owned()
}

#[test]
fn the_device_connection_and_the_server_session_agree() {
    let mut now = Instant::ZERO;
    let mut server = ServerSession::new(SessionConfig::default(), now);
    let mut device = Connection::new(Timing::default(), now);

    // Key message, as the Pico W library sends it.
    let hello = written(|w| message::hello(w, "K", wire::PICO_VERSION, wire::PICO_DEVICE).unwrap());
    let Ok(Inbound::Hello(h)) = server.handle_text(now, &hello) else {
        panic!("not a hello")
    };
    assert_eq!(
        (&*h.key, h.version, h.device.as_deref()),
        ("K", Some(7.0), Some("PICO_W"))
    );
    server.accept(Privilege::Server);
    let mut auth = String::new();
    encode::auth_ok(&mut auth, Privilege::Server, &APP);
    assert_eq!(device.handle_text(now, &auth), Ok(Event::Authenticated));

    let register = written(|w| message::register(w, "read_temperature").unwrap());
    let Ok(Inbound::Register { name }) = server.handle_text(now, &register) else {
        panic!("not a register")
    };
    assert_eq!(name, "read_temperature");

    // The server calls the device; the device answers.
    let mut call = String::new();
    encode::call(
        &mut call,
        &OutgoingCall {
            id: 41,
            command: "read_temperature",
            args: "[]",
            kwargs: "{}",
            objects: None,
            origin: CallOrigin {
                frame_type: "browser",
                protocol_version: 8,
                ip: None,
            },
        },
        &APP,
    );
    let Ok(Event::Call(c)) = device.handle_text(now, &call) else {
        panic!("not a call")
    };
    let reply = written(|w| {
        message::reply_start(w, c.id).unwrap();
        w.raw("21.5").unwrap();
        w.raw(message::REPLY_END).unwrap();
    });
    let Ok(Inbound::Reply(r)) = server.handle_text(now, &reply) else {
        panic!("not a reply")
    };
    assert_eq!(r.id.literal(), "\"server-41\"");
    assert!(matches!(r.outcome, Outcome::Response(v) if v.get() == "21.5"));

    // The device calls the app; the server's answer completes it.
    let id = device.start_call(now, Duration::from_secs(10)).unwrap();
    let out = written(|w| message::call(w, id, "log_reading", "[21.5]", "{}").unwrap());
    let Ok(Inbound::Call(c)) = server.handle_text(now, &out) else {
        panic!("not a call")
    };
    assert_eq!((&*c.command, c.args.get()), ("log_reading", "[21.5]"));
    let mut answer = String::new();
    encode::reply_response(&mut answer, c.id.literal(), "\"logged\"", None);
    assert_eq!(
        device.handle_text(now, &answer),
        Ok(Event::Completed {
            id,
            outcome: Ok("\"logged\"")
        })
    );

    // An hour of virtual time: the device's heartbeats (echo calls the
    // server answers) keep the server's idle deadline from firing, and the
    // device never declares the server dead.
    let hour = Instant::from_millis(3_600_000);
    let mut heartbeats = 0;
    while now < hour {
        let next = device
            .poll_timeout()
            .min(server.poll_timeout().unwrap_or(hour));
        now = next.max(now);
        assert_eq!(
            server.handle_timeout(now),
            None,
            "the server timed the device out"
        );
        match device.handle_timeout(now).unwrap() {
            Due::Heartbeat(id) => {
                heartbeats += 1;
                let echo = written(|w| {
                    message::call(w, id, wire::ECHO_COMMAND, wire::HEARTBEAT_ARGS, "{}").unwrap()
                });
                let Ok(Inbound::Call(c)) = server.handle_text(now, &echo) else {
                    panic!("heartbeat is not a call")
                };
                assert_eq!(c.command, wire::ECHO_COMMAND);
                let mut pong = String::new();
                encode::reply_response(&mut pong, c.id.literal(), c.args.get(), None);
                // The server answers a few milliseconds later.
                now = now + Duration::from_millis(5);
                assert_eq!(device.handle_text(now, &pong), Ok(Event::Nothing));
            }
            Due::Nothing | Due::CallTimedOut(_) => {}
        }
    }
    assert!(
        (355..=361).contains(&heartbeats),
        "{heartbeats} heartbeats in an hour"
    );
}
