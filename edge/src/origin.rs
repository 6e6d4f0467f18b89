//! The S3 origin: where objects live and how requests to them are signed.
//!
//! Two ways in, one set of keys. The hot path, a site's object streamed to a visitor, is a
//! request Pingora makes on its own pooled upstream connection, so the sites proxy asks
//! [`S3Origin::sign`] for SigV4 headers (single percent-encoding, no path normalization, as S3
//! requires) and Pingora streams the answer into the response and the cache chunk by chunk. An
//! SDK client cannot take part in that: it owns its connections and hands back a body that would
//! have to be copied into Pingora's response, outside its upstream timeouts, pool and metrics.
//! Everything else (manifests, log archives, listing and deleting a deployment) goes through the
//! platform's one S3 client, [`gitdeploy_builder::storage`], the same one the builder uploads
//! with.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{future, ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use gitdeploy_builder::storage::{self, Failure};
use gitdeploy_core::path::encode_path;
use gitdeploy_core::ObjectLayout;
use pingora_core::upstreams::peer::HttpPeer;

mod site_storage;
pub(crate) use site_storage::collect_periodically;

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
    keys: Keys,
    layout: ObjectLayout,
    bucket: String,
    client: aws_sdk_s3::Client,
}

/// The keys both ways in sign with, replaced when a refresh brings new ones.
#[derive(Clone, Debug)]
struct Keys(Arc<RwLock<KeyPair>>);

/// The same keys as the SDK wants them and as the signer wants them (converted once, not per
/// request).
#[derive(Debug)]
struct KeyPair {
    credentials: Credentials,
    identity: Identity,
}

impl Keys {
    fn new(credentials: Credentials) -> Self {
        Keys(Arc::new(RwLock::new(KeyPair::from(credentials))))
    }

    fn set(&self, credentials: Credentials) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = KeyPair::from(credentials);
    }

    fn identity(&self) -> Identity {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .identity
            .clone()
    }
}

impl From<Credentials> for KeyPair {
    fn from(credentials: Credentials) -> Self {
        KeyPair {
            identity: credentials.clone().into(),
            credentials,
        }
    }
}

impl ProvideCredentials for Keys {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        let pair = self.0.read().unwrap_or_else(|p| p.into_inner());
        future::ProvideCredentials::ready(Ok(pair.credentials.clone()))
    }
}

/// A failed origin read.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// The origin answered with an unexpected status.
    #[error("S3 answered {status}: {detail}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The storage's own words.
        detail: String,
    },
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
        let keys = Keys::new(Credentials::new(
            &s.access_key,
            &s.secret_key,
            None,
            None,
            "gitdeploy-edge",
        ));
        let endpoint = storage::Endpoint {
            url: s.endpoint.clone(),
            region: s.region.clone(),
        };
        let client = storage::client(&endpoint, SharedCredentialsProvider::new(keys.clone()));
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
            keys,
            layout: ObjectLayout::new(&s.prefix),
            bucket: s.bucket.clone(),
            client,
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
        self.keys.set(first);
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
                        origin.keys.set(creds);
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
        let identity = self.keys.identity();
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
            SignableBody::Precomputed(EMPTY_SHA256.into()),
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

    /// Writes a whole object.
    pub async fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<(), OriginError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(body.into())
            .send()
            .await
            .map_err(|e| origin_error(&e))?;
        Ok(())
    }

    /// Every key under `prefix` (ListObjectsV2, page by page).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, OriginError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| origin_error(&e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
        }
        Ok(keys)
    }

    /// Deletes one object (deleting a missing object succeeds).
    pub async fn delete(&self, key: &str) -> Result<(), OriginError> {
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if storage::failure(&e) == Failure::Refused(404) => Ok(()),
            Err(e) => Err(origin_error(&e)),
        }
    }

    /// Reads a whole object; `Ok(None)` when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, OriginError> {
        let answer = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(answer) => answer,
            Err(e) if storage::failure(&e) == Failure::Refused(404) => return Ok(None),
            Err(e) => return Err(origin_error(&e)),
        };
        let body = answer
            .body
            .collect()
            .await
            .map_err(|e| OriginError::Transport(storage::error_chain(&e)))?;
        Ok(Some(body.into_bytes()))
    }
}

/// An SDK error as the callers of the origin tell them apart: refused with a status, or not
/// reached.
fn origin_error<E>(
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> OriginError
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    match storage::failure(e) {
        Failure::Refused(status) => OriginError::Status {
            status,
            detail: storage::describe(e),
        },
        Failure::Unreachable | Failure::Other => OriginError::Transport(storage::describe(e)),
    }
}

/// Build logs are archived next to the sites, at `logs/<id>.ndjson`.
impl gitdeploy_api::BuildArchive for S3Origin {
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

    fn publish_staged(
        &self,
        id: &gitdeploy_core::DeploymentId,
    ) -> gitdeploy_api::ArchiveFuture<'_, bool> {
        let id = id.clone();
        Box::pin(async move {
            use gitdeploy_builder::publish;
            let published =
                publish::publish_staged(&self.client, &self.bucket, &self.layout, &id).await;
            if let Err(e) =
                publish::remove_staging(&self.client, &self.bucket, &self.layout, &id).await
            {
                tracing::warn!(%id, "the staging area of the upload stays: {e}");
            }
            published
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
