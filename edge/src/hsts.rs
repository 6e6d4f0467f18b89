//! HSTS as a per-project option (#15): `Strict-Transport-Security: max-age=<n>` on every
//! response of a project's production hosts (`<project>.<domain>` and its custom domains) sent
//! over TLS, whatever wrote it (a file, a 304, a redirect, a 404 page, an S3 answer). Never over
//! plain HTTP (browsers ignore it there, RFC 6797 §7.2) and never for a deployment's own
//! `<id>.<domain>` host: previews are the platform's names, not the project's.
//!
//! It is a Pingora HTTP module: the sites proxy's `request_filter` decides ([`set`]) and the
//! module's response header filter, which every response downstream passes, writes it.

use pingora_core::modules::http::{HttpModule, HttpModuleBuilder, Module};
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

/// The header's value for `max_age` seconds.
pub fn header_value(max_age: u32) -> String {
    format!("max-age={max_age}")
}

/// This request's decision.
pub struct Hsts {
    value: Option<String>,
}

#[async_trait::async_trait]
impl HttpModule for Hsts {
    async fn request_header_filter(&mut self, _req: &mut RequestHeader) -> Result<()> {
        Ok(())
    }

    async fn response_header_filter(
        &mut self,
        resp: &mut ResponseHeader,
        _end_of_stream: bool,
    ) -> Result<()> {
        if let Some(value) = &self.value {
            resp.insert_header("strict-transport-security", value.as_str())?;
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// Makes each request's [`Hsts`], off.
pub struct HstsModule;

impl HttpModuleBuilder for HstsModule {
    fn init(&self) -> Module {
        Box::new(Hsts { value: None })
    }
}

/// Sends HSTS with `max_age` on this request's response, if it came over TLS.
pub fn set(session: &mut Session, max_age: u32) {
    let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    if !tls {
        return;
    }
    if let Some(h) = session.downstream_modules_ctx.get_mut::<Hsts>() {
        h.value = Some(header_value(max_age));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_values() {
        assert_eq!(super::header_value(31_536_000), "max-age=31536000");
        assert_eq!(super::header_value(0), "max-age=0");
    }
}
