//! String escaping for encoders that write JSON text directly (so
//! forwarded values are copied, never re-encoded).

use alloc::string::String;

/// Appends `s` to `out` as a JSON string literal, quotes included.
pub fn push_str_literal(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    // Writing to a String cannot fail.
    let _ = crate::escape::write_str_literal(out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips_through_serde_json() {
        for s in [
            "plain",
            "quote \" and \\ back",
            "ctl \u{0001}\n\t\r",
            "ünï <script>",
            "",
        ] {
            let mut out = String::new();
            push_str_literal(&mut out, s);
            let back: String = serde_json::from_str(&out).expect("valid literal");
            assert_eq!(back, s);
        }
    }
}
