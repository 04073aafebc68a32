//! JSON string literals, written without a heap: the one escaping routine
//! every encoder uses (the server's and tokio client's frames through
//! [`crate::push_str_literal`], the device's bounded writer directly).

use core::fmt::{self, Write};

/// Writes `s` to `out` as a JSON string literal, quotes included: `"` and
/// `\` escaped, control characters as `\n`, `\r`, `\t` or `\u00XX`.
pub fn write_str_literal<W: Write + ?Sized>(out: &mut W, s: &str) -> fmt::Result {
    out.write_char('"')?;
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.write_str(&s[start..i])?;
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.write_str("\\u00")?;
            out.write_char(char::from(HEX[usize::from(b >> 4)]))?;
            out.write_char(char::from(HEX[usize::from(b & 0xf)]))?;
        } else {
            out.write_str(escape)?;
        }
        start = i + 1;
    }
    out.write_str(&s[start..])?;
    out.write_char('"')
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Buf([u8; 64], usize);

    impl Write for Buf {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let dst = self.0.get_mut(self.1..self.1 + s.len()).ok_or(fmt::Error)?;
            dst.copy_from_slice(s.as_bytes());
            self.1 += s.len();
            Ok(())
        }
    }

    #[test]
    fn specials_and_controls_are_escaped_without_a_heap() {
        let mut b = Buf([0; 64], 0);
        write_str_literal(&mut b, "a\"b\\c\nd\u{1}é").unwrap();
        assert_eq!(&b.0[..b.1], "\"a\\\"b\\\\c\\nd\\u0001é\"".as_bytes());
        let mut small = Buf([0; 64], 60);
        assert!(write_str_literal(&mut small, "long enough").is_err());
    }
}
