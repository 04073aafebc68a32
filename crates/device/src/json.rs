//! Heap-free JSON: a validating scanner that finds the fields of one
//! object and hands out raw slices of their values, string unescaping into
//! caller buffers, and a bounded writer.
//!
//! Nothing here allocates or recurses deeper than [`MAX_DEPTH`]; every
//! function returns an error instead of panicking on any input.

use core::fmt;

/// Deepest nesting of arrays and objects accepted in a frame. Recursion
/// depth (and so stack use) is bounded by it.
pub const MAX_DEPTH: usize = 32;

/// Why a JSON text was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JsonError {
    /// The text is not JSON (or not the JSON this client expects) at this byte offset.
    #[error("invalid JSON at byte {0}")]
    Invalid(usize),
    /// Arrays and objects nest deeper than [`MAX_DEPTH`].
    #[error("JSON nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// The destination buffer is too small.
    #[error("value does not fit the buffer")]
    Full,
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// End (exclusive) of the string literal starting at `i` (which must be `"`).
fn string_end(b: &[u8], i: usize) -> Result<usize, JsonError> {
    if b.get(i) != Some(&b'"') {
        return Err(JsonError::Invalid(i));
    }
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'"' => return Ok(j + 1),
            b'\\' => {
                match b.get(j + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => j += 2,
                    Some(b'u') => {
                        let hex = b.get(j + 2..j + 6).ok_or(JsonError::Invalid(j))?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return Err(JsonError::Invalid(j));
                        }
                        j += 6;
                    }
                    _ => return Err(JsonError::Invalid(j)),
                }
                continue;
            }
            0x00..=0x1f => return Err(JsonError::Invalid(j)),
            _ => j += 1,
        }
    }
    Err(JsonError::Invalid(j))
}

fn digits(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    i
}

fn number_end(b: &[u8], mut i: usize) -> Result<usize, JsonError> {
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    let start = i;
    i = digits(b, i);
    if i == start {
        return Err(JsonError::Invalid(i));
    }
    if b.get(i) == Some(&b'.') {
        let s = i + 1;
        i = digits(b, s);
        if i == s {
            return Err(JsonError::Invalid(i));
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let s = i;
        i = digits(b, i);
        if i == s {
            return Err(JsonError::Invalid(i));
        }
    }
    Ok(i)
}

/// End (exclusive) of the value starting at `i` (whitespace already skipped).
fn value_end(b: &[u8], i: usize, depth: usize) -> Result<usize, JsonError> {
    match b.get(i) {
        Some(b'"') => string_end(b, i),
        Some(b'{') | Some(b'[') => {
            if depth >= MAX_DEPTH {
                return Err(JsonError::TooDeep);
            }
            let object = b[i] == b'{';
            let close = if object { b'}' } else { b']' };
            let mut j = skip_ws(b, i + 1);
            if b.get(j) == Some(&close) {
                return Ok(j + 1);
            }
            loop {
                if object {
                    j = string_end(b, j)?;
                    j = skip_ws(b, j);
                    if b.get(j) != Some(&b':') {
                        return Err(JsonError::Invalid(j));
                    }
                    j = skip_ws(b, j + 1);
                }
                j = value_end(b, j, depth + 1)?;
                j = skip_ws(b, j);
                match b.get(j) {
                    Some(b',') => j = skip_ws(b, j + 1),
                    Some(c) if *c == close => return Ok(j + 1),
                    _ => return Err(JsonError::Invalid(j)),
                }
            }
        }
        Some(b't') if b[i..].starts_with(b"true") => Ok(i + 4),
        Some(b'f') if b[i..].starts_with(b"false") => Ok(i + 5),
        Some(b'n') if b[i..].starts_with(b"null") => Ok(i + 4),
        Some(b'-' | b'0'..=b'9') => number_end(b, i),
        _ => Err(JsonError::Invalid(i)),
    }
}

/// Checks that `text` is exactly one JSON value (surrounding whitespace allowed).
pub fn validate(text: &str) -> Result<(), JsonError> {
    let b = text.as_bytes();
    let start = skip_ws(b, 0);
    let end = skip_ws(b, value_end(b, start, 0)?);
    if end != b.len() {
        return Err(JsonError::Invalid(end));
    }
    Ok(())
}

/// The members of a JSON object, as raw slices: key literals (with quotes)
/// and values exactly as written. Created by [`object`], which validated
/// the whole text first, so iteration itself cannot fail.
#[derive(Debug, Clone)]
pub struct Members<'a> {
    text: &'a str,
    pos: usize,
}

/// Validates `text` as one JSON object and returns its members.
pub fn object(text: &str) -> Result<Members<'_>, JsonError> {
    validate(text)?;
    let b = text.as_bytes();
    let start = skip_ws(b, 0);
    if b.get(start) != Some(&b'{') {
        return Err(JsonError::Invalid(start));
    }
    Ok(Members {
        text,
        pos: start + 1,
    })
}

impl<'a> Iterator for Members<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.text.as_bytes();
        let i = skip_ws(b, self.pos);
        if b.get(i) != Some(&b'"') {
            return None; // `}`: the end (the text was validated)
        }
        let key_end = string_end(b, i).ok()?;
        let v = skip_ws(b, skip_ws(b, key_end) + 1);
        let v_end = value_end(b, v, 1).ok()?;
        let after = skip_ws(b, v_end);
        self.pos = if b.get(after) == Some(&b',') {
            after + 1
        } else {
            after
        };
        // Every index above sits on an ASCII byte, so these are char boundaries.
        Some((self.text.get(i..key_end)?, self.text.get(v..v_end)?))
    }
}

impl<'a> Members<'a> {
    /// The raw value of the member whose key is exactly `key` (no escapes).
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.clone()
            .find(|(k, _)| k.len() == key.len() + 2 && &k[1..k.len() - 1] == key)
            .map(|(_, v)| v)
    }
}

/// The raw elements of a JSON array `text` (validated first).
pub fn array(text: &str) -> Result<Elements<'_>, JsonError> {
    validate(text)?;
    let b = text.as_bytes();
    let start = skip_ws(b, 0);
    if b.get(start) != Some(&b'[') {
        return Err(JsonError::Invalid(start));
    }
    Ok(Elements {
        text,
        pos: start + 1,
    })
}

/// The elements of a JSON array, as raw slices. See [`array()`].
#[derive(Debug, Clone)]
pub struct Elements<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Iterator for Elements<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let b = self.text.as_bytes();
        let i = skip_ws(b, self.pos);
        if b.get(i).is_none_or(|c| *c == b']') {
            return None;
        }
        let end = value_end(b, i, 1).ok()?;
        let after = skip_ws(b, end);
        self.pos = if b.get(after) == Some(&b',') {
            after + 1
        } else {
            after
        };
        self.text.get(i..end)
    }
}

fn hex4(b: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for &c in b.get(..4)? {
        v = v * 16 + char::from(c).to_digit(16)?;
    }
    Some(v)
}

/// Decodes the JSON string literal `literal` (quotes included) into `out`.
pub fn unescape<'o>(literal: &str, out: &'o mut [u8]) -> Result<&'o str, JsonError> {
    let b = literal.as_bytes();
    if b.len() < 2 || b[0] != b'"' || b[b.len() - 1] != b'"' {
        return Err(JsonError::Invalid(0));
    }
    let inner = &b[1..b.len() - 1];
    let mut n = 0;
    let mut i = 0;
    let mut put = |bytes: &[u8], n: &mut usize| -> Result<(), JsonError> {
        let dst = out.get_mut(*n..*n + bytes.len()).ok_or(JsonError::Full)?;
        dst.copy_from_slice(bytes);
        *n += bytes.len();
        Ok(())
    };
    while i < inner.len() {
        if inner[i] != b'\\' {
            put(&inner[i..=i], &mut n)?;
            i += 1;
            continue;
        }
        let esc = *inner.get(i + 1).ok_or(JsonError::Invalid(i))?;
        let simple = match esc {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            b'/' => Some(b'/'),
            b'b' => Some(8),
            b'f' => Some(12),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'u' => None,
            _ => return Err(JsonError::Invalid(i)),
        };
        if let Some(c) = simple {
            put(&[c], &mut n)?;
            i += 2;
            continue;
        }
        let mut code = hex4(inner.get(i + 2..).unwrap_or(&[])).ok_or(JsonError::Invalid(i))?;
        i += 6;
        if (0xd800..0xdc00).contains(&code) {
            // A high surrogate must be followed by an escaped low one.
            let low = (inner.get(i..i + 2) == Some(b"\\u"))
                .then(|| hex4(inner.get(i + 2..).unwrap_or(&[])))
                .flatten()
                .filter(|l| (0xdc00..0xe000).contains(l))
                .ok_or(JsonError::Invalid(i))?;
            code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00);
            i += 6;
        }
        let c = char::from_u32(code).ok_or(JsonError::Invalid(i))?;
        let mut tmp = [0u8; 4];
        put(c.encode_utf8(&mut tmp).as_bytes(), &mut n)?;
    }
    core::str::from_utf8(&out[..n]).map_err(|_| JsonError::Invalid(0))
}

/// The value of a string literal without copying, when it has no escapes.
pub fn plain_str(literal: &str) -> Option<&str> {
    let inner = literal.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('\\')).then_some(inner)
}

/// A bounded writer over a byte buffer; writing past the end is an error
/// and leaves the writer marked as overflowed.
#[derive(Debug)]
pub struct Writer<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl<'b> Writer<'b> {
    /// A writer filling `buf` from its start.
    pub fn new(buf: &'b mut [u8]) -> Self {
        Self { buf, len: 0 }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The text written so far.
    pub fn as_str(&self) -> &str {
        // Only `&str` pieces are ever written, whole.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }

    /// Forgets everything written after the first `len` bytes.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Appends `s` verbatim (for raw JSON).
    pub fn raw(&mut self, s: &str) -> Result<(), JsonError> {
        let dst = self
            .buf
            .get_mut(self.len..self.len + s.len())
            .ok_or(JsonError::Full)?;
        dst.copy_from_slice(s.as_bytes());
        self.len += s.len();
        Ok(())
    }

    /// Appends `s` as a JSON string literal.
    pub fn string(&mut self, s: &str) -> Result<(), JsonError> {
        ferrolink_proto::escape::write_str_literal(self, s).map_err(|_| JsonError::Full)
    }
}

impl fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.raw(s).map_err(|_| fmt::Error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_raw_slices() {
        let text = r#" {"type":"CALL", "args" : [1, {"a":"]"}], "kwargs":{}, "n": -1.5e3 } "#;
        let m = object(text).unwrap();
        assert_eq!(m.get("type"), Some("\"CALL\""));
        assert_eq!(m.get("args"), Some(r#"[1, {"a":"]"}]"#));
        assert_eq!(m.get("n"), Some("-1.5e3"));
        assert_eq!(m.get("missing"), None);
        let args: [&str; 2] = [
            array(m.get("args").unwrap()).unwrap().next().unwrap(),
            array(m.get("args").unwrap()).unwrap().nth(1).unwrap(),
        ];
        assert_eq!(args, ["1", r#"{"a":"]"}"#]);
    }

    #[test]
    fn invalid_and_deep_texts_are_refused() {
        for bad in [
            "", "{", "{\"a\"}", "{\"a\":}", "[1,]", "01x", "\"\\x\"", "{} {}", "tru", "-",
        ] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert_eq!(validate(&deep), Err(JsonError::TooDeep));
    }

    #[test]
    fn unescaping_handles_surrogates_and_bounds() {
        let mut buf = [0u8; 16];
        assert_eq!(
            unescape(r#""a\n\u00e9\ud83d\ude80""#, &mut buf),
            Ok("a\né🚀")
        );
        assert_eq!(
            unescape(r#""\ud83d""#, &mut buf),
            Err(JsonError::Invalid(6))
        );
        assert_eq!(
            unescape(r#""0123456789abcdefg""#, &mut buf),
            Err(JsonError::Full)
        );
    }

    #[test]
    fn written_strings_round_trip() {
        let mut buf = [0u8; 64];
        let mut w = Writer::new(&mut buf);
        w.string("q\"\\\u{1}é").unwrap();
        let lit = std::string::String::from(w.as_str());
        let mut out = [0u8; 16];
        assert_eq!(unescape(&lit, &mut out), Ok("q\"\\\u{1}é"));
        let mut small = [0u8; 3];
        assert_eq!(Writer::new(&mut small).string("abcd"), Err(JsonError::Full));
    }
}
