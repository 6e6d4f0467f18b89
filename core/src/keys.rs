//! Where things live in the bucket. Files under `sites/<id>/`, the manifest at
//! `manifests/<id>.json` (written last: its presence is what publishes a deployment) and the
//! archived log at `logs/<id>.ndjson`, the build caches of builders without a lasting disk
//! under `build-cache/<scope>/`, the edges' access logs under `access-logs/`, all under an optional prefix.

use crate::id::DeploymentId;

/// The bucket layout, with an optional key prefix shared by every object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectLayout {
    prefix: String,
}

impl ObjectLayout {
    /// A layout under `prefix` (`""` for the bucket root; slashes at either end are trimmed).
    pub fn new(prefix: &str) -> Self {
        let p = prefix.trim_matches('/');
        ObjectLayout {
            prefix: if p.is_empty() {
                String::new()
            } else {
                format!("{p}/")
            },
        }
    }

    /// Key of one site file; `relative` is a manifest path such as `docs/index.html`.
    pub fn site_file(&self, id: &DeploymentId, relative: &str) -> String {
        format!("{}sites/{id}/{relative}", self.prefix)
    }

    /// Key of a precompressed variant of a site file, stored beside it.
    pub fn site_variant(
        &self,
        id: &DeploymentId,
        relative: &str,
        encoding: crate::Encoding,
    ) -> String {
        format!("{}{}", self.site_file(id, relative), encoding.suffix())
    }

    /// The prefix every site file of a deployment starts with.
    pub fn site_prefix(&self, id: &DeploymentId) -> String {
        format!("{}sites/{id}/", self.prefix)
    }

    /// The prefix every manifest starts with.
    pub fn manifests_prefix(&self) -> String {
        format!("{}manifests/", self.prefix)
    }

    /// Key of a deployment's manifest.
    pub fn manifest(&self, id: &DeploymentId) -> String {
        format!("{}manifests/{id}.json", self.prefix)
    }

    /// Key of a deployment's archived build log.
    pub fn log_archive(&self, id: &DeploymentId) -> String {
        format!("{}logs/{id}.ndjson", self.prefix)
    }

    /// The prefix of the edges' access logs (`access-logs/YYYY/MM/DD/HH/…`).
    pub fn access_logs_prefix(&self) -> String {
        format!("{}access-logs/", self.prefix)
    }

    /// The prefix of the build caches builds of one cache scope share ([`cache_scope`]).
    pub fn build_cache_prefix(&self, scope: &str) -> String {
        format!("{}build-cache/{scope}/", self.prefix)
    }
}

/// The name a job's cache key is kept under, on disk and in the bucket: letters, digits, `-`
/// and `_` (anything else becomes `_`), at most 64 characters; `shared` without a key.
pub fn cache_scope(key: Option<&str>) -> String {
    let safe: String = key
        .unwrap_or("shared")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if safe.is_empty() {
        "shared".into()
    } else {
        safe
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_scopes_are_safe_names() {
        assert_eq!(cache_scope(None), "shared");
        assert_eq!(cache_scope(Some("project-my-site")), "project-my-site");
        assert_eq!(cache_scope(Some("../../etc")), "______etc");
        assert_eq!(cache_scope(Some("")), "shared");
        assert_eq!(cache_scope(Some(&"a".repeat(100))).len(), 64);
        assert_eq!(
            ObjectLayout::new("gd").build_cache_prefix("project-x"),
            "gd/build-cache/project-x/"
        );
    }

    #[test]
    fn layout_table() {
        let id = DeploymentId::parse("k3f9q2m8x1ab").unwrap();
        for (prefix, want) in [
            ("", "sites/k3f9q2m8x1ab/a/b.html"),
            ("gd", "gd/sites/k3f9q2m8x1ab/a/b.html"),
            ("/gd/x/", "gd/x/sites/k3f9q2m8x1ab/a/b.html"),
        ] {
            assert_eq!(ObjectLayout::new(prefix).site_file(&id, "a/b.html"), want);
        }
        let l = ObjectLayout::new("");
        assert_eq!(l.manifest(&id), "manifests/k3f9q2m8x1ab.json");
        assert_eq!(l.log_archive(&id), "logs/k3f9q2m8x1ab.ndjson");
    }
}
