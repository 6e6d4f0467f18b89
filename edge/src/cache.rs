//! In-memory caches of the edge, both byte-weighted moka caches injected into the proxy:
//! manifests (immutable per deployment, loaded once with single-flight so a burst of requests
//! to a new deployment costs one S3 read) and small object bodies.

use std::sync::Arc;

use bytes::Bytes;
use gitdeploy_core::{DeploymentId, Manifest};
use moka::future::Cache;
use moka::sync::Cache as SyncCache;

use crate::origin::{OriginError, S3Origin};

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
    cache: Cache<DeploymentId, Arc<Manifest>>,
    origin: Arc<S3Origin>,
}

impl ManifestCache {
    /// A cache holding up to `max_bytes` of manifests (estimated from their file lists).
    pub fn new(origin: Arc<S3Origin>, max_bytes: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_, m: &Arc<Manifest>| {
                let bytes: usize = m
                    .files
                    .iter()
                    .map(|(k, v)| k.len() + v.content_type.len() + 96)
                    .sum();
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .build();
        ManifestCache { cache, origin }
    }

    /// The manifest of `id`, from memory or S3.
    pub async fn get(&self, id: &DeploymentId) -> Result<Arc<Manifest>, Arc<ManifestError>> {
        self.cache
            .try_get_with(id.clone(), async {
                let key = self.origin.layout().manifest(id);
                let bytes = self.origin.get(&key).await?.ok_or(ManifestError::Missing)?;
                let manifest = Manifest::from_json(&bytes).map_err(ManifestError::Corrupt)?;
                Ok(Arc::new(manifest))
            })
            .await
    }
}

/// Cache key of an object body: deployment, site-relative path and encoding.
pub type ObjectKey = (DeploymentId, String, Option<gitdeploy_core::Encoding>);

/// Small object bodies (a sync cache: it is filled from Pingora's synchronous body filter).
pub struct ObjectCache {
    cache: SyncCache<ObjectKey, Bytes>,
    max_object: u64,
}

impl ObjectCache {
    /// Holds objects up to `max_object` bytes each and `max_total` bytes in all.
    pub fn new(max_object: u64, max_total: u64) -> Self {
        let cache = SyncCache::builder()
            .max_capacity(max_total)
            .weigher(|_, v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
            .build();
        ObjectCache { cache, max_object }
    }

    /// Whether an object of `size` bytes may be cached.
    pub fn admits(&self, size: u64) -> bool {
        size <= self.max_object
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
