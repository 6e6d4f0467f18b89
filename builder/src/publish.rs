//! Collects the output directory into a file list, uploads every file in parallel and writes the
//! manifest last, so a deployment that fails half-way is never served.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use gitdeploy_core::manifest::MANIFEST_VERSION;
use gitdeploy_core::{DeploymentId, FileEntry, Manifest, ObjectLayout};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::config::BuilderConfig;
use crate::detect;

/// Uploads in flight at once.
const PARALLEL_UPLOADS: usize = 16;

/// A file to publish: where it is on disk and its site-relative path.
#[derive(Debug)]
pub struct OutputFile {
    /// Path on disk (symlinks already resolved).
    pub source: PathBuf,
    /// Site-relative path, `/`-separated.
    pub relative: String,
}

/// Walks `root` and lists the files to publish. `from_repo_root` hides dotfiles (the repository
/// itself is the site). Symlinks that resolve inside `root` are followed; any that point outside
/// are refused, as are names that are not UTF-8.
pub fn collect(root: &Path, from_repo_root: bool) -> Result<Vec<OutputFile>, String> {
    let canonical_root = root
        .canonicalize()
        .map_err(|e| format!("cannot read output directory: {e}"))?;
    let mut files = Vec::new();
    let mut dirs = vec![(canonical_root.clone(), String::new())];
    while let Some((dir, prefix)) = dirs.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| format!("cannot list {prefix:?}: {e}"))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot list {prefix:?}: {e}"))?;
            let name = entry
                .file_name()
                .into_string()
                .map_err(|n| format!("file name {n:?} is not valid UTF-8"))?;
            let relative = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            if name == ".git" || (from_repo_root && !detect::publish_from_root(&relative)) {
                continue;
            }
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).map_err(|e| format!("{relative}: {e}"))?;
            let (path, meta) = if meta.file_type().is_symlink() {
                let target = path
                    .canonicalize()
                    .map_err(|_| format!("symlink {relative} is broken"))?;
                if !target.starts_with(&canonical_root) {
                    return Err(format!(
                        "symlink {relative} points outside the output directory"
                    ));
                }
                let meta = std::fs::metadata(&target).map_err(|e| format!("{relative}: {e}"))?;
                if meta.is_dir() {
                    return Err(format!(
                        "symlink {relative} points to a directory; link files instead"
                    ));
                }
                (target, meta)
            } else {
                (path, meta)
            };
            if meta.is_dir() {
                dirs.push((path, relative));
            } else if meta.is_file() {
                files.push(OutputFile {
                    source: path,
                    relative,
                });
            }
        }
    }
    files.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok(files)
}

/// An S3 client for the builder's configuration.
pub fn s3_client(config: &BuilderConfig) -> aws_sdk_s3::Client {
    let mut b = aws_sdk_s3::Config::builder()
        .region(aws_sdk_s3::config::Region::new(config.region.clone()))
        .force_path_style(config.s3_endpoint.is_some());
    if let Some(endpoint) = &config.s3_endpoint {
        b = b.endpoint_url(endpoint);
    }
    if let Some((id, secret)) = &config.credentials {
        b = b.credentials_provider(aws_credential_types::Credentials::new(
            id,
            secret,
            None,
            None,
            "gitdeploy-builder",
        ));
    }
    aws_sdk_s3::Client::from_conf(b.build())
}

/// Totals of a publish.
pub struct Published {
    /// Files uploaded.
    pub files: u64,
    /// Bytes uploaded.
    pub bytes: u64,
}

/// Uploads `files` for `id` and then the manifest. Any failure leaves no manifest behind.
pub async fn publish(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    layout: &ObjectLayout,
    id: &DeploymentId,
    commit: &str,
    files: Vec<OutputFile>,
) -> Result<Published, String> {
    let permits = Arc::new(Semaphore::new(PARALLEL_UPLOADS));
    let mut tasks = JoinSet::new();
    for file in files {
        let client = client.clone();
        let bucket = bucket.to_owned();
        let key = layout.site_file(id, &file.relative);
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.map_err(|e| e.to_string())?;
            let bytes = tokio::fs::read(&file.source)
                .await
                .map_err(|e| format!("cannot read {}: {e}", file.relative))?;
            let entry = FileEntry {
                size: bytes.len() as u64,
                etag: format!("\"{}\"", &hex::encode(Sha256::digest(&bytes))[..32]),
                content_type: detect::content_type(&file.relative),
            };
            client
                .put_object()
                .bucket(&bucket)
                .key(&key)
                .content_type(&entry.content_type)
                .body(ByteStream::from(bytes))
                .send()
                .await
                .map_err(|e| format!("upload of {} failed: {}", file.relative, error_chain(&e)))?;
            Ok::<_, String>((file.relative, entry))
        });
    }
    let mut entries = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (relative, entry) = joined.map_err(|e| format!("upload task failed: {e}"))??;
        entries.insert(relative, entry);
    }
    let totals = Published {
        files: entries.len() as u64,
        bytes: entries.values().map(|e| e.size).sum(),
    };
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        deployment: id.to_string(),
        commit: Some(commit.to_owned()),
        created_unix_ms: crate::events::now_ms(),
        files: entries,
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
        .map_err(|e| format!("writing the manifest failed: {}", error_chain(&e)))?;
    Ok(totals)
}

/// An error with its sources, one line (the SDK's top-level message alone says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collect_follows_inner_links_and_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("index.html"), "x").unwrap();
        std::fs::write(root.join("a/b/deep file.txt"), "y").unwrap();
        std::fs::write(root.join(".env"), "SECRET=1").unwrap();
        std::os::unix::fs::symlink(root.join("index.html"), root.join("alias.html")).unwrap();

        let names =
            |files: Vec<OutputFile>| files.into_iter().map(|f| f.relative).collect::<Vec<_>>();
        assert_eq!(
            names(collect(root, true).unwrap()),
            ["a/b/deep file.txt", "alias.html", "index.html"]
        );
        assert!(names(collect(root, false).unwrap()).contains(&".env".to_owned()));

        std::os::unix::fs::symlink("/etc/passwd", root.join("passwd")).unwrap();
        let err = collect(root, true).unwrap_err();
        assert!(err.contains("points outside"), "{err}");
    }
}
