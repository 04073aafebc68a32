//! Property tests: arbitrary input never panics or exceeds bounds; encoded
//! frames decode to what was encoded; the call table behaves like a map.

use std::collections::BTreeMap;

use ferrolink_proto::calls::{CallId, CallTable};
use ferrolink_proto::codec::{DecodeLimits, decode};
use ferrolink_proto::encode;
use ferrolink_proto::message::Privilege;
use ferrolink_proto::server_session::{Inbound, ServerSession, SessionConfig};
use ferrolink_proto::{Instant, Message};
use proptest::prelude::*;
use serde_json::Value;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Frames that look like protocol messages, with random fields and values.
fn frame_like() -> impl Strategy<Value = String> {
    let keys = prop::sample::select(vec![
        "type",
        "id",
        "command",
        "args",
        "kwargs",
        "objects",
        "call-stack-id",
        "response",
        "error",
        "output",
        "key",
        "v",
        "device",
        "name",
        "auth",
        "priv",
        "app-info",
        "requestId",
        "lastChunk",
        "event",
        "liveObjectCall",
    ]);
    let values = prop_oneof![
        json_value(),
        prop::sample::select(vec!["CALL", "REGISTER", "CHUNK_HEADER", "MEDIA_ERROR", "X"])
            .prop_map(|s| Value::String(s.to_owned())),
    ];
    prop::collection::btree_map(keys, values, 0..8).prop_map(|m| {
        Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()).to_string()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = decode(&text, &DecodeLimits::default());
    }

    #[test]
    fn decoding_message_like_frames_never_panics(frame in frame_like()) {
        let _ = decode(&frame, &DecodeLimits::default());
    }

    #[test]
    fn client_calls_round_trip(
        id in any::<String>(),
        command in any::<String>(),
        args in prop::collection::vec(json_value(), 0..4),
        kwargs in prop::collection::btree_map(any::<String>(), json_value(), 0..4),
        stack in proptest::option::of(any::<String>()),
    ) {
        let args_text = Value::Array(args.clone()).to_string();
        let kwargs_value = Value::Object(kwargs.into_iter().collect());
        let kwargs_text = kwargs_value.to_string();
        let mut frame = String::new();
        encode::client_call(&mut frame, &id, &command, &args_text, &kwargs_text, stack.as_deref());
        let unbounded = DecodeLimits { max_id_len: usize::MAX, max_name_len: usize::MAX, ..DecodeLimits::default() };
        let Ok(Message::Call(call)) = decode(&frame, &unbounded) else {
            panic!("did not decode: {frame}");
        };
        prop_assert_eq!(call.id.value(), id);
        prop_assert_eq!(call.command, command);
        prop_assert_eq!(call.args.get(), args_text.as_str());
        prop_assert_eq!(call.kwargs.get(), kwargs_text.as_str());
        prop_assert_eq!(call.call_stack_id.map(|c| c.into_owned()), stack);
    }

    #[test]
    fn replies_round_trip(id in any::<String>(), value in json_value(), message in any::<String>()) {
        let mut lit = String::new();
        ferrolink_proto::push_str_literal(&mut lit, &id);
        let mut ok = String::new();
        encode::reply_response(&mut ok, &lit, &value.to_string(), None);
        let Ok(Message::Reply(r)) = decode(&ok, &DecodeLimits::default()) else { panic!("{ok}") };
        prop_assert_eq!(r.id.value(), id.clone());
        let mut err = String::new();
        encode::reply_error(&mut err, &lit, "anvil.server.TimeoutError", &message);
        let Ok(Message::Reply(r)) = decode(&err, &DecodeLimits::default()) else { panic!("{err}") };
        let ferrolink_proto::message::Outcome::Error(e) = r.outcome else { panic!("not an error") };
        let e: Value = serde_json::from_str(e.get()).unwrap();
        prop_assert_eq!(&e["message"], &Value::String(message));
    }

    #[test]
    fn a_server_session_survives_any_frame_sequence(
        frames in prop::collection::vec(prop_oneof![frame_like(), any::<String>()], 0..40),
        accept_first_hello in any::<bool>(),
    ) {
        let config = SessionConfig { max_registrations: 5, ..SessionConfig::default() };
        let mut s = ServerSession::new(config, Instant::ZERO);
        let mut registrations = 0;
        for (i, f) in frames.iter().enumerate() {
            if s.is_closed() {
                break;
            }
            match s.handle_text(Instant::from_millis(i as u64), f) {
                Ok(Inbound::Hello(_)) => {
                    if accept_first_hello { s.accept(Privilege::Server) } else { s.reject() }
                }
                Ok(Inbound::Register { .. }) => registrations += 1,
                _ => {}
            }
        }
        prop_assert!(registrations <= 5);
    }

    #[test]
    fn call_table_matches_a_reference_map(ops in prop::collection::vec((0u8..3, 0u64..16, 0u64..100), 0..200)) {
        let mut table = CallTable::new(8);
        let mut model: BTreeMap<u64, u64> = BTreeMap::new();
        let mut now = 0;
        for (op, id, t) in ops {
            match op {
                0 => {
                    let ok = table.insert(CallId(id), Instant::from_millis(now + t), id).is_ok();
                    let model_ok = model.len() < 8 && !model.contains_key(&id);
                    prop_assert_eq!(ok, model_ok);
                    if ok { model.insert(id, now + t); }
                }
                1 => prop_assert_eq!(table.remove(CallId(id)), model.remove(&id).map(|_| id)),
                _ => {
                    now += t;
                    while let Some((CallId(gone), v)) = table.expire(Instant::from_millis(now)) {
                        prop_assert_eq!(gone, v);
                        let deadline = model.remove(&gone).expect("expired call was pending");
                        prop_assert!(deadline <= now);
                    }
                    prop_assert!(model.values().all(|d| *d > now), "a due call was not expired");
                }
            }
            prop_assert_eq!(table.len(), model.len());
        }
    }
}
