//! Responses the edge writes itself: error pages, redirects, and the headers of a file
//! representation (shared by cache hits, S3 streams and 304s so they never disagree).

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use gitdeploy_core::{Encoding, FileEntry};
use http::header::{self, HeaderMap, HeaderValue};
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use crate::prepared::PreparedFile;
use crate::serving::cache_control;

/// A small HTML page for errors, never S3's XML.
pub fn error_page(status: u16, message: &str) -> Bytes {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    Bytes::from(format!(
        "<!doctype html><meta charset=utf-8><title>{status} {reason}</title>\
         <h1>{status} {reason}</h1><p>{message}</p>\n"
    ))
}

/// A response header of `status` with `headers`, without a case map: the headers were set by
/// known names straight into the map, without the name parsing and case bookkeeping
/// `insert_header` does for each (lower-case names on the wire; HTTP/2 writes them so anyway).
pub fn response_header(status: u16, headers: HeaderMap) -> Result<ResponseHeader> {
    let mut resp = http::Response::new(());
    *resp.status_mut() = http::StatusCode::from_u16(status).map_err(|_| {
        pingora_error::Error::explain(pingora_error::ErrorType::InvalidHTTPHeader, "status")
    })?;
    *resp.headers_mut() = headers;
    Ok(resp.into_parts().0.into())
}

/// Headers of a page the edge generates.
pub fn html_response(status: u16, len: usize) -> Result<ResponseHeader> {
    let mut headers = HeaderMap::with_capacity(4);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    response_header(status, headers)
}

/// A header value made of `text` (copied); an error for text a header cannot hold.
fn value(text: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(text).map_err(|_| invalid_value())
}

fn invalid_value() -> Box<pingora_error::Error> {
    pingora_error::Error::explain(
        pingora_error::ErrorType::InvalidHTTPHeader,
        "a header value the manifest holds is not valid",
    )
}

/// Writes a complete response; `head` suppresses the body but keeps its length.
pub async fn send(
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

/// Writes an error page.
pub async fn send_error(
    session: &mut Session,
    status: u16,
    message: &str,
    head: bool,
) -> Result<bool> {
    let body = error_page(status, message);
    let resp = html_response(status, body.len())?;
    send(session, resp, body, head).await
}

/// Everything that decides a file response's headers.
#[derive(Clone, Debug)]
pub struct FilePlan {
    /// The file, with its prepared header values (its path decides the cache-control rule).
    pub file: Arc<PreparedFile>,
    /// 200, or 404 for a 404 page.
    pub status: u16,
    /// The precompressed variant served, if any.
    pub encoding: Option<Encoding>,
    /// Bytes `start..=end` for a 206.
    pub range: Option<(u64, u64)>,
    /// When the deployment was published, and that time as a `Last-Modified` value.
    pub modified: (SystemTime, HeaderValue),
    /// Headers from `_headers` rules, applied last.
    pub extra: Vec<(String, String)>,
    /// Behind visitor protection: no shared cache may keep it.
    pub private: bool,
}

impl FilePlan {
    /// Its manifest entry.
    pub fn entry(&self) -> &FileEntry {
        &self.file.entry
    }

    /// Size of the representation (the variant's when compressed).
    pub fn representation_size(&self) -> u64 {
        match self.encoding.and_then(|e| self.entry().encodings.get(&e)) {
            Some(v) => v.size,
            None => self.entry().size,
        }
    }

    /// ETag of the representation.
    pub fn etag(&self) -> &str {
        match self.encoding.and_then(|e| self.entry().encodings.get(&e)) {
            Some(v) => &v.etag,
            None => &self.entry().etag,
        }
    }

    /// Bytes in the body.
    pub fn body_len(&self) -> u64 {
        match self.range {
            Some((start, end)) => end - start + 1,
            None => self.representation_size(),
        }
    }

    /// The response status: 206 for a range.
    pub fn response_status(&self) -> u16 {
        if self.range.is_some() {
            206
        } else {
            self.status
        }
    }

    /// Validators, type and caching headers (for 200, 206, 404 pages and 304): the values
    /// prepared with the manifest, cloned (a reference count each).
    pub fn write_common(&self, headers: &mut HeaderMap) -> Result<()> {
        let (content_type, etag) = match (self.file.content_type(), self.file.etag(self.encoding)) {
            (Some(t), Some(e)) => (t.clone(), e.clone()),
            _ => return Err(invalid_value()),
        };
        headers.insert(header::CONTENT_TYPE, content_type);
        headers.insert(header::ETAG, etag);
        headers.insert(header::LAST_MODIFIED, self.modified.1.clone());
        let cache = if self.status == 200 {
            self.file.cache_control()
        } else {
            cache_control::REVALIDATE
        };
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
        if !self.entry().encodings.is_empty() {
            headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        }
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        for (name, text) in &self.extra {
            let name = header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                pingora_error::Error::explain(
                    pingora_error::ErrorType::InvalidHTTPHeader,
                    "a _headers rule names an invalid header",
                )
            })?;
            headers.insert(name, value(text)?);
        }
        if self.private {
            // Last, so a `_headers` rule cannot make a protected response public.
            let cache = headers
                .get(header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok())
                .map(cache_control::private)
                .unwrap_or_else(|| cache_control::private(cache));
            headers.insert(header::CACHE_CONTROL, value(&cache)?);
        }
        Ok(())
    }

    /// The header of a `304 Not Modified` of this file.
    pub fn not_modified(&self) -> Result<ResponseHeader> {
        let mut headers = HeaderMap::with_capacity(8);
        self.write_common(&mut headers)?;
        response_header(304, headers)
    }

    /// The full header of a file response with a body.
    pub fn response(&self) -> Result<ResponseHeader> {
        let mut headers = HeaderMap::with_capacity(12);
        self.write_common(&mut headers)?;
        if let Some(enc) = self.encoding {
            headers.insert(
                header::CONTENT_ENCODING,
                HeaderValue::from_static(enc.token()),
            );
        }
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if let Some((start, end)) = self.range {
            let range = format!("bytes {start}-{end}/{}", self.representation_size());
            headers.insert(header::CONTENT_RANGE, value(&range)?);
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(self.body_len()));
        response_header(self.response_status(), headers)
    }
}

/// How a failed upstream request is answered: 504 when it timed out, the status an upstream
/// error carries, 502 otherwise; with the page's words.
pub fn upstream_failure(e: &pingora_error::Error) -> (u16, &'static str) {
    use pingora_error::ErrorType;
    let status = match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
        ErrorType::HTTPStatus(code) => *code,
        _ => 502,
    };
    let message = if status == 504 {
        "The origin took too long to answer."
    } else {
        "The site is temporarily unavailable."
    };
    (status, message)
}
