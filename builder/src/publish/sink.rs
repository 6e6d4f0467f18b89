//! What a publish writes through ([`BlobSink`]): the bucket itself ([`super::S3Blobs`], for a
//! builder) or the deploy API (the CLI's `gitdeploy deploy ./dist`), one protocol for both:
//! the list of (path, hash, size) is looked up at once, only what the store lacks is uploaded,
//! and the manifest is written last. [`Progress`] is what a terminal shows while it runs.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use gitdeploy_core::{ContentHash, DeploymentId, Manifest};

use super::recorded::Recorded;

/// One file of the site as the lookup sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// Site-relative path.
    pub path: String,
    /// Its content hash.
    pub hash: ContentHash,
    /// Its size in bytes.
    pub size: u64,
}

/// A blob store a publish writes into, for one deployment.
pub trait BlobSink: Clone + Send + Sync + 'static {
    /// The deployment being published.
    fn deployment(&self) -> &DeploymentId;

    /// Whether an identity blob's variants are recorded with it ([`Recorded`]), so a stored blob
    /// whose variants were made again is written again to record them.
    fn records_variants(&self) -> bool;

    /// For each planned file, in order: `None` when the store lacks its blob, else what the
    /// store recorded of its variants (empty when nothing it may trust was recorded).
    fn lookup(
        &self,
        files: Vec<Planned>,
    ) -> impl Future<Output = Result<Vec<Option<Recorded>>, String>> + Send;

    /// Stores one blob whose bytes hash to `hash`, recording `recorded` where it may.
    fn put(
        &self,
        hash: ContentHash,
        body: Vec<u8>,
        recorded: Option<Recorded>,
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// Stores one large blob from an open file (read again, never whole in memory where the
    /// sink can help it); bytes that no longer hash to `hash` are refused.
    fn put_large(
        &self,
        hash: ContentHash,
        file: std::fs::File,
        size: u64,
        relative: String,
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// Writes the manifest, once every blob it names is stored: this publishes the deployment.
    fn finalize(&self, manifest: Manifest) -> impl Future<Output = Result<(), String>> + Send;
}

/// Counters of a publish in flight, read by a progress display (relaxed atomics: a display
/// needs no ordering between them).
#[derive(Debug, Default)]
pub struct Progress {
    /// Files in the site (known once collected).
    pub total_files: AtomicU64,
    /// Their bytes.
    pub total_bytes: AtomicU64,
    /// Files hashed so far.
    pub hashed_files: AtomicU64,
    /// Files the store lacked (known after the lookup).
    pub missing_files: AtomicU64,
    /// Files done (stored already, or uploaded).
    pub done_files: AtomicU64,
    /// Bytes uploaded so far (blobs and variants).
    pub uploaded_bytes: AtomicU64,
}

impl Progress {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A counter's value now.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
