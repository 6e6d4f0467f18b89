//! Where a deployment lives beyond the store and the log bus: the archive of finished logs, a
//! build task's staged upload and the stored site files. Ports (traits) only; the edge's S3
//! origin implements them.

use gitdeploy_core::DeploymentId;

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
}

/// What a [`BuildArchive`] answers with.
pub type ArchiveFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, String>> + Send + 'a>>;
