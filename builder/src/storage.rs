//! The platform's one S3 client. The builder uploads sites with it; the edge's control plane
//! lists, writes, reads and deletes with it (`edge/src/origin.rs`). Only the edge's hot path, an
//! object streamed through Pingora's upstream connection to the visitor, signs its own requests,
//! because that request is Pingora's and not the SDK's.
//!
//! One construction means one set of rules for every S3 call: path-style addressing for a custom
//! endpoint (the embedded server, MinIO, Garage), standard retries with backoff, bounded connect
//! and operation times, and errors told in words a user can act on.

use std::time::Duration;

use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::Region;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

/// Attempts per request (the first and its retries).
const ATTEMPTS: u32 = 5;
/// Longest wait for a connection to the storage.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest time one attempt may take, body included. Uploads of large files go in 8 MiB parts,
/// so no single attempt needs longer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the bucket's service is.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Endpoint URL (`http://127.0.0.1:9000`), or `None` for AWS's regional endpoint.
    pub url: Option<String>,
    /// Region the requests are signed for.
    pub region: String,
}

/// A client for `endpoint` that asks `credentials` for its keys before each request (a provider
/// caches and refreshes them itself).
pub fn client(endpoint: &Endpoint, credentials: SharedCredentialsProvider) -> aws_sdk_s3::Client {
    let mut b = aws_sdk_s3::Config::builder()
        .region(Region::new(endpoint.region.clone()))
        .credentials_provider(credentials)
        .retry_config(RetryConfig::standard().with_max_attempts(ATTEMPTS))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .build(),
        )
        .force_path_style(endpoint.url.is_some());
    if let Some(url) = &endpoint.url {
        b = b.endpoint_url(url);
    }
    aws_sdk_s3::Client::from_conf(b.build())
}

/// Fixed keys (`session_token` for temporary ones, such as an STS session).
pub fn static_keys(
    id: &str,
    secret: &str,
    session_token: Option<String>,
) -> SharedCredentialsProvider {
    SharedCredentialsProvider::new(aws_credential_types::Credentials::new(
        id,
        secret,
        session_token,
        None,
        "gitdeploy",
    ))
}

/// The standard AWS chain: environment, web identity, an ECS task role, an instance profile.
pub async fn aws_chain(region: &str) -> SharedCredentialsProvider {
    SharedCredentialsProvider::new(
        aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
            .region(aws_config::Region::new(region.to_owned()))
            .build()
            .await,
    )
}

/// What a failed storage request means for its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The storage answered, with this HTTP status, and refused.
    Refused(u16),
    /// The storage could not be reached or did not answer in time.
    Unreachable,
    /// Anything else (a request that could not be built, a broken answer).
    Other,
}

/// Which [`Failure`] an SDK error is.
pub fn failure<E>(e: &SdkError<E, HttpResponse>) -> Failure {
    match e {
        SdkError::ServiceError(service) => Failure::Refused(service.raw().status().as_u16()),
        SdkError::ResponseError(response) => Failure::Refused(response.raw().status().as_u16()),
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => Failure::Unreachable,
        _ => Failure::Other,
    }
}

/// What went wrong with a storage request, in words: the storage's own error code and message
/// when it answered, or whether it could not be reached or did not answer in time.
pub fn describe<E, R>(e: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e {
        SdkError::ServiceError(service) => {
            let err = service.err();
            match (err.code(), err.message()) {
                (Some(code), Some(message)) => format!("the storage answered {code}: {message}"),
                (Some(code), None) => format!("the storage answered {code}"),
                _ => format!("the storage refused the request: {}", error_chain(e)),
            }
        }
        SdkError::TimeoutError(_) => "the storage did not answer in time".into(),
        SdkError::DispatchFailure(_) => {
            format!("the storage could not be reached: {}", error_chain(e))
        }
        _ => error_chain(e),
    }
}

/// An error with its sources, one line (the SDK's top-level message alone says little).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// `x-amz-copy-source`: the bucket and key, percent-encoded but for `/` and unreserved bytes.
pub fn copy_source(bucket: &str, key: &str) -> String {
    let mut out = String::with_capacity(bucket.len() + key.len() + 1);
    for b in format!("{bucket}/{key}").bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_sources_are_encoded() {
        assert_eq!(copy_source("b", "gd/uploads/x/ab"), "b/gd/uploads/x/ab");
        assert_eq!(copy_source("b", "a b+c"), "b/a%20b%2Bc");
    }
}
