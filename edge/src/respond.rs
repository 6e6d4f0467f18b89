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

use crate::prepared::{PlainAnswer, PreparedFile};
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
    fn write_common(&self, headers: &mut HeaderMap) -> Result<()> {
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
        let headers = match self.plain_answer() {
            Some(plain) => plain.not_modified.clone(),
            None => self.not_modified_headers()?,
        };
        response_header(304, headers)
    }

    /// The full header of a file response with a body.
    pub fn response(&self) -> Result<ResponseHeader> {
        let headers = match self.plain_answer() {
            Some(plain) => plain.ok.clone(),
            None => self.response_headers()?,
        };
        response_header(self.response_status(), headers)
    }

    /// The file's prepared answer in this plan's representation, when the plan is a plain one
    /// (`200` or `304` of the whole file, no `_headers` rule, no protection): made once per
    /// file, the first time one is asked for, from the same builders as any other answer.
    fn plain_answer(&self) -> Option<&PlainAnswer> {
        if self.status != 200 || self.range.is_some() || !self.extra.is_empty() || self.private {
            return None;
        }
        let answers = self.file.plain_answers(|| {
            let encodings =
                std::iter::once(None).chain(self.entry().encodings.keys().copied().map(Some));
            encodings
                .filter_map(|encoding| {
                    let plain = FilePlan {
                        encoding,
                        ..self.clone()
                    };
                    Some(PlainAnswer {
                        encoding,
                        ok: plain.response_headers().ok()?,
                        not_modified: plain.not_modified_headers().ok()?,
                    })
                })
                .collect()
        })?;
        answers.iter().find(|a| a.encoding == self.encoding)
    }

    fn not_modified_headers(&self) -> Result<HeaderMap> {
        let mut headers = HeaderMap::with_capacity(8);
        self.write_common(&mut headers)?;
        Ok(headers)
    }

    fn response_headers(&self) -> Result<HeaderMap> {
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
        Ok(headers)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prepared::{AnswerBudget, PreparedManifest};
    use gitdeploy_core::{Manifest, Variant};

    fn plan() -> FilePlan {
        let mut entry = FileEntry {
            size: 10,
            etag: "\"js\"".into(),
            content_type: "text/javascript".into(),
            hash: None,
            encodings: Default::default(),
        };
        entry.encodings.insert(
            Encoding::Br,
            Variant {
                size: 4,
                etag: "\"js-br\"".into(),
                hash: None,
            },
        );
        let manifest = PreparedManifest::new(
            Manifest {
                version: gitdeploy_core::manifest::MANIFEST_VERSION,
                deployment: "k3f9q2m8x1ab".into(),
                project: None,
                commit: None,
                created_unix_ms: 1_700_000_000_000,
                files: [("app.js".to_owned(), entry)].into(),
                rules: Default::default(),
            },
            &AnswerBudget::new(usize::MAX),
        );
        let (modified, text) = manifest.modified();
        FilePlan {
            file: manifest.file("app.js").unwrap().clone(),
            status: 200,
            encoding: None,
            range: None,
            modified: (modified, text.clone()),
            extra: Vec::new(),
            private: false,
        }
    }

    fn header<'a>(resp: &'a ResponseHeader, name: &str) -> Option<&'a str> {
        resp.headers.get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn plain_answers_are_made_once_and_equal_built_ones() {
        let identity = plan();
        assert!(!identity.file.has_answers());
        let ok = identity.response().unwrap();
        assert!(identity.file.has_answers(), "made on first use");
        assert_eq!(ok.headers, identity.response_headers().unwrap());
        assert_eq!(ok.status, 200);
        assert_eq!(header(&ok, "content-length"), Some("10"));
        assert_eq!(header(&ok, "etag"), Some("\"js\""));
        let br = FilePlan {
            encoding: Some(Encoding::Br),
            ..identity.clone()
        };
        let ok_br = br.response().unwrap();
        assert_eq!(ok_br.headers, br.response_headers().unwrap());
        assert_eq!(header(&ok_br, "content-encoding"), Some("br"));
        assert_eq!(header(&ok_br, "content-length"), Some("4"));
        let not_modified = br.not_modified().unwrap();
        assert_eq!(not_modified.status, 304);
        assert_eq!(not_modified.headers, br.not_modified_headers().unwrap());
        assert_eq!(header(&not_modified, "etag"), Some("\"js-br\""));
        assert_eq!(header(&not_modified, "content-length"), None);
    }

    #[test]
    fn answers_that_are_not_plain_are_built_each_time() {
        let base = plan();
        let range = FilePlan {
            range: Some((2, 5)),
            ..base.clone()
        };
        let partial = range.response().unwrap();
        assert_eq!(partial.status, 206);
        assert_eq!(header(&partial, "content-range"), Some("bytes 2-5/10"));
        assert_eq!(header(&partial, "content-length"), Some("4"));
        let private = FilePlan {
            private: true,
            ..base.clone()
        };
        let cache = private.not_modified().unwrap();
        assert!(header(&cache, "cache-control")
            .unwrap()
            .starts_with("private"));
        let ruled = FilePlan {
            extra: vec![("x-frame-options".into(), "DENY".into())],
            ..base.clone()
        };
        assert_eq!(
            header(&ruled.response().unwrap(), "x-frame-options"),
            Some("DENY")
        );
        let page = FilePlan {
            status: 404,
            ..base
        };
        let not_found = page.response().unwrap();
        assert_eq!(not_found.status, 404);
        assert_eq!(
            header(&not_found, "cache-control"),
            Some(cache_control::REVALIDATE)
        );
        assert!(!page.file.has_answers(), "none of these made one");
    }
}
