//! The builder's input, from environment variables.

use std::path::PathBuf;

use gitdeploy_core::job::env::*;
use gitdeploy_core::{BuildJob, ObjectLayout};

/// Everything a build needs; credentials come from the standard AWS variables.
#[derive(Debug)]
pub struct BuilderConfig {
    /// The job.
    pub job: BuildJob,
    /// Scratch directory for this job.
    pub work_dir: PathBuf,
    /// Shared package manager cache.
    pub cache_dir: Option<PathBuf>,
    /// S3 endpoint override.
    pub s3_endpoint: Option<String>,
    /// Bucket.
    pub bucket: String,
    /// Region.
    pub region: String,
    /// Object layout.
    pub layout: ObjectLayout,
    /// Static credentials (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`), when given.
    pub credentials: Option<(String, String)>,
    /// Build caches are kept in the bucket ([`crate::remote_cache`]): the disk does not last.
    pub remote_cache: bool,
    /// The storage session covers this deployment's staging area only
    /// ([`crate::publish::Placement::Staged`]).
    pub staged_upload: bool,
}

impl BuilderConfig {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let job_json = var(JOB).ok_or(format!("{JOB} is not set"))?;
        let job: BuildJob = serde_json::from_str(&job_json)
            .map_err(|e| format!("{JOB} is not a valid job: {e}"))?;
        Ok(BuilderConfig {
            job,
            work_dir: var(WORK_DIR)
                .map(PathBuf::from)
                .ok_or(format!("{WORK_DIR} is not set"))?,
            cache_dir: var(CACHE_DIR).map(PathBuf::from),
            s3_endpoint: var(S3_ENDPOINT),
            bucket: var(S3_BUCKET).ok_or(format!("{S3_BUCKET} is not set"))?,
            region: var(S3_REGION).unwrap_or_else(|| "us-east-1".into()),
            layout: ObjectLayout::new(&var(S3_PREFIX).unwrap_or_default()),
            credentials: var("AWS_ACCESS_KEY_ID").zip(var("AWS_SECRET_ACCESS_KEY")),
            remote_cache: var(REMOTE_CACHE).as_deref() == Some("1"),
            staged_upload: var(STAGED_UPLOAD).as_deref() == Some("1"),
        })
    }
}
