//! The sites proxy: Pingora's request phases mapped onto serving static sites from S3.
//!
//! * `request_filter` decides everything from the host and the manifest: control plane or site,
//!   method, path → file (or redirect, or 404 page), conditional request, object cache hit. Only
//!   a cache miss continues to S3.
//! * `upstream_peer` / `upstream_request_filter`: the control plane's socket, or a SigV4-signed
//!   GET of the object key with none of the client's headers but `Range`.
//! * `response_filter` / `response_body_filter`: our headers instead of S3's, S3 errors replaced
//!   by a small page, small bodies copied into the object cache as they stream.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use gitdeploy_core::host::{normalize_host, route_host, HostRoute};
use gitdeploy_core::id::looks_like_deployment_id;
use gitdeploy_core::{DeploymentId, FileEntry, Resolution, SitePath};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::cache::{ManifestCache, ManifestError, ObjectCache, ObjectKey};
use crate::origin::S3Origin;

/// Host rules of the proxy.
#[derive(Clone, Debug)]
pub struct HostRules {
    /// The platform domain.
    pub domain: String,
    /// Further hosts that reach the control plane (the address `up` listens on).
    pub control_hosts: Vec<String>,
}

/// The sites proxy.
pub struct SitesProxy {
    hosts: HostRules,
    origin: Arc<S3Origin>,
    manifests: Arc<ManifestCache>,
    objects: Arc<ObjectCache>,
    control_plane: HttpPeer,
}

impl SitesProxy {
    /// A proxy serving sites from `origin` and forwarding control-plane hosts to `control_plane`.
    pub fn new(
        hosts: HostRules,
        origin: Arc<S3Origin>,
        manifests: Arc<ManifestCache>,
        objects: Arc<ObjectCache>,
        control_plane: HttpPeer,
    ) -> Self {
        SitesProxy {
            hosts,
            origin,
            manifests,
            objects,
            control_plane,
        }
    }
}

/// Per-request state.
#[derive(Default)]
pub struct RequestCtx {
    target: Target,
}

#[derive(Default)]
enum Target {
    /// Answered in `request_filter`.
    #[default]
    Answered,
    /// Forwarded to the API.
    ControlPlane,
    /// Streamed from S3.
    Object(ObjectRequest),
}

struct ObjectRequest {
    key: String,
    cache_key: ObjectKey,
    entry: FileEntry,
    status: u16,
    head: bool,
    /// Body copied for the object cache while it streams.
    fill: Option<BytesMut>,
    /// S3 failed: the body is replaced by this page.
    error_page: Option<Bytes>,
}

/// A small HTML page for errors, never S3's XML.
fn error_page(status: u16, message: &str) -> Bytes {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    Bytes::from(format!(
        "<!doctype html><meta charset=utf-8><title>{status} {reason}</title>\
         <h1>{status} {reason}</h1><p>{message}</p>\n"
    ))
}

fn html_response(status: u16, len: usize) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header("content-type", "text/html; charset=utf-8")?;
    resp.insert_header("cache-control", "no-store")?;
    resp.insert_header("x-content-type-options", "nosniff")?;
    resp.set_content_length(len)?;
    Ok(resp)
}

async fn send(
    session: &mut Session,
    resp: ResponseHeader,
    body: Bytes,
    head: bool,
) -> Result<bool> {
    let no_body = head || body.is_empty();
    session
        .write_response_header(Box::new(resp), no_body)
        .await?;
    if !no_body {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(true)
}

async fn send_error(session: &mut Session, status: u16, message: &str, head: bool) -> Result<bool> {
    let body = error_page(status, message);
    let resp = html_response(status, body.len())?;
    send(session, resp, body, head).await
}

/// Our headers for a file: type and validators from the manifest.
fn file_headers(resp: &mut ResponseHeader, entry: &FileEntry) -> Result<()> {
    resp.insert_header("content-type", entry.content_type.as_str())?;
    resp.insert_header("etag", entry.etag.as_str())?;
    resp.insert_header("cache-control", "public, max-age=0, must-revalidate")?;
    resp.insert_header("x-content-type-options", "nosniff")?;
    Ok(())
}

/// True when an `If-None-Match` value matches `etag` (weak comparison, `*` included).
fn if_none_match(header: &[u8], etag: &str) -> bool {
    let Ok(header) = std::str::from_utf8(header) else {
        return false;
    };
    header.split(',').map(str::trim).any(|t| {
        t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag.strip_prefix("W/").unwrap_or(etag)
    })
}

impl SitesProxy {
    fn request_host(session: &Session) -> Option<String> {
        let req = session.req_header();
        let authority = req
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                req.headers
                    .get("host")
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            })?;
        normalize_host(&authority)
    }

    /// Decides a site request; `Ok(true)` when the response was already sent.
    async fn route_site(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        label: &str,
    ) -> Result<bool> {
        let method = session.req_header().method.clone();
        let head = method == http::Method::HEAD;
        if method != http::Method::GET && !head {
            let body = error_page(405, "Sites accept GET and HEAD only.");
            let mut resp = html_response(405, body.len())?;
            resp.insert_header("allow", "GET, HEAD")?;
            return send(session, resp, body, false).await;
        }
        // Aliases (<project>.<domain>) are not served yet: only deployment ids resolve.
        let Some(id) = looks_like_deployment_id(label)
            .then(|| DeploymentId::parse(label))
            .flatten()
        else {
            return send_error(session, 404, "There is no site at this address.", head).await;
        };
        let path = match SitePath::parse(session.req_header().uri.path()) {
            Ok(p) => p,
            Err(e) => return send_error(session, 400, &format!("Bad path: {e}."), head).await,
        };
        let manifest = match self.manifests.get(&id).await {
            Ok(m) => m,
            Err(e) => {
                return match e.as_ref() {
                    ManifestError::Missing => {
                        send_error(session, 404, "There is no site at this address.", head).await
                    }
                    other => {
                        tracing::error!(%id, "manifest unavailable: {other}");
                        send_error(session, 502, "The site is temporarily unavailable.", head).await
                    }
                };
            }
        };
        let (rel, entry, status) = match manifest.resolve(&path) {
            Resolution::File {
                path,
                entry,
                status,
            } => (path.to_owned(), entry.clone(), status),
            Resolution::Redirect { location, status } => {
                let location = match session.req_header().uri.query() {
                    Some(q) => format!("{location}?{q}"),
                    None => location,
                };
                let mut resp = html_response(status, 0)?;
                resp.insert_header("location", location)?;
                return send(session, resp, Bytes::new(), head).await;
            }
            Resolution::NotFound => {
                return send_error(session, 404, "This page could not be found.", head).await;
            }
        };
        if status == 200 {
            if let Some(inm) = session.req_header().headers.get("if-none-match") {
                if if_none_match(inm.as_bytes(), &entry.etag) {
                    let mut resp = ResponseHeader::build(304, Some(4))?;
                    file_headers(&mut resp, &entry)?;
                    session.write_response_header(Box::new(resp), true).await?;
                    return Ok(true);
                }
            }
        }
        let cache_key = (id.clone(), rel.clone());
        if let Some(body) = self.objects.get(&cache_key) {
            let mut resp = ResponseHeader::build(status, Some(6))?;
            file_headers(&mut resp, &entry)?;
            resp.set_content_length(body.len())?;
            return send(session, resp, body, head).await;
        }
        ctx.target = Target::Object(ObjectRequest {
            key: self.origin.layout().site_file(&id, &rel),
            cache_key,
            entry,
            status,
            head,
            fill: None,
            error_page: None,
        });
        Ok(false)
    }
}

#[async_trait]
impl ProxyHttp for SitesProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let route = match Self::request_host(session) {
            Some(host) => route_host(&host, &self.hosts.domain, &self.hosts.control_hosts),
            None => HostRoute::Unknown,
        };
        let head = session.req_header().method == http::Method::HEAD;
        match route {
            HostRoute::ControlPlane => {
                ctx.target = Target::ControlPlane;
                Ok(false)
            }
            HostRoute::Site(label) => self.route_site(session, ctx, &label).await,
            HostRoute::Unknown => {
                send_error(session, 404, "There is no site at this address.", head).await
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        match ctx.target {
            Target::ControlPlane => Ok(Box::new(self.control_plane.clone())),
            Target::Object(_) => Ok(Box::new(self.origin.peer())),
            Target::Answered => Error::e_explain(
                ErrorType::InternalError,
                "no upstream for an answered request",
            ),
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Target::Object(obj) = &ctx.target else {
            return Ok(());
        };
        let method = if obj.head { "HEAD" } else { "GET" };
        let path = self.origin.object_path(&obj.key);
        // A fresh request: none of the client's headers (cookies, authorization, x-amz-*) reach S3.
        let mut req = RequestHeader::build(method, path.as_bytes(), Some(6))?;
        let signed = self
            .origin
            .sign(method, &path)
            .map_err(|e| Error::explain(ErrorType::InternalError, e.to_string()))?;
        for (name, value) in signed {
            req.insert_header(name, value)?;
        }
        if let Some(range) = session.req_header().headers.get("range") {
            req.insert_header("range", range.clone())?;
        }
        *upstream = req;
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Target::Object(obj) = &mut ctx.target else {
            return Ok(());
        };
        let s3_status = upstream.status.as_u16();
        if s3_status != 200 && s3_status != 206 && s3_status != 416 {
            tracing::warn!(key = %obj.key, status = s3_status, "S3 error");
            let page = error_page(502, "The site is temporarily unavailable.");
            *upstream = html_response(502, page.len())?;
            obj.error_page = Some(page);
            return Ok(());
        }
        let mut resp = ResponseHeader::build(
            if s3_status == 200 {
                obj.status
            } else {
                s3_status
            },
            Some(8),
        )?;
        for keep in ["content-length", "content-range"] {
            if let Some(v) = upstream.headers.get(keep) {
                resp.insert_header(keep, v.clone())?;
            }
        }
        file_headers(&mut resp, &obj.entry)?;
        *upstream = resp;
        let whole = s3_status == 200 && session.req_header().headers.get("range").is_none();
        if whole && !obj.head && self.objects.admits(obj.entry.size) {
            obj.fill = Some(BytesMut::with_capacity(obj.entry.size as usize));
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        let Target::Object(obj) = &mut ctx.target else {
            return Ok(None);
        };
        if let Some(page) = &obj.error_page {
            *body = end_of_stream.then(|| page.clone());
            return Ok(None);
        }
        if let (Some(fill), Some(chunk)) = (obj.fill.as_mut(), body.as_ref()) {
            fill.extend_from_slice(chunk);
        }
        if end_of_stream {
            if let Some(fill) = obj.fill.take() {
                // Only a complete body is cached.
                if fill.len() as u64 == obj.entry.size {
                    self.objects.insert(obj.cache_key.clone(), fill.freeze());
                }
            }
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let status = match ctx.target {
            Target::Object(_) | Target::ControlPlane => match e.etype() {
                ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                    504
                }
                ErrorType::HTTPStatus(code) => *code,
                _ if matches!(e.esource(), pingora_error::ErrorSource::Downstream) => 0,
                _ => 502,
            },
            Target::Answered => 0,
        };
        if status > 0 {
            tracing::warn!("upstream failure ({status}): {e}");
            let head = session.req_header().method == http::Method::HEAD;
            let message = if status == 504 {
                "The origin took too long to answer."
            } else {
                "The site is temporarily unavailable."
            };
            let _ = send_error(session, status, message, head).await;
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_table() {
        for (header, want) in [
            ("\"abc\"", true),
            ("W/\"abc\"", true),
            ("\"x\", \"abc\"", true),
            ("*", true),
            ("\"abd\"", false),
            ("", false),
        ] {
            assert_eq!(
                if_none_match(header.as_bytes(), "\"abc\""),
                want,
                "{header}"
            );
        }
    }

    #[test]
    fn error_pages_are_small_html() {
        let page = error_page(404, "nope");
        let text = std::str::from_utf8(&page).unwrap();
        assert!(text.contains("404 Not Found") && text.contains("nope"));
    }
}
