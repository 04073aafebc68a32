//! Simulation on a virtual clock: two client connections and a minimal
//! router built from the server-side pieces (`ServerSession`, `CallTable`),
//! back to back in memory. Deadlines, heartbeats and disconnects are tested
//! here to the millisecond, never with real sleeps.

use std::collections::VecDeque;
use std::time::Duration;

use ferrolink_proto::calls::{CallId, CallTable};
use ferrolink_proto::client_session::{
    CallResult, ClientConfig, ClientEvent, ClientSession, CloseReason, LocalFailure,
};
use ferrolink_proto::encode::{self, AppInfo, CallOrigin, OutgoingCall};
use ferrolink_proto::message::Outcome;
use ferrolink_proto::message::Privilege;
use ferrolink_proto::server_session::{Inbound, ServerSession, SessionConfig, SessionTimeout};
use ferrolink_proto::{Instant, error_type};

const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const APP: AppInfo<'static> = AppInfo {
    id: "sim",
    environment: "sim",
};

/// Caller (0) and provider (1), each a client plus its server session.
struct Sim {
    now: Instant,
    clients: [ClientSession; 2],
    sessions: [ServerSession; 2],
    /// Frames the server has queued for each client.
    to_client: [VecDeque<String>; 2],
    /// Whether each link is up.
    up: [bool; 2],
    /// Calls forwarded to the provider: server id -> caller's id literal.
    pending: CallTable<String>,
    provider_registered: bool,
    next_id: u64,
    events: [Vec<ClientEvent>; 2],
    server_closed: [Option<SessionTimeout>; 2],
}

impl Sim {
    fn new() -> Self {
        let now = Instant::ZERO;
        let mut sim = Self {
            now,
            clients: [
                ClientSession::new(ClientConfig::new("caller"), now),
                ClientSession::new(ClientConfig::new("provider"), now),
            ],
            sessions: [
                ServerSession::new(SessionConfig::default(), now),
                ServerSession::new(SessionConfig::default(), now),
            ],
            to_client: [VecDeque::new(), VecDeque::new()],
            up: [true, true],
            pending: CallTable::new(64),
            provider_registered: false,
            next_id: 1,
            events: [Vec::new(), Vec::new()],
            server_closed: [None, None],
        };
        sim.clients[1].register("f");
        sim.pump();
        sim
    }

    fn server_handle(&mut self, from: usize, text: &str) {
        let now = self.now;
        match self.sessions[from].handle_text(now, text) {
            Ok(Inbound::Hello(_)) => {
                let p = if from == 0 {
                    Privilege::Client
                } else {
                    Privilege::Server
                };
                self.sessions[from].accept(p);
                let mut f = String::new();
                encode::auth_ok(&mut f, p, &APP);
                self.to_client[from].push_back(f);
            }
            Ok(Inbound::Register { .. }) => self.provider_registered = true,
            Ok(Inbound::Call(call)) => {
                let mut f = String::new();
                if call.command == "anvil.private.echo" {
                    encode::reply_response(&mut f, call.id.literal(), "\"keep-alive\"", None);
                    self.to_client[from].push_back(f);
                } else if self.provider_registered && self.up[1] {
                    let id = self.next_id;
                    self.next_id += 1;
                    self.pending
                        .insert(CallId(id), now + CALL_TIMEOUT, call.id.literal().to_owned())
                        .unwrap();
                    let out = OutgoingCall {
                        id,
                        command: &call.command,
                        args: call.args.get(),
                        kwargs: call.kwargs.get(),
                        objects: None,
                        origin: CallOrigin {
                            frame_type: "client-uplink",
                            protocol_version: 8,
                            ip: None,
                        },
                    };
                    encode::call(&mut f, &out, &APP);
                    self.to_client[1].push_back(f);
                } else {
                    encode::reply_error(
                        &mut f,
                        call.id.literal(),
                        error_type::NO_SERVER_FUNCTION,
                        "none",
                    );
                    self.to_client[from].push_back(f);
                }
            }
            Ok(Inbound::Reply(reply)) => {
                let id = encode::parse_server_call_id(&reply.id.value()).unwrap();
                if let Some(caller_id) = self.pending.remove(CallId(id)) {
                    let mut f = String::new();
                    match reply.outcome {
                        Outcome::Response(v) => {
                            encode::reply_response(&mut f, &caller_id, v.get(), None)
                        }
                        Outcome::Error(e) => encode::reply_error_raw(&mut f, &caller_id, e.get()),
                    }
                    self.to_client[0].push_back(f);
                }
            }
            Ok(Inbound::Nothing | Inbound::ChunkHeader { .. }) => {}
            Err(r) => panic!("refused {text}: {r}"),
        }
    }

    /// Moves frames until nothing is in flight.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..2 {
                while let Some(ev) = self.clients[i].poll_event() {
                    self.events[i].push(ev);
                }
                while let Some(frame) = self.clients[i].poll_transmit() {
                    if self.up[i] {
                        self.server_handle(i, &frame);
                        moved = true;
                    }
                }
                while let Some(frame) = self.to_client[i].pop_front() {
                    if self.up[i] {
                        self.clients[i].handle_text(self.now, &frame);
                        moved = true;
                    }
                }
            }
            if !moved {
                break;
            }
        }
    }

    /// Advances the virtual clock by `ms`, firing every deadline on the way.
    fn advance(&mut self, ms: u64) {
        let end = Instant::from_millis(self.now.as_millis() + ms);
        loop {
            let mut next = end;
            for i in 0..2 {
                if let Some(t) = self.clients[i].poll_timeout() {
                    next = next.min(t);
                }
                if self.up[i]
                    && let Some(t) = self.sessions[i].poll_timeout()
                {
                    next = next.min(t);
                }
            }
            if let Some(t) = self.pending.poll_timeout() {
                next = next.min(t);
            }
            self.now = next.max(self.now);
            for i in 0..2 {
                self.clients[i].handle_timeout(self.now);
                if self.up[i]
                    && let Some(why) = self.sessions[i].handle_timeout(self.now)
                {
                    self.server_closed[i] = Some(why);
                    self.up[i] = false;
                    self.clients[i].handle_closed();
                }
            }
            while let Some((_, caller)) = self.pending.expire(self.now) {
                let mut f = String::new();
                encode::reply_error(&mut f, &caller, error_type::TIMEOUT, "deadline");
                self.to_client[0].push_back(f);
            }
            self.pump();
            if self.now >= end {
                break;
            }
        }
    }

    /// The provider's link drops; the server fails what was pending on it.
    fn drop_provider(&mut self) {
        self.up[1] = false;
        self.clients[1].handle_closed();
        let lost: Vec<_> = self.pending.drain().collect();
        for (_, caller) in lost {
            let mut f = String::new();
            encode::reply_error(
                &mut f,
                &caller,
                error_type::UPLINK_DISCONNECTED,
                "Uplink disconnected",
            );
            self.to_client[0].push_back(f);
        }
        self.pump();
    }

    fn call(&mut self, timeout: Duration) -> CallId {
        let now = self.now;
        let id = self.clients[0]
            .call(now, "f", "[1]", "{}", timeout)
            .unwrap();
        self.pump();
        id
    }

    fn incoming(&mut self) -> Vec<String> {
        self.events[1]
            .drain(..)
            .filter_map(|e| match e {
                ClientEvent::Incoming(c) => Some(c.id),
                _ => None,
            })
            .collect()
    }

    fn completed(&mut self, id: CallId) -> Option<CallResult> {
        self.events[0].iter().find_map(|e| match e {
            ClientEvent::Completed { id: got, result } if *got == id => Some(result.clone()),
            _ => None,
        })
    }
}

fn error_type_of(r: &CallResult) -> String {
    match r {
        CallResult::Error(raw) => serde_json::from_str::<serde_json::Value>(raw).unwrap()["type"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        other => format!("{other:?}"),
    }
}

#[test]
fn both_clients_authenticate_and_a_call_completes() {
    let mut sim = Sim::new();
    assert!(sim.clients[0].is_ready() && sim.clients[1].is_ready());
    let id = sim.call(Duration::from_secs(60));
    let incoming = sim.incoming();
    assert_eq!(incoming.len(), 1);
    sim.clients[1].respond(&incoming[0], Ok("42"));
    sim.pump();
    assert_eq!(sim.completed(id), Some(CallResult::Response("42".into())));
}

#[test]
fn provider_disconnect_fails_the_pending_call_at_the_same_instant() {
    let mut sim = Sim::new();
    let id = sim.call(Duration::from_secs(60));
    sim.advance(5_000);
    assert_eq!(sim.completed(id), None);
    let at = sim.now;
    sim.drop_provider();
    let r = sim.completed(id).expect("answered without waiting");
    assert_eq!(error_type_of(&r), error_type::UPLINK_DISCONNECTED);
    assert_eq!(sim.now, at, "no time passed");
}

#[test]
fn server_deadline_fires_exactly_at_thirty_seconds() {
    let mut sim = Sim::new();
    let id = sim.call(Duration::from_secs(120));
    sim.advance(29_999);
    assert_eq!(sim.completed(id), None, "not a millisecond early");
    sim.advance(1);
    assert_eq!(
        error_type_of(&sim.completed(id).unwrap()),
        error_type::TIMEOUT
    );
    // The provider's late answer goes nowhere.
    let late = sim.incoming().remove(0);
    sim.clients[1].respond(&late, Ok("1"));
    sim.pump();
    let answers = sim.events[0]
        .iter()
        .filter(|e| matches!(e, ClientEvent::Completed { id: got, .. } if *got == id))
        .count();
    assert_eq!(answers, 1);
}

#[test]
fn client_deadline_fails_the_call_locally() {
    let mut sim = Sim::new();
    let id = sim.call(Duration::from_millis(1_500));
    sim.advance(1_499);
    assert_eq!(sim.completed(id), None);
    sim.advance(1);
    assert_eq!(
        sim.completed(id),
        Some(CallResult::Failed(LocalFailure::Timeout))
    );
}

#[test]
fn heartbeats_keep_an_idle_link_alive_for_hours() {
    let mut sim = Sim::new();
    sim.advance(3 * 3_600 * 1_000);
    assert!(sim.clients[0].is_ready() && sim.clients[1].is_ready());
    assert_eq!(sim.server_closed, [None, None]);
}

#[test]
fn a_dead_server_is_detected_by_the_heartbeat_deadline() {
    let mut sim = Sim::new();
    // The server stops answering anything from the caller (a half-open link).
    sim.up[0] = false;
    sim.advance(10_000 + 20_000 - 1);
    assert!(!sim.clients[0].is_closed());
    sim.advance(1);
    assert!(sim.events[0].contains(&ClientEvent::Closed(CloseReason::HeartbeatTimeout)));
}

#[test]
fn the_server_closes_a_client_that_went_silent() {
    let mut sim = Sim::new();
    // The provider's outbound traffic vanishes (e.g. its radio died), so the
    // server hears nothing; it must close after the 45 s idle timeout.
    let silent_since = sim.now;
    sim.clients[1] = ClientSession::new(ClientConfig::new("gone"), sim.now);
    let _ = sim.clients[1].poll_transmit();
    sim.clients[1].handle_closed();
    sim.advance(45_000);
    assert_eq!(sim.server_closed[1], Some(SessionTimeout::Idle));
    assert_eq!(
        sim.now.saturating_duration_since(silent_since),
        Duration::from_secs(45)
    );
}
