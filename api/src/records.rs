//! [`Records`]: every state change of the control plane, built on a [`Store`]: read, change,
//! commit, retry on conflict, so the rules live once whatever the backend. A build's end and
//! the alias moves it causes land in one commit ([`Records::finish`]), and every deployment
//! event is announced after its commit to the observers it was given ([`crate::events`]).

use std::sync::Arc;

use gitdeploy_core::{DeploymentId, DeploymentStatus};

use crate::events::{DeploymentEvent, DeploymentEvents, EventKind};
use crate::projects::{Project, ProjectError};
use crate::store::{contention, Deployment, Store, StoreError, Write, MAX_ATTEMPTS};

/// What recording a build's end changed ([`Records::finish`]).
#[derive(Debug)]
pub struct Finish {
    /// The deployment as stored.
    pub deployment: Deployment,
    /// The project, when its production moved to the deployment.
    pub promoted: Option<Project>,
    /// The preview alias label (`<slug>--<project>`) that moved to it.
    pub preview: Option<String>,
}

/// Every state change of the control plane, built on a [`Store`].
#[derive(Clone)]
pub struct Records {
    store: Arc<dyn Store>,
    events: Vec<Arc<dyn DeploymentEvents>>,
}

impl Records {
    /// The records kept in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Records {
            store,
            events: Vec::new(),
        }
    }

    /// These records, also announcing every deployment event to `events` after its commit
    /// ([`crate::events`]).
    pub fn with_events(mut self, events: Arc<dyn DeploymentEvents>) -> Self {
        self.events.push(events);
        self
    }

    /// Announces `kind` of `deployment` (of a project; nothing for one without).
    pub fn announce(&self, kind: EventKind, deployment: &Deployment, alias: Option<String>) {
        let Some(project) = &deployment.project else {
            return;
        };
        for events in &self.events {
            events.announce(DeploymentEvent {
                kind,
                project: project.clone(),
                deployment: deployment.clone(),
                alias: alias.clone(),
                unix_ms: crate::now_ms(),
            });
        }
    }

    async fn announce_production(&self, kind: EventKind, project: &Project) {
        let Some(id) = &project.production else {
            return;
        };
        match self.get(id).await {
            Ok(Some(d)) => self.announce(kind, &d, None),
            Ok(None) => {}
            Err(e) => tracing::warn!(%id, "cannot read the deployment to announce it: {e}"),
        }
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Adds a new deployment (its id must be new); a queued one is announced.
    pub async fn insert(&self, d: Deployment) -> Result<(), StoreError> {
        let id = d.id.clone();
        let queued = (d.status == DeploymentStatus::Queued).then(|| d.clone());
        if self
            .store
            .commit(vec![Write::Deployment {
                expect: 0,
                value: d,
            }])
            .await?
        {
            if let Some(d) = queued {
                self.announce(EventKind::Queued, &d, None);
            }
            Ok(())
        } else {
            Err(StoreError::Conflict(format!(
                "deployment {id} already exists"
            )))
        }
    }

    /// One deployment.
    pub async fn get(&self, id: &DeploymentId) -> Result<Option<Deployment>, StoreError> {
        Ok(self
            .store
            .deployment(id)
            .await
            .map_err(StoreError::from)?
            .map(|v| v.value))
    }

    /// Up to `limit` deployments, newest first.
    pub async fn list(&self, limit: usize) -> Result<Vec<Deployment>, StoreError> {
        self.store
            .deployments(None, limit)
            .await
            .map_err(StoreError::from)
    }

    /// Up to `limit` deployments of `project`, newest first.
    pub async fn list_project(
        &self,
        project: &str,
        limit: usize,
    ) -> Result<Vec<Deployment>, StoreError> {
        self.store
            .deployments(Some(project), limit)
            .await
            .map_err(StoreError::from)
    }

    /// Changes one deployment with `f` (which may refuse, or be called again after a conflict);
    /// `None` when it does not exist.
    pub async fn update<E: From<StoreError>>(
        &self,
        id: &DeploymentId,
        mut f: impl FnMut(&mut Deployment) -> Result<(), E>,
    ) -> Result<Option<Deployment>, E> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(current) = self.store.deployment(id).await.map_err(StoreError::from)? else {
                return Ok(None);
            };
            let mut next = current.value.clone();
            f(&mut next)?;
            if next == current.value {
                return Ok(Some(next));
            }
            let write = Write::Deployment {
                expect: current.version,
                value: next.clone(),
            };
            if self
                .store
                .commit(vec![write])
                .await
                .map_err(StoreError::from)?
            {
                return Ok(Some(next));
            }
        }
        Err(contention().into())
    }

    /// Records how a build ended — unless it already ended (a canceled or reconciled build
    /// stays as it was). When it is ready, in the same atomic commit: the project's production
    /// moves to it when `promote` says so, and the preview alias it follows
    /// ([`crate::previews`]) moves to it when open. `None` when it does not exist or had
    /// already ended.
    pub async fn finish(
        &self,
        id: &DeploymentId,
        f: impl Fn(&mut Deployment),
        promote: impl Fn(&Deployment, &Project) -> bool,
    ) -> Result<Option<Finish>, StoreError> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(current) = self.store.deployment(id).await.map_err(StoreError::from)? else {
                return Ok(None);
            };
            if current.value.status.is_terminal() {
                return Ok(None);
            }
            let mut next = current.value.clone();
            f(&mut next);
            next.runner = None;
            let mut writes = vec![Write::Deployment {
                expect: current.version,
                value: next.clone(),
            }];
            let mut done = Finish {
                deployment: next.clone(),
                promoted: None,
                preview: None,
            };
            if next.status == DeploymentStatus::Ready {
                if let Some(name) = next.project.as_deref() {
                    if let Some(project) =
                        self.store.project(name).await.map_err(StoreError::from)?
                    {
                        let mut p = project.value.clone();
                        if promote(&next, &p) {
                            p.set_production(&next.id, crate::now_ms());
                            done.promoted = Some(p.clone());
                        }
                        if let Some(source) = &next.trigger.alias {
                            done.preview = p
                                .move_preview(source, &next.id, next.created_unix_ms)
                                .map(|slug| gitdeploy_core::preview::label(&slug, &p.name));
                            if let Some(promoted) = done.promoted.as_mut() {
                                promoted.previews.clone_from(&p.previews);
                            }
                        }
                        if p != project.value {
                            writes.push(Write::Project {
                                expect: project.version,
                                value: p,
                            });
                        }
                    }
                }
            }
            if self.store.commit(writes).await.map_err(StoreError::from)? {
                if let Some(kind) = EventKind::of_end(done.deployment.status) {
                    self.announce(kind, &done.deployment, done.preview.clone());
                }
                if done.promoted.is_some() {
                    self.announce(EventKind::Promoted, &done.deployment, None);
                }
                return Ok(Some(done));
            }
        }
        Err(contention())
    }

    /// Removes a deployment's record.
    pub async fn delete(&self, id: &DeploymentId) -> Result<bool, StoreError> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(current) = self.store.deployment(id).await.map_err(StoreError::from)? else {
                return Ok(false);
            };
            if self
                .store
                .delete_deployment(id, current.version)
                .await
                .map_err(StoreError::from)?
            {
                return Ok(true);
            }
        }
        Err(contention())
    }

    /// Removes a project (its deployments stay, at their own addresses) and its custom
    /// domains; `false` when there is no such project.
    pub async fn delete_project(&self, name: &str) -> Result<bool, StoreError> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(current) = self.store.project(name).await.map_err(StoreError::from)? else {
                return Ok(false);
            };
            if self
                .store
                .delete_project(name, current.version)
                .await
                .map_err(StoreError::from)?
            {
                self.remove_project_domains(name).await?;
                return Ok(true);
            }
        }
        Err(contention())
    }

    /// One project.
    pub async fn project(&self, name: &str) -> Result<Option<Project>, StoreError> {
        Ok(self
            .store
            .project(name)
            .await
            .map_err(StoreError::from)?
            .map(|v| v.value))
    }

    /// Every project, by name.
    pub async fn projects(&self) -> Result<Vec<Project>, StoreError> {
        self.store.projects().await.map_err(StoreError::from)
    }

    /// Creates a project; fails when the name is taken.
    pub async fn create_project(&self, project: Project) -> Result<Project, ProjectError> {
        let write = Write::Project {
            expect: 0,
            value: project.clone(),
        };
        if self
            .store
            .commit(vec![write])
            .await
            .map_err(StoreError::from)?
        {
            Ok(project)
        } else {
            Err(ProjectError::Exists(project.name))
        }
    }

    /// The project `name`, created for `repo` when it does not exist yet (first deploy); fails
    /// when it exists for another repository.
    pub async fn ensure_project(
        &self,
        name: &str,
        repo: &str,
        branch: Option<&str>,
        now: u64,
    ) -> Result<Project, ProjectError> {
        for _ in 0..MAX_ATTEMPTS {
            if let Some(existing) = self.project(name).await? {
                if existing.repo != repo {
                    return Err(ProjectError::OtherRepo {
                        name: name.to_owned(),
                        repo: existing.repo_display(),
                    });
                }
                return Ok(existing);
            }
            match self
                .create_project(Project::new(name, repo, branch, now))
                .await
            {
                Err(ProjectError::Exists(_)) => continue, // created meanwhile: use it
                other => return other,
            }
        }
        Err(contention().into())
    }

    /// Changes a project with `f` (which may refuse, or be called again after a conflict);
    /// `None` when it does not exist.
    pub async fn update_project<E: From<StoreError>>(
        &self,
        name: &str,
        mut f: impl FnMut(&mut Project) -> Result<(), E>,
    ) -> Result<Option<Project>, E> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(current) = self.store.project(name).await.map_err(StoreError::from)? else {
                return Ok(None);
            };
            let mut next = current.value.clone();
            f(&mut next)?;
            if next == current.value {
                return Ok(Some(next));
            }
            let write = Write::Project {
                expect: current.version,
                value: next.clone(),
            };
            if self
                .store
                .commit(vec![write])
                .await
                .map_err(StoreError::from)?
            {
                return Ok(Some(next));
            }
        }
        Err(contention().into())
    }

    /// Points the project's alias at `deployment`; `None` when the project does not exist.
    pub async fn set_production(
        &self,
        name: &str,
        deployment: &DeploymentId,
    ) -> Result<Option<Project>, StoreError> {
        let moved = self
            .update_project(name, |p| {
                p.set_production(deployment, crate::now_ms());
                Ok::<_, StoreError>(())
            })
            .await?;
        if let Some(p) = &moved {
            self.announce_production(EventKind::Promoted, p).await;
        }
        Ok(moved)
    }

    /// Points the alias back at the most recent earlier production deployment that is still
    /// ready (others are dropped from the history). Production is unchanged when there is
    /// nothing to roll back to; `None` when the project does not exist.
    pub async fn rollback(&self, name: &str) -> Result<Option<Project>, StoreError> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(current) = self.store.project(name).await.map_err(StoreError::from)? else {
                return Ok(None);
            };
            let mut next = current.value.clone();
            while let Some(previous) = next.history.pop() {
                let ready = self
                    .get(&previous)
                    .await?
                    .is_some_and(|d| d.status == DeploymentStatus::Ready);
                if ready && next.production.as_ref() != Some(&previous) {
                    if let Some(replaced) = next.production.replace(previous) {
                        next.note_replaced(replaced, crate::now_ms());
                    }
                    break;
                }
            }
            if next.production == current.value.production {
                return Ok(Some(current.value));
            }
            let write = Write::Project {
                expect: current.version,
                value: next.clone(),
            };
            if self
                .store
                .commit(vec![write])
                .await
                .map_err(StoreError::from)?
            {
                self.announce_production(EventKind::RolledBack, &next).await;
                return Ok(Some(next));
            }
        }
        Err(contention())
    }
}
