//! Replays the Roughtime exchanges in `tests/vectors/roughtime.json`, and
//! shows each tampering refused.

use std::path::PathBuf;

use ferrolink_proto::roughtime::{Answer, Pending, RoughtimeError};
use serde_json::Value;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn cases() -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/roughtime.json");
    let text = std::fs::read_to_string(&path).expect("the vector file");
    let file: Value = serde_json::from_str(&text).expect("JSON");
    file["cases"].as_array().expect("cases").clone()
}

struct Case {
    name: String,
    key: [u8; 32],
    request: Vec<u8>,
    response: Vec<u8>,
    answer: Answer,
}

fn load() -> Vec<Case> {
    cases()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().expect("name").to_owned(),
            key: hex(c["long_term_key"].as_str().expect("key"))
                .try_into()
                .expect("32 bytes"),
            request: hex(c["request"].as_str().expect("request")),
            response: hex(c["response"].as_str().expect("response")),
            answer: Answer {
                midpoint: c["midpoint"].as_u64().expect("midpoint"),
                radius: c["radius"].as_u64().expect("radius") as u32,
                version: c["version"].as_u64().expect("version") as u32,
            },
        })
        .collect()
}

#[test]
fn recorded_exchanges_verify() {
    let cases = load();
    assert!(cases.len() >= 6);
    for c in &cases {
        let pending = Pending::from_request(&c.request).expect(&c.name);
        assert_eq!(
            pending.verify(&c.response, &c.key),
            Ok(c.answer),
            "{}",
            c.name
        );
    }
}

#[test]
fn a_response_checked_against_another_servers_key_is_refused() {
    let cases = load();
    let (a, b) = (&cases[0], &cases[1]);
    let pending = Pending::from_request(&a.request).unwrap();
    assert_eq!(
        pending.verify(&a.response, &b.key),
        Err(RoughtimeError::BadDelegationSignature)
    );
}

#[test]
fn a_response_to_another_request_is_refused() {
    let cases = load();
    // Same server and tree, another request of the batch.
    let batch: Vec<&Case> = cases.iter().filter(|c| c.name.starts_with('D')).collect();
    let pending = Pending::from_request(&batch[0].request).unwrap();
    assert_eq!(
        pending.verify(&batch[1].response, &batch[1].key),
        Err(RoughtimeError::WrongNonce)
    );
    // The right nonce but a different packet around it: not in the tree.
    let mut other = batch[0].request.clone();
    *other.last_mut().unwrap() ^= 1;
    let pending = Pending::from_request(&other).unwrap();
    assert_eq!(
        pending.verify(&batch[0].response, &batch[0].key),
        Err(RoughtimeError::NotInTree)
    );
}

#[test]
fn every_flipped_bit_in_a_response_is_refused_or_harmless() {
    // Flipping any single byte of a valid response must never produce a
    // different accepted answer.
    for c in load().iter().take(4) {
        let pending = Pending::from_request(&c.request).unwrap();
        for i in 0..c.response.len() {
            let mut r = c.response.clone();
            r[i] ^= 0x01;
            if let Ok(answer) = pending.verify(&r, &c.key) {
                assert_eq!(answer, c.answer, "{} byte {i}", c.name);
            }
        }
    }
}
