//! Whom a request stands for: the connection's peer, unless the peer is a proxy we trust (a
//! load balancer in the VPC), in which case the address that proxy says it forwards for. The
//! rule is the one nginx's `real_ip_recursive` applies: walk `X-Forwarded-For` from the right
//! (each proxy appends the address it received the request from), skip hops that are trusted
//! proxies themselves, and stop at the first that is not. A client on the internet can put
//! anything in the header, but only to the left of what our own proxies appended, so it can
//! never choose the address we settle on.
//!
//! The API's rate limits and the access log both use the result.

use std::net::IpAddr;

/// One trusted range: an address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4 address seen through a dual-stack socket (`::ffff:a.b.c.d`) is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

/// Trusted when nothing is configured: loopback, the private ranges and link-local (where a
/// load balancer in front of the edge sits), IPv6 loopback and unique-local addresses.
pub const DEFAULT_TRUSTED: [&str; 7] = [
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "::1/128",
    "fc00::/7",
];

impl Default for TrustedProxies {
    fn default() -> Self {
        TrustedProxies::parse(DEFAULT_TRUSTED).expect("the default ranges parse")
    }
}

impl TrustedProxies {
    /// Parses CIDRs (`10.0.0.0/8`, `2001:db8::/32`) or single addresses; `none` alone trusts no
    /// proxy at all (every request stands for its peer).
    pub fn parse<I, S>(ranges: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out = Vec::new();
        let mut none = false;
        for range in ranges {
            let range = range.as_ref().trim();
            if range == "none" {
                none = true;
                continue;
            }
            out.push(parse_cidr(range)?);
        }
        if none && !out.is_empty() {
            return Err("\"none\" cannot be combined with other trusted proxies".into());
        }
        Ok(TrustedProxies(out))
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client a request from `peer` carrying `forwarded_for` stands for.
    pub fn client(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        let mut client = canonical(peer);
        if !self.trusts(client) {
            return client;
        }
        let Some(forwarded_for) = forwarded_for else {
            return client;
        };
        for hop in forwarded_for.rsplit(',') {
            // A hop we cannot read: the trusted proxy that forwarded it is all we know.
            let Ok(hop) = hop.trim().parse::<IpAddr>() else {
                return client;
            };
            client = canonical(hop);
            if !self.trusts(client) {
                return client;
            }
        }
        client
    }
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let bad = || format!("{s:?} is not an IP address or CIDR range (such as 10.0.0.0/8)");
    let (addr, prefix) = match s.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (s, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?
        }
        Some(_) => return Err(bad()),
        None => max,
    };
    Ok(Cidr {
        addr: canonical(addr),
        prefix: if addr.is_ipv6() && canonical(addr).is_ipv4() {
            prefix.saturating_sub(96)
        } else {
            prefix
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_trust_table() {
        let trusted = TrustedProxies::default();
        for (peer, xff, want) in [
            ("203.0.113.7", None, "203.0.113.7"),
            // A client on the internet cannot claim another address.
            ("203.0.113.7", Some("198.51.100.1"), "203.0.113.7"),
            // A load balancer in the VPC appends the client's address last.
            ("10.0.3.4", Some("198.51.100.1"), "198.51.100.1"),
            ("10.0.3.4", Some("1.1.1.1, 198.51.100.1"), "198.51.100.1"),
            ("127.0.0.1", Some(" 198.51.100.2 "), "198.51.100.2"),
            // Two proxies of ours: the hop left of the inner one is the client.
            ("10.0.3.4", Some("198.51.100.1, 10.0.9.9"), "198.51.100.1"),
            // What the client wrote left of it is never reached.
            (
                "10.0.3.4",
                Some("6.6.6.6, 198.51.100.1, 10.0.9.9"),
                "198.51.100.1",
            ),
            ("10.0.3.4", Some("garbage"), "10.0.3.4"),
            (
                "10.0.3.4",
                Some("198.51.100.1, garbage, 10.0.0.2"),
                "10.0.0.2",
            ),
            ("10.0.3.4", Some(""), "10.0.3.4"),
            ("10.0.3.4", None, "10.0.3.4"),
            // All hops trusted: the leftmost.
            ("10.0.3.4", Some("10.1.1.1, 10.2.2.2"), "10.1.1.1"),
            ("fd00::1", Some("2001:db8::5"), "2001:db8::5"),
            ("2001:db8::9", Some("2001:db8::5"), "2001:db8::9"),
            // A dual-stack socket's mapped IPv4 peer is the IPv4 address.
            ("::ffff:10.0.0.1", Some("198.51.100.3"), "198.51.100.3"),
            ("::ffff:203.0.113.1", Some("198.51.100.3"), "203.0.113.1"),
        ] {
            assert_eq!(trusted.client(ip(peer), xff), ip(want), "{peer} {xff:?}");
        }
    }

    #[test]
    fn configured_ranges() {
        let lb = TrustedProxies::parse(["100.64.0.0/10", "2001:db8:1::7"]).unwrap();
        assert_eq!(lb.client(ip("100.64.1.1"), Some("9.9.9.9")), ip("9.9.9.9"));
        assert_eq!(
            lb.client(ip("100.128.0.1"), Some("9.9.9.9")),
            ip("100.128.0.1")
        );
        assert_eq!(lb.client(ip("10.0.0.1"), Some("9.9.9.9")), ip("10.0.0.1"));
        assert_eq!(
            lb.client(ip("2001:db8:1::7"), Some("9.9.9.9")),
            ip("9.9.9.9")
        );
        assert_eq!(
            lb.client(ip("2001:db8:1::8"), Some("9.9.9.9")),
            ip("2001:db8:1::8")
        );
        let none = TrustedProxies::parse(["none"]).unwrap();
        assert_eq!(
            none.client(ip("127.0.0.1"), Some("9.9.9.9")),
            ip("127.0.0.1")
        );
        let all = TrustedProxies::parse(["0.0.0.0/0"]).unwrap();
        assert_eq!(all.client(ip("1.2.3.4"), Some("9.9.9.9")), ip("9.9.9.9"));
        let mapped = TrustedProxies::parse(["::ffff:10.0.0.0/104"]).unwrap();
        assert!(mapped.trusts(ip("10.1.2.3")));
        assert!(!mapped.trusts(ip("11.1.2.3")));
    }

    #[test]
    fn bad_ranges_are_refused() {
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "::/129",
            "example.com",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "",
        ] {
            let err = TrustedProxies::parse([bad]).unwrap_err();
            assert!(err.contains("CIDR"), "{bad}: {err}");
        }
        assert!(TrustedProxies::parse(["none", "10.0.0.0/8"]).is_err());
    }
}
