//! Small JSON helpers the codec needs beyond `serde_json`: a nesting-depth
//! scan that runs before parsing, and string escaping for encoders that write
//! JSON text directly (so forwarded values are copied, never re-encoded).

use alloc::string::String;

/// Deepest nesting of arrays/objects in `text`, counting only brackets
/// outside string literals. Stops early and returns `Err(depth)` as soon as
/// `limit` is exceeded, so a hostile frame costs at most one pass.
pub(crate) fn check_depth(text: &str, limit: usize) -> Result<(), usize> {
    // Fast path: a frame with no more opening brackets than the limit cannot
    // nest deeper than it. This count vectorises; the exact scan below runs
    // only for frames with many brackets.
    let opening = text
        .as_bytes()
        .iter()
        .filter(|&&b| b == b'[' || b == b'{')
        .count();
    if opening <= limit {
        return Ok(());
    }
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in text.as_bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Err(depth);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

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
    fn depth_counts_only_brackets_outside_strings() {
        assert_eq!(check_depth(r#"{"a":[[1]]}"#, 3), Ok(()));
        assert_eq!(check_depth(r#"{"a":[[1]]}"#, 2), Err(3));
        assert_eq!(check_depth(r#"{"a":"[[[[[[\"[[["}"#, 1), Ok(()));
    }

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
