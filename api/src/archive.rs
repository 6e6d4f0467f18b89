//! Where a deployment lives beyond the store and the log bus: the archive of finished logs, a
//! build task's staged upload and the stored site files. Ports (traits) only; the edge's S3
//! origin implements them.

use gitdeploy_core::{ContentHash, DeploymentId, Manifest};

/// Where a build's results are kept beyond the store: finished build logs are archived
/// (`logs/<id>.ndjson` in the bucket) and read back once the log bus no longer holds them (Redis
/// streams expire), and what a build task staged is checked and published.
pub trait BuildArchive: Send + Sync {
    /// Stores the complete log of `id` as NDJSON.
    fn archive(&self, id: &DeploymentId, ndjson: Vec<u8>) -> ArchiveFuture<'_, ()>;

    /// The archived log of `id`, if there is one.
    fn fetch(&self, id: &DeploymentId) -> ArchiveFuture<'_, Option<Vec<u8>>>;

    /// Publishes the upload a build task with a session of its own staged for `id`
    /// (`uploads/<id>/`): every blob checked, then the manifest. `Ok(false)` when nothing is
    /// staged; an `Err` says what was refused, and nothing is published.
    fn publish_staged(&self, id: &DeploymentId) -> ArchiveFuture<'_, bool>;
}

/// Where deployments' files are stored: what deleting a deployment removes.
pub trait SiteStorage: Send + Sync {
    /// Removes every stored object of `id` (manifest first, so no edge can load it any more);
    /// returns how many.
    fn delete_deployment(&self, id: &DeploymentId) -> ArchiveFuture<'_, u64>;

    /// Whether the storage answers now (readiness): `Err` with why not.
    fn probe(&self) -> ArchiveFuture<'_, ()>;

    /// For each hash, in order: `None` when the blob store lacks it, else what the store
    /// recorded of its variants (`br=<hash>:<size>,gzip=-`, empty when nothing). The lookup is
    /// part of deployment `id`'s publish: its plan is recorded first, so a garbage collection
    /// keeps what it finds. Blobs deployment `base`'s manifest names are found there.
    fn lookup_blobs(
        &self,
        id: &DeploymentId,
        base: Option<DeploymentId>,
        hashes: Vec<ContentHash>,
    ) -> ArchiveFuture<'_, Vec<Option<String>>>;

    /// Stores a blob of deployment `id`'s upload whose bytes the API checked hash to `hash`.
    /// `variants` (`br=<hash>:<size>,…`) are the precompressed variants its uploader made of
    /// it and stored first: each is checked to decompress to these bytes and then recorded
    /// with the blob; one that does not is refused (`Err`) and nothing is stored.
    fn put_blob(
        &self,
        id: &DeploymentId,
        hash: ContentHash,
        body: BlobBody,
        variants: Option<String>,
    ) -> ArchiveFuture<'_, ()>;

    /// Publishes an uploaded deployment's manifest once every blob and variant it names is
    /// checked (as a build task's staged upload is); an `Err` says what was refused, and
    /// nothing is published.
    fn publish_upload(&self, id: &DeploymentId, manifest: Manifest) -> ArchiveFuture<'_, ()>;

    /// Deletes the blobs no manifest (and no publish in progress) names, of those last written
    /// more than `grace` ago.
    fn collect_garbage(&self, grace: std::time::Duration) -> ArchiveFuture<'_, GcSummary>;
}

/// What a garbage collection of blobs found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcSummary {
    /// Manifests read (every deployment stored).
    pub manifests: u64,
    /// Plans of publishes in progress read.
    pub plans: u64,
    /// Blobs stored before.
    pub blobs: u64,
    /// Blobs deleted.
    pub deleted: u64,
    /// Their bytes.
    pub freed_bytes: u64,
    /// Unreferenced blobs kept for now: younger than the grace.
    pub in_grace: u64,
}

/// The bytes of one uploaded blob, already checked against its hash.
pub enum BlobBody {
    /// Held in memory.
    Memory(bytes::Bytes),
    /// Spooled to an unnamed temporary file (a large blob) of this many bytes, read from the
    /// start.
    File(std::fs::File, u64),
}

/// What a [`BuildArchive`] answers with.
pub type ArchiveFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, String>> + Send + 'a>>;
