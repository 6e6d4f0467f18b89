//! Deployment events: what the outside world is told about (notification webhooks, GitHub
//! commit statuses and pull request comments).
//!
//! [`Records`] announces each event right after the commit that made it, in whichever process
//! made it (the API's edge, the edge whose runner finished the build, the one that settled an
//! ECS task or reconciled a lost build), to the [`DeploymentEvents`] it was given. Announcing
//! never waits: the notifier queues and delivers on its own time.

use crate::store::Deployment;
pub use crate::targets::EventKind;

/// One event of a project's deployment.
#[derive(Clone, Debug)]
pub struct DeploymentEvent {
    /// What happened.
    pub kind: EventKind,
    /// The project.
    pub project: String,
    /// The deployment, as stored after the change.
    pub deployment: Deployment,
    /// The preview alias label that now serves it, if one moved to it.
    pub alias: Option<String>,
    /// When (Unix ms).
    pub unix_ms: u64,
}

/// Who is told of events (the notifier); telling must not wait.
pub trait DeploymentEvents: Send + Sync {
    /// Takes an event; returns at once.
    fn announce(&self, event: DeploymentEvent);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.name()), Some(k));
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
        }
        assert_eq!(EventKind::parse("deleted"), None);
        assert_eq!(
            EventKind::of_end(gitdeploy_core::DeploymentStatus::Skipped),
            None
        );
    }
}
