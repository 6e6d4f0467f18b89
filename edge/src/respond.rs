//! Responses the edge writes itself: error pages, redirects, and the headers of a file
//! representation (shared by cache hits, S3 streams and 304s so they never disagree).

use std::time::SystemTime;

use bytes::Bytes;
use gitdeploy_core::{Encoding, FileEntry};
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

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

/// Headers of a page the edge generates.
pub fn html_response(status: u16, len: usize) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header("content-type", "text/html; charset=utf-8")?;
    resp.insert_header("cache-control", "no-store")?;
    resp.insert_header("x-content-type-options", "nosniff")?;
    resp.set_content_length(len)?;
    Ok(resp)
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
    /// Site-relative path of the file (for the cache-control rule).
    pub path: String,
    /// Its manifest entry.
    pub entry: FileEntry,
    /// 200, or 404 for a 404 page.
    pub status: u16,
    /// The precompressed variant served, if any.
    pub encoding: Option<Encoding>,
    /// Bytes `start..=end` for a 206.
    pub range: Option<(u64, u64)>,
    /// When the deployment was published.
    pub modified: SystemTime,
    /// Headers from `_headers` rules, applied last.
    pub extra: Vec<(String, String)>,
    /// Behind visitor protection: no shared cache may keep it.
    pub private: bool,
}

impl FilePlan {
    /// Size of the representation (the variant's when compressed).
    pub fn representation_size(&self) -> u64 {
        match self.encoding.and_then(|e| self.entry.encodings.get(&e)) {
            Some(v) => v.size,
            None => self.entry.size,
        }
    }

    /// ETag of the representation.
    pub fn etag(&self) -> &str {
        match self.encoding.and_then(|e| self.entry.encodings.get(&e)) {
            Some(v) => &v.etag,
            None => &self.entry.etag,
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

    /// Validators, type and caching headers (for 200, 206, 404 pages and 304).
    pub fn write_common(&self, resp: &mut ResponseHeader) -> Result<()> {
        resp.insert_header("content-type", self.entry.content_type.as_str())?;
        resp.insert_header("etag", self.etag())?;
        resp.insert_header("last-modified", httpdate::fmt_http_date(self.modified))?;
        let cache = if self.status == 200 {
            cache_control::for_path(&self.path)
        } else {
            cache_control::REVALIDATE
        };
        resp.insert_header("cache-control", cache)?;
        if !self.entry.encodings.is_empty() {
            resp.insert_header("vary", "Accept-Encoding")?;
        }
        resp.insert_header("x-content-type-options", "nosniff")?;
        for (name, value) in &self.extra {
            resp.insert_header(name.clone(), value.as_str())?;
        }
        if self.private {
            // Last, so a `_headers` rule cannot make a protected response public.
            let cache = resp
                .headers
                .get("cache-control")
                .and_then(|v| v.to_str().ok())
                .map(cache_control::private)
                .unwrap_or_else(|| cache_control::private(cache));
            resp.insert_header("cache-control", cache)?;
        }
        Ok(())
    }

    /// The full header of a file response with a body.
    pub fn response(&self) -> Result<ResponseHeader> {
        let mut resp = ResponseHeader::build(self.response_status(), Some(12))?;
        self.write_common(&mut resp)?;
        if let Some(enc) = self.encoding {
            resp.insert_header("content-encoding", enc.token())?;
        }
        resp.insert_header("accept-ranges", "bytes")?;
        if let Some((start, end)) = self.range {
            resp.insert_header(
                "content-range",
                format!("bytes {start}-{end}/{}", self.representation_size()),
            )?;
        }
        resp.set_content_length(self.body_len() as usize)?;
        Ok(resp)
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
