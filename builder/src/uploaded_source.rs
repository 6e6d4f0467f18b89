//! The checkout of a build whose source was uploaded (`gitdeploy deploy .`) rather than pushed:
//! its archive is read from the blob store, checked against its hash, and unpacked into the
//! source folder by [`source_archive::unpack`]'s rules, in place of a clone.

use std::io::Write as _;
use std::path::Path;
use std::time::Instant;

use gitdeploy_core::job::SourceArchive;
use sha2::{Digest, Sha256};

use crate::config::BuilderConfig;
use crate::events::Emitter;
use crate::failure::{build_failure, Failure};
use crate::source_archive::{self, UnpackLimits};
use crate::storage::describe as storage_error;
use crate::{disk, publish};

/// Entries an uploaded source may hold (files, folders and links).
const MAX_ENTRIES: u64 = 200_000;

/// Downloads and unpacks `archive` into `src`.
pub async fn unpack(
    config: &BuilderConfig,
    emitter: &Emitter,
    archive: &SourceArchive,
    src: &Path,
) -> Result<(), Failure> {
    let step = Instant::now();
    emitter.system(&format!(
        "Unpacking the uploaded source folder ({})",
        disk::human(archive.size)
    ));
    let spool = config.work_dir.join("source.tar.gz");
    download(config, archive, &spool).await?;
    let limits = UnpackLimits {
        max_bytes: config.job.limits.max_disk_bytes,
        max_entries: MAX_ENTRIES,
    };
    let (file, dest) = (spool.clone(), src.to_owned());
    let done = tokio::task::spawn_blocking(move || {
        let read = std::fs::File::open(&file)
            .map_err(|e| format!("cannot read the downloaded archive: {e}"))?;
        source_archive::unpack(std::io::BufReader::new(read), &dest, &limits)
    })
    .await
    .map_err(|e| Failure::Internal(format!("the unpacking stopped: {e}")))?;
    let _ = std::fs::remove_file(&spool);
    let done = done.map_err(build_failure)?;
    emitter.system(&format!(
        "Unpacked {} files ({}) in {:.1}s",
        done.files,
        disk::human(done.bytes),
        step.elapsed().as_secs_f64()
    ));
    emitter.phase("clone", step);
    Ok(())
}

/// Streams blob `archive.hash` to `to`, refusing bytes beyond its size or of another hash.
async fn download(
    config: &BuilderConfig,
    archive: &SourceArchive,
    to: &Path,
) -> Result<(), Failure> {
    let client = publish::s3_client(config).await;
    let key = config.layout.blob(&archive.hash);
    let object = client
        .get_object()
        .bucket(&config.bucket)
        .key(&key)
        .send()
        .await
        .map_err(|e| {
            build_failure(format!(
                "cannot read the uploaded source (deploy it again if it was removed): {}",
                storage_error(&e)
            ))
        })?;
    let mut file = std::fs::File::create(to)
        .map_err(|e| Failure::Internal(format!("cannot spool the source archive: {e}")))?;
    let mut body = object.body;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = body
        .try_next()
        .await
        .map_err(|e| Failure::Internal(format!("the source download broke off: {e}")))?
    {
        size += chunk.len() as u64;
        if size > archive.size {
            return Err(build_failure(format!(
                "the stored source archive is larger than its {} bytes",
                archive.size
            )));
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .map_err(|e| Failure::Internal(format!("cannot spool the source archive: {e}")))?;
    }
    let got = gitdeploy_core::ContentHash::from_digest(hasher.finalize().into());
    if got != archive.hash || size != archive.size {
        return Err(build_failure(format!(
            "the stored source archive is not the one uploaded ({size} bytes hashing to {got})"
        )));
    }
    Ok(())
}
