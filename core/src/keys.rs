//! Where things live in the bucket. Site content as blobs named by their content hash under
//! `blobs/` (shared by every deployment; version-1 deployments keep theirs under `sites/<id>/`),
//! a publish in progress under `uploads/<id>/`, the manifest at
//! `manifests/<id>.json` (written last: its presence is what publishes a deployment) and the
//! archived log at `logs/<id>.ndjson`, the build caches of builders without a lasting disk
//! under `build-cache/<scope>/`, the edges' access logs under `access-logs/`, all under an optional prefix.

use crate::content::ContentHash;
use crate::id::DeploymentId;
use crate::manifest::{Encoding, FileEntry};

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

    /// Key of the blob holding the bytes with this content hash.
    pub fn blob(&self, hash: &ContentHash) -> String {
        format!("{}blobs/{hash}", self.prefix)
    }

    /// The prefix every blob starts with.
    pub fn blobs_prefix(&self) -> String {
        format!("{}blobs/", self.prefix)
    }

    /// Key of the object holding one representation of a manifest entry: its blob when the
    /// manifest names one, else (version 1) the file or variant under the deployment's prefix.
    pub fn representation(
        &self,
        id: &DeploymentId,
        relative: &str,
        entry: &FileEntry,
        encoding: Option<Encoding>,
    ) -> String {
        match (entry.blob(encoding), encoding) {
            (Some(hash), _) => self.blob(&hash),
            (None, Some(enc)) => self.site_variant(id, relative, enc),
            (None, None) => self.site_file(id, relative),
        }
    }

    /// The prefix of a publish in progress: what an uploader stages there before the manifest
    /// is written ([`ObjectLayout::staged_blob`]).
    pub fn upload_prefix(&self, id: &DeploymentId) -> String {
        format!("{}uploads/{id}/", self.prefix)
    }

    /// Key of one part of a publish's plan (`part`: a lookup's own name): the blobs it is about
    /// to look up and reuse, written before the lookups so a garbage collection that starts
    /// meanwhile keeps them.
    pub fn plan(&self, id: &DeploymentId, part: &str) -> String {
        format!("{}plan-{part}.json", self.upload_prefix(id))
    }

    /// Whether `key` is a plan ([`ObjectLayout::plan`]).
    pub fn is_plan(&self, key: &str) -> bool {
        key.strip_prefix(&self.uploads_prefix())
            .and_then(|rest| rest.split_once('/'))
            .is_some_and(|(_, name)| name.starts_with("plan-") && name.ends_with(".json"))
    }

    /// The prefix of every staging area (and plan).
    pub fn uploads_prefix(&self) -> String {
        format!("{}uploads/", self.prefix)
    }

    /// The prefix of the markers of garbage collections in progress.
    pub fn gc_running_prefix(&self) -> String {
        format!("{}gc/running/", self.prefix)
    }

    /// Key a garbage collection marks itself running at.
    pub fn gc_running(&self, run: &str) -> String {
        format!("{}{run}", self.gc_running_prefix())
    }

    /// Key a scoped uploader stages a blob at, for a trusted finisher to verify and move.
    pub fn staged_blob(&self, id: &DeploymentId, hash: &ContentHash) -> String {
        format!("{}{hash}", self.upload_prefix(id))
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
    fn representations_are_blobs_when_named_else_beside_the_file() {
        let id = DeploymentId::parse("k3f9q2m8x1ab").unwrap();
        let l = ObjectLayout::new("");
        let (file, br) = (
            ContentHash::from_digest([1; 32]),
            ContentHash::from_digest([2; 32]),
        );
        let mut entry = FileEntry {
            size: 1,
            etag: String::new(),
            content_type: "text/html".into(),
            hash: None,
            encodings: Default::default(),
        };
        let variant = |hash| crate::Variant {
            size: 1,
            etag: String::new(),
            hash,
        };
        entry.encodings.insert(Encoding::Br, variant(None));
        entry.encodings.insert(Encoding::Gzip, variant(None));
        let v1 = [
            (None, "sites/k3f9q2m8x1ab/a.html".to_owned()),
            (
                Some(Encoding::Br),
                "sites/k3f9q2m8x1ab/a.html.br".to_owned(),
            ),
        ];
        for (enc, want) in v1 {
            assert_eq!(l.representation(&id, "a.html", &entry, enc), want);
        }
        entry.hash = Some(file);
        entry.encodings.insert(Encoding::Br, variant(Some(br)));
        let v2 = [
            (None, l.blob(&file)),
            (Some(Encoding::Br), l.blob(&br)),
            // A variant without a blob of its own stays beside the file.
            (
                Some(Encoding::Gzip),
                "sites/k3f9q2m8x1ab/a.html.gz".to_owned(),
            ),
        ];
        for (enc, want) in v2 {
            assert_eq!(l.representation(&id, "a.html", &entry, enc), want);
        }
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
        let h = ContentHash::from_digest([0xab; 32]);
        assert_eq!(
            ObjectLayout::new("gd").blob(&h),
            format!("gd/blobs/{}", "ab".repeat(32))
        );
        assert_eq!(
            ObjectLayout::new("gd").staged_blob(&id, &h),
            format!("gd/uploads/k3f9q2m8x1ab/{}", "ab".repeat(32))
        );
        assert_eq!(l.log_archive(&id), "logs/k3f9q2m8x1ab.ndjson");
        let gd = ObjectLayout::new("gd");
        assert_eq!(gd.plan(&id, "p1"), "gd/uploads/k3f9q2m8x1ab/plan-p1.json");
        assert_eq!(gd.gc_running("r1"), "gd/gc/running/r1");
        for (key, plan) in [
            ("gd/uploads/k3f9q2m8x1ab/plan-p1.json", true),
            ("gd/uploads/k3f9q2m8x1ab/manifest.json", false),
            (&gd.staged_blob(&id, &h), false),
            ("gd/uploads/plan-p1.json", false),
            ("uploads/k3f9q2m8x1ab/plan-p1.json", false),
        ] {
            assert_eq!(gd.is_plan(key), plan, "{key}");
        }
    }
}
