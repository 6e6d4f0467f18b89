//! Publishes the collected files ([`crate::collect`]) into the content-addressed blob store and
//! writes the manifest last, so a deployment that fails half-way is never served.
//!
//! The same steps whatever the store ([`BlobSink`]: the bucket for a builder, the deploy API
//! for the CLI): every file is read and hashed, the list of (path, hash, size) is looked up at
//! once, and a blob the store already holds (the same bytes in an earlier deployment of any
//! site) is neither uploaded nor compressed again, since the store records its variants
//! ([`recorded::Recorded`]). A missing one gets its variants made and uploaded first and itself
//! last, so an identity blob that exists vouches for the variants it records. Small files keep
//! their bytes between the passes; others are read again and refused if they changed. An
//! interrupted publish resumes the same way: whatever reached the store is found there.

mod blobs;
pub mod gc;
mod multipart;
mod recorded;
mod sink;
mod staged;
mod verify;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use gitdeploy_core::manifest::MANIFEST_VERSION;
use gitdeploy_core::{
    ContentHash, DeploymentId, Encoding, FileEntry, Manifest, SiteRules, Variant,
};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

pub use blobs::{Placement, S3Blobs};
pub use recorded::{read_recorded, write_recorded, Recorded};
pub use sink::{BlobSink, Planned, Progress};
pub use staged::{publish_checked, publish_staged, remove_staging};
pub use verify::verified_record;

use crate::collect::{open_output_file, OutputFile};
use crate::config::BuilderConfig;
use crate::storage;
use crate::{compress, detect};

/// Uploads in flight at once.
const PARALLEL_UPLOADS: usize = 16;

/// An S3 client for the builder's configuration: static credentials when given (with
/// `AWS_SESSION_TOKEN` for a scoped session), otherwise the standard AWS chain.
pub async fn s3_client(config: &BuilderConfig) -> aws_sdk_s3::Client {
    let endpoint = storage::Endpoint {
        url: config.s3_endpoint.clone(),
        region: config.region.clone(),
    };
    let credentials = match &config.credentials {
        Some((id, secret)) => {
            storage::static_keys(id, secret, std::env::var("AWS_SESSION_TOKEN").ok())
        }
        None => storage::aws_chain(&config.region).await,
    };
    storage::client(&endpoint, credentials)
}

/// Totals of a publish.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Published {
    /// Files in the deployment.
    pub files: u64,
    /// Their bytes (as built, without their compressed variants).
    pub bytes: u64,
    /// Precompressed variants the manifest names.
    pub variants: u64,
    /// Blobs uploaded (files and variants the store lacked).
    pub uploaded: u64,
    /// Bytes uploaded.
    pub uploaded_bytes: u64,
    /// Files whose blob the store held already (nothing uploaded or compressed for them).
    pub reused: u64,
    /// Blobs uploaded in parts.
    pub multipart: u64,
}

impl Published {
    /// The build log's line for it (the bench reads the time after the last " in ").
    pub fn summary(&self, took: &str) -> String {
        format!(
            "Published {} files ({} bytes) and {} precompressed variants: {} blobs uploaded \
             ({} bytes, {} in parts), {} files already stored, in {took}",
            self.files,
            self.bytes,
            self.variants,
            self.uploaded,
            self.uploaded_bytes,
            self.multipart,
            self.reused
        )
    }

    fn add(&mut self, file: &FileDone) {
        self.files += 1;
        self.bytes += file.entry.size;
        self.variants += file.entry.encodings.len() as u64;
        self.uploaded += file.uploaded;
        self.uploaded_bytes += file.uploaded_bytes;
        self.reused += u64::from(file.reused);
        self.multipart += u64::from(file.multipart);
    }
}

/// What is being published: the deployment, its project and the commit built.
pub struct Release<'a> {
    /// The deployment.
    pub id: &'a DeploymentId,
    /// Its project, recorded in the manifest.
    pub project: Option<&'a str>,
    /// The commit built, when there is one.
    pub commit: Option<&'a str>,
}

/// A file hashed in the first pass, with its bytes when they were small enough to keep.
struct Hashed {
    file: OutputFile,
    size: u64,
    hash: ContentHash,
    content_type: String,
    kept: Option<Vec<u8>>,
}

/// One file's outcome.
struct FileDone {
    relative: String,
    entry: FileEntry,
    uploaded: u64,
    uploaded_bytes: u64,
    reused: bool,
    multipart: bool,
}

/// Files at most this large keep their bytes between the passes ...
const KEEP_FILE: u64 = 1 << 20;
/// ... while all kept bytes together stay under this.
const KEEP_TOTAL: u64 = 128 << 20;

/// Publishes `files` into `blobs` for the release, then the manifest: every file is hashed,
/// the whole list looked up at once, and only what the store lacks is compressed and uploaded.
/// Any failure leaves no manifest behind.
pub async fn publish<B: BlobSink>(
    blobs: &B,
    release: Release<'_>,
    files: Vec<OutputFile>,
    rules: SiteRules,
    progress: &Arc<Progress>,
) -> Result<Published, String> {
    if release.id != blobs.deployment() {
        return Err("the blob store was opened for another deployment".into());
    }
    Progress::add(&progress.total_files, files.len() as u64);
    let site_files: Arc<BTreeSet<String>> =
        Arc::new(files.iter().map(|f| f.relative.clone()).collect());
    let hashed = hash_all(files, progress).await?;
    let plan = hashed
        .iter()
        .map(|h| Planned {
            path: h.file.relative.clone(),
            hash: h.hash,
            size: h.size,
        })
        .collect();
    let stored = blobs.lookup(plan).await?;
    if stored.len() != hashed.len() {
        return Err("the blob lookup answered for another list of files".into());
    }
    let missing = stored.iter().filter(|s| s.is_none()).count() as u64;
    Progress::add(&progress.missing_files, missing);
    let permits = Arc::new(Semaphore::new(PARALLEL_UPLOADS));
    let mut tasks = JoinSet::new();
    for (file, stored) in hashed.into_iter().zip(stored) {
        let (blobs, permits, site_files, progress) = (
            blobs.clone(),
            permits.clone(),
            site_files.clone(),
            progress.clone(),
        );
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.map_err(|e| e.to_string())?;
            let done = store_file(&blobs, file, stored, &site_files, &progress).await?;
            Progress::add(&progress.done_files, 1);
            Ok::<_, String>(done)
        });
    }
    let mut totals = Published::default();
    let mut entries = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        let done = joined.map_err(|e| format!("upload task failed: {e}"))??;
        totals.add(&done);
        entries.insert(done.relative, done.entry);
    }
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        deployment: release.id.to_string(),
        project: release.project.map(str::to_owned),
        commit: release.commit.map(str::to_owned),
        created_unix_ms: crate::events::now_ms(),
        files: entries,
        rules,
    };
    blobs.finalize(manifest).await?;
    Ok(totals)
}

fn sha256(bytes: &[u8]) -> ContentHash {
    ContentHash::from_digest(Sha256::digest(bytes).into())
}

/// The first pass: every file read and hashed (in parallel), in the order given.
async fn hash_all(files: Vec<OutputFile>, progress: &Arc<Progress>) -> Result<Vec<Hashed>, String> {
    let permits = Arc::new(Semaphore::new(PARALLEL_UPLOADS));
    let kept_total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for (index, file) in files.into_iter().enumerate() {
        let (permits, kept_total, progress) =
            (permits.clone(), kept_total.clone(), progress.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.map_err(|e| e.to_string())?;
            let hashed = hash_one(file, &kept_total).await?;
            Progress::add(&progress.hashed_files, 1);
            Progress::add(&progress.total_bytes, hashed.size);
            Ok::<_, String>((index, hashed))
        });
    }
    let mut out: Vec<Option<Hashed>> = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (index, hashed) = joined.map_err(|e| format!("hashing task failed: {e}"))??;
        if out.len() <= index {
            out.resize_with(index + 1, || None);
        }
        out[index] = Some(hashed);
    }
    Ok(out.into_iter().flatten().collect())
}

async fn hash_one(
    file: OutputFile,
    kept_total: &std::sync::atomic::AtomicU64,
) -> Result<Hashed, String> {
    use std::sync::atomic::Ordering;
    let opened = open_output_file(&file)?;
    let size = opened
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", file.relative))?
        .len();
    let content_type = detect::content_type(&file.relative);
    if size > multipart::THRESHOLD {
        let hash = multipart::hash_file(opened, &file.relative).await?;
        return Ok(Hashed {
            file,
            size,
            hash,
            content_type,
            kept: None,
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    tokio::io::AsyncReadExt::read_to_end(&mut tokio::fs::File::from_std(opened), &mut bytes)
        .await
        .map_err(|e| format!("cannot read {}: {e}", file.relative))?;
    let hash = sha256(&bytes);
    let size = bytes.len() as u64;
    let keep =
        size <= KEEP_FILE && kept_total.fetch_add(size, Ordering::Relaxed) + size <= KEEP_TOTAL;
    Ok(Hashed {
        file,
        size,
        hash,
        content_type,
        kept: keep.then_some(bytes),
    })
}

/// The second pass for one file: nothing when the store holds it and its variants; otherwise
/// its bytes (kept, or read again and checked unchanged), the variants the store lacks, and the
/// blob itself last.
async fn store_file<B: BlobSink>(
    blobs: &B,
    hashed: Hashed,
    stored: Option<Recorded>,
    site_files: &BTreeSet<String>,
    progress: &Progress,
) -> Result<FileDone, String> {
    let Hashed {
        file,
        size,
        hash,
        content_type,
        kept,
    } = hashed;
    let mut done = FileDone {
        relative: file.relative.clone(),
        entry: FileEntry {
            size,
            etag: hash.etag(),
            content_type,
            hash: Some(hash),
            encodings: BTreeMap::new(),
        },
        uploaded: 0,
        uploaded_bytes: 0,
        reused: stored.is_some(),
        multipart: false,
    };
    let failed = |relative: &str, e: String| format!("upload of {relative} failed: {e}");
    if size > multipart::THRESHOLD {
        if stored.is_none() {
            let opened = reopen(&file.relative, &file.source, file.owner)?;
            blobs
                .put_large(hash, opened, size, file.relative.clone())
                .await?;
            (done.uploaded, done.uploaded_bytes, done.multipart) = (1, size, true);
            Progress::add(&progress.uploaded_bytes, size);
        }
        return Ok(done);
    }
    let wanted = compress::wanted(&file.relative, size, &done.entry.content_type, site_files);
    let mut recorded = stored.clone().unwrap_or_default();
    let to_make: Vec<Encoding> = wanted
        .iter()
        .copied()
        .filter(|e| !recorded.contains_key(e))
        .collect();
    if stored.is_none() || !to_make.is_empty() {
        let bytes = match kept {
            Some(bytes) => bytes,
            None => read_again(&file, &hash).await?,
        };
        let (bytes, made) = tokio::task::spawn_blocking(move || {
            let made: Vec<(Encoding, Vec<u8>)> = to_make
                .into_iter()
                .map(|enc| (enc, compress::compress(&bytes, enc)))
                .collect();
            (bytes, made)
        })
        .await
        .map_err(|e| format!("compressing {} failed: {e}", done.relative))?;
        let made_any = !made.is_empty();
        for (enc, body) in made {
            if body.len() >= bytes.len() {
                recorded.insert(enc, None);
                continue;
            }
            let variant = sha256(&body);
            let len = body.len() as u64;
            blobs
                .put(variant, body, None)
                .await
                .map_err(|e| failed(&format!("{}{}", done.relative, enc.suffix()), e))?;
            (done.uploaded, done.uploaded_bytes) = (done.uploaded + 1, done.uploaded_bytes + len);
            Progress::add(&progress.uploaded_bytes, len);
            recorded.insert(enc, Some((variant, len)));
        }
        // A missing blob goes last, vouching for its variants; a stored one is written again
        // to record new variants where the sink records them.
        if stored.is_none() || (made_any && blobs.records_variants()) {
            blobs
                .put(hash, bytes, Some(recorded.clone()))
                .await
                .map_err(|e| failed(&done.relative, e))?;
            if stored.is_none() {
                (done.uploaded, done.uploaded_bytes) =
                    (done.uploaded + 1, done.uploaded_bytes + size);
                Progress::add(&progress.uploaded_bytes, size);
            }
        }
    }
    for enc in wanted {
        if let Some(Some((variant, len))) = recorded.get(&enc) {
            done.entry.encodings.insert(
                enc,
                Variant {
                    size: *len,
                    etag: hash.variant_etag(enc.token()),
                    hash: Some(*variant),
                },
            );
        }
    }
    Ok(done)
}

/// A file's bytes read again for its second pass, refused when they changed since the first.
async fn read_again(file: &OutputFile, hash: &ContentHash) -> Result<Vec<u8>, String> {
    let opened = reopen(&file.relative, &file.source, file.owner)?;
    let mut bytes = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut tokio::fs::File::from_std(opened), &mut bytes)
        .await
        .map_err(|e| format!("cannot read {}: {e}", file.relative))?;
    if sha256(&bytes) != *hash {
        return Err(format!(
            "{} changed while it was being published; publish again",
            file.relative
        ));
    }
    Ok(bytes)
}

/// Opens a file again for its second pass, with the same checks as the first.
fn reopen(
    relative: &str,
    source: &std::path::Path,
    owner: Option<u32>,
) -> Result<std::fs::File, String> {
    open_output_file(&OutputFile {
        source: source.to_owned(),
        relative: relative.to_owned(),
        owner,
    })
}
