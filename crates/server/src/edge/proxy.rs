//! The client address behind a trusted reverse proxy, from `Forwarded`
//! (RFC 7239) or `X-Forwarded-For`.
//!
//! Only a connection whose TCP peer is a trusted proxy may name another
//! address, and the headers are read from the right: each proxy appends
//! the address it saw, so the right-most entry that is not itself a
//! trusted proxy is the first one an outsider could not have forged.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// Whether `ip` is one of the trusted proxies.
pub(crate) fn is_trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    let ip = canonical(ip);
    proxies.iter().any(|net| net.contains(&ip))
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The address a request comes from: `peer`, unless `peer` is a trusted
/// proxy and the headers name a client (port 0: proxies do not forward it
/// reliably).
pub(crate) fn client_address(
    peer: SocketAddr,
    headers: &HeaderMap,
    proxies: &[IpNet],
) -> SocketAddr {
    if !is_trusted(peer.ip(), proxies) {
        return peer;
    }
    let forwarded = headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(forwarded_for)
        .collect::<Vec<_>>();
    let chain = if forwarded.is_empty() {
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| parse_node(s.trim()))
            .collect()
    } else {
        forwarded
    };
    chain
        .into_iter()
        .rev()
        .find(|ip| !is_trusted(*ip, proxies))
        .map_or(peer, |ip| SocketAddr::new(ip, 0))
}

/// The `for=` address of one `Forwarded` element.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then(|| parse_node(value.trim().trim_matches('"')))
            .flatten()
    })
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`,
/// `[2001:db8::1]`, `[2001:db8::1]:4711` or a bare IPv6 address.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')
        .and_then(|r| r.split_once(']'))
        .and_then(|(ip, _)| ip.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn proxies() -> Vec<IpNet> {
        vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]
    }

    const PROXY: &str = "10.1.2.3:5555";

    #[test]
    fn untrusted_peers_cannot_name_another_address() {
        let peer: SocketAddr = "203.0.113.9:4000".parse().unwrap();
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("forwarded", "for=198.51.100.2"),
        ]);
        assert_eq!(client_address(peer, &h, &proxies()), peer);
    }

    #[test]
    fn the_rightmost_untrusted_entry_wins() {
        let peer: SocketAddr = PROXY.parse().unwrap();
        // The client forged the first entry; the proxy appended the real one.
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 198.51.100.7, 10.9.9.9")]);
        assert_eq!(
            client_address(peer, &h, &proxies()).ip().to_string(),
            "198.51.100.7"
        );
    }

    #[test]
    fn forwarded_takes_precedence_and_understands_its_quoting() {
        let peer: SocketAddr = PROXY.parse().unwrap();
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.1"),
            (
                "forwarded",
                r#"for=192.0.2.60;proto=https, For="[2001:db8:cafe::17]:4711""#,
            ),
        ]);
        assert_eq!(
            client_address(peer, &h, &proxies()).ip().to_string(),
            "2001:db8:cafe::17"
        );
    }

    #[test]
    fn without_usable_headers_the_proxy_address_stays() {
        let peer: SocketAddr = PROXY.parse().unwrap();
        for h in [
            headers(&[]),
            headers(&[("x-forwarded-for", "unknown, _hidden")]),
            headers(&[("forwarded", "for=unknown")]),
            headers(&[("x-forwarded-for", "10.0.0.5")]),
        ] {
            assert_eq!(client_address(peer, &h, &proxies()), peer);
        }
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_ranges() {
        assert!(is_trusted("::ffff:10.0.0.1".parse().unwrap(), &proxies()));
        assert!(!is_trusted("::ffff:11.0.0.1".parse().unwrap(), &proxies()));
    }
}
