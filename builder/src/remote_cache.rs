//! Build caches kept in the bucket, for builders whose disk does not outlive them (ECS tasks):
//! the archive of a project's kept framework caches ([`crate::build_cache`]) is fetched before
//! the build and stored after a successful one under `build-cache/<scope>/<store>.tar.gz`
//! ([`gitdeploy_core::ObjectLayout::build_cache`]), at most [`MAX_BYTES`]. The builder moves
//! only bytes: the build user packs and unpacks them inside the sandbox. A cache that cannot be
//! fetched or stored costs time, never the build: every failure here is a log line.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use aws_sdk_s3::primitives::ByteStream;

use crate::storage::describe;

/// Largest archive fetched or stored.
pub const MAX_BYTES: u64 = 1024 * 1024 * 1024;

/// Fetches the archive at `key` into `dest` (replacing what is there): its size, or `None`
/// when the bucket has none yet.
pub async fn fetch(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    dest: &Path,
) -> Result<Option<u64>, String> {
    let _ = std::fs::remove_file(dest);
    let answer = client.get_object().bucket(bucket).key(key).send().await;
    let mut object = match answer {
        Ok(o) => o,
        Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
        Err(e) => return Err(describe(&e)),
    };
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(dest)
        .map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    let mut written = 0u64;
    let result = async {
        while let Some(chunk) = object
            .body
            .try_next()
            .await
            .map_err(|e| format!("the stored copy broke off: {e}"))?
        {
            written += chunk.len() as u64;
            if written > MAX_BYTES {
                return Err(format!("the stored copy is over {} MiB", MAX_BYTES >> 20));
            }
            file.write_all(&chunk)
                .map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
        }
        Ok(written)
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    result.map(Some)
}

/// Stores the archive the build packed at `source` under `key`, and removes it; `Ok(None)`
/// when the build packed none. The file is the build user's: it is opened without following a
/// link, and must be a regular file within [`MAX_BYTES`].
pub async fn store(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    source: &Path,
) -> Result<Option<u64>, String> {
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(source);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            let _ = std::fs::remove_file(source);
            return Err(format!("cannot open the packed cache: {e}"));
        }
    };
    let _ = std::fs::remove_file(source);
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read the packed cache: {e}"))?;
    check_archive(meta.file_type().is_file(), meta.len())?;
    let body = ByteStream::read_from()
        .file(tokio::fs::File::from_std(file))
        .length(aws_sdk_s3::primitives::Length::Exact(meta.len()))
        .build()
        .await
        .map_err(|e| format!("cannot read the packed cache: {e}"))?;
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .content_type("application/gzip")
        .body(body)
        .send()
        .await
        .map_err(|e| describe(&e))?;
    Ok(Some(meta.len()))
}

/// Whether a packed cache may be stored: a regular file, not empty, within [`MAX_BYTES`].
fn check_archive(regular: bool, len: u64) -> Result<(), String> {
    if !regular {
        return Err("the packed cache is not a regular file".into());
    }
    if len == 0 {
        return Err("the packed cache is empty".into());
    }
    if len > MAX_BYTES {
        return Err(format!(
            "the packed cache is {} MiB, over {} MiB",
            len >> 20,
            MAX_BYTES >> 20
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_cap_are_stored() {
        assert!(check_archive(true, 1).is_ok());
        assert!(check_archive(true, MAX_BYTES).is_ok());
        assert!(check_archive(true, MAX_BYTES + 1).is_err());
        assert!(check_archive(true, 0).is_err());
        assert!(check_archive(false, 10).is_err());
    }
}
