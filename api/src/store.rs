//! Deployment records. The embedded store keeps every record in memory and one JSON file per
//! deployment on disk (written to a temporary file and renamed, so a crash never leaves half a
//! record), which is what lets `gitdeploy up` restart without losing anything.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use gitdeploy_core::job::{BuildSettings, ServingOptions};
use gitdeploy_core::repo::redact_repo_url;
use gitdeploy_core::{DeploymentId, DeploymentStatus};
use serde::{Deserialize, Serialize};

/// One deployment as the control plane tracks it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// Its id (also its host label).
    pub id: DeploymentId,
    /// Project it belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Repository URL as submitted (may hold credentials: show [`Deployment::repo_display`]).
    pub repo: String,
    /// Requested branch, tag or commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// Serving options recorded in its manifest.
    #[serde(default)]
    pub serving: ServingOptions,
    /// Build settings, secret values removed.
    #[serde(default)]
    pub build: BuildSettings,
    /// Where it is in its life.
    pub status: DeploymentStatus,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Commit that was built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Accepted at (Unix ms).
    pub created_unix_ms: u64,
    /// Build started at (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_unix_ms: Option<u64>,
    /// Build ended at (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_unix_ms: Option<u64>,
}

impl Deployment {
    /// The repository URL with credentials hidden.
    pub fn repo_display(&self) -> String {
        redact_repo_url(&self.repo)
    }
}

/// Every record in a directory of `<name>.json` files (created if missing). Unreadable files are
/// skipped with a warning rather than stopping the server.
pub(crate) fn load_json_dir<T: serde::de::DeserializeOwned>(dir: &Path) -> io::Result<Vec<T>> {
    std::fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<T>(&b).map_err(|e| e.to_string()))
        {
            Ok(record) => out.push(record),
            Err(e) => tracing::warn!(path = %path.display(), "skipping unreadable record: {e}"),
        }
    }
    Ok(out)
}

/// Writes `<dir>/<name>.json` through a temporary file and a rename, so a crash never leaves
/// half a record.
pub(crate) fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.json.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)?;
    std::fs::rename(tmp, dir.join(format!("{name}.json")))
}

/// The embedded deployment store.
pub struct FileStore {
    dir: PathBuf,
    records: RwLock<BTreeMap<DeploymentId, Deployment>>,
}

impl FileStore {
    /// Opens (creating) the store in `dir` and loads every record. Unreadable files are skipped
    /// with a warning rather than stopping the server.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let records = load_json_dir::<Deployment>(dir)?
            .into_iter()
            .map(|d| (d.id.clone(), d))
            .collect();
        Ok(FileStore {
            dir: dir.to_owned(),
            records: RwLock::new(records),
        })
    }

    fn write(&self, d: &Deployment) -> io::Result<()> {
        write_json(&self.dir, d.id.as_str(), d)
    }

    /// Adds a new deployment.
    pub fn insert(&self, d: Deployment) -> io::Result<()> {
        self.write(&d)?;
        self.records
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(d.id.clone(), d);
        Ok(())
    }

    /// One deployment.
    pub fn get(&self, id: &DeploymentId) -> Option<Deployment> {
        self.records
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Up to `limit` deployments, newest first.
    pub fn list(&self, limit: usize) -> Vec<Deployment> {
        let records = self.records.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = records.values().cloned().collect();
        all.sort_by(|a, b| {
            b.created_unix_ms
                .cmp(&a.created_unix_ms)
                .then(b.id.cmp(&a.id))
        });
        all.truncate(limit);
        all
    }

    /// Changes one deployment with `f` and persists it; `None` when it does not exist.
    pub fn update(
        &self,
        id: &DeploymentId,
        f: impl FnOnce(&mut Deployment),
    ) -> io::Result<Option<Deployment>> {
        let mut records = self.records.write().unwrap_or_else(|p| p.into_inner());
        let Some(current) = records.get(id) else {
            return Ok(None);
        };
        let mut next = current.clone();
        f(&mut next);
        self.write(&next)?;
        records.insert(id.clone(), next.clone());
        Ok(Some(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(id: &str, at: u64) -> Deployment {
        Deployment {
            id: DeploymentId::parse(id).unwrap(),
            project: None,
            repo: "https://u:secret@example.com/r".into(),
            git_ref: None,
            serving: ServingOptions::default(),
            build: BuildSettings::default(),
            status: DeploymentStatus::Queued,
            error: None,
            commit: None,
            created_unix_ms: at,
            started_unix_ms: None,
            finished_unix_ms: None,
        }
    }

    #[test]
    fn records_survive_reopen_and_list_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        store.insert(deployment("aaaaaaaaaaa1", 1)).unwrap();
        store.insert(deployment("bbbbbbbbbbb2", 2)).unwrap();
        let updated = store
            .update(&DeploymentId::parse("aaaaaaaaaaa1").unwrap(), |d| {
                d.status = DeploymentStatus::Ready
            })
            .unwrap()
            .unwrap();
        assert_eq!(updated.status, DeploymentStatus::Ready);
        assert!(store
            .update(&DeploymentId::parse("ccccccccccc3").unwrap(), |_| {})
            .unwrap()
            .is_none());
        std::fs::write(dir.path().join("garbage.json"), "{").unwrap();

        let reopened = FileStore::open(dir.path()).unwrap();
        let ids: Vec<_> = reopened
            .list(10)
            .into_iter()
            .map(|d| d.id.to_string())
            .collect();
        assert_eq!(ids, ["bbbbbbbbbbb2", "aaaaaaaaaaa1"]);
        let a = reopened
            .get(&DeploymentId::parse("aaaaaaaaaaa1").unwrap())
            .unwrap();
        assert_eq!(a.status, DeploymentStatus::Ready);
        assert_eq!(a.repo_display(), "https://***@example.com/r");
        assert_eq!(reopened.list(1).len(), 1);
    }
}
