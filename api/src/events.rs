//! Deployment events: what the outside world is told about (notification webhooks, GitHub
//! commit statuses and pull request comments).
//!
//! [`Records`] announces each event right after the commit that made it, in whichever process
//! made it (the API's edge, the edge whose runner finished the build, the one that settled an
//! ECS task or reconciled a lost build), to the [`DeploymentEvents`] it was given. Announcing
//! never waits: the notifier queues and delivers on its own time.

use serde::{Deserialize, Serialize};

use crate::store::Deployment;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A build was queued.
    Queued,
    /// A build is ready (served at its addresses).
    Ready,
    /// A build failed.
    Failed,
    /// A build was canceled.
    Canceled,
    /// A deployment became the project's production (by hand or by its branch).
    Promoted,
    /// The project's production went back to an earlier deployment.
    RolledBack,
}

impl EventKind {
    /// Every kind, in order.
    pub const ALL: [EventKind; 6] = [
        EventKind::Queued,
        EventKind::Ready,
        EventKind::Failed,
        EventKind::Canceled,
        EventKind::Promoted,
        EventKind::RolledBack,
    ];

    /// Its name as the API and payloads write it (`ready`).
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Queued => "queued",
            EventKind::Ready => "ready",
            EventKind::Failed => "failed",
            EventKind::Canceled => "canceled",
            EventKind::Promoted => "promoted",
            EventKind::RolledBack => "rolled_back",
        }
    }

    /// Reads a name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The event a build ending in `status` is; `None` for one that is not an end we tell of
    /// (`skipped`).
    pub fn of_end(status: gitdeploy_core::DeploymentStatus) -> Option<Self> {
        use gitdeploy_core::DeploymentStatus::*;
        match status {
            Ready => Some(EventKind::Ready),
            Failed => Some(EventKind::Failed),
            Canceled => Some(EventKind::Canceled),
            _ => None,
        }
    }
}

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
