//! Stable preview aliases: a project's `<branch>--<project>` and `pr-<n>--<project>` hosts, each
//! following the latest ready build of its branch or pull request
//! ([`gitdeploy_core::preview`] makes the labels).
//!
//! An alias is *opened* when a build that will move it is queued (a push, a pull request
//! opened or updated, a deploy of a named ref), *moved* in the same commit that records such a
//! build ready (never back to an older build that finished late), and *retired* when its pull
//! request closes or its branch is deleted; a build of a retired alias finishing later moves
//! nothing, since only open aliases move.

use std::collections::HashMap;

use gitdeploy_core::DeploymentId;

use crate::projects::Project;
pub use crate::trigger::{PreviewAlias, PreviewSource, Trigger};

/// Preview aliases a project may hold at once.
pub const MAX_PREVIEWS: usize = 1_000;

impl Project {
    /// Opens the alias of `source` (if the project's name leaves room for it and it is not open
    /// yet); its slug, when it is open now.
    pub fn open_preview(&mut self, source: &PreviewSource, now: u64) -> Option<String> {
        let slug = source.slug(&self.name)?;
        match self.previews.get(&slug) {
            Some(alias) if alias.source == *source => return Some(slug),
            // Another name with the same slug (a 32-bit hash collision): the first keeps it.
            Some(_) => return None,
            None => {}
        }
        if self.previews.len() >= MAX_PREVIEWS {
            return None;
        }
        self.previews.insert(
            slug.clone(),
            PreviewAlias {
                source: source.clone(),
                deployment: None,
                deployment_created_unix_ms: 0,
                opened_unix_ms: now,
                comment_id: None,
            },
        );
        Some(slug)
    }

    /// Retires the alias of `source`; `true` when it was open.
    pub fn retire_preview(&mut self, source: &PreviewSource) -> bool {
        let Some(slug) = source.slug(&self.name) else {
            return false;
        };
        match self.previews.get(&slug) {
            Some(alias) if alias.source == *source => self.previews.remove(&slug).is_some(),
            _ => false,
        }
    }

    /// Moves the open alias of `source` to `deployment` (queued at `created`), unless it
    /// already follows a build queued later; the slug when it moved.
    pub fn move_preview(
        &mut self,
        source: &PreviewSource,
        deployment: &DeploymentId,
        created: u64,
    ) -> Option<String> {
        let slug = source.slug(&self.name)?;
        let alias = self.previews.get_mut(&slug)?;
        if alias.source != *source
            || alias.deployment.as_ref() == Some(deployment)
            || (alias.deployment.is_some() && alias.deployment_created_unix_ms > created)
        {
            return None;
        }
        alias.deployment = Some(deployment.clone());
        alias.deployment_created_unix_ms = created;
        Some(slug)
    }

    /// The alias of `source`, if open.
    pub fn preview(&self, source: &PreviewSource) -> Option<(&str, &PreviewAlias)> {
        let slug = source.slug(&self.name)?;
        self.previews
            .get_key_value(&slug)
            .filter(|(_, a)| a.source == *source)
            .map(|(k, a)| (k.as_str(), a))
    }

    /// Open aliases that serve a build: slug → deployment.
    pub fn served_previews(&self) -> HashMap<String, DeploymentId> {
        self.previews
            .iter()
            .filter_map(|(slug, a)| Some((slug.clone(), a.deployment.clone()?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> DeploymentId {
        DeploymentId::parse(s).unwrap()
    }

    #[test]
    fn an_alias_opens_moves_forward_only_and_retires() {
        let mut p = Project::new("site", "r", None, 0);
        let branch = PreviewSource::Branch("feature/x".into());
        let (a, b) = (id("aaaaaaaaaaa1"), id("bbbbbbbbbbb2"));
        assert_eq!(
            p.move_preview(&branch, &a, 10),
            None,
            "not open: nothing moves"
        );
        let slug = p.open_preview(&branch, 1).unwrap();
        assert!(slug.starts_with("feature-x-"));
        assert_eq!(
            p.open_preview(&branch, 2),
            Some(slug.clone()),
            "opening twice is one"
        );
        assert!(p.served_previews().is_empty(), "open, but no build yet");
        assert_eq!(p.move_preview(&branch, &b, 20), Some(slug.clone()));
        assert_eq!(
            p.move_preview(&branch, &a, 10),
            None,
            "an older build never wins"
        );
        assert_eq!(p.served_previews()[&slug], b);
        assert_eq!(p.move_preview(&branch, &a, 30), Some(slug.clone()));
        assert!(p.retire_preview(&branch));
        assert!(!p.retire_preview(&branch));
        assert_eq!(
            p.move_preview(&branch, &b, 40),
            None,
            "retired: a late build moves nothing"
        );
        let pr = PreviewSource::PullRequest(7);
        assert_eq!(p.open_preview(&pr, 1).as_deref(), Some("pr-7"));
        assert!(p.preview(&pr).is_some() && p.preview(&branch).is_none());
    }

    #[test]
    fn a_project_name_without_room_has_no_branch_aliases() {
        let mut p = Project::new(&"p".repeat(60), "r", None, 0);
        assert_eq!(
            p.open_preview(&PreviewSource::Branch("main".into()), 0),
            None
        );
        assert!(p.previews.is_empty());
    }

    #[test]
    fn triggers_of_refs() {
        assert_eq!(
            Trigger::of_ref(Some("feature")).alias,
            Some(PreviewSource::Branch("feature".into()))
        );
        assert_eq!(Trigger::of_ref(Some(&"a".repeat(40))).alias, None);
        assert_eq!(Trigger::of_ref(None), Trigger::default());
        assert!(Trigger::default().is_empty());
    }
}
