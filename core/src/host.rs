//! Host header → what the edge serves. Host headers are hostile input: anything that is not a
//! well-formed name routes to [`HostRoute::Unknown`], and a well-formed name outside our
//! domain only to [`HostRoute::Custom`], which serves nothing unless a project has that
//! custom domain: the edge is never an open proxy.

/// Where a request goes, decided from its host alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostRoute {
    /// The control plane: API, log streams, dashboard.
    ControlPlane,
    /// A site; the label is a deployment id or a project name (not yet checked which).
    Site(String),
    /// A name outside the platform domain that may be a project's custom domain (not yet
    /// checked).
    Custom(String),
    /// Not ours: answered with 404.
    Unknown,
}

/// Normalizes an authority (`Host` header or HTTP/2 `:authority`): strips the port and a trailing
/// dot, lowercases, keeps IPv6 literals in brackets. Returns `None` for malformed input.
pub fn normalize_host(authority: &str) -> Option<String> {
    let authority = authority.trim();
    if authority.is_empty() || authority.len() > 255 || authority.contains('@') {
        return None;
    }
    let host = if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let (literal, after) = (&rest[..end], &rest[end + 1..]);
        if !valid_port_suffix(after) || literal.is_empty() {
            return None;
        }
        if !literal
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        format!("[{}]", literal.to_ascii_lowercase())
    } else {
        let (name, port) = match authority.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (authority, None),
        };
        if port.is_some_and(|p| !valid_port(p)) {
            return None;
        }
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            || name.starts_with('.')
            || name.ends_with('.')
            || name.contains("..")
        {
            return None;
        }
        name.to_ascii_lowercase()
    };
    Some(host)
}

fn valid_port_suffix(s: &str) -> bool {
    match s.strip_prefix(':') {
        None => s.is_empty(),
        Some(port) => valid_port(port),
    }
}

fn valid_port(port: &str) -> bool {
    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

/// True for a DNS label we accept as a site name: 1–63 chars of `[a-z0-9-]`, no leading or
/// trailing hyphen.
pub fn is_site_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Routes a normalized host. `domain` is the platform's domain (`localhost`, `example.app`);
/// the apex, `api.<domain>` and any `extra_control_hosts` (e.g. the loopback address `up` listens
/// on) reach the control plane; `<label>.<domain>` reaches a site.
pub fn route_host(host: &str, domain: &str, extra_control_hosts: &[String]) -> HostRoute {
    if host == domain || extra_control_hosts.iter().any(|h| h == host) {
        return HostRoute::ControlPlane;
    }
    let Some(label) = host
        .strip_suffix(domain)
        .and_then(|rest| rest.strip_suffix('.'))
    else {
        return if could_be_custom_domain(host) {
            HostRoute::Custom(host.to_owned())
        } else {
            HostRoute::Unknown
        };
    };
    if label == "api" {
        HostRoute::ControlPlane
    } else if is_site_label(label) {
        HostRoute::Site(label.to_owned())
    } else {
        HostRoute::Unknown
    }
}

/// Whether a request for `host` and `path` is a load balancer's health probe: `GET
/// /api/health` or `/api/ready` addressed to an IP literal, as an AWS load balancer's health
/// check is (its `Host` is the target's address). Such a request is answered by the control
/// plane although an address is not one of its hosts; nothing else is (an address reaching the
/// dashboard or the API would sidestep the host check that keeps DNS rebinding out).
pub fn is_health_probe(host: &str, path: &str) -> bool {
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    matches!(path, "/api/health" | "/api/ready") && literal.parse::<std::net::IpAddr>().is_ok()
}

/// Where a plain-HTTP request for a site goes once the edge serves it over HTTPS: `None` when
/// it stays (ACME HTTP-01 challenges are answered over plain HTTP, as the CA asks for them),
/// else the `https://` URL of the same host and target on `https_port` (left out when 443).
/// `host` is normalized (no port); `target` is the path with its query.
pub fn https_redirect(host: &str, https_port: u16, target: &str) -> Option<String> {
    if target.starts_with(ACME_CHALLENGE_PREFIX) {
        return None;
    }
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let target = if target.starts_with('/') { target } else { "/" };
    Some(format!("https://{host}{port}{target}"))
}

/// The prefix of ACME HTTP-01 challenge paths (RFC 8555 §8.3).
pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The token an ACME HTTP-01 challenge request asks for: the one path segment after
/// [`ACME_CHALLENGE_PREFIX`], when it is non-empty and has no further `/`.
pub fn acme_challenge_token(path: &str) -> Option<&str> {
    let token = path.strip_prefix(ACME_CHALLENGE_PREFIX)?;
    (!token.is_empty() && !token.contains('/')).then_some(token)
}

/// Whether a normalized host has the shape of a custom domain: two labels or more, each a DNS
/// label, and a top-level label that is not a number (so no IPv4 address).
fn could_be_custom_domain(host: &str) -> bool {
    let mut labels = host.split('.');
    let tld = host.rsplit('.').next().unwrap_or("");
    host.contains('.')
        && host.len() <= 253
        && labels.all(is_site_label)
        && !tld.bytes().all(|b| b.is_ascii_digit())
}

/// The host a request names (not yet normalized), or why the request head is refused: a request
/// with no `Host` or with more than one is malformed (RFC 9112 §3.2), and the target must be
/// origin-form, absolute-form, or `*` for `OPTIONS`. The sites and the control plane route by
/// this one answer, so they never disagree about a request.
pub fn request_host<'a>(
    method: &str,
    target: &'a [u8],
    http2: bool,
    authority: Option<&'a str>,
    hosts: &[&'a [u8]],
) -> Result<&'a str, &'static str> {
    let origin_form = target.first() == Some(&b'/');
    let absolute_form = authority.is_some()
        && (starts_with_ignore_case(target, b"http://")
            || starts_with_ignore_case(target, b"https://"));
    let asterisk = target == b"*" && method == "OPTIONS";
    if !(origin_form || absolute_form || asterisk || http2) {
        return Err("the request target must be a path");
    }
    if target
        .iter()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err("the request target has spaces or control characters");
    }
    if hosts.len() > 1 {
        return Err("more than one Host header");
    }
    let host = hosts
        .first()
        .map(|h| std::str::from_utf8(h).map_err(|_| "the Host header is not text"))
        .transpose()?;
    match (authority, host) {
        // The target's authority wins over `Host` (RFC 9112 §3.2.2); HTTP/2 has `:authority`.
        (Some(a), _) if absolute_form || http2 => Ok(a),
        (_, Some(h)) => Ok(h),
        _ => Err("the request names no host"),
    }
}

fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_table() {
        for (input, want) in [
            ("example.app", Some("example.app")),
            ("Example.APP:8080", Some("example.app")),
            ("abc.localhost:8080", Some("abc.localhost")),
            ("abc.localhost.", Some("abc.localhost")),
            ("127.0.0.1:8080", Some("127.0.0.1")),
            ("[::1]:8080", Some("[::1]")),
            ("[::1]", Some("[::1]")),
            ("[::1", None),
            ("[::1]x", None),
            ("[]:80", None),
            ("", None),
            ("a..b", None),
            (".a", None),
            ("a b", None),
            ("user@host", None),
            ("host:", None),
            ("host:123456", None),
            ("host:80:80", None),
            ("h_st", None),
            ("évil.com", None),
        ] {
            assert_eq!(normalize_host(input).as_deref(), want, "{input:?}");
        }
    }

    #[test]
    fn route_table() {
        let extra = vec!["127.0.0.1".to_owned()];
        for (host, want) in [
            ("localhost", HostRoute::ControlPlane),
            ("api.localhost", HostRoute::ControlPlane),
            ("127.0.0.1", HostRoute::ControlPlane),
            (
                "k3f9q2m8x1ab.localhost",
                HostRoute::Site("k3f9q2m8x1ab".into()),
            ),
            ("my-site.localhost", HostRoute::Site("my-site".into())),
            ("a.b.localhost", HostRoute::Unknown),
            ("-bad.localhost", HostRoute::Unknown),
            ("evil.com", HostRoute::Custom("evil.com".into())),
            (
                "www.shop.example",
                HostRoute::Custom("www.shop.example".into()),
            ),
            (
                "xn--bcher-kva.de",
                HostRoute::Custom("xn--bcher-kva.de".into()),
            ),
            ("xlocalhost", HostRoute::Unknown),
            (".localhost", HostRoute::Unknown),
            ("[::1]", HostRoute::Unknown),
            ("10.0.0.1", HostRoute::Unknown),
            ("a_b.com", HostRoute::Unknown),
            ("-a.com", HostRoute::Unknown),
        ] {
            assert_eq!(route_host(host, "localhost", &extra), want, "{host}");
        }
    }

    #[test]
    fn health_probe_table() {
        for (host, path, want) in [
            ("10.0.1.5", "/api/ready", true),
            ("10.0.1.5", "/api/health", true),
            ("[fd00::5]", "/api/ready", true),
            ("10.0.1.5", "/api/deployments", false),
            ("10.0.1.5", "/", false),
            ("10.0.1.5", "/api/ready/", false),
            ("sites.example.com", "/api/ready", false),
            ("evil.com", "/api/health", false),
            ("[not-an-ip]", "/api/ready", false),
            ("10.0.1", "/api/ready", false),
        ] {
            assert_eq!(is_health_probe(host, path), want, "{host} {path}");
        }
    }

    #[test]
    fn acme_challenge_token_table() {
        for (path, want) in [
            (
                "/.well-known/acme-challenge/abc_DEF-123",
                Some("abc_DEF-123"),
            ),
            ("/.well-known/acme-challenge/", None),
            ("/.well-known/acme-challenge/a/b", None),
            ("/.well-known/acme-challenge", None),
            ("/x/.well-known/acme-challenge/abc", None),
            ("/", None),
        ] {
            assert_eq!(acme_challenge_token(path), want, "{path}");
        }
    }

    #[test]
    fn https_redirect_table() {
        for (host, port, target, want) in [
            (
                "shop.sites.test",
                443,
                "/",
                Some("https://shop.sites.test/"),
            ),
            (
                "shop.sites.test",
                8443,
                "/a?b=1",
                Some("https://shop.sites.test:8443/a?b=1"),
            ),
            ("www.shop.org", 443, "*", Some("https://www.shop.org/")),
            (
                "shop.sites.test",
                443,
                "/.well-known/acme-challenge/tok",
                None,
            ),
            (
                "shop.sites.test",
                443,
                "/.well-known/other",
                Some("https://shop.sites.test/.well-known/other"),
            ),
        ] {
            assert_eq!(
                https_redirect(host, port, target).as_deref(),
                want,
                "{host}{target}"
            );
        }
    }

    #[test]
    fn request_host_table() {
        type Case<'a> = (&'a str, &'a [u8], bool, Option<&'a str>, &'a [&'a [u8]]);
        let ok: &[(Case, &str)] = &[
            (("GET", b"/", false, None, &[b"a.example"]), "a.example"),
            (
                ("GET", b"/x?y=1", false, None, &[b"A.example:80"]),
                "A.example:80",
            ),
            (
                (
                    "GET",
                    b"http://b.example/x",
                    false,
                    Some("b.example"),
                    &[b"a.example"],
                ),
                "b.example",
            ),
            (("OPTIONS", b"*", false, None, &[b"a.example"]), "a.example"),
            (("GET", b"/", true, Some("h2.example"), &[]), "h2.example"),
        ];
        for ((m, t, h2, auth, hosts), want) in ok {
            assert_eq!(request_host(m, t, *h2, *auth, hosts), Ok(*want), "{t:?}");
        }
        let bad: &[Case] = &[
            (
                "GET",
                b"index.html",
                false,
                Some("index.html"),
                &[b"a.example"],
            ),
            ("GET", b"/", false, None, &[b"api.example", b"site.example"]),
            ("GET", b"/", false, None, &[]),
            ("GET", b"*", false, None, &[b"a.example"]),
            ("GET", b"/a b", false, None, &[b"a.example"]),
            ("GET", b"/a\tb", false, None, &[b"a.example"]),
            ("GET", b"/", false, None, &[b"\xff"]),
            ("GET", b"", false, None, &[b"a.example"]),
        ];
        for (m, t, h2, auth, hosts) in bad {
            assert!(
                request_host(m, t, *h2, *auth, hosts).is_err(),
                "{t:?} {hosts:?}"
            );
        }
    }
}
