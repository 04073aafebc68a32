//! The revocation list every client ships: SHA-256 fingerprints of
//! certificates (their DER) or public keys (their SubjectPublicKeyInfo)
//! refused anywhere in a server's chain. The list is the file
//! `revoked.txt` beside this crate's manifest, one hex fingerprint per
//! line, `#` comments; it is parsed in place, without a heap.

/// The list shipped with this release.
pub const SHIPPED: &str = include_str!("../revoked.txt");

/// A SHA-256 fingerprint from hex (colons and spaces allowed).
pub fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let mut digits = text.bytes().filter(|c| !matches!(c, b':' | b' '));
    let mut out = [0u8; 32];
    for byte in &mut out {
        let hi = char::from(digits.next()?).to_digit(16)?;
        let lo = char::from(digits.next()?).to_digit(16)?;
        *byte = (hi << 4 | lo) as u8;
    }
    digits.next().is_none().then_some(out)
}

/// The fingerprints of a list in the `revoked.txt` format; lines that are
/// not fingerprints are skipped.
pub fn fingerprints(list: &str) -> impl Iterator<Item = [u8; 32]> + '_ {
    list.lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| !line.is_empty())
        .filter_map(parse_fingerprint)
}

/// Whether `fingerprint` is on the shipped list.
pub fn is_shipped(fingerprint: &[u8; 32]) -> bool {
    fingerprints(SHIPPED).any(|f| f == *fingerprint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons_and_comments() {
        let hex = "96bcec06264976f37460779acf28c5a7cfe8a3c0aae11a8ffcee05c0bddf08c6";
        let colons = "96:bc:ec:06:26:49:76:f3:74:60:77:9a:cf:28:c5:a7:cf:e8:a3:c0:aa:e1:1a:8f:fc:ee:05:c0:bd:df:08:c6";
        assert_eq!(parse_fingerprint(hex), parse_fingerprint(colons));
        assert!(parse_fingerprint("abc").is_none());
        assert!(parse_fingerprint(&[hex, "00"].concat()).is_none());
        let list = "# comment\n\n96bcec06264976f37460779acf28c5a7cfe8a3c0aae11a8ffcee05c0bddf08c6 # why\nnot hex\n";
        assert_eq!(fingerprints(list).count(), 1);
        assert!(!is_shipped(&[0; 32]));
    }
}
