//! What the public port's per-request routing does for HTTPS (#15), before a request reaches a
//! site: ACME HTTP-01 challenge answers, and the plain-HTTP → HTTPS redirect.
//!
//! * `GET /.well-known/acme-challenge/<token>`, on any host, when this edge orders certificates:
//!   the answer the shared [`CertStore`] holds for that token (whichever edge ordered it), as
//!   `text/plain`; `404` for a token nobody published. A malformed token is never looked up.
//! * A site request over plain HTTP is answered `308` to the same host and target on the public
//!   HTTPS port once a handshake for that host gets a certificate: always for the platform's
//!   own names, for a custom domain once it has one. Challenge paths stay on plain HTTP.

use std::sync::Arc;

use bytes::Bytes;
use gitdeploy_api::cert_store::{is_token, CertStore};
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use crate::respond::{html_response, send, send_error};
use crate::tls::Certificates;

/// The HTTPS side of the public port, shared by every request.
#[derive(Clone, Default)]
pub struct TlsRoutes {
    /// Where challenge answers are (only when this edge orders certificates).
    pub challenges: Option<Arc<dyn CertStore>>,
    /// The TLS listener's certificates (only with a TLS listener).
    pub certificates: Option<Arc<Certificates>>,
    /// The public HTTPS port, when sites are served over HTTPS: plain-HTTP site requests are
    /// then redirected there (308). The control plane stays on both, for clients that were
    /// given a plain URL.
    pub https_port: Option<u16>,
}

impl TlsRoutes {
    /// Answers an ACME HTTP-01 challenge request; `Ok(None)` when this is not one.
    pub async fn answer_challenge(&self, session: &mut Session) -> Result<Option<bool>> {
        let Some(store) = &self.challenges else {
            return Ok(None);
        };
        let req = session.req_header();
        let head = req.method == http::Method::HEAD;
        if req.method != http::Method::GET && !head {
            return Ok(None);
        }
        let Some(token) = gitdeploy_core::host::acme_challenge_token(req.uri.path()) else {
            return Ok(None);
        };
        if !is_token(token) {
            return send_error(session, 404, "No such challenge.", head)
                .await
                .map(Some);
        }
        let answer = match store.challenge(token).await {
            Ok(Some(answer)) => answer,
            Ok(None) => {
                return send_error(session, 404, "No such challenge.", head)
                    .await
                    .map(Some)
            }
            Err(e) => {
                tracing::warn!("cannot read an ACME challenge answer: {e}");
                return send_error(session, 503, "Try again.", head).await.map(Some);
            }
        };
        let mut resp = ResponseHeader::build(200, Some(3))?;
        resp.insert_header("content-type", "text/plain")?;
        resp.insert_header("cache-control", "no-store")?;
        resp.set_content_length(answer.len())?;
        send(session, resp, Bytes::from(answer), head)
            .await
            .map(Some)
    }

    /// Redirects a plain-HTTP request for `host` (normalized) to HTTPS (308) when a handshake
    /// for it gets a certificate; `custom` says it is a custom domain. `Ok(Some(_))` when it did.
    pub async fn to_https(
        &self,
        session: &mut Session,
        host: &str,
        custom: bool,
        head: bool,
    ) -> Result<Option<bool>> {
        let Some(port) = self.https_port else {
            return Ok(None);
        };
        if session.digest().is_some_and(|d| d.ssl_digest.is_some()) {
            return Ok(None);
        }
        if custom
            && !self
                .certificates
                .as_ref()
                .is_some_and(|c| c.serves_custom(host))
        {
            return Ok(None);
        }
        let target = session
            .req_header()
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let Some(location) = gitdeploy_core::host::https_redirect(host, port, &target) else {
            return Ok(None);
        };
        let mut resp = html_response(308, 0)?;
        resp.insert_header("location", location)?;
        send(session, resp, Bytes::new(), head).await.map(Some)
    }
}
