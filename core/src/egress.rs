//! Which private ranges an operator may open to builds. A build's network closes the host, the
//! private and shared ranges, link-local (the metadata endpoints), multicast and reserved
//! space; of those only parts of the private and shared ranges can be opened (a registry
//! mirror, an internal git server), never link-local or loopback, and public space is open
//! already.

/// The private and shared ranges a build's network closes, of which an operator may open
/// parts ([`crate::job::BuildLimits::allowed_networks`]).
const OPENABLE: &[([u8; 4], u8)] = &[
    ([10, 0, 0, 0], 8),
    ([172, 16, 0, 0], 12),
    ([192, 168, 0, 0], 16),
    ([100, 64, 0, 0], 10),
];

/// Reads an allowed network: an IPv4 CIDR (`10.20.0.0/16`) without host bits, inside one of
/// the private or shared ranges (RFC 1918, RFC 6598), at most a /8. Link-local (the metadata
/// endpoints), loopback and everything else a build's network closes for good can not be
/// opened, and public space is open already.
pub fn parse_allowed_network(cidr: &str) -> Result<(std::net::Ipv4Addr, u8), String> {
    let bad = |why: &str| Err(format!("allowed network {cidr:?}: {why}"));
    let Some((addr, len)) = cidr.split_once('/') else {
        return bad("write it as a CIDR, e.g. 10.20.0.0/16");
    };
    let Ok(addr) = addr.parse::<std::net::Ipv4Addr>() else {
        return bad("not an IPv4 address");
    };
    let Ok(len) = len.parse::<u8>() else {
        return bad("the prefix length is not a number");
    };
    if !(8..=32).contains(&len) {
        return bad("the prefix length must be 8 to 32");
    }
    let bits = u32::from(addr);
    let mask = if len == 32 {
        u32::MAX
    } else {
        !(u32::MAX >> len)
    };
    if bits & !mask != 0 {
        return bad(&format!(
            "has host bits set; the network is {}/{len}",
            std::net::Ipv4Addr::from(bits & mask)
        ));
    }
    let inside = OPENABLE.iter().any(|(base, base_len)| {
        let base_mask = !(u32::MAX >> base_len);
        len >= *base_len && bits & base_mask == u32::from(std::net::Ipv4Addr::from(*base))
    });
    if !inside {
        return bad("only parts of 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 and 100.64.0.0/10 can be opened");
    }
    Ok((addr, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_parts_of_the_private_ranges_can_be_opened() {
        for (cidr, ok) in [
            ("10.20.0.0/16", true),
            ("10.0.0.0/8", true),
            ("172.16.5.0/24", true),
            ("192.168.1.7/32", true),
            ("100.64.0.0/10", true),
            ("10.20.0.1/16", false),
            ("169.254.169.254/32", false),
            ("127.0.0.0/8", false),
            ("8.8.8.0/24", false),
            ("172.32.0.0/16", false),
            ("0.0.0.0/0", false),
            ("10.0.0.0/7", false),
            ("10.0.0.0", false),
            ("10.0.0.0/33", false),
            ("::1/128", false),
            ("10.0.0.0/x", false),
        ] {
            assert_eq!(parse_allowed_network(cidr).is_ok(), ok, "{cidr}");
        }
        assert!(parse_allowed_network("10.20.0.1/16")
            .unwrap_err()
            .contains("10.20.0.0/16"));
    }
}
