//! Replays the shared vectors in `tests/vectors/`.

use std::path::PathBuf;

use ferrolink_proto::Message;
use ferrolink_proto::codec::{DecodeLimits, decode};
use ferrolink_proto::encode::{self, AppInfo, CallOrigin, OutgoingCall};
use ferrolink_proto::message::Outcome;
use ferrolink_proto::message::Privilege;
use serde_json::{Value, json};

fn load(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/vectors")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("vector file is JSON")
}

fn summary(m: &Message<'_>) -> Value {
    match m {
        Message::Hello(h) => {
            json!({"kind":"hello","key":h.key,"version":h.version,"device":h.device})
        }
        Message::AuthOk(a) => json!({"kind":"auth","privilege":a.privilege}),
        Message::Fatal { error } => json!({"kind":"fatal","error":error}),
        Message::Register { name } => json!({"kind":"register","name":name}),
        Message::Call(c) => json!({
            "kind":"call","id":c.id.literal(),"command":c.command,"args":c.args.get(),
            "kwargs":c.kwargs.get(),"objects":c.objects.map(|o| o.get()),"call_stack_id":c.call_stack_id
        }),
        Message::Reply(r) => {
            let (kind, value) = match r.outcome {
                Outcome::Response(v) => ("response", v.get()),
                Outcome::Error(v) => ("error", v.get()),
            };
            json!({"kind":kind,"id":r.id.literal(),"value":value,"objects":r.objects.map(|o| o.get())})
        }
        Message::Output { text, .. } => json!({"kind":"output","text":text}),
        Message::ChunkHeader { last_chunk, .. } => {
            json!({"kind":"chunk_header","last_chunk":last_chunk})
        }
        Message::Unknown { kind, .. } => json!({"kind":"unknown","type":kind}),
        other => json!({"kind": other.kind()}),
    }
}

#[test]
fn decode_vectors() {
    let file = load("decode.json");
    let cases = file["cases"].as_array().expect("cases");
    assert!(cases.len() >= 25);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let wire = case["wire"].as_str().unwrap();
        let got = decode(wire, &DecodeLimits::default());
        match (&got, case.get("message"), case.get("error")) {
            (Ok(m), Some(expected), None) => assert_eq!(&summary(m), expected, "case {name:?}"),
            (Err(e), None, Some(expected)) => {
                assert_eq!(e.kind.code(), expected["kind"], "case {name:?}: {e}");
                assert_eq!(e.id.as_deref(), expected["id"].as_str(), "case {name:?}");
            }
            _ => panic!("case {name:?}: got {got:?}"),
        }
    }
}

#[test]
fn encode_vectors() {
    let file = load("encode.json");
    for case in file["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().unwrap();
        let i = &case["input"];
        let s = |k: &str| i[k].as_str().unwrap_or_default();
        let mut out = String::new();
        match s("kind") {
            "auth" => {
                let p = if s("privilege") == "server" {
                    Privilege::Server
                } else {
                    Privilege::Client
                };
                encode::auth_ok(
                    &mut out,
                    p,
                    &AppInfo {
                        id: s("app"),
                        environment: s("environment"),
                    },
                );
            }
            "fatal" => encode::fatal(&mut out, s("text")),
            "response" => {
                encode::reply_response(&mut out, s("id"), s("value"), i["objects"].as_str())
            }
            "error" => encode::reply_error(&mut out, s("id"), s("type"), s("message")),
            "call" => {
                let call = OutgoingCall {
                    id: i["id"].as_u64().unwrap(),
                    command: s("command"),
                    args: s("args"),
                    kwargs: s("kwargs"),
                    objects: None,
                    origin: CallOrigin {
                        frame_type: s("frame_type"),
                        protocol_version: i["protocol_version"].as_u64().unwrap() as u32,
                        ip: i["ip"].as_str(),
                    },
                };
                encode::call(
                    &mut out,
                    &call,
                    &AppInfo {
                        id: s("app"),
                        environment: s("environment"),
                    },
                );
            }
            other => panic!("unknown kind {other}"),
        }
        assert_eq!(out, case["wire"].as_str().unwrap(), "case {name:?}");
    }
}
