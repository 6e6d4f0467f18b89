//! The edge's S3 origin as the API's [`SiteStorage`]: deleting a deployment's objects, the
//! readiness probe, and the storage half of the upload protocol (blob lookups, checked blobs
//! written into `blobs/`, and a finalized upload published through the same checks as a build
//! task's staged upload, [`publish::publish_checked`]).

use std::sync::Arc;
use std::time::Duration;

use gitdeploy_api::{ArchiveFuture, BlobBody, GcSummary, SiteStorage};
use gitdeploy_builder::publish::{self, BlobSink, Placement, S3Blobs};
use gitdeploy_core::{ContentHash, DeploymentId, Manifest};

use super::{origin_error, OriginError, S3Origin};

/// Runs a garbage collection of blobs every `settings.every` on `rt` (none without one).
pub(crate) fn collect_periodically(
    origin: &Arc<S3Origin>,
    rt: &tokio::runtime::Runtime,
    settings: crate::config::GcSettings,
) {
    let Some(every) = settings.every else { return };
    let origin = origin.clone();
    rt.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // not at start-up: the first one after a full interval
        loop {
            tick.tick().await;
            match origin.collect_garbage(settings.grace).await {
                Ok(r) => tracing::info!(
                    deleted = r.deleted,
                    freed_bytes = r.freed_bytes,
                    kept_in_grace = r.in_grace,
                    "blobs collected"
                ),
                Err(e) => tracing::warn!("blob collection stopped, to try again later: {e}"),
            }
        }
    });
}

impl S3Origin {
    fn blobs(&self, id: &DeploymentId) -> S3Blobs {
        S3Blobs::new(
            self.client.clone(),
            &self.bucket,
            &self.layout,
            id,
            Placement::Shared,
        )
    }
}

impl SiteStorage for S3Origin {
    fn delete_deployment(&self, id: &DeploymentId) -> ArchiveFuture<'_, u64> {
        let id = id.clone();
        Box::pin(async move {
            let fail = |e: OriginError| e.to_string();
            // The manifest first: from then on no edge can load the deployment.
            self.delete(&self.layout.manifest(&id))
                .await
                .map_err(fail)?;
            let keys = self
                .list(&self.layout.site_prefix(&id))
                .await
                .map_err(fail)?;
            let mut deleted = 1;
            for key in keys {
                self.delete(&key).await.map_err(fail)?;
                deleted += 1;
            }
            // What a build task staged and nobody published (it failed, or was canceled).
            deleted +=
                publish::remove_staging(&self.client, &self.bucket, &self.layout, &id).await?;
            self.delete(&self.layout.log_archive(&id))
                .await
                .map_err(fail)?;
            Ok(deleted + 1)
        })
    }

    fn probe(&self) -> ArchiveFuture<'_, ()> {
        Box::pin(async move {
            self.client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(self.layout.manifests_prefix())
                .max_keys(1)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| origin_error(&e).to_string())
        })
    }

    fn lookup_blobs(
        &self,
        id: &DeploymentId,
        base: Option<DeploymentId>,
        hashes: Vec<ContentHash>,
    ) -> ArchiveFuture<'_, Vec<Option<String>>> {
        let blobs = self.blobs(id).with_base(base);
        Box::pin(async move {
            let planned = hashes
                .into_iter()
                .map(|hash| publish::Planned {
                    path: String::new(),
                    hash,
                    size: 0,
                })
                .collect();
            let found = BlobSink::lookup(&blobs, planned).await?;
            Ok(found
                .into_iter()
                .map(|f| f.map(|recorded| publish::write_recorded(&recorded)))
                .collect())
        })
    }

    fn put_blob(
        &self,
        id: &DeploymentId,
        hash: ContentHash,
        body: BlobBody,
        variants: Option<String>,
    ) -> ArchiveFuture<'_, ()> {
        let blobs = self.blobs(id);
        Box::pin(async move {
            match body {
                // Claimed variants are checked against these bytes before they are recorded
                // (`refused: ` when one is not their compression); a large blob has none.
                BlobBody::Memory(bytes) => {
                    let recorded = match variants {
                        None => None,
                        Some(text) => {
                            let claimed = publish::read_recorded(&text).ok_or(
                                "refused: the variants are not `br=<hash>:<size>,…`".to_owned(),
                            )?;
                            let checked = publish::verified_record(
                                &self.client,
                                &self.bucket,
                                &self.layout,
                                &hash,
                                bytes.clone(),
                                &claimed,
                            )
                            .await
                            .map_err(|e| format!("refused: {e}"))?;
                            Some(checked)
                        }
                    };
                    blobs.put(&hash, bytes.to_vec(), recorded.as_ref()).await
                }
                BlobBody::File(mut file, size) => {
                    use std::io::Seek;
                    file.rewind().map_err(|e| e.to_string())?;
                    blobs
                        .put_large(hash, file, size, format!("blob {hash}"))
                        .await
                }
            }
        })
    }

    fn publish_upload(&self, id: &DeploymentId, manifest: Manifest) -> ArchiveFuture<'_, ()> {
        let id = id.clone();
        Box::pin(async move {
            publish::publish_checked(&self.client, &self.bucket, &self.layout, &id, manifest)
                .await?;
            // Its plans, now that the manifest names the blobs.
            publish::remove_staging(&self.client, &self.bucket, &self.layout, &id).await?;
            Ok(())
        })
    }

    fn collect_garbage(&self, grace: Duration) -> ArchiveFuture<'_, GcSummary> {
        Box::pin(async move {
            let r = publish::gc::collect(&self.client, &self.bucket, &self.layout, grace).await?;
            Ok(GcSummary {
                manifests: r.manifests,
                plans: r.plans,
                blobs: r.blobs,
                deleted: r.deleted,
                freed_bytes: r.freed_bytes,
                in_grace: r.in_grace,
            })
        })
    }
}
