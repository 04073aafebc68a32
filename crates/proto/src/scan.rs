//! One pass over JSON text, without a heap: validation (RFC 8259), a
//! nesting limit, and the members of a top-level object as raw slices.
//!
//! The codec reads the envelope of every frame with it — which keys are
//! there, and where their values are — while checking the whole frame,
//! forwarded values included, so nothing invalid is ever forwarded and
//! nothing is parsed twice. Work is linear in the input and the recursion
//! is bounded by the nesting limit.

/// Where and why the text is not acceptable JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanError {
    /// Byte offset of the problem.
    pub at: usize,
    /// What was expected or wrong.
    pub what: &'static str,
    /// The nesting limit was exceeded (rather than the JSON being invalid).
    pub too_deep: bool,
}

impl core::fmt::Display for ScanError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

struct Scanner<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
    max_depth: usize,
}

type Result<T> = core::result::Result<T, ScanError>;

impl<'a> Scanner<'a> {
    fn err<T>(&self, what: &'static str) -> Result<T> {
        Err(ScanError {
            at: self.i,
            what,
            too_deep: false,
        })
    }

    /// `text[start..i]`: both ends are at ASCII bytes, so at character
    /// boundaries (checked in O(1), never failing on valid scans).
    fn slice(&self, start: usize) -> &'a str {
        self.text.get(start..self.i).unwrap_or("")
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Result<()> {
        match self.b.get(self.i) {
            Some(b'{') => self.object(depth + 1, |_, _, _| Ok(())),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string().map(|_| ()),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => self.err("expected a value"),
            None => self.err("unexpected end of input, expected a value"),
        }
    }

    fn deeper(&self, depth: usize) -> Result<()> {
        if depth > self.max_depth {
            return Err(ScanError {
                at: self.i,
                what: "nesting deeper than the limit",
                too_deep: true,
            });
        }
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Result<()> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            self.err("expected true, false or null")
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.b.get(self.i) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<()> {
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match self.b.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.err("expected a digit"),
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return self.err("expected a digit after the decimal point");
            }
        }
        if let Some(b'e' | b'E') = self.b.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.b.get(self.i) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return self.err("expected a digit in the exponent");
            }
        }
        Ok(())
    }

    /// A string literal; returns it (quotes included) and whether it holds escapes.
    fn string(&mut self) -> Result<(&'a str, bool)> {
        let start = self.i;
        self.i += 1;
        let mut escaped = false;
        loop {
            let rest = self.b.get(self.i..).unwrap_or_default();
            self.i += plain_run(rest);
            match self.b.get(self.i) {
                Some(b'"') => {
                    self.i += 1;
                    return Ok((self.slice(start), escaped));
                }
                Some(b'\\') => {
                    escaped = true;
                    match self.b.get(self.i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 2,
                        Some(b'u') => {
                            let hex = self.b.get(self.i + 2..self.i + 6);
                            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                                return self.err("expected four hex digits after \\u");
                            }
                            self.i += 6;
                        }
                        _ => return self.err("invalid escape in a string"),
                    }
                }
                Some(_) => return self.err("control character in a string"),
                None => return self.err("unterminated string"),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<()> {
        self.deeper(depth)?;
        self.i += 1;
        self.ws();
        if self.b.get(self.i) == Some(&b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            self.value(depth)?;
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return self.err("expected , or ] in an array"),
            }
        }
    }

    /// An object; `member` sees each key literal (whether escaped) and raw
    /// value.
    fn object(
        &mut self,
        depth: usize,
        mut member: impl FnMut(&'a str, bool, &'a str) -> core::result::Result<(), &'static str>,
    ) -> Result<()> {
        self.deeper(depth)?;
        self.i += 1;
        self.ws();
        if self.b.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            if self.b.get(self.i) != Some(&b'"') {
                return self.err("expected a string key in an object");
            }
            let (key, escaped) = self.string()?;
            self.ws();
            if self.b.get(self.i) != Some(&b':') {
                return self.err("expected : after an object key");
            }
            self.i += 1;
            self.ws();
            let start = self.i;
            self.value(depth)?;
            let value = self.slice(start);
            if let Err(what) = member(key, escaped, value) {
                return Err(ScanError {
                    at: start,
                    what,
                    too_deep: false,
                });
            }
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return self.err("expected , or } in an object"),
            }
        }
    }

    fn end(&mut self) -> Result<()> {
        self.ws();
        if self.i == self.b.len() {
            Ok(())
        } else {
            self.err("trailing characters after the JSON value")
        }
    }
}

/// Checks that `text` is exactly one JSON value nested at most
/// `max_depth` deep.
pub fn validate(text: &str, max_depth: usize) -> Result<()> {
    let mut s = Scanner {
        text,
        b: text.as_bytes(),
        i: 0,
        max_depth,
    };
    s.ws();
    s.value(0)?;
    s.end()
}

/// Whether `text` starts (after white space) with `{`.
pub fn is_object(text: &str) -> bool {
    text.trim_start().starts_with('{')
}

/// Checks that `text` is one JSON object nested at most `max_depth` deep,
/// and calls `member` with each top-level member's key (the literal with
/// its quotes, and whether it holds escapes) and raw value, in order. An
/// error from `member` stops the scan.
pub fn object<'a>(
    text: &'a str,
    max_depth: usize,
    member: impl FnMut(&'a str, bool, &'a str) -> core::result::Result<(), &'static str>,
) -> Result<()> {
    let mut s = Scanner {
        text,
        b: text.as_bytes(),
        i: 0,
        max_depth,
    };
    s.ws();
    if s.b.get(s.i) != Some(&b'{') {
        return s.err("expected a JSON object");
    }
    s.object(1, member)?;
    s.end()
}

/// The length of the run of bytes at the start of `b` that a string may
/// hold as they are: everything but `"`, `\\` and control bytes. Long runs
/// are tested 32 bytes at a time with a branch-free fold the compiler turns
/// into SIMD compares; the chunk that holds a special byte, and short
/// strings, eight at a time in a word.
fn plain_run(b: &[u8]) -> usize {
    const LANES: usize = 32;
    let mut at = 0;
    // Most strings in an envelope are short: one word first.
    if let Some(word) = b.get(..8) {
        let mask = special_bytes(u64::from_le_bytes(word.try_into().unwrap_or_default()));
        if mask != 0 {
            return (mask.trailing_zeros() / 8) as usize;
        }
        at = 8;
    }
    for chunk in b[at..].chunks_exact(LANES) {
        if chunk.iter().fold(false, |hit, &c| hit | special(c)) {
            break;
        }
        at += LANES;
    }
    while let Some(word) = b.get(at..at + 8) {
        let mask = special_bytes(u64::from_le_bytes(word.try_into().unwrap_or_default()));
        if mask != 0 {
            return at + (mask.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    b[at..]
        .iter()
        .position(|&c| special(c))
        .map_or(b.len(), |p| at + p)
}

#[inline(always)]
fn special(c: u8) -> bool {
    (c == b'"') | (c == b'\\') | (c < 0x20)
}

/// The high bit of each byte of `x` (little-endian) that is `"`, `\\` or
/// below 0x20 - exact for the lowest such byte, which is all that is used
/// (a borrow can only mark bytes above a real one).
#[inline(always)]
fn special_bytes(x: u64) -> u64 {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v;
    let quote = zero(x ^ (ONES * u64::from(b'"')));
    let backslash = zero(x ^ (ONES * u64::from(b'\\')));
    let control = x.wrapping_sub(ONES * 0x20) & !x;
    (quote | backslash | control) & HIGH
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_json_passes_and_invalid_json_is_placed() {
        for ok in [
            "0",
            "-0.5e+3",
            "\"a\\u00e9\\n\"",
            "[]",
            "{}",
            " [1, {\"a\": [null, true, false]}] ",
            "\"日本\"",
            "1E9",
        ] {
            assert_eq!(validate(ok, 8), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "01",
            "1.",
            "-",
            "1e",
            "[1,]",
            "{\"a\":1,}",
            "{a:1}",
            "\"\\x\"",
            "\"\u{1}\"",
            "tru",
            "[1] 2",
            "\"\\u12\"",
            "{\"a\" 1}",
            "[",
            "\"abc",
        ] {
            assert!(validate(bad, 8).is_err(), "{bad:?}");
        }
        let e = validate("[1, 2, x]", 8).unwrap_err();
        assert_eq!((e.at, e.what), (7, "expected a value"));
    }

    #[test]
    fn strings_stop_at_every_special_byte_wherever_it_is() {
        for at in 0..40 {
            let mut text = alloc::string::String::from("\"");
            text.push_str(&"x".repeat(at));
            text.push('\u{1}');
            text.push_str("yyyy\"");
            assert!(validate(&text, 4).is_err(), "{at}");
            let ok = text.replace('\u{1}', "\\n");
            assert!(validate(&ok, 4).is_ok(), "{at}");
            let unterminated = &ok[..ok.len() - 1];
            assert!(validate(unterminated, 4).is_err(), "{at}");
        }
    }

    #[test]
    fn plain_run_finds_the_first_special_byte_in_every_lane() {
        for len in 0..100 {
            for at in 0..=len {
                for special in [b'"', b'\\', 0x00, 0x1f] {
                    let mut b = alloc::vec![b'a'; len];
                    // Bytes that are allowed, near the special ones.
                    for (i, c) in b.iter_mut().enumerate() {
                        *c = [b'a', 0x20, b'!', b'#', b'[', b']', 0x7f, 0xc3][i % 8];
                    }
                    if at < len {
                        b[at] = special;
                    }
                    assert_eq!(plain_run(&b), at, "len {len} at {at} byte {special}");
                }
            }
        }
    }

    #[test]
    fn brackets_inside_strings_do_not_nest() {
        assert!(validate(r#"{"a":"[[[[[[\"[[["}"#, 1).is_ok());
        assert!(validate(r#"{"a":[[1]]}"#, 3).is_ok());
        assert!(validate(r#"{"a":[[1]]}"#, 2).unwrap_err().too_deep);
    }

    #[test]
    fn nesting_is_bounded() {
        assert!(validate("[[[]]]", 3).is_ok());
        let e = validate("[[[[]]]]", 3).unwrap_err();
        assert!(e.too_deep);
        let deep = "[".repeat(100_000);
        assert!(validate(&deep, 64).unwrap_err().too_deep);
    }

    #[test]
    fn object_members_are_raw_slices_in_order() {
        let mut seen = alloc::vec::Vec::new();
        object(
            r#" {"id": "a\"b", "args" : [1, {"x": 2}], "n":null} "#,
            8,
            |k, esc, v| {
                seen.push((k, esc, v));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(
            seen,
            [
                ("\"id\"", false, r#""a\"b""#),
                ("\"args\"", false, r#"[1, {"x": 2}]"#),
                ("\"n\"", false, "null")
            ]
        );
        assert!(object("[1]", 8, |_, _, _| Ok(())).is_err());
        let stop = object(r#"{"a":1,"b":2}"#, 8, |k, _, _| {
            if k == "\"b\"" { Err("no b") } else { Ok(()) }
        });
        assert_eq!(stop.unwrap_err().what, "no b");
    }
}
