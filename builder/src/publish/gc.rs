//! Garbage collection of blobs: deleting a deployment removes its manifest, and a blob no
//! remaining manifest names is then deleted here, once it is older than a grace period.
//!
//! The race to win is a publish that found a blob stored (so will not upload it) while a
//! collection decides that blob is garbage. Two rules close it:
//! - a publish writes its **plan** (`uploads/<id>/plan-*.json`, the blobs it is about to look up)
//!   before any lookup, and then waits while any collection is running (a marker under
//!   `gc/running/`, at most [`LEASE`] old);
//! - a collection writes its marker first, then marks everything recent plans and then manifests
//!   name (with the variants recorded on planned blobs), and deletes only unmarked blobs older
//!   than the grace, within its lease. A publish removes its plan only after its manifest is
//!   written, so one that ends during the marking is seen in one or the other.
//!
//! So a plan is either seen by a collection's marking (written before the marker), or its
//! publish looks up only after that collection ended (and uploads what it deleted). Blobs a
//! publish uploads are new, which the grace protects until its manifest is written.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use gitdeploy_core::{ContentHash, DeploymentId, Manifest, ObjectLayout};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::recorded::{read_recorded, VARIANTS_METADATA};
use crate::storage::describe as storage_error;

/// How long a collection may run: a marker older than this is a collection that died, which
/// publishes no longer wait for; a collection deletes nothing after [`DELETE_DEADLINE`].
pub const LEASE: Duration = Duration::from_secs(600);
/// A collection stops deleting this long after it marked itself running.
const DELETE_DEADLINE: Duration = Duration::from_secs(480);
/// Plans older than this belong to publishes that ended (or died) long ago.
const PLAN_MAX_AGE: Duration = Duration::from_secs(3 * 3600);
/// Requests in flight at once.
const PARALLEL: usize = 16;

/// What a collection found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    /// Manifests read.
    pub manifests: u64,
    /// Plans of publishes in progress read.
    pub plans: u64,
    /// Blobs in the store before.
    pub blobs: u64,
    /// Blobs deleted.
    pub deleted: u64,
    /// Their bytes.
    pub freed_bytes: u64,
    /// Unreferenced blobs kept because they are younger than the grace.
    pub in_grace: u64,
}

/// One stored blob as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Its hash.
    pub hash: ContentHash,
    /// Its size.
    pub size: u64,
    /// Last written (Unix ms).
    pub modified_ms: u64,
}

/// The blobs to delete: named by nothing marked, and last written before `now - grace`.
pub fn condemned(
    listed: &[Listed],
    marked: &HashSet<ContentHash>,
    grace: Duration,
    now_ms: u64,
) -> (Vec<Listed>, u64) {
    let cutoff = now_ms.saturating_sub(grace.as_millis() as u64);
    let mut in_grace = 0;
    let mut out = Vec::new();
    for blob in listed.iter().filter(|b| !marked.contains(&b.hash)) {
        if blob.modified_ms < cutoff {
            out.push(blob.clone());
        } else {
            in_grace += 1;
        }
    }
    (out, in_grace)
}

/// Every blob a manifest names, file and variants.
pub fn named_by(manifest: &Manifest) -> impl Iterator<Item = ContentHash> + '_ {
    manifest.files.values().flat_map(|f| {
        f.hash
            .into_iter()
            .chain(f.encodings.values().filter_map(|v| v.hash))
    })
}

fn now_ms() -> u64 {
    crate::events::now_ms()
}

fn unix_ms(t: Option<&aws_sdk_s3::primitives::DateTime>) -> u64 {
    t.and_then(|t| t.to_millis().ok()).unwrap_or(0).max(0) as u64
}

/// Runs one collection with `grace`.
pub async fn collect(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    layout: &ObjectLayout,
    grace: Duration,
) -> Result<GcReport, String> {
    let started = Instant::now();
    let run = DeploymentId::random().to_string();
    let marker = layout.gc_running(&run);
    client
        .put_object()
        .bucket(bucket)
        .key(&marker)
        .body(ByteStream::from(now_ms().to_string().into_bytes()))
        .send()
        .await
        .map_err(|e| {
            format!(
                "marking the collection running failed: {}",
                storage_error(&e)
            )
        })?;
    let result = sweep(client, bucket, layout, grace, started).await;
    let _ = client
        .delete_object()
        .bucket(bucket)
        .key(&marker)
        .send()
        .await;
    result
}

async fn sweep(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    layout: &ObjectLayout,
    grace: Duration,
    started: Instant,
) -> Result<GcReport, String> {
    let mut report = GcReport::default();
    let mut marked = HashSet::new();
    // Plans first, manifests second: a publish that ends meanwhile writes its manifest before
    // it removes its plan, so its blobs are seen in one or the other.
    let now = now_ms();
    let plans: Vec<String> = list(client, bucket, &layout.uploads_prefix())
        .await?
        .into_iter()
        .filter(|(key, _, modified)| {
            layout.is_plan(key) && *modified + PLAN_MAX_AGE.as_millis() as u64 > now
        })
        .map(|(key, ..)| key)
        .collect();
    let mut planned = HashSet::new();
    for body in fetch_all(client, bucket, plans).await? {
        let hashes: Vec<ContentHash> =
            serde_json::from_slice(&body).map_err(|e| format!("a plan: {e}"))?;
        planned.extend(hashes);
        report.plans += 1;
    }
    // Any manifest that cannot be read stops the collection: nothing is deleted on a partial
    // marking.
    let manifests = list(client, bucket, &layout.manifests_prefix()).await?;
    let keys = manifests.into_iter().map(|(k, ..)| k).collect();
    for body in fetch_all(client, bucket, keys).await? {
        let manifest = Manifest::from_json(&body).map_err(|e| format!("a manifest: {e}"))?;
        marked.extend(named_by(&manifest));
        report.manifests += 1;
    }
    // A planned blob's recorded variants are about to be reused with it.
    for hash in planned.iter() {
        if let Ok(head) = client
            .head_object()
            .bucket(bucket)
            .key(layout.blob(hash))
            .send()
            .await
        {
            let recorded = head
                .metadata()
                .and_then(|m| m.get(VARIANTS_METADATA))
                .and_then(|t| read_recorded(t))
                .unwrap_or_default();
            marked.extend(recorded.values().flatten().map(|(h, _)| *h));
        }
    }
    marked.extend(planned);
    let listed: Vec<Listed> = list(client, bucket, &layout.blobs_prefix())
        .await?
        .into_iter()
        .filter_map(|(key, size, modified_ms)| {
            let hash = ContentHash::parse(key.rsplit('/').next()?).ok()?;
            Some(Listed {
                hash,
                size,
                modified_ms,
            })
        })
        .collect();
    report.blobs = listed.len() as u64;
    let (doomed, in_grace) = condemned(&listed, &marked, grace, now_ms());
    report.in_grace = in_grace;
    let permits = Arc::new(Semaphore::new(PARALLEL));
    let mut deletes = JoinSet::new();
    for blob in doomed {
        if started.elapsed() > DELETE_DEADLINE {
            break;
        }
        let (client, bucket, key, permits) = (
            client.clone(),
            bucket.to_owned(),
            layout.blob(&blob.hash),
            permits.clone(),
        );
        let permit = permits.acquire_owned().await.map_err(|e| e.to_string())?;
        deletes.spawn(async move {
            let _permit = permit;
            client
                .delete_object()
                .bucket(&bucket)
                .key(&key)
                .send()
                .await
                .map(|_| blob.size)
                .map_err(|e| format!("deleting {key} failed: {}", storage_error(&e)))
        });
    }
    while let Some(done) = deletes.join_next().await {
        let size = done.map_err(|e| format!("a delete failed: {e}"))??;
        report.deleted += 1;
        report.freed_bytes += size;
    }
    Ok(report)
}

/// Waits while a collection runs (a marker younger than [`LEASE`]), so that lookups made after
/// it returns see what any running collection deleted. Called once a publish's plan is written.
/// Collections that follow one another for a whole lease without a gap fail the publish
/// (it may be tried again) rather than let it look up during one.
pub async fn wait_for_collections(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    layout: &ObjectLayout,
) -> Result<(), String> {
    let deadline = Instant::now() + LEASE;
    loop {
        let now = now_ms();
        let running = list(client, bucket, &layout.gc_running_prefix())
            .await?
            .into_iter()
            .any(|(_, _, modified)| modified + LEASE.as_millis() as u64 > now);
        if !running {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "garbage collections ran for {} s without a pause; publish again",
                LEASE.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every object under `prefix`: key, size, last written (Unix ms).
async fn list(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<(String, u64, u64)>, String> {
    let mut out = Vec::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| format!("listing {prefix} failed: {}", storage_error(&e)))?;
        for object in page.contents() {
            if let Some(key) = object.key() {
                out.push((
                    key.to_owned(),
                    object.size().unwrap_or(0).max(0) as u64,
                    unix_ms(object.last_modified()),
                ));
            }
        }
    }
    Ok(out)
}

/// The bodies of `keys`, fetched in parallel; an object gone meanwhile (a deployment deleted,
/// a publish ended) is left out.
async fn fetch_all(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    keys: Vec<String>,
) -> Result<Vec<bytes::Bytes>, String> {
    let permits = Arc::new(Semaphore::new(PARALLEL));
    let mut tasks = JoinSet::new();
    for key in keys {
        let (client, bucket, permits) = (client.clone(), bucket.to_owned(), permits.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.map_err(|e| e.to_string())?;
            match client.get_object().bucket(&bucket).key(&key).send().await {
                Ok(got) => got
                    .body
                    .collect()
                    .await
                    .map(|b| Some(b.into_bytes()))
                    .map_err(|e| format!("reading {key} failed: {e}")),
                Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => Ok(None),
                Err(e) => Err(format!("reading {key} failed: {}", storage_error(&e))),
            }
        });
    }
    let mut out = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Some(body) = done.map_err(|e| format!("a read failed: {e}"))?? {
            out.push(body);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unmarked_blobs_past_the_grace_are_condemned() {
        let h = |b: u8| ContentHash::from_digest([b; 32]);
        let listed = [
            Listed {
                hash: h(1),
                size: 10,
                modified_ms: 1_000,
            },
            Listed {
                hash: h(2),
                size: 20,
                modified_ms: 1_000,
            },
            Listed {
                hash: h(3),
                size: 30,
                modified_ms: 9_500,
            },
            Listed {
                hash: h(4),
                size: 40,
                modified_ms: 8_999,
            },
        ];
        let marked: HashSet<_> = [h(2)].into();
        let (doomed, in_grace) = condemned(&listed, &marked, Duration::from_secs(1), 10_000);
        let doomed: Vec<_> = doomed.iter().map(|b| b.hash).collect();
        assert_eq!(doomed, vec![h(1), h(4)], "marked and young blobs stay");
        assert_eq!(in_grace, 1);
        // No grace: everything unmarked goes; nothing marked ever does.
        let (doomed, _) = condemned(&listed, &marked, Duration::ZERO, 10_000);
        assert_eq!(doomed.len(), 3);
        let all: HashSet<_> = listed.iter().map(|b| b.hash).collect();
        assert!(condemned(&listed, &all, Duration::ZERO, 10_000)
            .0
            .is_empty());
    }
}
