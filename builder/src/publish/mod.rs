//! Publishes the collected files ([`crate::collect`]) into the content-addressed blob store and
//! writes the manifest last, so a deployment that fails half-way is never served.
//!
//! Each file is read once, hashed, and looked up (`HEAD blobs/<sha256>`): a blob the store
//! already holds (the same bytes in an earlier deployment of any site) is neither uploaded nor
//! compressed again, since its metadata records its variants ([`blobs::Recorded`]). A missing
//! one gets its variants made and uploaded first and itself last, so an identity blob that
//! exists vouches for the variants it records. An interrupted publish resumes the same way:
//! whatever reached the store is found there.

mod blobs;
mod multipart;
mod staged;

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
pub use staged::{publish_staged, remove_staging};

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

/// One file's outcome.
struct FileDone {
    relative: String,
    entry: FileEntry,
    uploaded: u64,
    uploaded_bytes: u64,
    reused: bool,
    multipart: bool,
}

/// Publishes `files` into `blobs` for the release and then the manifest. Any failure leaves no
/// manifest behind.
pub async fn publish(
    blobs: &S3Blobs,
    release: Release<'_>,
    files: Vec<OutputFile>,
    rules: SiteRules,
) -> Result<Published, String> {
    if release.id != blobs.deployment() {
        return Err("the blob store was opened for another deployment".into());
    }
    let permits = Arc::new(Semaphore::new(PARALLEL_UPLOADS));
    let site_files: Arc<BTreeSet<String>> =
        Arc::new(files.iter().map(|f| f.relative.clone()).collect());
    let mut tasks = JoinSet::new();
    for file in files {
        let blobs = blobs.clone();
        let permits = permits.clone();
        let site_files = site_files.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.map_err(|e| e.to_string())?;
            publish_file(&blobs, file, &site_files).await
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
    blobs.finalize(&manifest).await?;
    Ok(totals)
}

fn sha256(bytes: &[u8]) -> ContentHash {
    ContentHash::from_digest(Sha256::digest(bytes).into())
}

/// Reads, hashes and looks up one file; uploads what the store lacks.
async fn publish_file(
    blobs: &S3Blobs,
    file: OutputFile,
    site_files: &BTreeSet<String>,
) -> Result<FileDone, String> {
    let opened = open_output_file(&file)?;
    let size = opened
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", file.relative))?
        .len();
    let content_type = detect::content_type(&file.relative);
    let mut done = FileDone {
        relative: file.relative,
        entry: FileEntry {
            size,
            etag: String::new(),
            content_type,
            hash: None,
            encodings: BTreeMap::new(),
        },
        uploaded: 0,
        uploaded_bytes: 0,
        reused: false,
        multipart: false,
    };
    let failed = |relative: &str, e: String| format!("upload of {relative} failed: {e}");
    if size > multipart::THRESHOLD {
        let hash = multipart::hash_file(opened, &done.relative).await?;
        if blobs.lookup(&hash).await?.is_some() {
            done.reused = true;
        } else {
            multipart::upload(
                blobs,
                &hash,
                reopen(&done.relative, &file.source, file.owner)?,
                &done.relative,
            )
            .await?;
            (done.uploaded, done.uploaded_bytes, done.multipart) = (1, size, true);
        }
        done.entry.etag = hash.etag();
        done.entry.hash = Some(hash);
        return Ok(done);
    }
    let mut bytes = Vec::with_capacity(size as usize);
    tokio::io::AsyncReadExt::read_to_end(&mut tokio::fs::File::from_std(opened), &mut bytes)
        .await
        .map_err(|e| format!("cannot read {}: {e}", done.relative))?;
    let hash = sha256(&bytes);
    let wanted = compress::wanted(
        &done.relative,
        bytes.len() as u64,
        &done.entry.content_type,
        site_files,
    );
    let stored = blobs.lookup(&hash).await?;
    let mut recorded = stored.clone().unwrap_or_default();
    let to_make: Vec<Encoding> = wanted
        .iter()
        .copied()
        .filter(|e| !recorded.contains_key(e))
        .collect();
    let bytes = if to_make.is_empty() {
        bytes
    } else {
        let (bytes, made) = tokio::task::spawn_blocking(move || {
            let made: Vec<(Encoding, Vec<u8>)> = to_make
                .into_iter()
                .map(|enc| (enc, compress::compress(&bytes, enc)))
                .collect();
            (bytes, made)
        })
        .await
        .map_err(|e| format!("compressing {} failed: {e}", done.relative))?;
        for (enc, body) in made {
            if body.len() >= bytes.len() {
                recorded.insert(enc, None);
                continue;
            }
            let variant = sha256(&body);
            let len = body.len() as u64;
            blobs
                .put(&variant, body, None)
                .await
                .map_err(|e| failed(&format!("{}{}", done.relative, enc.suffix()), e))?;
            (done.uploaded, done.uploaded_bytes) = (done.uploaded + 1, done.uploaded_bytes + len);
            recorded.insert(enc, Some((variant, len)));
        }
        // The identity blob is written again to record the new variants, unless it is shared
        // already and this uploader may not write the shared store.
        if stored.is_some() && blobs.placement() == Placement::Shared {
            blobs
                .put(&hash, bytes.clone(), Some(&recorded))
                .await
                .map_err(|e| failed(&done.relative, e))?;
        }
        bytes
    };
    if stored.is_none() {
        let len = bytes.len() as u64;
        blobs
            .put(&hash, bytes, Some(&recorded))
            .await
            .map_err(|e| failed(&done.relative, e))?;
        (done.uploaded, done.uploaded_bytes) = (done.uploaded + 1, done.uploaded_bytes + len);
    } else {
        done.reused = true;
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
    done.entry.etag = hash.etag();
    done.entry.hash = Some(hash);
    Ok(done)
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
