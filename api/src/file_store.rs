//! The embedded [`Store`]: every record in memory, and one JSON file per record in the data
//! directory, written through a temporary file and a rename.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use gitdeploy_core::DeploymentId;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::domain_record::CustomDomain;
use crate::projects::Project;
use crate::store::{AliasChange, Deployment, Store, Versioned, Write};

/// Every record in a directory of `<name>.json` files (created if missing). Unreadable files are
/// skipped with a warning rather than stopping the server.
fn load_json_dir<T: serde::de::DeserializeOwned>(dir: &Path) -> io::Result<Vec<T>> {
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
fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.json.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)?;
    std::fs::rename(tmp, dir.join(format!("{name}.json")))
}

#[derive(Default)]
struct FileState {
    deployments: BTreeMap<DeploymentId, Versioned<Deployment>>,
    projects: BTreeMap<String, Versioned<Project>>,
    domains: BTreeMap<String, Versioned<CustomDomain>>,
    docs: BTreeMap<String, Versioned<serde_json::Value>>,
    /// Runner heartbeats: instance → expiry (Unix ms).
    runners: HashMap<String, u64>,
}

/// The embedded store: every record in memory, and one JSON file per record under
/// `<dir>/deployments/`, `<dir>/projects/` and `<dir>/domains/`. A commit writes its files (deployments first)
/// before it changes memory; versions count from 1 again after a restart.
pub struct FileStore {
    dir: PathBuf,
    state: Mutex<FileState>,
    aliases: broadcast::Sender<AliasChange>,
    generation: std::sync::atomic::AtomicU64,
}

impl FileStore {
    /// Opens (creating) the store in `dir` and loads every record.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let versioned = |value| Versioned { version: 1, value };
        let deployments = load_json_dir::<Deployment>(&dir.join("deployments"))?
            .into_iter()
            .map(|d| (d.id.clone(), versioned(d)))
            .collect();
        let projects = load_json_dir::<Project>(&dir.join("projects"))?
            .into_iter()
            .map(|p| {
                (
                    p.name.clone(),
                    Versioned {
                        version: 1,
                        value: p,
                    },
                )
            })
            .collect();
        let domains = load_json_dir::<CustomDomain>(&dir.join("domains"))?
            .into_iter()
            .map(|d| {
                (
                    d.domain.clone(),
                    Versioned {
                        version: 1,
                        value: d,
                    },
                )
            })
            .collect();
        let docs_dir = dir.join("docs");
        let docs = [crate::store::DOC_TOKENS]
            .into_iter()
            .filter_map(|name| {
                let bytes = std::fs::read(docs_dir.join(format!("{name}.json"))).ok()?;
                match serde_json::from_slice(&bytes) {
                    Ok(value) => Some((name.to_owned(), versioned_doc(value))),
                    Err(e) => {
                        tracing::warn!(name, "skipping unreadable document: {e}");
                        None
                    }
                }
            })
            .collect();
        Ok(FileStore {
            dir: dir.to_owned(),
            state: Mutex::new(FileState {
                deployments,
                projects,
                domains,
                docs,
                runners: HashMap::new(),
            }),
            aliases: broadcast::channel(256).0,
            generation: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FileState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn versioned_doc(value: serde_json::Value) -> Versioned<serde_json::Value> {
    Versioned { version: 1, value }
}

fn newest_first(list: &mut [Deployment]) {
    list.sort_by(|a, b| {
        b.created_unix_ms
            .cmp(&a.created_unix_ms)
            .then(b.id.cmp(&a.id))
    });
}

#[async_trait]
impl Store for FileStore {
    async fn deployment(&self, id: &DeploymentId) -> io::Result<Option<Versioned<Deployment>>> {
        Ok(self.state().deployments.get(id).cloned())
    }

    async fn deployments(
        &self,
        project: Option<&str>,
        limit: usize,
    ) -> io::Result<Vec<Deployment>> {
        let mut all: Vec<Deployment> = self
            .state()
            .deployments
            .values()
            .filter(|d| project.is_none() || d.value.project.as_deref() == project)
            .map(|d| d.value.clone())
            .collect();
        newest_first(&mut all);
        all.truncate(limit);
        Ok(all)
    }

    async fn active(&self) -> io::Result<Vec<Deployment>> {
        Ok(self
            .state()
            .deployments
            .values()
            .filter(|d| !d.value.status.is_terminal())
            .map(|d| d.value.clone())
            .collect())
    }

    async fn project(&self, name: &str) -> io::Result<Option<Versioned<Project>>> {
        Ok(self.state().projects.get(name).cloned())
    }

    async fn projects(&self) -> io::Result<Vec<Project>> {
        Ok(self
            .state()
            .projects
            .values()
            .map(|p| p.value.clone())
            .collect())
    }

    async fn domain(&self, domain: &str) -> io::Result<Option<Versioned<CustomDomain>>> {
        Ok(self.state().domains.get(domain).cloned())
    }

    async fn domains(&self, project: Option<&str>) -> io::Result<Vec<CustomDomain>> {
        Ok(self
            .state()
            .domains
            .values()
            .filter(|d| project.is_none_or(|p| d.value.project == p))
            .map(|d| d.value.clone())
            .collect())
    }

    async fn doc(&self, name: &str) -> io::Result<Option<Versioned<serde_json::Value>>> {
        Ok(self.state().docs.get(name).cloned())
    }

    async fn delete_domain(&self, domain: &str, expect: u64) -> io::Result<bool> {
        let mut state = self.state();
        if state.domains.get(domain).map_or(0, |v| v.version) != expect {
            return Ok(false);
        }
        match std::fs::remove_file(self.dir.join("domains").join(format!("{domain}.json"))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        state.domains.remove(domain);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _ = self.aliases.send(AliasChange::Domain(domain.to_owned()));
        Ok(true)
    }

    async fn commit(&self, writes: Vec<Write>) -> io::Result<bool> {
        let mut state = self.state();
        let current = |w: &Write| match w {
            Write::Deployment { value, .. } => {
                state.deployments.get(&value.id).map_or(0, |v| v.version)
            }
            Write::Project { value, .. } => {
                state.projects.get(&value.name).map_or(0, |v| v.version)
            }
            Write::Domain { value, .. } => {
                state.domains.get(&value.domain).map_or(0, |v| v.version)
            }
            Write::Doc { name, .. } => state.docs.get(*name).map_or(0, |v| v.version),
        };
        for w in &writes {
            if current(w) != w.expect() {
                return Ok(false);
            }
        }
        // Deployments first: a crash between two files leaves a finished build not yet
        // promoted, never an alias to a build that is not ready.
        let mut ordered = writes;
        ordered.sort_by_key(|w| matches!(w, Write::Project { .. }));
        for w in &ordered {
            match w {
                Write::Deployment { value, .. } => {
                    write_json(&self.dir.join("deployments"), value.id.as_str(), value)?
                }
                Write::Project { value, .. } => {
                    write_json(&self.dir.join("projects"), &value.name, value)?
                }
                Write::Domain { value, .. } => {
                    let dir = self.dir.join("domains");
                    std::fs::create_dir_all(&dir)?;
                    write_json(&dir, &value.domain, value)?
                }
                Write::Doc { name, value, .. } => {
                    let dir = self.dir.join("docs");
                    std::fs::create_dir_all(&dir)?;
                    write_json(&dir, name, value)?
                }
            }
        }
        for w in ordered {
            match w {
                Write::Deployment { expect, value } => {
                    state.deployments.insert(
                        value.id.clone(),
                        Versioned {
                            version: expect + 1,
                            value,
                        },
                    );
                }
                Write::Project { expect, value } => {
                    let moved = state
                        .projects
                        .get(&value.name)
                        .is_none_or(|old| old.value.edge_fingerprint() != value.edge_fingerprint());
                    let name = value.name.clone();
                    state.projects.insert(
                        name.clone(),
                        Versioned {
                            version: expect + 1,
                            value,
                        },
                    );
                    if moved {
                        self.generation
                            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let _ = self.aliases.send(AliasChange::Production(name));
                    }
                }
                Write::Domain { expect, value } => {
                    let domain = value.domain.clone();
                    state.domains.insert(
                        domain.clone(),
                        Versioned {
                            version: expect + 1,
                            value,
                        },
                    );
                    self.generation
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = self.aliases.send(AliasChange::Domain(domain));
                }
                Write::Doc {
                    name,
                    expect,
                    value,
                } => {
                    state.docs.insert(
                        name.to_owned(),
                        Versioned {
                            version: expect + 1,
                            value,
                        },
                    );
                }
            }
        }
        Ok(true)
    }

    async fn delete_deployment(&self, id: &DeploymentId, expect: u64) -> io::Result<bool> {
        let mut state = self.state();
        if state.deployments.get(id).map_or(0, |v| v.version) != expect {
            return Ok(false);
        }
        match std::fs::remove_file(self.dir.join("deployments").join(format!("{id}.json"))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        state.deployments.remove(id);
        let _ = self.aliases.send(AliasChange::Deleted(id.clone()));
        Ok(true)
    }

    async fn delete_project(&self, name: &str, expect: u64) -> io::Result<bool> {
        let mut state = self.state();
        if state.projects.get(name).map_or(0, |v| v.version) != expect {
            return Ok(false);
        }
        match std::fs::remove_file(self.dir.join("projects").join(format!("{name}.json"))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        state.projects.remove(name);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _ = self.aliases.send(AliasChange::Production(name.to_owned()));
        Ok(true)
    }

    async fn heartbeat(&self, instance: &str, ttl_ms: u64) -> io::Result<()> {
        self.state()
            .runners
            .insert(instance.to_owned(), crate::now_ms() + ttl_ms);
        Ok(())
    }

    async fn runner_alive(&self, instance: &str) -> io::Result<bool> {
        Ok(self
            .state()
            .runners
            .get(instance)
            .is_some_and(|expiry| *expiry > crate::now_ms()))
    }

    fn alias_changes(&self) -> broadcast::Receiver<AliasChange> {
        self.aliases.subscribe()
    }

    fn alias_generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }
}
