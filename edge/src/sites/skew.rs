//! Skew protection: a page loaded before a promotion asks for the hashed chunks of the build
//! it came from, which the new production deployment may not have. For a request to a
//! project's host that the current deployment cannot answer (a 404), a hashed asset (one
//! [`is_hashed_asset`] marks immutable) is looked for in the project's recently replaced
//! production deployments, newest first, while their window lasts. Only exact files are
//! served this way (no redirects, no fallbacks), and only on that 404 path, so a request the
//! current deployment answers costs nothing more.

use std::sync::Arc;

use gitdeploy_core::DeploymentId;

use crate::cache::ManifestCache;
use crate::prepared::{PreparedFile, PreparedManifest};
use crate::serving::cache_control::is_hashed_asset;

/// The earlier deployments to look in for `relative`, in order: none unless it is a hashed
/// asset; those whose window is still open at `now` (Unix ms).
pub(super) fn candidates<'a>(
    relative: &str,
    earlier: &'a [(DeploymentId, u64)],
    now: u64,
) -> impl Iterator<Item = &'a DeploymentId> + 'a {
    let hashed = is_hashed_asset(relative);
    earlier
        .iter()
        .filter(move |(_, until)| hashed && *until > now)
        .map(|(id, _)| id)
}

/// The first earlier deployment holding file `relative`, with its manifest and entry. A
/// manifest that cannot be loaded is skipped: this only ever improves on a 404.
pub(super) async fn earlier_file(
    manifests: &ManifestCache,
    earlier: &[(DeploymentId, u64)],
    relative: &str,
) -> Option<(DeploymentId, Arc<PreparedManifest>, Arc<PreparedFile>)> {
    for id in candidates(relative, earlier, gitdeploy_api::now_unix_ms()) {
        if let Ok(manifest) = manifests.get(id).await {
            if let Some(file) = manifest.file(relative).cloned() {
                return Some((id.clone(), manifest, file));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hashed_assets_of_open_windows_are_looked_for() {
        let a = DeploymentId::parse("aaaaaaaaaaa1").unwrap();
        let b = DeploymentId::parse("bbbbbbbbbbb2").unwrap();
        let earlier = vec![(a.clone(), 1_000), (b.clone(), 5_000)];
        let found =
            |rel: &str, now: u64| candidates(rel, &earlier, now).cloned().collect::<Vec<_>>();
        assert_eq!(
            found("assets/index-BkWq3x9Z.js", 500),
            vec![a.clone(), b.clone()]
        );
        assert_eq!(
            found("assets/index-BkWq3x9Z.js", 1_000),
            vec![b.clone()],
            "a's window closed"
        );
        assert_eq!(
            found("assets/index-BkWq3x9Z.js", 5_000),
            Vec::<DeploymentId>::new()
        );
        for not_hashed in ["index.html", "about", "app.js", "page.3f2a1b9c.html"] {
            assert_eq!(
                found(not_hashed, 0),
                Vec::<DeploymentId>::new(),
                "{not_hashed}"
            );
        }
    }
}
