//! What the alias channel announces (its own module: the stores publish it, the edge's caches
//! and the store contract read it).

use gitdeploy_core::DeploymentId;

/// An announcement on the alias channel. On the wire (Redis pub/sub, which the Lua scripts
/// publish to) it is a project name, `-<id>` for a deleted deployment, `@<domain>` for a custom
/// domain, and nothing else; a
/// possible miss is never sent, only announced locally after a reconnect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AliasChange {
    /// The project's production deployment moved, or the project was removed.
    Production(String),
    /// The deployment was deleted: its manifest must leave every cache.
    Deleted(DeploymentId),
    /// The custom domain was added, changed or removed.
    Domain(String),
    /// Changes may have been missed (after a reconnect, or a lagging receiver): anything may
    /// have changed.
    MaybeMissed,
}

impl AliasChange {
    /// Reads a message of the wire format; `None` for one that is neither form.
    pub fn from_wire(message: &str) -> Option<AliasChange> {
        if let Some(domain) = message.strip_prefix('@') {
            return (!domain.is_empty() && domain.len() <= gitdeploy_core::domain::MAX_LEN)
                .then(|| AliasChange::Domain(domain.to_owned()));
        }
        match message.strip_prefix('-') {
            Some(id) => DeploymentId::parse(id).map(AliasChange::Deleted),
            None if gitdeploy_core::host::is_site_label(message) => {
                Some(AliasChange::Production(message.to_owned()))
            }
            None => None,
        }
    }
}
