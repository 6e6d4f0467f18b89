//! What a request on the public port says about itself, read from its Pingora session: the host
//! it asks for (HTTP/1.1's `Host` or HTTP/2's `:authority`, checked by
//! [`gitdeploy_core::host::request_host`]) and the client it stands for behind the trusted
//! proxies ([`crate::client_addr`]). The sites proxy routes with them; the access log records
//! them.

use gitdeploy_core::host::{normalize_host, request_host};
use pingora_proxy::Session;

use crate::client_addr::TrustedProxies;

/// The request's host, normalised; `Ok(None)` without one, `Err` when it is ambiguous or
/// malformed (several `Host` headers, one that contradicts the request target).
pub fn host(session: &Session) -> Result<Option<String>, &'static str> {
    let req = session.req_header();
    // Two at most are looked at (a second is already an error): no list is allocated.
    let mut values = req.headers.get_all(http::header::HOST).iter();
    let (first, second) = (values.next(), values.next());
    let found = [first, second].map(|v| v.map_or(&b""[..], |v| v.as_bytes()));
    let count = usize::from(first.is_some()) + usize::from(second.is_some());
    let host = request_host(
        req.method.as_str(),
        req.raw_path(),
        req.version == http::Version::HTTP_2,
        req.uri.authority().map(|a| a.as_str()),
        &found[..count],
    )?;
    Ok(normalize_host(host))
}

/// Whom the request stands for: its peer, or the client a trusted proxy in front of us names.
pub fn client(session: &Session, trusted: &TrustedProxies) -> Option<std::net::IpAddr> {
    let peer = session.client_addr()?.as_inet()?.ip();
    // Several headers are one list, in order (RFC 9110 §5.3); our proxy's hop is in the last.
    let mut values = session
        .req_header()
        .headers
        .get_all("x-forwarded-for")
        .iter();
    let forwarded = match (values.next(), values.next()) {
        (None, _) => None,
        (Some(one), None) => one.to_str().ok().map(std::borrow::Cow::Borrowed),
        (Some(first), Some(second)) => {
            let all: Option<Vec<&str>> = [first, second]
                .into_iter()
                .chain(values)
                .map(|v| v.to_str().ok())
                .collect();
            all.map(|all| std::borrow::Cow::Owned(all.join(",")))
        }
    };
    Some(trusted.client(peer, forwarded.as_deref()))
}
