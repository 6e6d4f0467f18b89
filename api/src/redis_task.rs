//! The rules of `task_access` spoken to Redis, from both sides.
//!
//! - The edge ([`RedisStore`] as [`TaskAccess`]): `ACL SETUSER` for a task before `RunTask`,
//!   again after Redis lost its users (a restart), and `ACL DELUSER` with the report once the
//!   outcome is settled; it reads reports (`Store::task_report`).
//! - The task ([`TaskSide`]): connects as its own user, takes what was withheld from the ECS
//!   API, heartbeats, sees a cancel in its (read-only) record, and reports its claim and its
//!   ending into `task:<id>` (fields `claimed`, `ended`); [`run_single_job`] is its run.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gitdeploy_core::{BuildJob, DeploymentId, DeploymentStatus};
use redis::aio::ConnectionManager;
use redis::IntoConnectionInfo;
use tokio::sync::watch;

use crate::job::{Claim, Finished, Job, Ledger, Recorded};
use crate::logbus::LogBus;
use crate::metrics::ApiMetrics;
use crate::redis_conn::{io_err, manager, through_outage};
use crate::redis_logbus::{RedisLogBus, RedisLogSettings};
use crate::runner::{run_job, LocalRunnerConfig};
use crate::store::Deployment;
use crate::task_access::{self, TaskAccess, TaskEnding, TaskGrant, TaskReport};
use crate::RedisStore;

/// A new random password (32 bytes, hex) and its SHA-256 (hex), as `ACL SETUSER #` takes it.
fn new_password() -> (String, String) {
    let bytes: [u8; 32] = rand::random();
    let password = hex::encode(bytes);
    let hash = hex::encode(crate::token_sha256(&password));
    (password, hash)
}

impl RedisStore {
    fn task_key(&self, id: &DeploymentId) -> String {
        self.key("task", id.as_str())
    }

    async fn set_user(&self, id: &DeploymentId, hash: &str) -> io::Result<()> {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg(task_access::redis_user(id));
        for rule in task_access::acl_rules(self.prefix(), id, hash) {
            cmd.arg(rule);
        }
        let _: () = cmd
            .query_async(&mut self.conn())
            .await
            .map_err(|e| io::Error::other(format!(
                "cannot create the build's Redis user (ACL SETUSER; a Redis that refuses it needs `scoped_redis_users = false`): {e}"
            )))?;
        Ok(())
    }
}

#[async_trait]
impl TaskAccess for RedisStore {
    async fn put_withheld(&self, id: &DeploymentId, withheld: String) -> io::Result<()> {
        let _: () = redis::cmd("SET")
            .arg(self.key("job-secrets", id.as_str()))
            .arg(withheld)
            .arg("EX")
            .arg(24 * 3600)
            .query_async(&mut self.conn())
            .await
            .map_err(io_err)?;
        Ok(())
    }

    async fn grant(&self, id: &DeploymentId) -> io::Result<TaskGrant> {
        let (password, hash) = new_password();
        // The hash stays with the report, so any edge can renew the user.
        let _: () = redis::cmd("HSET")
            .arg(self.task_key(id))
            .arg("acl")
            .arg(&hash)
            .query_async(&mut self.conn())
            .await
            .map_err(io_err)?;
        let _: () = redis::cmd("EXPIRE")
            .arg(self.task_key(id))
            .arg(24 * 3600)
            .query_async(&mut self.conn())
            .await
            .map_err(io_err)?;
        self.set_user(id, &hash).await?;
        Ok(TaskGrant {
            user: task_access::redis_user(id),
            password,
        })
    }

    async fn renew(&self, id: &DeploymentId) -> io::Result<()> {
        let hash: Option<String> = redis::cmd("HGET")
            .arg(self.task_key(id))
            .arg("acl")
            .query_async(&mut self.conn())
            .await
            .map_err(io_err)?;
        match hash {
            Some(hash) if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
                self.set_user(id, &hash).await
            }
            _ => Ok(()),
        }
    }
}

impl RedisStore {
    /// What the task of `id` reported.
    pub(crate) async fn read_task_report(
        &self,
        id: &DeploymentId,
    ) -> io::Result<Option<TaskReport>> {
        let (claimed, ended): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(self.task_key(id))
            .arg("claimed")
            .arg("ended")
            .query_async(&mut self.conn())
            .await
            .map_err(io_err)?;
        if claimed.is_none() && ended.is_none() {
            return Ok(None);
        }
        let ended = match ended {
            Some(json) => match serde_json::from_str::<TaskEnding>(&json) {
                Ok(e) => Some(e),
                Err(e) => {
                    tracing::warn!(%id, "the build task reported an unreadable ending: {e}");
                    None
                }
            },
            None => None,
        };
        Ok(Some(TaskReport {
            claimed_by: claimed,
            ended,
        }))
    }

    /// Removes the task's user (ending its connections) and its report.
    pub(crate) async fn forget_task_access(&self, id: &DeploymentId) -> io::Result<()> {
        let _: () = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(task_access::redis_user(id))
            .query_async(&mut self.conn())
            .await
            .map_err(io_err)?;
        let _: () = redis::cmd("DEL")
            .arg(self.task_key(id))
            .arg(self.key("job-secrets", id.as_str()))
            .query_async(&mut self.conn())
            .await
            .map_err(io_err)?;
        Ok(())
    }
}

/// A build task's own view of Redis: its user, its keys.
pub struct TaskSide {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    id: DeploymentId,
    /// Told apart from another start of the same task.
    token: String,
}

impl TaskSide {
    /// Connects to `url` as `user` (the build's own user; `None`: the URL's user, on a
    /// platform without per-build users), keys under `prefix`.
    pub async fn connect(
        url: &str,
        user: Option<(&str, &str)>,
        prefix: &str,
        id: DeploymentId,
    ) -> io::Result<Self> {
        let bad = |e: redis::RedisError| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid Redis URL: {e}"),
            )
        };
        let mut info = url.into_connection_info().map_err(bad)?;
        if let Some((name, password)) = user {
            let settings = info
                .redis_settings()
                .clone()
                .set_username(name)
                .set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = crate::redis_conn::client_for(info)?;
        let conn = manager(&client).await?;
        Ok(TaskSide {
            client,
            conn,
            prefix: prefix.to_owned(),
            id,
            token: hex::encode(rand::random::<[u8; 8]>()),
        })
    }

    fn key(&self, kind: &str) -> String {
        format!("{}{kind}:{}", self.prefix, self.id)
    }

    /// The build's log, written as this task's user.
    pub async fn log_bus(
        &self,
        settings: RedisLogSettings,
        metrics: ApiMetrics,
    ) -> io::Result<RedisLogBus> {
        RedisLogBus::from_client(self.client.clone(), settings, metrics).await
    }

    /// What the runner withheld from the ECS API for this build (JSON), removed as it is read.
    pub async fn take_withheld(&self) -> io::Result<Option<String>> {
        redis::cmd("GETDEL")
            .arg(self.key("job-secrets"))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(io_err)
    }

    pub(crate) async fn heartbeat(&self, ttl: Duration) -> io::Result<()> {
        let _: () = redis::cmd("SET")
            .arg(format!(
                "{}runner:{}",
                self.prefix,
                task_access::task_instance(&self.id)
            ))
            .arg(crate::now_ms())
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(io_err)?;
        Ok(())
    }

    async fn record(&self) -> io::Result<Option<Deployment>> {
        let json: Option<String> = redis::cmd("HGET")
            .arg(self.key("d"))
            .arg("j")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(io_err)?;
        json.map(|j| serde_json::from_str(&j).map_err(io::Error::from))
            .transpose()
    }

    pub(crate) async fn cancel_requested(&self) -> io::Result<bool> {
        Ok(self.record().await?.is_some_and(|d| d.cancel_requested))
    }

    /// Ends the heartbeat at once (the reconcilers need not wait for it to expire) and says
    /// whether this task reported its build ready.
    pub(crate) async fn stopped(&self) -> bool {
        let _: Result<(), _> = redis::cmd("DEL")
            .arg(format!(
                "{}runner:{}",
                self.prefix,
                task_access::task_instance(&self.id)
            ))
            .query_async(&mut self.conn.clone())
            .await;
        let ended: Option<String> = redis::cmd("HGET")
            .arg(self.key("task"))
            .arg("ended")
            .query_async(&mut self.conn.clone())
            .await
            .unwrap_or(None);
        ended
            .and_then(|j| serde_json::from_str::<TaskEnding>(&j).ok())
            .is_some_and(|e| e.outcome.status == DeploymentStatus::Ready)
    }
}

#[async_trait]
impl Ledger for TaskSide {
    async fn claim(&self, id: &DeploymentId, claim: Claim, _instance: &str) -> io::Result<bool> {
        debug_assert_eq!(id, &self.id);
        let Some(d) = self.record().await? else {
            return Ok(false);
        };
        let startable = d.status == DeploymentStatus::Queued
            || (claim == Claim::QueuedOrBuilding && d.status == DeploymentStatus::Building);
        if !startable {
            return Ok(false);
        }
        let _: bool = redis::cmd("HSETNX")
            .arg(self.key("task"))
            .arg("claimed")
            .arg(&self.token)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(io_err)?;
        let holder: Option<String> = redis::cmd("HGET")
            .arg(self.key("task"))
            .arg("claimed")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(io_err)?;
        Ok(holder.as_deref() == Some(self.token.as_str()))
    }

    async fn record(&self, _id: &DeploymentId, f: &Finished) -> io::Result<Recorded> {
        let ending = serde_json::to_string(&TaskEnding {
            outcome: f.outcome.clone(),
            commit: f.commit.clone(),
        })?;
        let key = self.key("task");
        let _: bool = through_outage("the build's outcome", || {
            let mut conn = self.conn.clone();
            let (key, ending) = (&key, &ending);
            async move {
                redis::cmd("HSETNX")
                    .arg(key)
                    .arg("ended")
                    .arg(ending)
                    .query_async(&mut conn)
                    .await
            }
        })
        .await
        .map_err(io_err)?;
        Ok(Recorded::Reported)
    }
}

/// Runs one job in this process, as the job inside a build task does: it heartbeats as the
/// task's instance (so every edge's reconciler knows the build is alive), writes the log, and
/// reports the outcome into the task's own report, which an edge applies (the task holds no
/// right to the shared records). Returns whether the build ended ready.
pub async fn run_single_job(
    config: LocalRunnerConfig,
    task: TaskSide,
    bus: Arc<dyn LogBus>,
    metrics: ApiMetrics,
    job: BuildJob,
) -> bool {
    let task = Arc::new(task);
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let beat = task.clone();
    let interval = config.heartbeat;
    let heartbeat = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            if let Err(e) = beat.heartbeat(interval * 3).await {
                tracing::warn!("heartbeat failed: {e}");
            }
            // A cancel asked on any edge reaches the task here.
            if beat.cancel_requested().await.unwrap_or(false) {
                let _ = cancel_tx.send(true);
            }
        }
    });
    let id = job.deployment.clone();
    let instance = task_access::task_instance(&id);
    let record = Job::new(task.as_ref(), &bus, &metrics, id.clone());
    run_job(
        &config,
        record,
        job,
        cancel_rx,
        Claim::QueuedOrBuilding,
        &instance,
    )
    .await;
    heartbeat.abort();
    task.stopped().await
}
