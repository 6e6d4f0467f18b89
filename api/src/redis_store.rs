//! State and logs in Redis, shared by every edge of a platform.
//!
//! Keys (all under a configurable prefix, `gitdeploy:` by default):
//!
//! ```text
//! d:<id>                    hash {v: version, j: deployment JSON}
//! p:<name>                  hash {v: version, j: project JSON, a: digest of what edges serve}
//! deployments               sorted set of ids by creation time
//! project-deployments:<p>   the same, per project
//! projects                  set of project names
//! active                    set of ids still queued or building
//! runner:<instance>         a runner's heartbeat (expires); `task-<id>` for an ECS task
//! job-secrets:<id>          what the ECS runner withheld from the ECS API, taken once
//! task:<id>                 hash {acl, claimed, ended}: an ECS task's report (task_access)
//! log:<id>, log-open:<id>   the logs (see `redis_logbus`)
//! x:<name>                  hash {v: version, j: document JSON}: the API's tokens
//! journal:<stream>          list of JSON entries, newest first (audit, deliveries:<p>)
//! seen:<key>                a webhook delivery already taken (expires)
//! aliases                   pub/sub channel: names of projects whose production or previews
//!                           moved (see `AliasChange`)
//! ```
//!
//! Commits run as one Lua script: every version is checked before anything is written, so a
//! status change and the alias move it causes land together or not at all.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use gitdeploy_core::DeploymentId;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use tokio::sync::broadcast;

use crate::domain_record::CustomDomain;
use crate::projects::Project;
use crate::redis_conn::{client, io_err, manager, through_outage};
use crate::store::{AliasChange, Deployment, Store, Versioned, Write};

const COMMIT: &str = r#"
local prefix = ARGV[1]
for i = 1, #KEYS do
  local b = 1 + (i - 1) * 7
  local v = redis.call('HGET', KEYS[i], 'v')
  local expect = ARGV[b + 2]
  if expect == '0' then
    if v then return 0 end
  elseif v ~= expect then
    return 0
  end
end
local moved = 1
for i = 1, #KEYS do
  local b = 1 + (i - 1) * 7
  local kind, expect, json, name = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  local score, extra, flag = ARGV[b + 5], ARGV[b + 6], ARGV[b + 7]
  redis.call('HSET', KEYS[i], 'v', tostring(tonumber(expect) + 1), 'j', json)
  if kind == 'd' then
    redis.call('ZADD', prefix .. 'deployments', score, name)
    if extra ~= '' then
      redis.call('ZADD', prefix .. 'project-deployments:' .. extra, score, name)
    end
    if flag == '1' then
      redis.call('SADD', prefix .. 'active', name)
    else
      redis.call('SREM', prefix .. 'active', name)
    end
  elseif kind == 'x' then
    -- a document of the control plane's own: nothing to index or announce
  elseif kind == 'm' then
    redis.call('SADD', prefix .. 'domains', name)
    redis.call('PUBLISH', prefix .. 'aliases', '@' .. name)
    moved = 2
  else
    redis.call('SADD', prefix .. 'projects', name)
    local before = redis.call('HGET', KEYS[i], 'a') or ''
    redis.call('HSET', KEYS[i], 'a', extra)
    if before ~= extra or expect == '0' then
      redis.call('PUBLISH', prefix .. 'aliases', name)
      moved = 2
    end
  end
end
return moved
"#;

const DELETE: &str = r#"
local prefix, expect, id, project = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('HGET', KEYS[1], 'v') ~= expect then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', prefix .. 'deployments', id)
if project ~= '' then redis.call('ZREM', prefix .. 'project-deployments:' .. project, id) end
redis.call('SREM', prefix .. 'active', id)
redis.call('PUBLISH', prefix .. 'aliases', '-' .. id)
return 1
"#;

const DELETE_DOMAIN: &str = r#"
local prefix, expect, name = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HGET', KEYS[1], 'v') ~= expect then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', prefix .. 'domains', name)
redis.call('PUBLISH', prefix .. 'aliases', '@' .. name)
return 1
"#;

const DELETE_PROJECT: &str = r#"
local prefix, expect, name = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HGET', KEYS[1], 'v') ~= expect then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', prefix .. 'projects', name)
redis.call('PUBLISH', prefix .. 'aliases', name)
return 1
"#;

/// The production [`Store`].
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    aliases: broadcast::Sender<AliasChange>,
    generation: Arc<std::sync::atomic::AtomicU64>,
    commit: Script,
    delete: Script,
    delete_project: Script,
    delete_domain: Script,
}

impl RedisStore {
    /// Connects to `url` (`redis://[:password@]host:port[/db]`) and starts listening for alias
    /// changes. Keys are put under `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> io::Result<Self> {
        let client = client(url)?;
        let conn = manager(&client).await?;
        let (aliases, _) = broadcast::channel(256);
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        tokio::spawn(listen_for_aliases(
            client,
            format!("{prefix}aliases"),
            aliases.downgrade(),
            generation.clone(),
        ));
        Ok(RedisStore {
            conn,
            prefix: prefix.to_owned(),
            aliases,
            generation,
            commit: Script::new(COMMIT),
            delete: Script::new(DELETE),
            delete_project: Script::new(DELETE_PROJECT),
            delete_domain: Script::new(DELETE_DOMAIN),
        })
    }

    /// Runs `script` (a delete that announces on the alias channel) on record `<kind>:<name>`
    /// still at version `expect`; this process's alias generation grows when it deleted.
    async fn delete_announced(
        &self,
        script: &Script,
        kind: &str,
        name: &str,
        expect: u64,
    ) -> io::Result<bool> {
        let deleted: i64 = script
            .key(self.key(kind, name))
            .arg(&self.prefix)
            .arg(expect)
            .arg(name)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(io_err)?;
        if deleted == 1 {
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(deleted == 1)
    }

    /// Custom domains' certificates and ACME state in the same Redis, under the same prefix.
    pub fn cert_store(&self) -> crate::cert_store::RedisCertStore {
        crate::cert_store::RedisCertStore::new(self.conn.clone(), &self.prefix)
    }

    /// The audit log, delivery histories and seen webhooks on the same connection and prefix.
    pub fn journal(&self) -> crate::journal::RedisJournal {
        crate::journal::RedisJournal::new(self.conn.clone(), &self.prefix)
    }

    /// The per-project traffic counts on the same connection and prefix.
    pub fn traffic_store(&self) -> crate::traffic::RedisTraffic {
        crate::traffic::RedisTraffic::new(self.conn.clone(), &self.prefix)
    }

    pub(crate) fn key(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}:{name}", self.prefix)
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    async fn load<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> io::Result<Option<Versioned<T>>> {
        let (v, j): (Option<u64>, Option<String>) = redis::cmd("HMGET")
            .arg(key)
            .arg("v")
            .arg("j")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(io_err)?;
        match (v, j) {
            (Some(version), Some(json)) => Ok(Some(Versioned {
                version,
                value: serde_json::from_str(&json)?,
            })),
            _ => Ok(None),
        }
    }

    /// The JSON of several records in one round trip; records that vanished are skipped.
    async fn load_many<T: serde::de::DeserializeOwned>(
        &self,
        keys: &[String],
    ) -> io::Result<Vec<T>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.hget(key, "j");
        }
        let found: Vec<Option<String>> = pipe
            .query_async(&mut self.conn.clone())
            .await
            .map_err(io_err)?;
        found
            .into_iter()
            .flatten()
            .map(|json| serde_json::from_str(&json).map_err(io::Error::from))
            .collect()
    }
}

/// Forwards alias changes published by any edge; after every (re)connection it sends `"*"`,
/// since changes may have been missed while disconnected. Ends with the store.
async fn listen_for_aliases(
    client: redis::Client,
    channel: String,
    tx: broadcast::WeakSender<AliasChange>,
    generation: Arc<std::sync::atomic::AtomicU64>,
) {
    let bump = || generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let mut backoff = Duration::from_millis(100);
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    let Some(sender) = tx.upgrade() else { return };
                    bump();
                    let _ = sender.send(AliasChange::MaybeMissed);
                    drop(sender);
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = messages.next().await {
                        let Some(sender) = tx.upgrade() else { return };
                        match msg
                            .get_payload::<String>()
                            .ok()
                            .as_deref()
                            .and_then(AliasChange::from_wire)
                        {
                            Some(change) => {
                                bump();
                                let _ = sender.send(change);
                            }
                            None => {
                                tracing::warn!("an alias announcement of unknown form was ignored")
                            }
                        }
                    }
                    tracing::warn!("lost the Redis alias subscription; reconnecting");
                }
                Err(e) => tracing::warn!("cannot subscribe to alias changes: {e}"),
            },
            Err(e) => tracing::warn!("cannot connect to Redis for alias changes: {e}"),
        }
        if tx.upgrade().is_none() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn deployment(&self, id: &DeploymentId) -> io::Result<Option<Versioned<Deployment>>> {
        self.load(&self.key("d", id.as_str())).await
    }

    async fn deployments(
        &self,
        project: Option<&str>,
        limit: usize,
    ) -> io::Result<Vec<Deployment>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let index = match project {
            Some(p) => format!("{}project-deployments:{p}", self.prefix),
            None => format!("{}deployments", self.prefix),
        };
        let stop = isize::try_from(limit).map_or(-1, |l| l - 1);
        let ids: Vec<String> = self
            .conn
            .clone()
            .zrevrange(&index, 0, stop)
            .await
            .map_err(io_err)?;
        let keys: Vec<String> = ids.iter().map(|id| self.key("d", id)).collect();
        self.load_many(&keys).await
    }

    async fn active(&self) -> io::Result<Vec<Deployment>> {
        let ids: Vec<String> = self
            .conn
            .clone()
            .smembers(format!("{}active", self.prefix))
            .await
            .map_err(io_err)?;
        let keys: Vec<String> = ids.iter().map(|id| self.key("d", id)).collect();
        self.load_many(&keys).await
    }

    async fn project(&self, name: &str) -> io::Result<Option<Versioned<Project>>> {
        self.load(&self.key("p", name)).await
    }

    async fn projects(&self) -> io::Result<Vec<Project>> {
        let mut names: Vec<String> = self
            .conn
            .clone()
            .smembers(format!("{}projects", self.prefix))
            .await
            .map_err(io_err)?;
        names.sort();
        let keys: Vec<String> = names.iter().map(|n| self.key("p", n)).collect();
        self.load_many(&keys).await
    }

    async fn domain(&self, domain: &str) -> io::Result<Option<Versioned<CustomDomain>>> {
        self.load(&self.key("dm", domain)).await
    }

    async fn domains(&self, project: Option<&str>) -> io::Result<Vec<CustomDomain>> {
        let mut names: Vec<String> = self
            .conn
            .clone()
            .smembers(format!("{}domains", self.prefix))
            .await
            .map_err(io_err)?;
        names.sort();
        let keys: Vec<String> = names.iter().map(|n| self.key("dm", n)).collect();
        let all: Vec<CustomDomain> = self.load_many(&keys).await?;
        Ok(all
            .into_iter()
            .filter(|d| project.is_none_or(|p| d.project == p))
            .collect())
    }

    async fn doc(&self, name: &str) -> io::Result<Option<Versioned<serde_json::Value>>> {
        self.load(&self.key("x", name)).await
    }

    async fn delete_domain(&self, domain: &str, expect: u64) -> io::Result<bool> {
        self.delete_announced(&self.delete_domain, "dm", domain, expect)
            .await
    }

    async fn commit(&self, writes: Vec<Write>) -> io::Result<bool> {
        let mut invocation = self.commit.prepare_invoke();
        invocation.arg(&self.prefix);
        for w in &writes {
            match w {
                Write::Deployment { expect, value } => {
                    invocation
                        .key(self.key("d", value.id.as_str()))
                        .arg("d")
                        .arg(expect)
                        .arg(serde_json::to_string(value)?)
                        .arg(value.id.as_str())
                        .arg(value.created_unix_ms)
                        .arg(value.project.as_deref().unwrap_or(""))
                        .arg(if value.status.is_terminal() { "0" } else { "1" });
                }
                Write::Project { expect, value } => {
                    invocation
                        .key(self.key("p", &value.name))
                        .arg("p")
                        .arg(expect)
                        .arg(serde_json::to_string(value)?)
                        .arg(&value.name)
                        .arg(value.created_unix_ms)
                        // What the edges serve of it: a change is announced.
                        .arg(value.edge_fingerprint())
                        .arg("");
                }
                Write::Doc {
                    name,
                    expect,
                    value,
                } => {
                    invocation
                        .key(self.key("x", name))
                        .arg("x")
                        .arg(expect)
                        .arg(serde_json::to_string(value)?)
                        .arg(*name)
                        .arg(0)
                        .arg("")
                        .arg("");
                }
                Write::Domain { expect, value } => {
                    invocation
                        .key(self.key("dm", &value.domain))
                        .arg("m")
                        .arg(expect)
                        .arg(serde_json::to_string(value)?)
                        .arg(&value.domain)
                        .arg(value.added_unix_ms)
                        .arg(&value.project)
                        .arg("");
                }
            }
        }
        let applied: i64 = through_outage("a commit", || {
            let mut conn = self.conn.clone();
            let invocation = &invocation;
            async move { invocation.invoke_async(&mut conn).await }
        })
        .await
        .map_err(io_err)?;
        if applied == 2 {
            // This process moved an alias: its caches must not wait for the announcement.
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(applied >= 1)
    }

    async fn delete_deployment(&self, id: &DeploymentId, expect: u64) -> io::Result<bool> {
        let Some(current) = self.deployment(id).await? else {
            return Ok(false);
        };
        let deleted: i64 = self
            .delete
            .key(self.key("d", id.as_str()))
            .arg(&self.prefix)
            .arg(expect)
            .arg(id.as_str())
            .arg(current.value.project.as_deref().unwrap_or(""))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(io_err)?;
        Ok(deleted == 1)
    }

    async fn delete_project(&self, name: &str, expect: u64) -> io::Result<bool> {
        self.delete_announced(&self.delete_project, "p", name, expect)
            .await
    }

    async fn heartbeat(&self, instance: &str, ttl_ms: u64) -> io::Result<()> {
        let _: () = redis::cmd("SET")
            .arg(self.key("runner", instance))
            .arg(crate::now_ms())
            .arg("PX")
            .arg(ttl_ms.max(1))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(io_err)?;
        Ok(())
    }

    async fn runner_alive(&self, instance: &str) -> io::Result<bool> {
        self.conn
            .clone()
            .exists(self.key("runner", instance))
            .await
            .map_err(io_err)
    }

    async fn task_report(
        &self,
        id: &DeploymentId,
    ) -> io::Result<Option<crate::task_access::TaskReport>> {
        self.read_task_report(id).await
    }

    async fn forget_task(&self, id: &DeploymentId) -> io::Result<()> {
        self.forget_task_access(id).await
    }

    async fn ping(&self) -> io::Result<()> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.conn.clone())
            .await
            .map(|_| ())
            .map_err(io_err)
    }

    fn alias_changes(&self) -> broadcast::Receiver<AliasChange> {
        self.aliases.subscribe()
    }

    fn alias_generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }
}
