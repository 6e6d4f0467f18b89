//! The sites proxy's per-request state: where the request goes (answered, the API, an S3
//! object being streamed and perhaps cached), and what `logging` reports about it.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use gitdeploy_core::DeploymentId;

use crate::cache::{FillGuard, ObjectKey};
use crate::respond::FilePlan;

/// Per-request state.
pub struct RequestCtx {
    pub(super) target: Target,
    pub(super) started: std::time::Instant,
    /// `hit`, `miss` or `none` (answered without an object, or not a site request).
    pub(super) cache: &'static str,
    /// When the S3 request was sent.
    pub(super) s3_sent: Option<std::time::Instant>,
    /// Whether this request goes to the access log (sampled once, at its start).
    pub(super) logged: bool,
    /// A health probe addressed to our IP, forwarded with the platform's host.
    pub(super) probe: bool,
    /// The host (normalised), project and deployment, kept for the access log (the manifest
    /// names its project, see [`RequestCtx::project`]).
    pub(super) host: Option<String>,
    pub(super) project: Option<String>,
    pub(super) deployment: Option<DeploymentId>,
    /// The manifest served from.
    pub(super) manifest: Option<Arc<crate::prepared::PreparedManifest>>,
}

impl RequestCtx {
    /// A request's state at its start; `logged`: it goes to the access log.
    pub(super) fn new(logged: bool) -> Self {
        RequestCtx {
            target: Target::Answered,
            started: std::time::Instant::now(),
            cache: "none",
            s3_sent: None,
            logged,
            probe: false,
            host: None,
            project: None,
            deployment: None,
            manifest: None,
        }
    }

    /// The project the request reached, if any.
    pub(super) fn project(&self) -> Option<&str> {
        self.project
            .as_deref()
            .or_else(|| self.manifest.as_ref()?.project.as_deref())
    }
}

#[derive(Default)]
pub(super) enum Target {
    /// Answered in `request_filter`.
    #[default]
    Answered,
    /// Forwarded to the API.
    ControlPlane,
    /// Streamed from S3.
    Object(Box<ObjectRequest>),
}

pub(super) struct ObjectRequest {
    pub(super) key: String,
    pub(super) cache_key: ObjectKey,
    pub(super) plan: FilePlan,
    pub(super) head: bool,
    /// Body copied for the object cache while it streams.
    pub(super) fill: Option<BytesMut>,
    /// This request's claim on filling the object (waiters are released when it is dropped).
    pub(super) fill_guard: Option<FillGuard>,
    /// S3 failed: the body is replaced by this page.
    pub(super) error_page: Option<Bytes>,
}
