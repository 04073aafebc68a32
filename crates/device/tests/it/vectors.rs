//! The shared decode vectors (`tests/vectors/decode.json`), replayed
//! against the device's heap-free decoder: what the device acts on must be
//! what `ferrolink-proto` decodes, and it must never act on a frame that
//! `ferrolink-proto` refuses.

use ferrolink_device::json;
use ferrolink_device::message::{Incoming, decode};
use serde_json::Value;

fn unescaped(literal: &str) -> String {
    let mut buf = vec![0u8; literal.len()];
    json::unescape(literal, &mut buf).unwrap().to_owned()
}

#[test]
fn the_shared_decode_vectors_agree_with_the_device_decoder() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/vectors/decode.json"
    );
    let file: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = file["cases"].as_array().unwrap();
    let mut checked = 0;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let wire = case["wire"].as_str().unwrap();
        let got = decode(wire);
        if case.get("error").is_some() {
            assert!(
                matches!(got, Err(_) | Ok(Incoming::Ignored)),
                "{name}: the device acted on a frame proto refuses: {got:?}"
            );
            checked += 1;
            continue;
        }
        let m = &case["message"];
        match m["kind"].as_str().unwrap() {
            "call" => {
                let Ok(Incoming::Call(c)) = got else {
                    panic!("{name}: {got:?}")
                };
                assert_eq!(c.id, m["id"].as_str().unwrap(), "{name}");
                assert_eq!(
                    unescaped(c.command),
                    m["command"].as_str().unwrap(),
                    "{name}"
                );
                assert_eq!(c.args, m["args"].as_str().unwrap(), "{name}");
                assert_eq!(c.kwargs, m["kwargs"].as_str().unwrap(), "{name}");
                assert_eq!(c.has_objects, !m["objects"].is_null(), "{name}");
            }
            kind @ ("response" | "error") => {
                // Not one of the device's ids: nothing to do with it.
                assert_eq!(got, Ok(Incoming::Ignored), "{name}");
                // The same reply to a call the device made.
                let ours = wire.replacen(m["id"].as_str().unwrap(), "\"d-7\"", 1);
                let value = m["value"].as_str().unwrap();
                let outcome = if kind == "response" {
                    Ok(value)
                } else {
                    Err(value)
                };
                assert_eq!(
                    decode(&ours),
                    Ok(Incoming::Reply { id: 7, outcome }),
                    "{name}"
                );
            }
            "auth" => assert_eq!(got, Ok(Incoming::AuthOk), "{name}"),
            "fatal" => {
                let Ok(Incoming::Fatal(raw)) = got else {
                    panic!("{name}: {got:?}")
                };
                assert_eq!(unescaped(raw), m["error"].as_str().unwrap(), "{name}");
            }
            // Client-to-server messages, output, media and unknown types:
            // nothing a device acts on.
            _ => assert_eq!(got, Ok(Incoming::Ignored), "{name}"),
        }
        checked += 1;
    }
    assert_eq!(checked, cases.len());
    assert!(checked >= 30, "only {checked} vectors");
}
