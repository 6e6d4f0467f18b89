//! Projects: a name, the repository it deploys, its production branch, and the alias
//! `<project>.<domain>` → its production deployment. Promote and rollback only move the alias.
//! Embedded store: in memory, one JSON file per project, written atomically.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use gitdeploy_core::job::BuildSettings;
use gitdeploy_core::repo::redact_repo_url;
use gitdeploy_core::DeploymentId;
use serde::{Deserialize, Serialize};

use crate::store::{load_json_dir, write_json};

/// Earlier production deployments remembered per project.
const MAX_HISTORY: usize = 50;

/// One project.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    /// DNS-label name; also its host label.
    pub name: String,
    /// Repository it deploys (may hold credentials: show [`Project::repo_display`]).
    pub repo: String,
    /// Builds of this branch become production; `None` means the default branch (no ref given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub production_branch: Option<String>,
    /// The deployment `<name>.<domain>` serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub production: Option<DeploymentId>,
    /// Earlier production deployments, oldest first (rollback walks back through them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<DeploymentId>,
    /// Build settings every deployment of the project starts from (a deploy request's own
    /// settings win). Secret values are kept here, since later builds need them, and are never
    /// shown by the API.
    #[serde(default)]
    pub build: BuildSettings,
    /// Secret GitHub signs push events with; never shown by the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
    /// Created at (Unix ms).
    pub created_unix_ms: u64,
}

impl Project {
    /// The repository URL with credentials hidden.
    pub fn repo_display(&self) -> String {
        redact_repo_url(&self.repo)
    }

    /// Whether a build of `git_ref` is a production build of this project.
    pub fn is_production_ref(&self, git_ref: Option<&str>) -> bool {
        match (&self.production_branch, git_ref) {
            (None, None) => true,
            (Some(branch), Some(r)) => branch == r,
            (None, Some(_)) | (Some(_), None) => false,
        }
    }
}

/// Resolves a project name to the deployment it serves (the edge's alias lookup).
pub trait AliasResolver: Send + Sync {
    /// The production deployment of `project`, if the project exists and has one.
    fn production(&self, project: &str) -> Option<DeploymentId>;
}

/// Why a project could not be created or used.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    /// A project of that name exists.
    #[error("project {0} already exists")]
    Exists(String),
    /// The project deploys another repository.
    #[error("project {name} deploys {repo}, not this repository")]
    OtherRepo {
        /// Project name.
        name: String,
        /// Its repository (redacted).
        repo: String,
    },
    /// Storage failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The embedded project store.
pub struct ProjectStore {
    dir: PathBuf,
    projects: RwLock<BTreeMap<String, Project>>,
}

impl ProjectStore {
    /// Opens (creating) the store in `dir`.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let projects = load_json_dir::<Project>(dir)?
            .into_iter()
            .map(|p| (p.name.clone(), p))
            .collect();
        Ok(ProjectStore {
            dir: dir.to_owned(),
            projects: RwLock::new(projects),
        })
    }

    /// One project.
    pub fn get(&self, name: &str) -> Option<Project> {
        self.projects
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Every project, by name.
    pub fn list(&self) -> Vec<Project> {
        self.projects
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Creates a project; fails when the name is taken.
    pub fn create(&self, project: Project) -> Result<Project, ProjectError> {
        let mut projects = self.projects.write().unwrap_or_else(|p| p.into_inner());
        if projects.contains_key(&project.name) {
            return Err(ProjectError::Exists(project.name));
        }
        write_json(&self.dir, &project.name, &project)?;
        projects.insert(project.name.clone(), project.clone());
        Ok(project)
    }

    /// The project `name`, created for `repo` when it does not exist yet (first deploy); fails
    /// when it exists for another repository.
    pub fn ensure(
        &self,
        name: &str,
        repo: &str,
        branch: Option<&str>,
        now: u64,
    ) -> Result<Project, ProjectError> {
        let mut projects = self.projects.write().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = projects.get(name) {
            if existing.repo != repo {
                return Err(ProjectError::OtherRepo {
                    name: name.to_owned(),
                    repo: existing.repo_display(),
                });
            }
            return Ok(existing.clone());
        }
        let project = Project {
            name: name.to_owned(),
            repo: repo.to_owned(),
            production_branch: branch.map(str::to_owned),
            production: None,
            history: Vec::new(),
            build: BuildSettings::default(),
            webhook_secret: None,
            created_unix_ms: now,
        };
        write_json(&self.dir, name, &project)?;
        projects.insert(name.to_owned(), project.clone());
        Ok(project)
    }

    /// Points the project's alias at `deployment`, remembering the one it replaces;
    /// `None` when the project does not exist.
    pub fn set_production(
        &self,
        name: &str,
        deployment: &DeploymentId,
    ) -> io::Result<Option<Project>> {
        self.change(name, |p| {
            if p.production.as_ref() == Some(deployment) {
                return;
            }
            if let Some(previous) = p.production.replace(deployment.clone()) {
                p.history.push(previous);
                let excess = p.history.len().saturating_sub(MAX_HISTORY);
                p.history.drain(..excess);
            }
        })
    }

    /// Points the alias back at the most recent earlier production deployment for which
    /// `usable` holds (deployments no longer servable are skipped). Returns the project, or
    /// `None` when it does not exist; production is unchanged when there is nothing to roll back
    /// to.
    pub fn rollback(
        &self,
        name: &str,
        usable: impl Fn(&DeploymentId) -> bool,
    ) -> io::Result<Option<Project>> {
        self.change(name, |p| {
            while let Some(previous) = p.history.pop() {
                if usable(&previous) && p.production.as_ref() != Some(&previous) {
                    p.production = Some(previous);
                    return;
                }
            }
        })
    }

    /// Changes the project's settings with `f` (which may refuse the change); `None` when the
    /// project does not exist.
    pub fn update<E: From<io::Error>>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Project) -> Result<(), E>,
    ) -> Result<Option<Project>, E> {
        let mut projects = self.projects.write().unwrap_or_else(|p| p.into_inner());
        let Some(current) = projects.get(name) else {
            return Ok(None);
        };
        let mut next = current.clone();
        f(&mut next)?;
        write_json(&self.dir, name, &next)?;
        projects.insert(name.to_owned(), next.clone());
        Ok(Some(next))
    }

    fn change(&self, name: &str, f: impl FnOnce(&mut Project)) -> io::Result<Option<Project>> {
        self.update(name, |p| {
            f(p);
            Ok::<_, io::Error>(())
        })
    }
}

impl AliasResolver for ProjectStore {
    fn production(&self, project: &str) -> Option<DeploymentId> {
        self.projects
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(project)
            .and_then(|p| p.production.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projects_persist_and_aliases_move() {
        let dir = tempfile::tempdir().unwrap();
        let store = ProjectStore::open(dir.path()).unwrap();
        let p = store.ensure("site", "https://h/r", None, 1).unwrap();
        assert!(p.is_production_ref(None) && !p.is_production_ref(Some("dev")));
        assert!(matches!(
            store.ensure("site", "https://h/other", None, 2),
            Err(ProjectError::OtherRepo { .. })
        ));
        assert!(matches!(
            store.create(Project {
                production: None,
                ..p.clone()
            }),
            Err(ProjectError::Exists(_))
        ));
        let id = DeploymentId::parse("k3f9q2m8x1ab").unwrap();
        assert_eq!(store.production("site"), None);
        store.set_production("site", &id).unwrap().unwrap();
        assert!(store.set_production("nope", &id).unwrap().is_none());
        let reopened = ProjectStore::open(dir.path()).unwrap();
        assert_eq!(reopened.production("site"), Some(id.clone()));
        // Rollback walks back through earlier productions, skipping unusable ones.
        let (b, c) = (
            DeploymentId::parse("bbbbbbbbbbb2").unwrap(),
            DeploymentId::parse("ccccccccccc3").unwrap(),
        );
        reopened.set_production("site", &b).unwrap();
        reopened.set_production("site", &c).unwrap();
        reopened.rollback("site", |d| d != &b).unwrap();
        assert_eq!(reopened.production("site"), Some(id.clone()));
        let p = reopened.rollback("site", |_| true).unwrap().unwrap();
        assert_eq!(p.production, Some(id), "nothing left to roll back to");
        assert_eq!(reopened.list().len(), 1);
    }

    #[test]
    fn production_ref_table() {
        let p = |branch: Option<&str>| Project {
            name: "x".into(),
            repo: "r".into(),
            production_branch: branch.map(str::to_owned),
            production: None,
            history: Vec::new(),
            build: BuildSettings::default(),
            webhook_secret: None,
            created_unix_ms: 0,
        };
        assert!(p(Some("main")).is_production_ref(Some("main")));
        assert!(!p(Some("main")).is_production_ref(Some("feature")));
        assert!(!p(Some("main")).is_production_ref(None));
        assert!(p(None).is_production_ref(None));
    }
}
