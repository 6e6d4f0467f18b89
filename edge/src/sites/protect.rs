//! Visitor protection at the edge ([`gitdeploy_api::protection`] holds the rules): a request to
//! a protected host gets in with the project's bypass token (`x-gitdeploy-bypass`) or a cookie
//! the project signed for this very host; anyone else gets the same login page, whatever the
//! path, so the page tells nothing of what exists behind it. `POST /.gitdeploy/login` checks a
//! password (PBKDF2 off the proxy's threads, attempts limited per client) and sets the cookie.
//! Responses behind protection are `Cache-Control: private`, so no shared cache keeps them for
//! another visitor.

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gitdeploy_api::protection::{
    cookie_in, safe_next, EdgeProtection, BYPASS_HEADER, COOKIE, COOKIE_SECS,
};
use gitdeploy_api::ratelimit::{Limiter, RateLimit};
use pingora_error::Result;
use pingora_proxy::Session;

use crate::metrics::EdgeMetrics;
use crate::respond::{html_response, send};

/// Where the login form posts.
pub(super) const LOGIN_PATH: &str = "/.gitdeploy/login";

/// Largest login form read.
const MAX_FORM: usize = 8 * 1024;

/// Password attempts per client: 10 at once, then one every 6 seconds.
const ATTEMPTS: RateLimit = RateLimit {
    burst: 10,
    per_second: 1.0 / 6.0,
};

/// The login gate of every protected site this edge serves.
pub(super) struct Gate {
    attempts: Limiter,
    metrics: EdgeMetrics,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Gate {
    pub(super) fn new(metrics: EdgeMetrics) -> Self {
        Gate {
            attempts: Limiter::new(ATTEMPTS),
            metrics,
        }
    }

    fn deny(&self, reason: &str) {
        self.metrics
            .visitor_denials
            .with_label_values(&[reason])
            .inc();
    }

    /// Whether the request carries the bypass token or a valid cookie for `host`.
    pub(super) fn admits(&self, session: &Session, p: &EdgeProtection, host: &str) -> bool {
        let headers = &session.req_header().headers;
        if headers
            .get(BYPASS_HEADER)
            .is_some_and(|t| p.bypass_matches(t.as_bytes()))
        {
            return true;
        }
        let now = now_secs();
        headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| cookie_in(v, COOKIE))
            .any(|c| p.cookie_valid(host, c, now))
    }

    /// Answers a request that may not in: the login page (401), the same for every path.
    pub(super) async fn turn_away(&self, session: &mut Session, head: bool) -> Result<bool> {
        self.deny("login_required");
        let next = session
            .req_header()
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        login_page(session, 401, &next, None, head).await
    }

    /// `POST /.gitdeploy/login`: checks the password and sets the cookie for `host`.
    pub(super) async fn login(
        &self,
        session: &mut Session,
        p: std::sync::Arc<EdgeProtection>,
        host: &str,
        client: Option<IpAddr>,
    ) -> Result<bool> {
        let head = session.req_header().method == http::Method::HEAD;
        if session.req_header().method != http::Method::POST {
            let page = crate::respond::error_page(405, "Sign in by sending the form.");
            let mut resp = html_response(405, page.len())?;
            resp.insert_header("allow", "POST")?;
            return send(session, resp, page, head).await;
        }
        let form = read_form(session).await?;
        let next = safe_next(form_value(&form, "next").as_deref().unwrap_or("/")).to_owned();
        if let Some(client) = client {
            if let Err(wait) = self.attempts.check(client, Instant::now()) {
                self.deny("rate_limited");
                let secs = wait.as_secs().max(1);
                let message = format!("Too many attempts: try again in {secs} seconds.");
                let page = page_body(&next, Some(&message));
                let mut resp = html_response(429, page.len())?;
                resp.insert_header("retry-after", secs.to_string())?;
                return send(session, resp, page, false).await;
            }
        }
        let password = form_value(&form, "password").unwrap_or_default();
        let hash = p.password.clone();
        let right = tokio::task::spawn_blocking(move || hash.is_some_and(|h| h.verify(&password)))
            .await
            .unwrap_or(false);
        if !right {
            self.deny("wrong_password");
            return login_page(
                session,
                401,
                &next,
                Some("That password is not right."),
                false,
            )
            .await;
        }
        let expires = now_secs() + COOKIE_SECS;
        let cookie = format!(
            "{COOKIE}={}; Path=/; Max-Age={COOKIE_SECS}; HttpOnly; Secure; SameSite=Lax",
            p.cookie_value(host, expires)
        );
        let mut resp = html_response(303, 0)?;
        resp.insert_header("location", next)?;
        resp.insert_header("set-cookie", cookie)?;
        send(session, resp, Bytes::new(), false).await
    }
}

/// The request's form body, at most [`MAX_FORM`] bytes (more is cut off), within 10 seconds.
async fn read_form(session: &mut Session) -> Result<String> {
    let mut body = Vec::new();
    let read = async {
        while let Some(chunk) = session.read_request_body().await? {
            let room = MAX_FORM.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        Ok::<_, Box<pingora_error::Error>>(())
    };
    match tokio::time::timeout(Duration::from_secs(10), read).await {
        Ok(result) => result?,
        Err(_) => session.set_keepalive(None),
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// A field of an `application/x-www-form-urlencoded` body.
fn form_value(form: &str, name: &str) -> Option<String> {
    form.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

async fn login_page(
    session: &mut Session,
    status: u16,
    next: &str,
    message: Option<&str>,
    head: bool,
) -> Result<bool> {
    let body = page_body(next, message);
    let resp = html_response(status, body.len())?;
    send(session, resp, body, head).await
}

/// The login page: a password field, where to go after, and what went wrong.
fn page_body(next: &str, message: Option<&str>) -> Bytes {
    let note = message
        .map(|m| format!("<p class=error role=alert>{}</p>", escape(m)))
        .unwrap_or_default();
    Bytes::from(format!(
        "<!doctype html><html lang=en><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width,initial-scale=1\">\
         <meta name=robots content=noindex><title>Protected site</title>\
         <style>body{{font:16px system-ui,sans-serif;display:grid;place-items:center;\
         min-height:90vh;margin:0;background:#f6f7f9}}form{{background:#fff;padding:2rem;\
         border-radius:8px;box-shadow:0 1px 4px #0002;width:min(22rem,90vw)}}\
         input{{font:inherit;width:100%;box-sizing:border-box;padding:.5rem;margin:.5rem 0}}\
         button{{font:inherit;padding:.5rem 1rem}}.error{{color:#b00020}}</style>\
         <form method=post action=\"{LOGIN_PATH}\"><h1>This site is protected</h1>{note}\
         <label for=password>Password</label>\
         <input id=password name=password type=password autocomplete=current-password \
         required autofocus><input type=hidden name=next value=\"{}\">\
         <button type=submit>Continue</button></form></html>\n",
        escape(next)
    ))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields() {
        let form = "password=p%40ss+word&next=%2Fdocs%2F%3Fa%3D1";
        assert_eq!(form_value(form, "password").as_deref(), Some("p@ss word"));
        assert_eq!(form_value(form, "next").as_deref(), Some("/docs/?a=1"));
        assert_eq!(form_value(form, "other"), None);
        assert_eq!(form_value("password", "password").as_deref(), Some(""));
    }

    #[test]
    fn the_page_escapes_what_it_repeats() {
        let page = page_body("/\"><script>x</script>", Some("<b>"));
        let text = String::from_utf8_lossy(&page);
        assert!(
            !text.contains("<script>x") && !text.contains("<b>"),
            "{text}"
        );
        assert!(text.contains("&quot;&gt;&lt;script&gt;"));
    }
}
