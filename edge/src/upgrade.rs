//! WebSocket upgrades to the API, relayed here rather than by Pingora's proxy.
//!
//! Pingora 0.9.1's HTTP/1 proxy races on an upgrade: the request's end (a `GET` has no body)
//! travels to the upstream half on a channel, and when the upstream's `101` is read before that
//! message, the late end-of-request is taken for the end of the upgraded stream and the session
//! is closed. The client then sees the `101` and an immediate clean close, with none of the
//! frames the API sent (about 1 upgrade in 1,500 here, more under load: the log follower
//! "reset right after connecting"). So an upgrade request for the control plane is answered in
//! `request_filter`: the routing decision is the same one, made once per request; only the
//! relaying is ours. The request goes to the API's socket as the client sent it (with the
//! client address set by us alone), the API's answer goes back through the same Pingora
//! session, and after a `101` bytes are copied both ways until either side closes.

use std::net::IpAddr;
use std::path::Path;

use bytes::{Bytes, BytesMut};
use pingora_error::{Error, ErrorType, OrErr, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::control::CLIENT_HEADER;

/// Largest response head accepted from the API.
const MAX_HEAD: usize = 64 * 1024;

/// The request head sent to the API: the client's request line and headers, minus any
/// client-supplied [`CLIENT_HEADER`], plus ours.
pub(crate) fn upstream_head(req: &RequestHeader, client: Option<IpAddr>) -> Vec<u8> {
    let target = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut head = format!("{} {target} HTTP/1.1\r\n", req.method).into_bytes();
    for (name, value) in req.headers.iter() {
        if name.as_str().eq_ignore_ascii_case(CLIENT_HEADER) {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if let Some(ip) = client {
        head.extend_from_slice(format!("{CLIENT_HEADER}: {ip}\r\n").as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// A parsed response head and the bytes that followed it in the same reads.
pub(crate) struct Answer {
    pub(crate) header: ResponseHeader,
    pub(crate) content_length: Option<usize>,
    pub(crate) rest: Bytes,
}

/// Parses a response head at the start of `buf`: `Ok(None)` until it is whole.
pub(crate) fn parse_answer(buf: &[u8]) -> Result<Option<Answer>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Error::e_explain(ErrorType::InvalidHTTPHeader, e.to_string()),
    };
    let code = parsed.code.unwrap_or(502);
    let mut header = ResponseHeader::build(code, Some(parsed.headers.len()))?;
    let mut content_length = None;
    for h in parsed.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            content_length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
        }
        header.append_header(h.name.to_owned(), h.value)?;
    }
    Ok(Some(Answer {
        header,
        content_length,
        rest: Bytes::copy_from_slice(&buf[len..]),
    }))
}

/// Whether the request asks for a WebSocket.
pub(crate) fn is_upgrade(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Relays an upgrade request to the API's socket, the Unix socket of `peer`; a 502 page when
/// the peer is not one.
pub(crate) async fn relay_to(
    session: &mut Session,
    peer: &pingora_core::upstreams::peer::HttpPeer,
    client: Option<IpAddr>,
) -> Result<bool> {
    let socket = match &peer._address {
        pingora_core::protocols::l4::socket::SocketAddr::Unix(addr) => addr.as_pathname(),
        _ => None,
    };
    match socket {
        Some(socket) => relay(session, socket, client).await,
        None => {
            let head = session.req_header().method == http::Method::HEAD;
            crate::respond::send_error(session, 502, "The API cannot be reached.", head).await
        }
    }
}

/// Relays an upgrade request to the API listening on `socket` and answers it; `Ok(true)`: the
/// response was sent (as `request_filter` returns).
pub(crate) async fn relay(
    session: &mut Session,
    socket: &Path,
    client: Option<IpAddr>,
) -> Result<bool> {
    let mut api = tokio::net::UnixStream::connect(socket)
        .await
        .or_err(ErrorType::ConnectError, "connecting to the API")?;
    api.write_all(&upstream_head(session.req_header(), client))
        .await
        .or_err(
            ErrorType::WriteError,
            "writing the upgrade request to the API",
        )?;
    let mut buf = BytesMut::with_capacity(4096);
    let answer = loop {
        let n = api
            .read_buf(&mut buf)
            .await
            .or_err(ErrorType::ReadError, "reading the API's answer")?;
        if n == 0 {
            return Error::e_explain(ErrorType::ConnectionClosed, "the API closed the upgrade");
        }
        if let Some(answer) = parse_answer(&buf)? {
            break answer;
        }
        if buf.len() > MAX_HEAD {
            return Error::e_explain(ErrorType::InvalidHTTPHeader, "the API's head is too large");
        }
    };
    let upgraded = answer.header.status == 101;
    if !upgraded {
        // A refusal (401, 404, 429…) with its JSON body.
        let want = answer.content_length.unwrap_or(0);
        let mut body = BytesMut::from(&answer.rest[..]);
        while body.len() < want {
            if api.read_buf(&mut body).await.unwrap_or(0) == 0 {
                break;
            }
        }
        body.truncate(want);
        session.set_keepalive(None);
        session
            .write_response_header(Box::new(answer.header), false)
            .await?;
        session
            .write_response_body(Some(body.freeze()), true)
            .await?;
        return Ok(true);
    }
    session
        .write_response_header(Box::new(answer.header), false)
        .await?;
    if !answer.rest.is_empty() {
        session
            .write_response_body(Some(answer.rest), false)
            .await?;
    }
    let (mut from_api, mut to_api) = api.into_split();
    let mut client_done = false;
    loop {
        buf.clear();
        tokio::select! {
            read = from_api.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => session.write_response_body(Some(buf.split().freeze()), false).await?,
            },
            body = session.read_request_body(), if !client_done => match body {
                Ok(Some(bytes)) => {
                    if to_api.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                Ok(None) => {
                    client_done = true;
                    let _ = to_api.shutdown().await;
                }
                Err(_) => break,
            },
        }
    }
    session.write_response_body(None, true).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_learns_the_client_from_us_alone() {
        let mut req =
            RequestHeader::build("GET", b"/api/deployments/x/logs/ws?since=3", None).unwrap();
        req.insert_header("host", "localhost:8080").unwrap();
        req.insert_header("upgrade", "websocket").unwrap();
        req.insert_header(CLIENT_HEADER, "6.6.6.6").unwrap();
        let head = String::from_utf8(upstream_head(&req, Some([10, 0, 0, 7].into()))).unwrap();
        assert!(head.starts_with("GET /api/deployments/x/logs/ws?since=3 HTTP/1.1\r\n"));
        assert!(head.contains("host: localhost:8080\r\n"));
        assert!(head.contains("upgrade: websocket\r\n"));
        assert!(!head.contains("6.6.6.6"), "{head}");
        assert!(head.ends_with(&format!("{CLIENT_HEADER}: 10.0.0.7\r\n\r\n")));
    }

    #[test]
    fn answers_are_parsed_with_what_followed_them() {
        for (bytes, status, rest) in [
            (
                &b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n\x81\x02hi"[..],
                Some(101),
                &b"\x81\x02hi"[..],
            ),
            (
                &b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\n\r\n{}"[..],
                Some(401),
                &b"{}"[..],
            ),
            (&b"HTTP/1.1 101 Switching"[..], None, &b""[..]),
        ] {
            let parsed = parse_answer(bytes).unwrap();
            assert_eq!(parsed.as_ref().map(|a| a.header.status.as_u16()), status);
            if let Some(a) = parsed {
                assert_eq!(&a.rest[..], rest);
            }
        }
        assert!(parse_answer(b"NOT HTTP\r\n\r\n").is_err());
    }
}
