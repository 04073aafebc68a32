//! The client address behind a trusted reverse proxy, from the one header
//! the operator says the proxy writes: `X-Forwarded-For` (the default; what
//! nginx, HAProxy and most load balancers append) or `Forwarded` (RFC 7239).
//! Only that header is read: a proxy that appends to one passes the other
//! through from the client untouched, so reading both would let a client
//! name any address.
//!
//! Only a connection whose TCP peer is a trusted proxy may name another
//! address, and the headers are read from the right: each proxy appends
//! the address it saw, so the right-most entry that is not itself a
//! trusted proxy is the first one an outsider could not have forged.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

pub(crate) use crate::config::ProxyHeader;

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
/// proxy and `header` names a client (port 0: proxies do not forward it
/// reliably).
pub(crate) fn client_address(
    peer: SocketAddr,
    headers: &HeaderMap,
    proxies: &[IpNet],
    header: ProxyHeader,
) -> SocketAddr {
    if !is_trusted(peer.ip(), proxies) {
        return peer;
    }
    let values = |name: &'static str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect::<Vec<_>>()
    };
    let chain: Vec<IpAddr> = match header {
        ProxyHeader::Forwarded => values("forwarded")
            .into_iter()
            .filter_map(forwarded_for)
            .collect(),
        ProxyHeader::XForwardedFor => values("x-forwarded-for")
            .into_iter()
            .filter_map(|s| parse_node(s.trim()))
            .collect(),
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
        for which in [ProxyHeader::XForwardedFor, ProxyHeader::Forwarded] {
            assert_eq!(client_address(peer, &h, &proxies(), which), peer);
        }
    }

    #[test]
    fn the_rightmost_untrusted_entry_wins() {
        let peer: SocketAddr = PROXY.parse().unwrap();
        // The client forged the first entry; the proxy appended the real one.
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 198.51.100.7, 10.9.9.9")]);
        assert_eq!(
            client_address(peer, &h, &proxies(), ProxyHeader::XForwardedFor)
                .ip()
                .to_string(),
            "198.51.100.7"
        );
    }

    #[test]
    fn only_the_configured_header_is_read_and_forwarded_quoting_is_understood() {
        let peer: SocketAddr = PROXY.parse().unwrap();
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.1"),
            (
                "forwarded",
                r#"for=192.0.2.60;proto=https, For="[2001:db8:cafe::17]:4711""#,
            ),
        ]);
        assert_eq!(
            client_address(peer, &h, &proxies(), ProxyHeader::Forwarded)
                .ip()
                .to_string(),
            "2001:db8:cafe::17"
        );
        // A client's own Forwarded header, passed through by a proxy that
        // appends X-Forwarded-For, names nobody.
        assert_eq!(
            client_address(peer, &h, &proxies(), ProxyHeader::XForwardedFor)
                .ip()
                .to_string(),
            "198.51.100.1"
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
            for which in [ProxyHeader::XForwardedFor, ProxyHeader::Forwarded] {
                assert_eq!(client_address(peer, &h, &proxies(), which), peer);
            }
        }
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_ranges() {
        assert!(is_trusted("::ffff:10.0.0.1".parse().unwrap(), &proxies()));
        assert!(!is_trusted("::ffff:11.0.0.1".parse().unwrap(), &proxies()));
    }
}
