//! What a request head must be before it is routed, and which host it names: one pure
//! function over the request line's target and its `Host` headers, so the sites and the control
//! plane never disagree about a request (RFC 9112 §3.2: a request with no `Host` or with more
//! than one is `400`; the target is origin-form, absolute-form, or `*` for `OPTIONS`).

/// The host a well-formed request names (not yet normalized), or why it is refused.
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
    use super::request_host;

    #[test]
    fn table() {
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
