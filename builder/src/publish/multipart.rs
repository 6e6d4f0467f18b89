//! Large blobs: hashed in one pass over the file, then, when the store lacks them, uploaded in
//! parts so no file is ever held in memory whole. A part failure aborts the upload, leaving no
//! orphaned parts, and bytes that changed between the two passes are refused.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use gitdeploy_core::ContentHash;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::storage::error_chain;

/// Files larger than this are uploaded in parts.
pub const THRESHOLD: u64 = 16 << 20;
/// Size of one part.
const PART_SIZE: usize = 8 << 20;

/// The content hash of a file, read in 1 MiB blocks.
pub async fn hash_file(opened: std::fs::File, relative: &str) -> Result<ContentHash, String> {
    let name = relative.to_owned();
    let hashed = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut source = opened;
        let mut hasher = Sha256::new();
        let mut block = vec![0u8; 1 << 20];
        loop {
            match source.read(&mut block) {
                Ok(0) => break,
                Ok(n) => hasher.update(&block[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("cannot read {name}: {e}")),
            }
        }
        Ok(ContentHash::from_digest(hasher.finalize().into()))
    })
    .await;
    hashed.map_err(|e| format!("hashing {relative} failed: {e}"))?
}

/// Uploads `opened` as blob `hash` in parts, to `key` in `bucket`.
pub async fn upload(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    hash: &ContentHash,
    opened: std::fs::File,
    relative: &str,
) -> Result<(), String> {
    let fail = |what: &str, e: &dyn std::error::Error| {
        format!("upload of {relative} failed ({what}): {}", error_chain(e))
    };
    let created = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
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
        loop {
            let mut chunk = Vec::with_capacity(PART_SIZE);
            while chunk.len() < PART_SIZE {
                let n = (&mut source)
                    .take((PART_SIZE - chunk.len()) as u64)
                    .read_to_end(&mut chunk)
                    .await
                    .map_err(|e| format!("cannot read {relative}: {e}"))?;
                if n == 0 {
                    break;
                }
            }
            if chunk.is_empty() {
                break;
            }
            hasher.update(&chunk);
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
        if ContentHash::from_digest(hasher.finalize().into()) != *hash {
            return Err(format!("{relative} changed while it was being uploaded"));
        }
        Ok::<_, String>(parts)
    }
    .await;
    let parts = match parts {
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
    Ok(())
}
