//! Uploads the collected files ([`crate::collect`]) in parallel and writes the manifest last, so
//! a deployment that fails half-way is never served.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use gitdeploy_core::manifest::MANIFEST_VERSION;
use gitdeploy_core::{DeploymentId, FileEntry, Manifest, ObjectLayout, SiteRules, Variant};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::collect::{open_output_file, OutputFile};
use crate::config::BuilderConfig;
use crate::storage::{self, describe as storage_error, error_chain};
use crate::{compress, detect};

/// Files larger than this are uploaded in parts, never held in memory whole.
const MULTIPART_THRESHOLD: u64 = 16 << 20;
/// Size of one part of a multipart upload.
const PART_SIZE: usize = 8 << 20;

/// Uploads a large file in parts, hashing it as it goes; aborts the upload on any failure so no
/// orphaned parts are left behind.
async fn upload_multipart(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    file: &OutputFile,
    opened: std::fs::File,
) -> Result<FileEntry, String> {
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    use tokio::io::AsyncReadExt;
    let content_type = detect::content_type(&file.relative);
    let fail = |what: &str, e: &dyn std::error::Error| {
        format!(
            "upload of {} failed ({what}): {}",
            file.relative,
            error_chain(e)
        )
    };
    let created = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .content_type(&content_type)
        .send()
        .await
        .map_err(|e| fail("start", &e))?;
    let upload_id = created
        .upload_id()
        .ok_or("S3 returned no upload id")?
        .to_owned();
    let parts = async {
        let mut source = tokio::fs::File::from_std(opened);
        let mut hasher = Sha256::new();
        let mut parts = Vec::new();
        let mut size = 0u64;
        loop {
            let mut chunk = Vec::with_capacity(PART_SIZE);
            while chunk.len() < PART_SIZE {
                let n = (&mut source)
                    .take((PART_SIZE - chunk.len()) as u64)
                    .read_to_end(&mut chunk)
                    .await
                    .map_err(|e| format!("cannot read {}: {e}", file.relative))?;
                if n == 0 {
                    break;
                }
            }
            if chunk.is_empty() {
                break;
            }
            hasher.update(&chunk);
            size += chunk.len() as u64;
            let number = parts.len() as i32 + 1;
            let part = client
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .part_number(number)
                .body(ByteStream::from(chunk))
                .send()
                .await
                .map_err(|e| fail("part", &e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(part.e_tag)
                    .build(),
            );
        }
        Ok::<_, String>((parts, hex::encode(hasher.finalize()), size))
    }
    .await;
    let (parts, hash, size) = match parts {
        Ok(p) => p,
        Err(e) => {
            let _ = client
                .abort_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
            return Err(e);
        }
    };
    client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(&upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .map_err(|e| fail("complete", &e))?;
    Ok(FileEntry {
        size,
        etag: format!("\"{}\"", &hash[..32]),
        content_type,
        encodings: BTreeMap::new(),
    })
}

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
pub struct Published {
    /// Files uploaded.
    pub files: u64,
    /// Bytes uploaded (files as built, without their compressed variants).
    pub bytes: u64,
    /// Precompressed variants uploaded.
    pub variants: u64,
    /// Files uploaded in parts.
    pub multipart: u64,
}

/// What is being published: the deployment, its project and the commit built.
pub struct Release<'a> {
    /// The deployment.
    pub id: &'a DeploymentId,
    /// Its project, recorded in the manifest.
    pub project: Option<&'a str>,
    /// The commit built.
    pub commit: &'a str,
}

/// Uploads `files` for the release and then the manifest. Any failure leaves no manifest behind.
pub async fn publish(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    layout: &ObjectLayout,
    release: Release<'_>,
    files: Vec<OutputFile>,
    rules: SiteRules,
) -> Result<Published, String> {
    let Release {
        id,
        project,
        commit,
    } = release;
    let permits = Arc::new(Semaphore::new(PARALLEL_UPLOADS));
    let site_files: Arc<BTreeSet<String>> =
        Arc::new(files.iter().map(|f| f.relative.clone()).collect());
    let mut tasks = JoinSet::new();
    for file in files {
        let client = client.clone();
        let bucket = bucket.to_owned();
        let layout = layout.clone();
        let id = id.clone();
        let permits = permits.clone();
        let site_files = site_files.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.map_err(|e| e.to_string())?;
            let opened = open_output_file(&file)?;
            let size = opened
                .metadata()
                .map_err(|e| format!("cannot read {}: {e}", file.relative))?
                .len();
            if size > MULTIPART_THRESHOLD {
                let key = layout.site_file(&id, &file.relative);
                let entry = upload_multipart(&client, &bucket, &key, &file, opened).await?;
                return Ok::<_, String>((file.relative, entry, true));
            }
            let mut bytes = Vec::with_capacity(size as usize);
            tokio::io::AsyncReadExt::read_to_end(
                &mut tokio::fs::File::from_std(opened),
                &mut bytes,
            )
            .await
            .map_err(|e| format!("cannot read {}: {e}", file.relative))?;
            let hash = hex::encode(Sha256::digest(&bytes));
            let content_type = detect::content_type(&file.relative);
            let (bytes, compressed) = {
                let (relative, content_type) = (file.relative.clone(), content_type.clone());
                tokio::task::spawn_blocking(move || {
                    let v = compress::variants(&relative, &bytes, &content_type, &site_files);
                    (bytes, v)
                })
                .await
                .map_err(|e| format!("compressing {} failed: {e}", file.relative))?
            };
            let mut entry = FileEntry {
                size: bytes.len() as u64,
                etag: format!("\"{}\"", &hash[..32]),
                content_type,
                encodings: BTreeMap::new(),
            };
            let put = |key: String, body: Vec<u8>, encoding: Option<&'static str>| {
                let req = client
                    .put_object()
                    .bucket(&bucket)
                    .key(key)
                    .content_type(&entry.content_type)
                    .set_content_encoding(encoding.map(str::to_owned))
                    .body(ByteStream::from(body));
                async move { req.send().await.map(|_| ()) }
            };
            put(layout.site_file(&id, &file.relative), bytes, None)
                .await
                .map_err(|e| {
                    format!("upload of {} failed: {}", file.relative, storage_error(&e))
                })?;
            for (encoding, body) in compressed {
                let variant = Variant {
                    size: body.len() as u64,
                    etag: format!("\"{}-{}\"", &hash[..32], encoding.token()),
                };
                put(
                    layout.site_variant(&id, &file.relative, encoding),
                    body,
                    Some(encoding.token()),
                )
                .await
                .map_err(|e| {
                    format!(
                        "upload of {}{} failed: {}",
                        file.relative,
                        encoding.suffix(),
                        storage_error(&e)
                    )
                })?;
                entry.encodings.insert(encoding, variant);
            }
            Ok::<_, String>((file.relative, entry, false))
        });
    }
    let mut entries = BTreeMap::new();
    let mut multipart = 0;
    while let Some(joined) = tasks.join_next().await {
        let (relative, entry, in_parts) =
            joined.map_err(|e| format!("upload task failed: {e}"))??;
        multipart += u64::from(in_parts);
        entries.insert(relative, entry);
    }
    let totals = Published {
        files: entries.len() as u64,
        bytes: entries.values().map(|e| e.size).sum(),
        variants: entries.values().map(|e| e.encodings.len() as u64).sum(),
        multipart,
    };
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        deployment: id.to_string(),
        project: project.map(str::to_owned),
        commit: Some(commit.to_owned()),
        created_unix_ms: crate::events::now_ms(),
        files: entries,
        rules,
    };
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
    Ok(totals)
}
