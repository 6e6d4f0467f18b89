//! In-memory caches of the edge, both byte-weighted moka caches injected into the proxy:
//! manifests (immutable per deployment, loaded once with single-flight so a burst of requests
//! to a new deployment costs one S3 read, and kept prepared to serve: [`crate::prepared`]) and small object bodies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use gitdeploy_core::{DeploymentId, Manifest};
use moka::future::Cache;
use moka::sync::Cache as SyncCache;
use tokio::sync::watch;

use crate::metrics::EdgeMetrics;
use crate::origin::{OriginError, S3Origin};
use crate::prepared::{AnswerBudget, PreparedManifest};
use gitdeploy_api::EdgeView;

/// Why a manifest could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// No such deployment, or not published yet (not cached: it may appear).
    #[error("no such deployment")]
    Missing,
    /// The manifest exists but does not parse.
    #[error("unreadable manifest: {0}")]
    Corrupt(String),
    /// S3 failed.
    #[error(transparent)]
    Origin(#[from] OriginError),
}

/// Manifests by deployment id.
pub struct ManifestCache {
    cache: Cache<DeploymentId, Arc<PreparedManifest>>,
    /// What the cached manifests' files may hold in prepared answers, together.
    answers: AnswerBudget,
    origin: Arc<S3Origin>,
    metrics: EdgeMetrics,
}

/// Bytes the files of all cached manifests may hold in prepared answers (about 4,000 files).
const ANSWER_BUDGET_BYTES: usize = 16 << 20;

impl ManifestCache {
    /// A cache holding up to `max_bytes` of manifests (estimated from their file lists).
    pub fn new(origin: Arc<S3Origin>, max_bytes: u64, metrics: EdgeMetrics) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_, m: &Arc<PreparedManifest>| u32::try_from(m.weight()).unwrap_or(u32::MAX))
            .build();
        ManifestCache {
            cache,
            answers: AnswerBudget::new(ANSWER_BUDGET_BYTES),
            origin,
            metrics,
        }
    }

    /// Bytes held (estimated, like the capacity).
    pub fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// Forgets the manifest of `id` (the deployment was deleted).
    pub async fn invalidate(&self, id: &DeploymentId) {
        self.cache.invalidate(id).await;
    }

    /// Forgets every manifest (deletions may have been missed).
    pub fn invalidate_all(&self) {
        self.cache.invalidate_all();
    }

    /// The manifest of `id`, from memory or S3.
    pub async fn get(
        &self,
        id: &DeploymentId,
    ) -> Result<Arc<PreparedManifest>, Arc<ManifestError>> {
        // The common case first: a plain lookup, without setting up a load.
        if let Some(manifest) = self.cache.get(id).await {
            self.metrics.manifest_lookup("hit");
            return Ok(manifest);
        }
        self.load(id).await
    }

    /// Loads the manifest of `id` from S3 (one load per id at a time). Boxed: moka's loading
    /// future is about 15 KiB, and held inline it would make every caller's future (a request's
    /// whole `request_filter`) that large, copied on each request whether it loads or not.
    fn load<'a>(
        &'a self,
        id: &'a DeploymentId,
    ) -> Loading<'a, Arc<PreparedManifest>, ManifestError> {
        Box::pin(async move {
            let loaded = std::sync::atomic::AtomicBool::new(false);
            let result = self
                .cache
                .try_get_with(id.clone(), async {
                    loaded.store(true, std::sync::atomic::Ordering::Relaxed);
                    let key = self.origin.layout().manifest(id);
                    let timer = self
                        .metrics
                        .s3_latency
                        .with_label_values(&["manifest"])
                        .start_timer();
                    let fetched = self.origin.get(&key).await;
                    timer.observe_duration();
                    let outcome = if fetched.is_ok() { "ok" } else { "error" };
                    self.metrics
                        .s3_requests
                        .with_label_values(&["manifest", outcome])
                        .inc();
                    let bytes = fetched?.ok_or(ManifestError::Missing)?;
                    let manifest = Manifest::from_json(&bytes).map_err(ManifestError::Corrupt)?;
                    Ok::<_, ManifestError>(Arc::new(PreparedManifest::new(manifest, &self.answers)))
                })
                .await;
            let label = match (&result, loaded.into_inner()) {
                (Ok(_), false) => "hit",
                (Ok(_), true) => "loaded",
                (Err(e), _) if matches!(e.as_ref(), ManifestError::Missing) => "missing",
                (Err(_), _) => "error",
            };
            self.metrics.manifest_lookup(label);
            result
        })
    }
}

/// A cache's load of a missing entry, boxed (see [`ManifestCache::load`]).
type Loading<'a, T, E> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, Arc<E>>> + Send + 'a>>;

/// Cache key of an object body.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKey {
    /// A blob, by content hash: one entry for every deployment and path holding those bytes.
    Blob(gitdeploy_core::ContentHash),
    /// A version-1 file: deployment, site-relative path and encoding.
    Site(DeploymentId, String, Option<gitdeploy_core::Encoding>),
}

impl ObjectKey {
    /// The key of one representation of a manifest entry (`FileEntry::blob`, the choice
    /// `ObjectLayout::representation` makes for the object key too).
    pub fn of(
        id: &DeploymentId,
        relative: &str,
        entry: &gitdeploy_core::FileEntry,
        encoding: Option<gitdeploy_core::Encoding>,
    ) -> Self {
        match entry.blob(encoding) {
            Some(hash) => ObjectKey::Blob(hash),
            None => ObjectKey::Site(id.clone(), relative.to_owned(), encoding),
        }
    }
}

/// Small object bodies (a sync cache: it is filled from Pingora's synchronous body filter).
///
/// Filling is single-flight: the first request for a missing object [`claims`](Self::claim) it
/// and streams it from S3, copying the body into the cache; requests for the same object that
/// arrive meanwhile wait for that fill instead of each asking S3.
pub struct ObjectCache {
    cache: SyncCache<ObjectKey, Bytes>,
    max_object: u64,
    filling: Arc<Mutex<HashMap<ObjectKey, watch::Receiver<()>>>>,
}

/// The outcome of [`ObjectCache::claim`].
pub enum Claim {
    /// This request fetches the object; keep the guard until the body is cached or abandoned.
    Leader(FillGuard),
    /// Another request is fetching it: wait on this, then look in the cache again.
    Follower(watch::Receiver<()>),
}

/// Held by the request that fills an object; dropping it releases the waiters.
pub struct FillGuard {
    key: ObjectKey,
    filling: Arc<Mutex<HashMap<ObjectKey, watch::Receiver<()>>>>,
    // Dropped with the guard, which wakes every receiver.
    _done: watch::Sender<()>,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        self.filling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

impl ObjectCache {
    /// Holds objects up to `max_object` bytes each and `max_total` bytes in all; evictions are
    /// counted in `evictions`.
    pub fn new(max_object: u64, max_total: u64, evictions: prometheus::IntCounter) -> Self {
        let cache = SyncCache::builder()
            .max_capacity(max_total)
            .weigher(|_, v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
            .eviction_listener(move |_, _, cause| {
                if cause.was_evicted() {
                    evictions.inc();
                }
            })
            .build();
        ObjectCache {
            cache,
            max_object,
            filling: Arc::default(),
        }
    }

    /// Claims the fill of `key`: leader when nobody is filling it, follower otherwise.
    pub fn claim(&self, key: &ObjectKey) -> Claim {
        let mut filling = self.filling.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = filling.get(key) {
            return Claim::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        filling.insert(key.clone(), rx);
        Claim::Leader(FillGuard {
            key: key.clone(),
            filling: self.filling.clone(),
            _done: tx,
        })
    }

    /// Whether an object of `size` bytes may be cached.
    pub fn admits(&self, size: u64) -> bool {
        size <= self.max_object
    }

    /// Bytes held (approximate: moka settles its bookkeeping lazily).
    pub fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// A cached body.
    pub fn get(&self, key: &ObjectKey) -> Option<Bytes> {
        self.cache.get(key)
    }

    /// Stores a body (callers check [`ObjectCache::admits`] first).
    pub fn insert(&self, key: ObjectKey, body: Bytes) {
        self.cache.insert(key, body);
    }
}

/// Project aliases (`<project>.<domain>` → its production deployment), cached for a short time.
/// Every lookup compares the store's alias generation, which grows the moment this process
/// moves an alias or hears (Redis pub/sub) that another edge did: a stale entry is fetched
/// again. The time limit is the safety net for a lost announcement.
///
/// Custom domains are held whole (every active one, with its project), loaded again when the
/// generation grows or the time limit passes: a request for a host nobody added costs a map
/// lookup, never a store read, however many such hosts a client invents.
pub struct AliasCache {
    cache: Cache<String, (u64, Option<Arc<EdgeView>>)>,
    domains: tokio::sync::RwLock<Option<DomainMap>>,
    ttl: std::time::Duration,
    records: gitdeploy_api::Records,
    metrics: EdgeMetrics,
}

/// Every active custom domain → its project, as of a generation and a time.
struct DomainMap {
    generation: u64,
    loaded: std::time::Instant,
    projects: HashMap<String, String>,
}

impl AliasCache {
    /// A cache over `records` whose entries live at most `ttl`.
    pub fn new(
        records: gitdeploy_api::Records,
        ttl: std::time::Duration,
        metrics: EdgeMetrics,
    ) -> Arc<Self> {
        Arc::new(AliasCache {
            cache: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
            domains: tokio::sync::RwLock::new(None),
            ttl,
            records,
            metrics,
        })
    }

    /// Reads `project` from the store into the cache (one read per name at a time). Boxed, so
    /// that moka's loading future is not part of every lookup's (see [`ManifestCache::load`]).
    fn load<'a>(
        &'a self,
        project: &'a str,
        generation: u64,
    ) -> Loading<'a, (u64, Option<Arc<EdgeView>>), gitdeploy_api::StoreError> {
        Box::pin(async move {
            let records = self.records.clone();
            let name = project.to_owned();
            self.cache
                .try_get_with(project.to_owned(), async move {
                    records
                        .project(&name)
                        .await
                        .map(|p| (generation, p.map(|p| Arc::new(p.edge_view()))))
                })
                .await
        })
    }

    fn counted(&self, result: &str, view: Option<Arc<EdgeView>>) -> Option<Arc<EdgeView>> {
        self.metrics.alias_lookup(match (result, &view) {
            ("hit", None) | ("loaded", None) => "missing",
            _ => result,
        });
        view
    }
}

#[async_trait::async_trait]
impl gitdeploy_api::AliasResolver for AliasCache {
    async fn project(&self, project: &str) -> Option<Arc<EdgeView>> {
        let generation = self.records.store().alias_generation();
        if let Some((seen, view)) = self.cache.get(project).await {
            if seen >= generation {
                return self.counted("hit", view);
            }
            self.cache.invalidate(project).await;
        }
        let found = self.load(project, generation).await;
        match found {
            Ok((_, view)) => self.counted("loaded", view),
            Err(e) => {
                // Not cached: the next request asks again.
                tracing::warn!(project, "cannot look up the project: {e}");
                self.counted("error", None)
            }
        }
    }

    async fn custom_domain(&self, domain: &str) -> Option<String> {
        let generation = self.records.store().alias_generation();
        let fresh = |m: &DomainMap| m.generation >= generation && m.loaded.elapsed() < self.ttl;
        if let Some(map) = self.domains.read().await.as_ref().filter(|m| fresh(m)) {
            return map.projects.get(domain).cloned();
        }
        // One loader at a time; the others find its map.
        let mut slot = self.domains.write().await;
        if let Some(map) = slot.as_ref().filter(|m| fresh(m)) {
            return map.projects.get(domain).cloned();
        }
        match self.records.store().domains(None).await {
            Ok(list) => {
                let projects = list
                    .into_iter()
                    .filter(|d| d.status == gitdeploy_api::domains::DomainStatus::Active)
                    .map(|d| (d.domain, d.project))
                    .collect();
                *slot = Some(DomainMap {
                    generation,
                    loaded: std::time::Instant::now(),
                    projects,
                });
            }
            // The store is away: the last map goes on serving until the time limit, so that
            // requests do not queue behind a store that does not answer.
            Err(e) => {
                tracing::warn!("cannot load custom domains: {e}");
                let map = slot.get_or_insert_with(|| DomainMap {
                    generation,
                    loaded: std::time::Instant::now(),
                    projects: HashMap::new(),
                });
                map.generation = generation;
                map.loaded = std::time::Instant::now();
            }
        }
        slot.as_ref().and_then(|m| m.projects.get(domain).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ObjectKey {
        ObjectKey::Site(
            DeploymentId::parse("k3f9q2m8x1ab").unwrap(),
            "a.js".into(),
            None,
        )
    }

    #[test]
    fn blobs_are_one_entry_whatever_the_deployment_and_path() {
        let mut entry = gitdeploy_core::FileEntry {
            size: 1,
            etag: String::new(),
            content_type: "text/css".into(),
            hash: Some(gitdeploy_core::ContentHash::from_digest([7; 32])),
            encodings: Default::default(),
        };
        let (a, b) = (
            DeploymentId::parse("k3f9q2m8x1ab").unwrap(),
            DeploymentId::parse("z9y8x7w6v5ut").unwrap(),
        );
        assert_eq!(
            ObjectKey::of(&a, "a.css", &entry, None),
            ObjectKey::of(&b, "other/b.css", &entry, None)
        );
        entry.hash = None;
        assert_ne!(
            ObjectKey::of(&a, "a.css", &entry, None),
            ObjectKey::of(&b, "a.css", &entry, None)
        );
    }

    #[tokio::test]
    async fn one_leader_and_followers_wake_when_it_is_done() {
        let cache = ObjectCache::new(10, 100, prometheus::IntCounter::new("e", "e").unwrap());
        let Claim::Leader(guard) = cache.claim(&key()) else {
            panic!("first claim leads")
        };
        let Claim::Follower(mut rx) = cache.claim(&key()) else {
            panic!("second claim follows")
        };
        cache.insert(key(), Bytes::from_static(b"body"));
        drop(guard);
        // The sender is gone: the follower wakes (with an error, which means "look again").
        assert!(rx.changed().await.is_err());
        assert_eq!(cache.get(&key()).unwrap(), Bytes::from_static(b"body"));
        assert!(matches!(cache.claim(&key()), Claim::Leader(_)));
        assert!(cache.admits(10) && !cache.admits(11));
    }
}
