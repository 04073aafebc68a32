//! Function names as uplinks register them: a plain name, or a regular
//! expression (the official server's convention: a name with regex syntax
//! is a pattern that calls must match in full).
//!
//! Patterns come from devices, so compiling one is bounded: the compiled
//! program may take at most [`COMPILED_LIMIT`] bytes, which keeps both the
//! compile time of one pattern (done inline when it is registered) and its
//! memory small; a pattern over the limit is refused as invalid. The
//! combined automaton of all of an app's patterns, the expensive part, is
//! built on a blocking thread (`calls::registry`).

use regex::{Regex, RegexBuilder};

/// Largest compiled pattern (and lazy DFA cache) allowed.
pub(crate) const COMPILED_LIMIT: usize = 64 * 1024;

/// Whether `name` is a pattern rather than a plain name.
pub(crate) fn is_pattern(name: &str) -> bool {
    name.contains([
        '*', '+', '?', '(', ')', '[', ']', '{', '}', '|', '^', '$', '\\',
    ])
}

/// Compiles `pattern` to match whole names only.
pub(crate) fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(COMPILED_LIMIT)
        .dfa_size_limit(COMPILED_LIMIT)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_names_and_huge_ones_are_refused() {
        assert!(!is_pattern("blink_morse"));
        assert!(is_pattern("sensor_.*"));
        let r = compile("sensor_.*").unwrap();
        assert!(r.is_match("sensor_1") && !r.is_match("my_sensor_1"));
        // A pattern whose program would be huge (a counted repetition of
        // a Unicode class) is an error, not megabytes of memory.
        assert!(compile(r"\w{1000}\w{1000}").is_err());
    }
}
