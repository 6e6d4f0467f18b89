//! The S3 origin: where objects live and how requests to them are signed. The sites proxy
//! streams objects through Pingora with headers from [`S3Origin::sign`]; small reads (manifests)
//! go through [`S3Origin::get`]. Both paths sign the same way, with SigV4, single percent-encoding
//! and no path normalization, as S3 requires.

use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use gitdeploy_core::path::encode_path;
use gitdeploy_core::ObjectLayout;
use pingora_core::upstreams::peer::HttpPeer;

/// SHA-256 of the empty body: every request the edge sends to S3 has no body.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Where the bucket is and who we are to it.
#[derive(Clone, Debug)]
pub struct OriginSettings {
    /// Endpoint URL (`http://127.0.0.1:9000`), or `None` for AWS's regional endpoint.
    pub endpoint: Option<String>,
    /// Bucket.
    pub bucket: String,
    /// Region.
    pub region: String,
    /// Key prefix.
    pub prefix: String,
    /// Access key id and secret.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
}

/// The S3 origin.
pub struct S3Origin {
    tls: bool,
    /// Address to connect to.
    connect: String,
    /// `Host` header and SNI.
    host: String,
    /// Path prefix of every object: `/<bucket>` (path style) or empty (virtual-hosted).
    bucket_path: String,
    region: String,
    identity: std::sync::RwLock<Identity>,
    layout: ObjectLayout,
    http: reqwest::Client,
}

/// A failed origin read.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// The origin answered with an unexpected status.
    #[error("S3 answered {0}")]
    Status(u16),
    /// The origin could not be reached or the read broke.
    #[error("S3 request failed: {0}")]
    Transport(String),
    /// The request could not be signed.
    #[error("signing failed: {0}")]
    Signing(String),
}

impl S3Origin {
    /// Builds the origin from settings; fails on a malformed endpoint.
    pub fn new(s: &OriginSettings) -> Result<Self, String> {
        let (tls, host, port, path_style) = match &s.endpoint {
            Some(url) => {
                let (scheme, rest) = url
                    .split_once("://")
                    .ok_or_else(|| format!("S3 endpoint {url:?} has no scheme"))?;
                let tls = match scheme {
                    "https" => true,
                    "http" => false,
                    other => {
                        return Err(format!("S3 endpoint scheme {other:?} is not http or https"))
                    }
                };
                let authority = rest.trim_end_matches('/');
                if authority.is_empty() || authority.contains('/') {
                    return Err(format!("S3 endpoint {url:?} must be scheme://host[:port]"));
                }
                let (host, port) = match authority.rsplit_once(':') {
                    Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                        h.to_owned(),
                        p.parse::<u16>()
                            .map_err(|_| format!("bad port in S3 endpoint {url:?}"))?,
                    ),
                    _ => (authority.to_owned(), if tls { 443 } else { 80 }),
                };
                (tls, host, port, true)
            }
            None => (
                true,
                format!("{}.s3.{}.amazonaws.com", s.bucket, s.region),
                443,
                false,
            ),
        };
        let default_port = if tls { 443 } else { 80 };
        let host_header = if port == default_port {
            host.clone()
        } else {
            format!("{host}:{port}")
        };
        let identity: Identity = aws_credential_types::Credentials::new(
            &s.access_key,
            &s.secret_key,
            None,
            None,
            "gitdeploy-edge",
        )
        .into();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("cannot build HTTP client: {e}"))?;
        Ok(S3Origin {
            tls,
            connect: format!("{host}:{port}"),
            host: host_header,
            bucket_path: if path_style {
                format!("/{}", s.bucket)
            } else {
                String::new()
            },
            region: s.region.clone(),
            identity: std::sync::RwLock::new(identity),
            layout: ObjectLayout::new(&s.prefix),
            http,
        })
    }

    /// Signs with credentials from the standard AWS chain (a task role, an instance profile...)
    /// instead of the static key: fetches them now, then keeps them fresh in the background on
    /// `runtime` (a few minutes before they expire).
    pub async fn use_aws_credentials(
        self: &std::sync::Arc<Self>,
        region: &str,
        runtime: &tokio::runtime::Handle,
    ) -> Result<(), String> {
        use aws_credential_types::provider::ProvideCredentials;
        let chain = aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
            .region(aws_config::Region::new(region.to_owned()))
            .build()
            .await;
        let first = chain
            .provide_credentials()
            .await
            .map_err(|e| format!("no AWS credentials for S3: {e}"))?;
        let mut expiry = first.expiry();
        *self.identity.write().unwrap_or_else(|p| p.into_inner()) = first.into();
        let origin = std::sync::Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                let wait = expiry
                    .and_then(|e| e.duration_since(SystemTime::now()).ok())
                    .map(|left| left.saturating_sub(Duration::from_secs(300)))
                    .unwrap_or(Duration::from_secs(300))
                    .max(Duration::from_secs(10));
                tokio::time::sleep(wait).await;
                let Some(origin) = origin.upgrade() else {
                    return;
                };
                match chain.provide_credentials().await {
                    Ok(creds) => {
                        expiry = creds.expiry();
                        *origin.identity.write().unwrap_or_else(|p| p.into_inner()) = creds.into();
                    }
                    Err(e) => {
                        tracing::error!("cannot refresh the S3 credentials: {e}");
                        expiry = None;
                    }
                }
            }
        });
        Ok(())
    }

    /// The bucket layout.
    pub fn layout(&self) -> &ObjectLayout {
        &self.layout
    }

    /// The request path of an object key, percent-encoded once.
    pub fn object_path(&self, key: &str) -> String {
        format!("{}/{}", self.bucket_path, encode_path(key))
    }

    /// Pingora peer for the origin, with timeouts and keep-alive.
    pub fn peer(&self) -> HttpPeer {
        let sni = self.host.split(':').next().unwrap_or_default().to_owned();
        let mut peer = HttpPeer::new(self.connect.as_str(), self.tls, sni);
        peer.options.connection_timeout = Some(Duration::from_secs(3));
        peer.options.total_connection_timeout = Some(Duration::from_secs(5));
        peer.options.read_timeout = Some(Duration::from_secs(30));
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        peer
    }

    /// SigV4 headers for a bodiless request (`host`, `x-amz-date`, `x-amz-content-sha256`,
    /// `authorization`).
    pub fn sign(
        &self,
        method: &str,
        path: &str,
    ) -> Result<Vec<(&'static str, String)>, OriginError> {
        self.sign_with_payload(method, path, EMPTY_SHA256)
    }

    /// SigV4 headers for a request whose body has SHA-256 `payload_sha256` (hex).
    fn sign_with_payload(
        &self,
        method: &str,
        path: &str,
        payload_sha256: &str,
    ) -> Result<Vec<(&'static str, String)>, OriginError> {
        let identity = self
            .identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| OriginError::Signing(e.to_string()))?
            .into();
        let scheme = if self.tls { "https" } else { "http" };
        let url = format!("{scheme}://{}{path}", self.host);
        let request = SignableRequest::new(
            method,
            url,
            [("host", self.host.as_str())].into_iter(),
            SignableBody::Precomputed(payload_sha256.into()),
        )
        .map_err(|e| OriginError::Signing(e.to_string()))?;
        let (instructions, _) = sign(request, &params)
            .map_err(|e| OriginError::Signing(e.to_string()))?
            .into_parts();
        let (headers, _) = instructions.into_parts();
        let mut out = vec![("host", self.host.clone())];
        out.extend(
            headers
                .into_iter()
                .map(|h| (h.name(), h.value().to_owned())),
        );
        Ok(out)
    }

    /// A request for `path` on the endpoint with its SigV4 headers (`payload_sha256`: hex
    /// SHA-256 of the body it will carry).
    fn signed(
        &self,
        method: reqwest::Method,
        path: &str,
        payload_sha256: &str,
    ) -> Result<reqwest::RequestBuilder, OriginError> {
        let scheme = if self.tls { "https" } else { "http" };
        let headers = self.sign_with_payload(method.as_str(), path, payload_sha256)?;
        let mut req = self
            .http
            .request(method, format!("{scheme}://{}{path}", self.connect));
        for (name, value) in headers {
            req = req.header(name, value);
        }
        Ok(req)
    }

    /// Writes a whole object.
    pub async fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<(), OriginError> {
        use sha2::Digest;
        let path = self.object_path(key);
        let hash = hex::encode(sha2::Sha256::digest(&body));
        let req = self
            .signed(reqwest::Method::PUT, &path, &hash)?
            .header("content-type", content_type)
            .body(body);
        match send(req).await?.status().as_u16() {
            200 | 201 | 204 => Ok(()),
            other => Err(OriginError::Status(other)),
        }
    }

    /// Every key under `prefix` (ListObjectsV2, page by page).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, OriginError> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = format!("list-type=2&prefix={}", query_encode(prefix));
            if let Some(t) = &token {
                query.push_str(&format!("&continuation-token={}", query_encode(t)));
            }
            let path = format!("{}/?{query}", self.bucket_path);
            let resp = send(self.signed(reqwest::Method::GET, &path, EMPTY_SHA256)?).await?;
            if resp.status().as_u16() != 200 {
                return Err(OriginError::Status(resp.status().as_u16()));
            }
            let xml = resp
                .text()
                .await
                .map_err(|e| OriginError::Transport(e.to_string()))?;
            keys.extend(xml_values(&xml, "Key"));
            token = xml_values(&xml, "NextContinuationToken").into_iter().next();
            let truncated =
                xml_values(&xml, "IsTruncated").first().map(String::as_str) == Some("true");
            if !truncated || token.is_none() {
                return Ok(keys);
            }
        }
    }

    /// Deletes one object (deleting a missing object succeeds).
    pub async fn delete(&self, key: &str) -> Result<(), OriginError> {
        let path = self.object_path(key);
        let req = self.signed(reqwest::Method::DELETE, &path, EMPTY_SHA256)?;
        match send(req).await?.status().as_u16() {
            200 | 204 | 404 => Ok(()),
            other => Err(OriginError::Status(other)),
        }
    }

    /// Reads a whole object; `Ok(None)` when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, OriginError> {
        let path = self.object_path(key);
        let resp = send(self.signed(reqwest::Method::GET, &path, EMPTY_SHA256)?).await?;
        match resp.status().as_u16() {
            200 => Ok(Some(
                resp.bytes()
                    .await
                    .map_err(|e| OriginError::Transport(e.to_string()))?,
            )),
            404 => Ok(None),
            other => Err(OriginError::Status(other)),
        }
    }
}

/// Sends a request built by [`S3Origin::signed`].
async fn send(req: reqwest::RequestBuilder) -> Result<reqwest::Response, OriginError> {
    req.send()
        .await
        .map_err(|e| OriginError::Transport(e.to_string()))
}

/// Percent-encodes a query parameter value (RFC 3986 unreserved characters stay).
fn query_encode(value: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const QUERY: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    utf8_percent_encode(value, QUERY).to_string()
}

/// The text of every `<tag>…</tag>` in an S3 XML answer, entities decoded.
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        out.push(xml_unescape(&after[..end]));
        rest = &after[end + close.len()..];
    }
    out
}

fn xml_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let tail = &rest[amp..];
        let Some(semi) = tail.find(';') else {
            out.push_str(tail);
            return out;
        };
        let entity = &tail[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            e if e.starts_with("#x") => u32::from_str_radix(&e[2..], 16)
                .ok()
                .and_then(char::from_u32),
            e if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match decoded {
            Some(c) => out.push(c),
            None => out.push_str(&tail[..=semi]),
        }
        rest = &tail[semi + 1..];
    }
    out.push_str(rest);
    out
}

impl gitdeploy_api::SiteStorage for S3Origin {
    fn delete_deployment(
        &self,
        id: &gitdeploy_core::DeploymentId,
    ) -> gitdeploy_api::ArchiveFuture<'_, u64> {
        let id = id.clone();
        Box::pin(async move {
            let fail = |e: OriginError| e.to_string();
            // The manifest first: from then on no edge can load the deployment.
            self.delete(&self.layout.manifest(&id))
                .await
                .map_err(fail)?;
            let keys = self
                .list(&self.layout.site_prefix(&id))
                .await
                .map_err(fail)?;
            let mut deleted = 1;
            for key in keys {
                self.delete(&key).await.map_err(fail)?;
                deleted += 1;
            }
            self.delete(&self.layout.log_archive(&id))
                .await
                .map_err(fail)?;
            Ok(deleted + 1)
        })
    }
}

/// Build logs are archived next to the sites, at `logs/<id>.ndjson`.
impl gitdeploy_api::LogArchive for S3Origin {
    fn archive(
        &self,
        id: &gitdeploy_core::DeploymentId,
        ndjson: Vec<u8>,
    ) -> gitdeploy_api::ArchiveFuture<'_, ()> {
        let key = self.layout.log_archive(id);
        Box::pin(async move {
            self.put(&key, ndjson, "application/x-ndjson")
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn fetch(
        &self,
        id: &gitdeploy_core::DeploymentId,
    ) -> gitdeploy_api::ArchiveFuture<'_, Option<Vec<u8>>> {
        let key = self.layout.log_archive(id);
        Box::pin(async move {
            self.get(&key)
                .await
                .map(|body| body.map(|b| b.to_vec()))
                .map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_values_and_entities() {
        let xml = "<ListBucketResult><IsTruncated>true</IsTruncated><Contents><Key>sites/a/b&amp;c.html</Key></Contents>\
                   <Contents><Key>sites/a/&#x3C;x&#62;&lt;&quot;&apos;</Key></Contents>\
                   <NextContinuationToken>t+1/=</NextContinuationToken></ListBucketResult>";
        assert_eq!(
            xml_values(xml, "Key"),
            ["sites/a/b&c.html", "sites/a/<x><\"'"]
        );
        assert_eq!(xml_values(xml, "NextContinuationToken"), ["t+1/="]);
        assert_eq!(xml_values(xml, "IsTruncated"), ["true"]);
        assert!(xml_values(xml, "Missing").is_empty());
        assert_eq!(xml_unescape("a&unknown;b&"), "a&unknown;b&");
        assert_eq!(query_encode("sites/x y+~"), "sites%2Fx%20y%2B~");
    }

    fn settings(endpoint: Option<&str>) -> OriginSettings {
        OriginSettings {
            endpoint: endpoint.map(str::to_owned),
            bucket: "site-bucket".into(),
            region: "eu-west-1".into(),
            prefix: "".into(),
            access_key: "AK".into(),
            secret_key: "SK".into(),
        }
    }

    #[test]
    fn endpoint_table() {
        let o = S3Origin::new(&settings(Some("http://127.0.0.1:9000"))).unwrap();
        assert_eq!(
            (o.tls, o.connect.as_str(), o.host.as_str()),
            (false, "127.0.0.1:9000", "127.0.0.1:9000")
        );
        assert_eq!(
            o.object_path("sites/x/a b.html"),
            "/site-bucket/sites/x/a%20b.html"
        );
        let o = S3Origin::new(&settings(Some("https://minio.internal/"))).unwrap();
        assert_eq!(
            (o.tls, o.connect.as_str(), o.host.as_str()),
            (true, "minio.internal:443", "minio.internal")
        );
        let o = S3Origin::new(&settings(None)).unwrap();
        assert_eq!(o.host.as_str(), "site-bucket.s3.eu-west-1.amazonaws.com");
        assert_eq!(o.object_path("k"), "/k");
        for bad in ["127.0.0.1:9000", "ftp://h", "http://h/path", "http://h:x"] {
            assert!(S3Origin::new(&settings(Some(bad))).is_err(), "{bad}");
        }
    }

    #[test]
    fn signed_headers_are_complete() {
        let o = S3Origin::new(&settings(Some("http://127.0.0.1:9000"))).unwrap();
        let headers = o.sign("GET", "/site-bucket/k").unwrap();
        let names: Vec<_> = headers.iter().map(|(n, _)| *n).collect();
        for want in [
            "host",
            "x-amz-date",
            "x-amz-content-sha256",
            "authorization",
        ] {
            assert!(names.contains(&want), "{names:?}");
        }
        let auth = &headers
            .iter()
            .find(|(n, _)| *n == "authorization")
            .unwrap()
            .1;
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AK/"),
            "{auth}"
        );
        assert!(auth.contains("/eu-west-1/s3/aws4_request"), "{auth}");
    }
}
