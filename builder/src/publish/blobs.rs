//! The blob store a publish writes into: `blobs/<sha256>` in the bucket, shared by every
//! deployment, or, for an uploader holding only its own deployment's session, a staging area
//! (`uploads/<id>/`) a trusted finisher verifies and moves from ([`super::promote`]).
//!
//! A blob written here carries S3's own SHA-256 checksum (`x-amz-checksum-sha256`), so the
//! store refuses bytes that are not the ones the key names. A shared identity blob also records
//! in its metadata which precompressed variants were made of it ([`Recorded`]), so a redeploy of
//! an unchanged file neither uploads nor compresses anything: one `HEAD` answers both.

use aws_sdk_s3::primitives::ByteStream;
use gitdeploy_core::{ContentHash, DeploymentId, Encoding, Manifest, ObjectLayout};

use super::recorded::{read_recorded, write_recorded, Recorded, VARIANTS_METADATA};
use crate::storage::describe as storage_error;

/// Where blobs go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Straight into `blobs/`: an uploader the platform trusts with the shared store.
    Shared,
    /// Into `uploads/<id>/`, blobs and manifest alike: an uploader holding a session limited to
    /// its own deployment. Nothing it writes is served until a finisher checked it.
    Staged,
}

/// One deployment's view of the blob store.
#[derive(Clone)]
pub struct S3Blobs {
    client: aws_sdk_s3::Client,
    bucket: String,
    layout: ObjectLayout,
    id: DeploymentId,
    placement: Placement,
    base: Option<DeploymentId>,
}

/// What a (version 2) manifest says of each blob it names as a file: its kept variants, and
/// for the other encodings "none kept" (so they are not made again for a file reused from it).
pub fn known_from(manifest: &Manifest) -> std::collections::HashMap<ContentHash, Recorded> {
    let mut out = std::collections::HashMap::new();
    for entry in manifest.files.values() {
        let Some(hash) = entry.hash else { continue };
        if entry.encodings.values().any(|v| v.hash.is_none()) {
            continue;
        }
        let mut recorded: Recorded = [Encoding::Br, Encoding::Gzip]
            .into_iter()
            .map(|e| (e, None))
            .collect();
        for (enc, v) in &entry.encodings {
            recorded.insert(*enc, v.hash.map(|h| (h, v.size)));
        }
        out.insert(hash, recorded);
    }
    out
}

impl S3Blobs {
    /// The store for publishing deployment `id`.
    pub fn new(
        client: aws_sdk_s3::Client,
        bucket: &str,
        layout: &ObjectLayout,
        id: &DeploymentId,
        placement: Placement,
    ) -> Self {
        S3Blobs {
            client,
            bucket: bucket.to_owned(),
            layout: layout.clone(),
            id: id.clone(),
            placement,
            base: None,
        }
    }

    /// Looks files named by deployment `base`'s manifest up there (one read) instead of one
    /// `HEAD` each.
    pub fn with_base(mut self, base: Option<DeploymentId>) -> Self {
        self.base = base.filter(|b| *b != self.id);
        self
    }

    /// The base deployment's manifest, when it has one that can be read (else lookups `HEAD`).
    async fn base_manifest(&self) -> Option<Manifest> {
        let base = self.base.as_ref()?;
        let got = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.layout.manifest(base))
            .send()
            .await
            .ok()?;
        let body = got.body.collect().await.ok()?.into_bytes();
        Manifest::from_json(&body).ok()
    }

    /// Whether the base deployment's manifest still exists.
    async fn base_still_stored(&self) -> bool {
        let Some(base) = &self.base else { return false };
        self.client
            .head_object()
            .bucket(&self.bucket)
            .key(self.layout.manifest(base))
            .send()
            .await
            .is_ok()
    }

    /// Where this store writes.
    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// The deployment being published.
    pub fn deployment(&self) -> &DeploymentId {
        &self.id
    }

    /// Whether the shared store holds `hash`, and what it recorded of its variants (empty when
    /// nothing readable was recorded). Only through [`super::BlobSink::lookup`], which writes
    /// the publish's plan first.
    async fn head(&self, hash: &ContentHash) -> Result<Option<Recorded>, String> {
        let found = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.layout.blob(hash))
            .send()
            .await;
        match found {
            Ok(head) => Ok(Some(
                head.metadata()
                    .and_then(|m| m.get(VARIANTS_METADATA))
                    .and_then(|t| read_recorded(t))
                    .unwrap_or_default(),
            )),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(None),
            Err(e) => Err(format!(
                "checking for blob {hash} failed: {}",
                storage_error(&e)
            )),
        }
    }

    /// The key a blob is written at.
    pub fn key(&self, hash: &ContentHash) -> String {
        match self.placement {
            Placement::Shared => self.layout.blob(hash),
            Placement::Staged => self.layout.staged_blob(&self.id, hash),
        }
    }

    /// Writes one blob whose bytes hash to `hash` (the store checks it). `recorded` goes into
    /// the metadata of a shared identity blob; a staged blob carries none, since the finisher
    /// does not trust it.
    pub async fn put(
        &self,
        hash: &ContentHash,
        body: Vec<u8>,
        recorded: Option<&Recorded>,
    ) -> Result<(), String> {
        let metadata = match (self.placement, recorded) {
            (Placement::Shared, Some(r)) => Some(write_recorded(r)),
            _ => None,
        };
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(hash))
            .checksum_sha256(hash.base64())
            .body(ByteStream::from(body));
        if let Some(m) = metadata {
            req = req.metadata(VARIANTS_METADATA, m);
        }
        req.send().await.map(|_| ()).map_err(|e| storage_error(&e))
    }

    /// Writes the manifest, once every blob it names is stored: the deployment's
    /// `manifests/<id>.json` (which publishes it), or for a staged upload
    /// `uploads/<id>/manifest.json`, which the finisher checks and moves.
    pub async fn finalize(&self, manifest: &Manifest) -> Result<(), String> {
        let body = serde_json::to_vec(manifest).map_err(|e| e.to_string())?;
        let key = match self.placement {
            Placement::Shared => self.layout.manifest(&self.id),
            Placement::Staged => staged_manifest(&self.layout, &self.id),
        };
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| format!("writing the manifest failed: {}", storage_error(&e)))
    }
}

/// Lookups in flight at once.
const PARALLEL_LOOKUPS: usize = 32;

impl super::BlobSink for S3Blobs {
    fn deployment(&self) -> &DeploymentId {
        &self.id
    }

    fn records_variants(&self) -> bool {
        self.placement == Placement::Shared
    }

    async fn lookup(&self, files: Vec<super::Planned>) -> Result<Vec<Option<Recorded>>, String> {
        // The plan first, then no lookup while a collection runs (see `gc`).
        // A base manifest's entries stand for lookups of the blobs it names: its blobs are
        // kept while it exists, so if it still exists once no collection runs, every
        // collection in between saw it. Their variants go into the plan with them.
        let mut known = match self.base_manifest().await {
            Some(m) => known_from(&m),
            None => Default::default(),
        };
        known.retain(|hash, _| files.iter().any(|f| f.hash == *hash));
        let mut hashes: Vec<ContentHash> = files.iter().map(|f| f.hash).collect();
        for recorded in known.values() {
            hashes.extend(recorded.values().flatten().map(|(h, _)| *h));
        }
        let plan = serde_json::to_vec(&hashes).map_err(|e| e.to_string())?;
        let part = DeploymentId::random().to_string();
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.layout.plan(&self.id, &part))
            .content_type("application/json")
            .body(ByteStream::from(plan))
            .send()
            .await
            .map_err(|e| format!("writing the publish plan failed: {}", storage_error(&e)))?;
        super::gc::wait_for_collections(&self.client, &self.bucket, &self.layout).await?;
        if !known.is_empty() && !self.base_still_stored().await {
            known.clear();
        }
        let mut out: Vec<Option<Recorded>> =
            files.iter().map(|f| known.get(&f.hash).cloned()).collect();
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(PARALLEL_LOOKUPS));
        let mut tasks = tokio::task::JoinSet::new();
        for (index, file) in files.into_iter().enumerate() {
            if out[index].is_some() {
                continue;
            }
            let (blobs, permits) = (self.clone(), permits.clone());
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await.map_err(|e| e.to_string())?;
                Ok::<_, String>((index, blobs.head(&file.hash).await?))
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let (index, found) = joined.map_err(|e| format!("lookup task failed: {e}"))??;
            out[index] = found;
        }
        Ok(out)
    }

    async fn put(
        &self,
        hash: ContentHash,
        body: Vec<u8>,
        recorded: Option<Recorded>,
    ) -> Result<(), String> {
        S3Blobs::put(self, &hash, body, recorded.as_ref()).await
    }

    async fn put_large(
        &self,
        hash: ContentHash,
        file: std::fs::File,
        _size: u64,
        relative: String,
    ) -> Result<(), String> {
        super::multipart::upload(
            &self.client,
            &self.bucket,
            &self.key(&hash),
            &hash,
            file,
            &relative,
        )
        .await
    }

    async fn finalize(&self, manifest: Manifest) -> Result<(), String> {
        S3Blobs::finalize(self, &manifest).await?;
        // The plans go once the manifest names the blobs (a staged upload's finisher removes
        // them with the rest of its staging area).
        if self.placement == Placement::Shared {
            super::remove_staging(&self.client, &self.bucket, &self.layout, &self.id).await?;
        }
        Ok(())
    }
}

/// Where a staged upload's manifest waits for the finisher.
pub fn staged_manifest(layout: &ObjectLayout, id: &DeploymentId) -> String {
    format!("{}manifest.json", layout.upload_prefix(id))
}
