//! Where the platform may send a user's notifications: no server-side request forgery.
//!
//! A notification URL is the user's, so it is hostile input. It must be `http` or `https`, may
//! not name this platform (its domain or any name under it, or one of this edge's own
//! listeners), and every address it reaches must be a public one: loopback, the private and
//! shared ranges, link-local (the cloud metadata endpoints), multicast and reserved space are
//! refused, in IPv4, IPv6 and IPv4-mapped IPv6 alike. Names are checked when the target is
//! added and resolved again at every delivery through [`Policy::resolver`], which hands the
//! HTTP client only the addresses that pass, so a name that changes its answer (DNS rebinding)
//! reaches nothing new. The operator may open ranges (`--notify-allow-network`): an internal
//! relay, or loopback for a test; link-local never.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// An address range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// Reads `10.0.0.0/8`, `127.0.0.1/32`, `fd00::/8`; link-local ranges are refused.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| Err(format!("network {text:?}: {why}"));
        let Some((addr, len)) = text.split_once('/') else {
            return bad("write it as a CIDR, e.g. 10.20.0.0/16");
        };
        let Ok(addr) = addr.parse::<IpAddr>() else {
            return bad("not an IP address");
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let Some(len) = len.parse::<u8>().ok().filter(|l| *l <= max) else {
            return bad(&format!("the prefix length must be 0 to {max}"));
        };
        let cidr = Cidr { addr, len };
        if cidr.network() != addr {
            return bad("has host bits set");
        }
        let link_local = match addr {
            IpAddr::V4(a) => Cidr::v4([169, 254, 0, 0], 16).overlaps(&cidr) || a.is_link_local(),
            IpAddr::V6(_) => Cidr::v6(0xfe80, 10).overlaps(&cidr),
        };
        if link_local {
            return bad("link-local addresses (the cloud metadata endpoints) can not be opened");
        }
        Ok(cidr)
    }

    const fn v4(a: [u8; 4], len: u8) -> Self {
        Cidr {
            addr: IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
            len,
        }
    }

    const fn v6(first: u16, len: u8) -> Self {
        Cidr {
            addr: IpAddr::V6(Ipv6Addr::new(first, 0, 0, 0, 0, 0, 0, 0)),
            len,
        }
    }

    fn bits(addr: IpAddr) -> (u128, u8) {
        match addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        }
    }

    fn mask(&self) -> u128 {
        let (_, width) = Self::bits(self.addr);
        let len = u32::from(self.len);
        if len == 0 {
            0
        } else {
            (u128::MAX << (u32::from(width) - len)) & (u128::MAX >> (128 - u32::from(width)))
        }
    }

    fn network(&self) -> IpAddr {
        let (bits, _) = Self::bits(self.addr);
        let net = bits & self.mask();
        match self.addr {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(net as u32)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(net)),
        }
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (bits, width) = Self::bits(ip);
        let (own, own_width) = Self::bits(self.addr);
        width == own_width && bits & self.mask() == own & self.mask()
    }

    fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }
}

/// Ranges a notification never reaches unless the operator opened them.
const CLOSED: &[Cidr] = &[
    Cidr::v4([0, 0, 0, 0], 8),
    Cidr::v4([10, 0, 0, 0], 8),
    Cidr::v4([100, 64, 0, 0], 10),
    Cidr::v4([127, 0, 0, 0], 8),
    Cidr::v4([169, 254, 0, 0], 16),
    Cidr::v4([172, 16, 0, 0], 12),
    Cidr::v4([192, 0, 0, 0], 24),
    Cidr::v4([192, 0, 2, 0], 24),
    Cidr::v4([192, 168, 0, 0], 16),
    Cidr::v4([198, 18, 0, 0], 15),
    Cidr::v4([198, 51, 100, 0], 24),
    Cidr::v4([203, 0, 113, 0], 24),
    Cidr::v4([224, 0, 0, 0], 4),
    Cidr::v4([240, 0, 0, 0], 4),
    Cidr::v6(0, 127),     // :: and ::1
    Cidr::v6(0x0064, 16), // NAT64 (64:ff9b::/96) and its neighbours
    Cidr::v6(0x0100, 16), // discard-only
    Cidr::v6(0x2002, 16), // 6to4: any IPv4 address behind it
    Cidr::v6(0xfc00, 7),  // unique local
    Cidr::v6(0xfe80, 10), // link-local
    Cidr::v6(0xfec0, 10), // site-local
    Cidr::v6(0xff00, 8),  // multicast
];

/// Whether `ip` (an IPv4-mapped IPv6 address as its IPv4) is outside every closed range.
fn is_public(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    if let IpAddr::V6(v6) = ip {
        // In 2001::/16, the IETF's assignments (Teredo and the like, 2001::/23) and
        // documentation (2001:db8::/32) are closed; the rest is real networks.
        let s = v6.segments();
        if s[0] == 0x2001 && (s[1] < 0x0200 || s[1] == 0x0db8) {
            return false;
        }
    }
    !CLOSED.iter().any(|c| c.contains(ip))
}

/// The rules a notification's address is held to.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// The platform's domain: it and every name under it are the platform itself.
    pub platform_domain: String,
    /// This edge's own listeners (an unspecified address stands for every local one).
    pub own: Vec<SocketAddr>,
    /// Ranges the operator opened.
    pub allowed: Vec<Cidr>,
}

impl Policy {
    /// Whether a connection to `ip` on `port` is allowed.
    pub fn permits(&self, ip: IpAddr, port: u16) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        let link_local =
            Cidr::v4([169, 254, 0, 0], 16).contains(ip) || Cidr::v6(0xfe80, 10).contains(ip);
        let own = self.own.iter().any(|a| {
            a.port() == port
                && (a.ip() == ip
                    || a.ip().is_unspecified()
                    || ip.is_loopback()
                    || ip.is_unspecified())
        });
        !link_local && !own && (is_public(ip) || self.allowed.iter().any(|c| c.contains(ip)))
    }

    /// Checks a notification URL as written: scheme, host, a literal address's range.
    pub fn check_url(&self, url: &str) -> Result<reqwest::Url, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("{url:?}: only http and https URLs are called"));
        }
        if url.len() > 2048 {
            return Err("a notification URL is at most 2,048 characters".into());
        }
        let port = parsed.port_or_known_default().unwrap_or(443);
        match parsed.host() {
            None => Err(format!("{url:?} names no host")),
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip), port),
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip), port),
            Some(url::Host::Domain(name)) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                let domain = self.platform_domain.to_ascii_lowercase();
                if name == domain
                    || name.ends_with(&format!(".{domain}"))
                    || name == "localhost"
                    || name.ends_with(".localhost")
                {
                    return Err(format!(
                        "{url:?} points at this platform: notifications go elsewhere"
                    ));
                }
                Ok(())
            }
        }?;
        Ok(parsed)
    }

    fn check_ip(&self, ip: IpAddr, port: u16) -> Result<(), String> {
        if self.permits(ip, port) {
            Ok(())
        } else {
            Err(format!(
                "{ip} is not a public address (loopback, private, link-local and metadata \
                 addresses, and this platform itself, are never called)"
            ))
        }
    }

    /// A DNS resolver for the HTTP client that keeps only permitted addresses (and fails when
    /// none is left), so what is connected to is what was checked.
    pub fn resolver(self: Arc<Self>) -> Arc<Filtered> {
        Arc::new(Filtered(self))
    }
}

/// The HTTP client's resolver under a [`Policy`].
pub struct Filtered(Arc<Policy>);

impl reqwest::dns::Resolve for Filtered {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            // The port is the client's to set; the policy's own-listener rule needs it, so
            // addresses are checked for every port here and again by port in `check_url`.
            let kept: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| policy.permits(a.ip(), 0))
                .collect();
            if kept.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed: &[&str]) -> Policy {
        Policy {
            platform_domain: "example.app".into(),
            own: vec!["0.0.0.0:8080".parse().unwrap()],
            allowed: allowed.iter().map(|c| Cidr::parse(c).unwrap()).collect(),
        }
    }

    #[test]
    fn url_table() {
        let p = policy(&[]);
        for (url, ok) in [
            ("https://hooks.slack.com/services/T0/B0/x", true),
            ("http://93.184.216.34/hook", true),
            ("https://[2606:4700::1111]/", true),
            ("https://[2001:4860:4860::8888]/", true),
            ("ftp://example.com/", false),
            ("file:///etc/passwd", false),
            ("http://169.254.169.254/latest/meta-data/", false),
            ("http://[fd00:ec2::254]/", false),
            ("http://[::ffff:169.254.169.254]/", false),
            ("http://[::ffff:127.0.0.1]/", false),
            ("http://127.0.0.1:9000/", false),
            ("http://10.1.2.3/", false),
            ("http://192.168.0.1/", false),
            ("http://100.100.100.200/", false),
            ("http://0.0.0.0/", false),
            ("http://[::1]/", false),
            ("http://[fe80::1]/", false),
            ("http://[2001:db8::1]/", false),
            ("http://224.0.0.1/", false),
            ("https://example.app/api/deployments", false),
            ("https://site.example.app/", false),
            ("https://EXAMPLE.APP./", false),
            ("http://localhost:8080/", false),
            ("http://x.localhost/", false),
            ("not a url", false),
        ] {
            assert_eq!(p.check_url(url).is_ok(), ok, "{url}");
        }
    }

    #[test]
    fn opened_ranges_and_what_stays_closed() {
        let p = policy(&["127.0.0.0/8", "10.20.0.0/16"]);
        assert!(p.check_url("http://127.0.0.1:9000/hook").is_ok());
        assert!(p.check_url("http://10.20.1.1/").is_ok());
        assert!(p.check_url("http://10.21.1.1/").is_err());
        // Opened loopback still is not this edge's own listener.
        assert!(p
            .check_url("http://127.0.0.1:8080/api/deployments")
            .is_err());
        assert!(p.check_url("http://169.254.169.254/").is_err());
        for bad in [
            "169.254.0.0/16",
            "169.254.169.254/32",
            "fe80::/10",
            "0.0.0.0/0",
            "10.0.0.1/8",
            "x/8",
            "10.0.0.0",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        assert!(Cidr::parse("::/0").is_err(), "covers link-local");
        assert!(Cidr::parse("fd00::/8").is_ok());
    }
}
