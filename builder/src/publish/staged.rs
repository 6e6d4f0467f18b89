//! The trusted half of a staged upload ([`Placement::Staged`](super::Placement)): a build task
//! holding only its own deployment's session stages blobs and manifest under `uploads/<id>/`;
//! an edge, applying the task's reported ending, checks each and publishes it.
//!
//! Nothing staged is believed: the manifest must pass [`Manifest::check_untrusted`], every blob
//! it names must already be in the shared store or be staged with S3's own SHA-256 checksum
//! equal to its name (read back and hashed when the store kept none, as after a multipart
//! upload), every size must be the stored size, and a staged blob is copied into `blobs/`
//! without the metadata its writer gave it. Only then is `manifests/<id>.json` written; the
//! staging area (with the publish's plans) is removed after, whatever the outcome.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode, MetadataDirective};
use gitdeploy_core::{ContentHash, DeploymentId, Manifest, ObjectLayout};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::blobs::staged_manifest;
use crate::storage::describe as storage_error;

/// Checks of blobs in flight at once.
const PARALLEL: usize = 16;

/// Publishes the staged upload of `id`. `Ok(false)` when nothing is staged (the build published
/// straight into the shared store); an `Err` says what was refused and publishes nothing. The
/// staging area stays for the caller to remove ([`remove_staging`]) either way.
pub async fn publish_staged(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    layout: &ObjectLayout,
    id: &DeploymentId,
) -> Result<bool, String> {
    let manifest_key = staged_manifest(layout, id);
    let body = match client
        .get_object()
        .bucket(bucket)
        .key(&manifest_key)
        .send()
        .await
    {
        Ok(got) => got
            .body
            .collect()
            .await
            .map_err(|e| format!("reading the staged manifest failed: {e}"))?
            .into_bytes(),
        Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(false),
        Err(e) => {
            return Err(format!(
                "reading the staged manifest failed: {}",
                storage_error(&e)
            ))
        }
    };
    let manifest = Manifest::from_json(&body).map_err(|e| format!("the staged manifest: {e}"))?;
    publish_checked(client, bucket, layout, id, manifest)
        .await
        .map_err(|e| format!("the staged manifest: {e}"))?;
    Ok(true)
}

/// Publishes a manifest an untrusted uploader wrote (a build task's staged upload, or the
/// deploy API's `finalize`) once everything it says is checked: [`Manifest::check_untrusted`],
/// each blob stored (or staged and verified, then moved in) with the size it names, each
/// content type a plain header value, and each precompressed variant the compression of its
/// file ([`super::verify`]). ETags are made again from the hashes. Nothing is written when
/// anything is refused.
pub async fn publish_checked(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    layout: &ObjectLayout,
    id: &DeploymentId,
    mut manifest: Manifest,
) -> Result<(), String> {
    manifest.check_untrusted(id.as_str())?;
    for (path, entry) in manifest.files.iter_mut() {
        if !plain_header_value(&entry.content_type) {
            return Err(format!("{path:?} has an unusable content type"));
        }
        if let Some(hash) = entry.hash {
            entry.etag = hash.etag();
            for (enc, variant) in entry.encodings.iter_mut() {
                variant.etag = hash.variant_etag(enc.token());
            }
        }
    }
    let sizes = blob_sizes(&manifest)?;
    // Files first: a variant their stored record vouches for is in the store already.
    let files: BTreeMap<ContentHash, u64> = manifest
        .files
        .values()
        .filter_map(|f| f.hash.map(|h| (h, f.size)))
        .collect();
    let mut recorded = admit_all(client, bucket, layout, id, files).await?;
    let vouched: std::collections::HashSet<(ContentHash, u64)> = recorded
        .values()
        .flat_map(|r| r.values().flatten().copied())
        .collect();
    let rest = sizes
        .into_iter()
        .filter(|(hash, size)| !recorded.contains_key(hash) && !vouched.contains(&(*hash, *size)))
        .collect();
    recorded.extend(admit_all(client, bucket, layout, id, rest).await?);
    super::verify::check_variants(client, bucket, layout, &manifest, &recorded).await?;
    let body = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    client
        .put_object()
        .bucket(bucket)
        .key(layout.manifest(id))
        .content_type("application/json")
        .body(ByteStream::from(body))
        .send()
        .await
        .map_err(|e| format!("writing the manifest failed: {}", storage_error(&e)))?;
    Ok(())
}

/// [`admit`] for each blob (in parallel): what the store recorded of each.
async fn admit_all(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    layout: &ObjectLayout,
    id: &DeploymentId,
    blobs: BTreeMap<ContentHash, u64>,
) -> Result<BTreeMap<ContentHash, super::Recorded>, String> {
    let permits = Arc::new(Semaphore::new(PARALLEL));
    let mut checks = JoinSet::new();
    for (hash, size) in blobs {
        let (client, bucket, layout, id) = (
            client.clone(),
            bucket.to_owned(),
            layout.clone(),
            id.clone(),
        );
        let permits = permits.clone();
        checks.spawn(async move {
            let _permit = permits.acquire_owned().await.map_err(|e| e.to_string())?;
            let recorded = admit(&client, &bucket, &layout, &id, &hash, size).await?;
            Ok::<_, String>((hash, recorded))
        });
    }
    let mut recorded = BTreeMap::new();
    while let Some(done) = checks.join_next().await {
        let (hash, found) = done.map_err(|e| format!("checking a blob failed: {e}"))??;
        recorded.insert(hash, found);
    }
    Ok(recorded)
}

/// A content type that is safe to send as a header: visible ASCII and spaces, not too long.
fn plain_header_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 200
        && value.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
}

/// Every blob of the manifest with the size it must have; a blob named with two sizes is a lie.
fn blob_sizes(manifest: &Manifest) -> Result<BTreeMap<ContentHash, u64>, String> {
    let mut sizes = BTreeMap::new();
    let named = manifest.files.iter().flat_map(|(path, f)| {
        f.hash.map(|h| (path, h, f.size)).into_iter().chain(
            f.encodings
                .values()
                .filter_map(move |v| v.hash.map(|h| (path, h, v.size))),
        )
    });
    for (path, hash, size) in named {
        if let Some(other) = sizes.insert(hash, size) {
            if other != size {
                return Err(format!(
                    "the manifest gives blob {hash} two sizes ({other} and {size}, at {path:?})"
                ));
            }
        }
    }
    Ok(sizes)
}

/// Makes sure blob `hash` of `size` bytes is in the shared store: there already, or staged and
/// checked, then copied in. Answers what the store recorded of its variants (nothing for a
/// blob just moved in: its writer's metadata is not kept).
async fn admit(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    layout: &ObjectLayout,
    id: &DeploymentId,
    hash: &ContentHash,
    size: u64,
) -> Result<super::Recorded, String> {
    let size_matches = |stored: Option<i64>, where_: &str| {
        if stored == Some(size as i64) {
            Ok(())
        } else {
            Err(format!(
                "blob {hash} is {} bytes {where_}, not the {size} the manifest says",
                stored.unwrap_or(-1)
            ))
        }
    };
    let shared = layout.blob(hash);
    match client
        .head_object()
        .bucket(bucket)
        .key(&shared)
        .send()
        .await
    {
        Ok(head) => {
            size_matches(head.content_length(), "in the store")?;
            return Ok(head
                .metadata()
                .and_then(|m| m.get(super::recorded::VARIANTS_METADATA))
                .and_then(|t| super::read_recorded(t))
                .unwrap_or_default());
        }
        Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => {}
        Err(e) => {
            return Err(format!(
                "checking blob {hash} failed: {}",
                storage_error(&e)
            ))
        }
    }
    let staged = layout.staged_blob(id, hash);
    let head = match client
        .head_object()
        .bucket(bucket)
        .key(&staged)
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
    {
        Ok(head) => head,
        Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => {
            return Err(format!("blob {hash} was never uploaded"))
        }
        Err(e) => {
            return Err(format!(
                "checking blob {hash} failed: {}",
                storage_error(&e)
            ))
        }
    };
    size_matches(head.content_length(), "as staged")?;
    let verified = match head.checksum_sha256() {
        // A whole-object checksum the store computed itself as the bytes arrived.
        Some(sum) if !sum.contains('-') => sum == hash.base64(),
        // None kept, or one of parts (a multipart upload): read the bytes back.
        _ => read_hash(client, bucket, &staged).await? == *hash,
    };
    if !verified {
        return Err(format!(
            "the bytes staged as blob {hash} do not have that hash"
        ));
    }
    client
        .copy_object()
        .bucket(bucket)
        .key(&shared)
        .copy_source(crate::storage::copy_source(bucket, &staged))
        .metadata_directive(MetadataDirective::Replace)
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .send()
        .await
        .map(|_| super::Recorded::new())
        .map_err(|e| {
            format!(
                "moving blob {hash} into the store failed: {}",
                storage_error(&e)
            )
        })
}

/// The SHA-256 of an object, streamed.
pub(super) async fn read_hash(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<ContentHash, String> {
    let got = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| format!("reading {key} failed: {}", storage_error(&e)))?;
    let mut body = got.body;
    let mut hasher = Sha256::new();
    while let Some(chunk) = body
        .try_next()
        .await
        .map_err(|e| format!("reading {key} failed: {e}"))?
    {
        hasher.update(&chunk);
    }
    Ok(ContentHash::from_digest(hasher.finalize().into()))
}

/// Deletes everything under `uploads/<id>/`.
pub async fn remove_staging(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    layout: &ObjectLayout,
    id: &DeploymentId,
) -> Result<u64, String> {
    let mut removed = 0;
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(layout.upload_prefix(id))
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| storage_error(&e))?;
        for object in page.contents() {
            if let Some(key) = object.key() {
                client
                    .delete_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| storage_error(&e))?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_blob_cannot_have_two_sizes() {
        let h = ContentHash::from_digest([3; 32]);
        let entry = |size| gitdeploy_core::FileEntry {
            size,
            etag: String::new(),
            content_type: "text/plain".into(),
            hash: Some(h),
            encodings: Default::default(),
        };
        let mut m = Manifest {
            version: gitdeploy_core::manifest::MANIFEST_VERSION,
            deployment: "k3f9q2m8x1ab".into(),
            project: None,
            commit: None,
            created_unix_ms: 0,
            files: [
                ("a.txt".to_owned(), entry(5)),
                ("b.txt".to_owned(), entry(5)),
            ]
            .into(),
            rules: Default::default(),
        };
        assert_eq!(blob_sizes(&m).unwrap(), [(h, 5)].into());
        m.files.insert("c.txt".into(), entry(6));
        assert!(blob_sizes(&m).unwrap_err().contains("two sizes"));
    }
}
