//! The edge's S3 origin as the API's [`SiteStorage`]: deleting a deployment's objects, the
//! readiness probe, and the storage half of the upload protocol (blob lookups, checked blobs
//! written into `blobs/`, and a finalized upload published through the same checks as a build
//! task's staged upload, [`publish::publish_checked`]).

use gitdeploy_api::{ArchiveFuture, BlobBody, SiteStorage};
use gitdeploy_builder::publish::{self, BlobSink, Placement, S3Blobs};
use gitdeploy_core::{ContentHash, DeploymentId, Manifest};

use super::{origin_error, OriginError, S3Origin};

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

    fn lookup_blobs(&self, hashes: Vec<ContentHash>) -> ArchiveFuture<'_, Vec<Option<String>>> {
        Box::pin(async move {
            // Any deployment's view answers a lookup: blobs are shared.
            let blobs = self.blobs(&DeploymentId::random());
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
    ) -> ArchiveFuture<'_, ()> {
        let blobs = self.blobs(id);
        Box::pin(async move {
            match body {
                // No variants recorded: what a client says of them is checked at finalize.
                BlobBody::Memory(bytes) => blobs.put(&hash, bytes.to_vec(), None).await,
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
            publish::publish_checked(&self.client, &self.bucket, &self.layout, &id, manifest).await
        })
    }
}
