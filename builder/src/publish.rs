//! Collects the output directory into a file list, uploads every file in parallel and writes the
//! manifest last, so a deployment that fails half-way is never served.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use gitdeploy_core::job::{BuildLimits, ServingOptions};
use gitdeploy_core::manifest::MANIFEST_VERSION;
use gitdeploy_core::rules::{parse_headers, parse_redirects};
use gitdeploy_core::{DeploymentId, FileEntry, Manifest, ObjectLayout, SiteRules, Variant};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::config::BuilderConfig;
use crate::events::Emitter;
use crate::{compress, detect};

/// Rule files read from the output root into the manifest; never published as files.
pub const RULE_FILES: [&str; 2] = ["_redirects", "_headers"];
/// Largest rule file read.
const MAX_RULE_FILE: u64 = 1 << 20;

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

/// A file to publish: where it is on disk and its site-relative path.
#[derive(Debug)]
pub struct OutputFile {
    /// Path on disk (symlinks already resolved).
    pub source: PathBuf,
    /// Site-relative path, `/`-separated.
    pub relative: String,
    /// The uid the file must belong to when it is opened for upload.
    pub owner: Option<u32>,
}

/// Where the files to publish come from and whose they must be.
pub struct OutputSource<'a> {
    /// The output directory (`output_dir`, or the root directory itself).
    pub root: &'a Path,
    /// The checkout: the output directory must resolve inside it, so an output directory that
    /// is (or passes through) a symlink cannot publish a directory of the host.
    pub checkout: &'a Path,
    /// The uid the repository's commands ran as, when that was not the builder's own: every file
    /// published must belong to it, so nothing the build merely linked (a hard link to a file of
    /// the host) is read with the builder's privileges.
    pub owner: Option<u32>,
    /// The repository itself is the site: dotfiles stay private.
    pub from_repo_root: bool,
    /// Longest site-relative path whose objects (and their variants) the bucket accepts.
    pub max_path_bytes: usize,
}

/// Why a site-relative path cannot be published, if it cannot: the bucket would refuse its key,
/// or a URL could never name it (control characters, backslashes).
pub fn unpublishable_path(relative: &str, max_path_bytes: usize) -> Option<String> {
    if let Some(c) = relative.chars().find(|c| c.is_control() || *c == '\\') {
        return Some(format!(
            "{relative:?} has a character no URL can name ({c:?}); rename the file"
        ));
    }
    if relative.len() > max_path_bytes {
        return Some(format!(
            "{relative:?} is {} bytes long; the storage accepts paths of up to {max_path_bytes} bytes here",
            relative.len()
        ));
    }
    None
}

/// The canonical output directory, refused unless it is a directory inside the checkout.
pub fn confined_output_root(root: &Path, checkout: &Path) -> Result<PathBuf, String> {
    let checkout = checkout
        .canonicalize()
        .map_err(|e| format!("cannot read the checkout: {e}"))?;
    let canonical = root
        .canonicalize()
        .map_err(|e| format!("cannot read the output directory: {e}"))?;
    if !canonical.starts_with(&checkout) {
        return Err(
            "the output directory resolves outside the repository (a symlink?); it must be a \
             directory inside the checkout"
                .into(),
        );
    }
    if !canonical.is_dir() {
        return Err("the output directory is not a directory".into());
    }
    Ok(canonical)
}

/// Opens a collected file for upload without following a symlink at its last component, and
/// checks again that it is a regular file of the expected owner.
pub fn open_output_file(file: &OutputFile) -> Result<std::fs::File, String> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(&file.source)
        .map_err(|e| format!("cannot read {}: {e}", file.relative))?;
    let meta = opened
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", file.relative))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", file.relative));
    }
    if let Some(owner) = file.owner {
        if meta.uid() != owner {
            return Err(foreign_file(&file.relative, meta.uid()));
        }
    }
    Ok(opened)
}

fn foreign_file(relative: &str, uid: u32) -> String {
    format!("{relative} was not written by the build (it belongs to uid {uid}, a link to a file outside?)")
}

/// Walks the output directory and lists the files to publish. Dotfiles are hidden when the
/// repository itself is the site. Symlinks that resolve inside the output directory are
/// followed; any that point outside are refused, as are names that are not UTF-8 and files that
/// do not belong to the build.
pub fn collect(source: &OutputSource<'_>, limits: &BuildLimits) -> Result<Vec<OutputFile>, String> {
    use std::os::unix::fs::MetadataExt;
    let from_repo_root = source.from_repo_root;
    let canonical_root = confined_output_root(source.root, source.checkout)?;
    let mut files = Vec::new();
    let mut total = 0u64;
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
            if name == ".git"
                || (from_repo_root && !detect::publish_from_root(&relative))
                || (prefix.is_empty() && RULE_FILES.contains(&name.as_str()))
            {
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
            if let Some(why) = unpublishable_path(&relative, source.max_path_bytes) {
                return Err(why);
            }
            if meta.is_dir() {
                dirs.push((path, relative));
            } else if meta.is_file() {
                if let Some(owner) = source.owner {
                    if meta.uid() != owner {
                        return Err(foreign_file(&relative, meta.uid()));
                    }
                }
                if meta.len() > limits.max_file_bytes {
                    return Err(format!(
                        "{relative} is {} bytes, over the limit of {} bytes per file",
                        meta.len(),
                        limits.max_file_bytes
                    ));
                }
                total += meta.len();
                if total > limits.max_output_bytes {
                    return Err(format!(
                        "the output is over the limit of {} bytes",
                        limits.max_output_bytes
                    ));
                }
                if files.len() as u64 >= limits.max_files {
                    return Err(format!(
                        "the output has more than {} files",
                        limits.max_files
                    ));
                }
                files.push(OutputFile {
                    source: path,
                    relative,
                    owner: source.owner,
                });
            }
        }
    }
    files.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok(files)
}

/// Reads `_redirects` and `_headers` from the output root into the site's rules, logging every
/// malformed line with its number (the line is skipped, the build goes on).
pub fn site_rules(
    root: &Path,
    options: &ServingOptions,
    emitter: &Emitter,
) -> Result<SiteRules, String> {
    let read = |name: &str| -> Result<Option<String>, String> {
        let path = root.join(name);
        match std::fs::symlink_metadata(&path) {
            Err(_) => Ok(None),
            Ok(meta) if !meta.is_file() => Err(format!("{name} must be a regular file")),
            Ok(meta) if meta.len() > MAX_RULE_FILE => {
                Err(format!("{name} is larger than {MAX_RULE_FILE} bytes"))
            }
            Ok(_) => std::fs::read_to_string(&path)
                .map(Some)
                .map_err(|e| format!("cannot read {name}: {e}")),
        }
    };
    let mut rules = SiteRules {
        spa: options.spa,
        clean_urls: options.clean_urls,
        ..SiteRules::default()
    };
    if let Some(text) = read("_redirects")? {
        let (parsed, errors) = parse_redirects(&text);
        for e in &errors {
            emitter.system(&format!("_redirects {e} (skipped)"));
        }
        emitter.system(&format!("_redirects: {} rules", parsed.len()));
        rules.redirects = parsed;
    }
    if let Some(text) = read("_headers")? {
        let (parsed, errors) = parse_headers(&text);
        for e in &errors {
            emitter.system(&format!("_headers {e} (skipped)"));
        }
        emitter.system(&format!("_headers: {} rules", parsed.len()));
        rules.headers = parsed;
    }
    Ok(rules)
}

/// An S3 client for the builder's configuration: static credentials when given, otherwise the
/// standard AWS chain (a task role in ECS, an instance profile, a web identity...).
pub async fn s3_client(config: &BuilderConfig) -> aws_sdk_s3::Client {
    let mut b = aws_sdk_s3::Config::builder()
        .region(aws_sdk_s3::config::Region::new(config.region.clone()))
        // Retried with exponential backoff; every request carries a checksum S3 verifies.
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(5))
        .force_path_style(config.s3_endpoint.is_some());
    if let Some(endpoint) = &config.s3_endpoint {
        b = b.endpoint_url(endpoint);
    }
    match &config.credentials {
        Some((id, secret)) => {
            b = b.credentials_provider(aws_credential_types::Credentials::new(
                id,
                secret,
                std::env::var("AWS_SESSION_TOKEN").ok(),
                None,
                "gitdeploy-builder",
            ));
        }
        None => {
            let chain =
                aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                    .region(aws_config::Region::new(config.region.clone()))
                    .build()
                    .await;
            b = b.credentials_provider(chain);
        }
    }
    aws_sdk_s3::Client::from_conf(b.build())
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

/// Uploads `files` for `id` and then the manifest. Any failure leaves no manifest behind.
pub async fn publish(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    layout: &ObjectLayout,
    id: &DeploymentId,
    commit: &str,
    files: Vec<OutputFile>,
    rules: SiteRules,
) -> Result<Published, String> {
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

/// What went wrong with a storage request, in words: the storage's own error code and
/// message when it answered, or whether it could not be reached or did not answer in time.
fn storage_error<E, R>(e: &aws_sdk_s3::error::SdkError<E, R>) -> String
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_s3::error::SdkError;
    match e {
        SdkError::ServiceError(service) => {
            let err = service.err();
            match (err.code(), err.message()) {
                (Some(code), Some(message)) => {
                    format!("the storage answered {code}: {message}")
                }
                (Some(code), None) => format!("the storage answered {code}"),
                _ => format!("the storage refused the request: {}", error_chain(e)),
            }
        }
        SdkError::TimeoutError(_) => "the storage did not answer in time".into(),
        SdkError::DispatchFailure(_) => {
            format!("the storage could not be reached: {}", error_chain(e))
        }
        _ => error_chain(e),
    }
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
        std::fs::write(root.join("_redirects"), "/a /b").unwrap();
        std::fs::write(root.join("a/_headers"), "not at the root: a plain file").unwrap();
        std::os::unix::fs::symlink(root.join("index.html"), root.join("alias.html")).unwrap();

        let names =
            |files: Vec<OutputFile>| files.into_iter().map(|f| f.relative).collect::<Vec<_>>();
        let collect = |from_repo_root: bool, limits: &BuildLimits| {
            let source = OutputSource {
                root,
                checkout: root,
                owner: None,
                from_repo_root,
                max_path_bytes: 1000,
            };
            collect(&source, limits)
        };
        assert_eq!(
            names(collect(true, &BuildLimits::default()).unwrap()),
            [
                "a/_headers",
                "a/b/deep file.txt",
                "alias.html",
                "index.html"
            ]
        );
        assert!(
            names(collect(false, &BuildLimits::default()).unwrap()).contains(&".env".to_owned())
        );
        let tight = BuildLimits {
            max_files: 2,
            ..BuildLimits::default()
        };
        assert!(collect(true, &tight)
            .unwrap_err()
            .contains("more than 2 files"));
        let tight = BuildLimits {
            max_output_bytes: 2,
            ..BuildLimits::default()
        };
        assert!(collect(true, &tight)
            .unwrap_err()
            .contains("over the limit"));

        std::os::unix::fs::symlink("/etc/passwd", root.join("passwd")).unwrap();
        let err = collect(true, &BuildLimits::default()).unwrap_err();
        assert!(err.contains("points outside"), "{err}");
    }

    #[test]
    fn paths_the_storage_or_a_url_cannot_hold_are_named() {
        for ok in ["index.html", "a b/c\u{e9}.html", "deep/very/long.txt"] {
            assert_eq!(unpublishable_path(ok, 100), None, "{ok}");
        }
        for bad in [
            "new\nline.html",
            "cr\r.html",
            "tab\t.txt",
            "back\\slash.txt",
            "del\u{7f}",
        ] {
            let why = unpublishable_path(bad, 100).unwrap();
            assert!(why.contains("no URL can name"), "{why}");
        }
        let long = "a/".repeat(60);
        let why = unpublishable_path(&long, 100).unwrap();
        assert!(
            why.contains("120 bytes long") && why.contains("up to 100 bytes"),
            "{why}"
        );
    }

    #[test]
    fn the_output_root_and_its_files_must_be_the_builds() {
        use std::os::unix::fs::MetadataExt;
        let checkout = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("secret.txt"), "root only").unwrap();
        std::os::unix::fs::symlink(host.path(), checkout.path().join("public")).unwrap();
        std::fs::create_dir(checkout.path().join("real")).unwrap();
        std::os::unix::fs::symlink("../public", checkout.path().join("real/up")).unwrap();
        let err =
            confined_output_root(&checkout.path().join("public"), checkout.path()).unwrap_err();
        assert!(err.contains("resolves outside the repository"), "{err}");
        let err =
            confined_output_root(&checkout.path().join("real/up"), checkout.path()).unwrap_err();
        assert!(err.contains("resolves outside the repository"), "{err}");
        assert!(confined_output_root(&checkout.path().join("real"), checkout.path()).is_ok());

        let out = checkout.path().join("real");
        std::fs::write(out.join("index.html"), "x").unwrap();
        let mine = std::fs::metadata(out.join("index.html")).unwrap().uid();
        let source = |owner| OutputSource {
            root: &out,
            checkout: checkout.path(),
            owner,
            from_repo_root: false,
            max_path_bytes: 1000,
        };
        std::fs::remove_file(out.join("up")).unwrap();
        assert_eq!(
            collect(&source(Some(mine)), &BuildLimits::default())
                .unwrap()
                .len(),
            1
        );
        let err = collect(&source(Some(mine + 1)), &BuildLimits::default()).unwrap_err();
        assert!(
            err.contains("index.html was not written by the build"),
            "{err}"
        );
        let files = collect(&source(Some(mine)), &BuildLimits::default()).unwrap();
        assert!(open_output_file(&files[0]).is_ok());
        let foreign = OutputFile {
            owner: Some(mine + 1),
            ..files.into_iter().next().unwrap()
        };
        assert!(open_output_file(&foreign).is_err());
    }
}
