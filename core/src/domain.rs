//! Custom domains a project may serve at (`www.example.com`): which names are acceptable, in the
//! one form they are stored and matched in. Names are hostile input: a domain is lowercased,
//! loses a trailing dot, and internationalized names become punycode (`bücher.example` →
//! `xn--bcher-kva.example`) before anything else looks at it. Refused: malformed names,
//! single labels, wildcards, IP literals, `localhost`, and the platform's own domain with its
//! subdomains (those are the platform's to serve).

/// Longest name accepted (DNS's limit on a name in text form).
pub const MAX_LEN: usize = 253;

/// Why a domain is refused; the message says what to send instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// Not a host name at all.
    #[error("{0:?} is not a domain name: use letters, digits and hyphens in dot-separated labels of at most 63 characters")]
    Malformed(String),
    /// One label only.
    #[error("{0:?} has a single label: use a full name such as www.example.com")]
    SingleLabel(String),
    /// A wildcard.
    #[error("{0:?} is a wildcard: add each name the project serves")]
    Wildcard(String),
    /// An IP address.
    #[error("{0:?} is an IP address: custom domains are names")]
    IpLiteral(String),
    /// The platform's own names.
    #[error("{0:?} is the platform's own domain ({1}) or under it: projects already serve at <project>.{1}")]
    Platform(String, String),
    /// A name for the local machine or a special-use domain.
    #[error("{0:?} is a special-use name that cannot be delegated to this platform")]
    SpecialUse(String),
}

/// The stored form of `input` as a custom domain of a platform serving `platform_domain`, or
/// why it is refused.
pub fn normalize(input: &str, platform_domain: &str) -> Result<String, DomainError> {
    let trimmed = input.trim();
    let name = trimmed.strip_suffix('.').unwrap_or(trimmed);
    let malformed = || DomainError::Malformed(input.to_owned());
    if name.is_empty() || name.len() > 4 * MAX_LEN {
        return Err(malformed());
    }
    if name.starts_with("*.") || name == "*" {
        return Err(DomainError::Wildcard(input.to_owned()));
    }
    if name.starts_with('[') || name.parse::<std::net::IpAddr>().is_ok() {
        return Err(DomainError::IpLiteral(input.to_owned()));
    }
    // Only what can be a host name goes to IDNA (which would accept `_`, `/`, spaces...).
    if name
        .chars()
        .any(|c| c.is_ascii() && !(c.is_ascii_alphanumeric() || c == '-' || c == '.'))
    {
        return Err(malformed());
    }
    let ascii = idna::domain_to_ascii_strict(name).map_err(|_| malformed())?;
    if ascii.len() > MAX_LEN || !ascii.split('.').all(crate::host::is_site_label) {
        return Err(malformed());
    }
    let labels: Vec<&str> = ascii.split('.').collect();
    if labels.len() < 2 {
        return Err(DomainError::SingleLabel(input.to_owned()));
    }
    // An all-numeric top-level label makes the name look like an address (`1.2.3.4` forms).
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(DomainError::IpLiteral(input.to_owned()));
    }
    let platform = platform_domain.trim_end_matches('.').to_ascii_lowercase();
    if ascii == platform || ascii.ends_with(&format!(".{platform}")) {
        return Err(DomainError::Platform(input.to_owned(), platform));
    }
    const SPECIAL: &[&str] = &["localhost", "local", "invalid", "test", "example", "onion"];
    if labels.last().is_some_and(|tld| SPECIAL.contains(tld)) {
        return Err(DomainError::SpecialUse(input.to_owned()));
    }
    Ok(ascii)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_names_in_their_stored_form() {
        for (input, want) in [
            ("www.example.com", "www.example.com"),
            ("  WWW.Example.COM. ", "www.example.com"),
            ("example.com", "example.com"),
            ("a-b.c-d.co.uk", "a-b.c-d.co.uk"),
            ("bücher.de", "xn--bcher-kva.de"),
            ("xn--bcher-kva.de", "xn--bcher-kva.de"),
            ("MÜNCHEN.de", "xn--mnchen-3ya.de"),
            ("sites.example.org", "sites.example.org"),
        ] {
            assert_eq!(
                normalize(input, "sites.example.net").as_deref(),
                Ok(want),
                "{input}"
            );
        }
    }

    #[test]
    fn refused_names_say_why() {
        use DomainError as E;
        let platform = "sites.example.net";
        for (input, kind) in [
            ("", "malformed"),
            (".", "malformed"),
            ("a..b.com", "malformed"),
            ("-a.com", "malformed"),
            ("a-.com", "malformed"),
            ("a_b.com", "malformed"),
            ("a b.com", "malformed"),
            ("a.com/x", "malformed"),
            ("user@a.com", "malformed"),
            ("a.com:443", "malformed"),
            (&format!("{}.com", "a".repeat(64)), "malformed"),
            (&format!("{}com", "a.".repeat(130)), "malformed"),
            ("xn--zz.com", "malformed"),
            ("com", "single"),
            ("bücher", "single"),
            ("*.example.com", "wildcard"),
            ("*", "wildcard"),
            ("1.2.3.4", "ip"),
            ("[::1]", "ip"),
            ("::1", "ip"),
            ("10.0.0.300", "ip"),
            ("sites.example.net", "platform"),
            ("my-app.sites.example.net", "platform"),
            ("SITES.EXAMPLE.NET.", "platform"),
            ("app.localhost", "special"),
            ("printer.local", "special"),
        ] {
            let got = normalize(input, platform);
            let ok = matches!(
                (&got, kind),
                (Err(E::Malformed(_)), "malformed")
                    | (Err(E::SingleLabel(_)), "single")
                    | (Err(E::Wildcard(_)), "wildcard")
                    | (Err(E::IpLiteral(_)), "ip")
                    | (Err(E::Platform(..)), "platform")
                    | (Err(E::SpecialUse(_)), "special")
            );
            assert!(ok, "{input:?}: {got:?}, want {kind}");
        }
        // The message names the input and what to do.
        let e = normalize("a.sites.example.net", platform)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a.sites.example.net") && e.contains("<project>.sites.example.net"),
            "{e}"
        );
    }
}
