//! Where a deployment is in its life: the one type the job, the log's outcome and the store
//! share (its own module, so `job` and `log` need not import each other).

use serde::{Deserialize, Serialize};

/// Where a deployment is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentStatus {
    /// Accepted, waiting for a builder.
    Queued,
    /// A folder published through the deploy API: its files are being uploaded, and it is
    /// ready once the upload is finalized.
    Uploading,
    /// A builder is working on it.
    Building,
    /// Built and published; served by the edge.
    Ready,
    /// The build failed; nothing is served.
    Failed,
    /// Canceled before it finished; nothing is served.
    Canceled,
    /// Not built: nothing it depends on changed since the last ready build (monorepos).
    Skipped,
}

impl DeploymentStatus {
    /// True once the deployment can no longer change.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            DeploymentStatus::Ready
                | DeploymentStatus::Failed
                | DeploymentStatus::Canceled
                | DeploymentStatus::Skipped
        )
    }
}
