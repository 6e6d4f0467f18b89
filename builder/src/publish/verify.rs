//! Precompressed variants named by an uploader the platform does not trust (a build task's
//! staged upload, a folder sent through the deploy API) are served to every browser that asks
//! for that encoding, and once recorded on a shared blob they are reused by every later site
//! holding the same file. So each is checked before it is published: it must decompress to
//! exactly its file's bytes (the file's hash and size). A variant the store had already
//! recorded for that blob, which a trusted publisher made, is not checked again; one checked
//! here is then recorded, so the next publish of the same file compresses and uploads nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::sync::Arc;

use aws_sdk_s3::types::MetadataDirective;
use gitdeploy_core::{ContentHash, Encoding, Manifest, ObjectLayout};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::recorded::{write_recorded, Recorded, VARIANTS_METADATA};
use crate::storage::describe as storage_error;

/// Variants checked at once.
const PARALLEL: usize = 16;

/// One variant to check: the file's blob and size, the encoding, the variant's blob.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Claim {
    file: ContentHash,
    size: u64,
    encoding: Encoding,
    variant: ContentHash,
    variant_size: u64,
}

/// The variants of `manifest` that `recorded` (what the store recorded for each file blob)
/// does not vouch for, each once.
fn unvouched(manifest: &Manifest, recorded: &BTreeMap<ContentHash, Recorded>) -> BTreeSet<Claim> {
    let mut out = BTreeSet::new();
    for entry in manifest.files.values() {
        let Some(file) = entry.hash else { continue };
        for (encoding, v) in &entry.encodings {
            let Some(variant) = v.hash else { continue };
            let vouched = recorded
                .get(&file)
                .and_then(|r| r.get(encoding))
                .is_some_and(|kept| *kept == Some((variant, v.size)));
            if !vouched {
                out.insert(Claim {
                    file,
                    size: entry.size,
                    encoding: *encoding,
                    variant,
                    variant_size: v.size,
                });
            }
        }
    }
    out
}

/// Whether `compressed` decompresses with `encoding` to exactly `size` bytes hashing to `file`
/// (never decompressing more than one byte past `size`, so a bomb costs nothing).
fn decompresses_to(compressed: &[u8], encoding: Encoding, file: &ContentHash, size: u64) -> bool {
    let reader: Box<dyn Read + '_> = match encoding {
        Encoding::Br => Box::new(brotli::Decompressor::new(compressed, 64 * 1024)),
        Encoding::Gzip => Box::new(flate2::read::GzDecoder::new(compressed)),
    };
    let mut out = Vec::with_capacity(size.min(16 << 20) as usize);
    if reader.take(size + 1).read_to_end(&mut out).is_err() || out.len() as u64 != size {
        return false;
    }
    ContentHash::from_digest(Sha256::digest(&out).into()) == *file
}

/// The variants claimed for a file whose bytes are in hand (`file`, about to be stored as
/// `hash`), each read from the store and checked to decompress to exactly those bytes: the
/// record its blob may carry. A claim that is not its compression is refused; "tried, not
/// smaller" entries are not kept (nothing vouches for them).
pub async fn verified_record(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    layout: &ObjectLayout,
    hash: &ContentHash,
    file: bytes::Bytes,
    claimed: &Recorded,
) -> Result<Recorded, String> {
    let mut out = Recorded::new();
    for (encoding, kept) in claimed {
        let Some((variant, size)) = kept else {
            continue;
        };
        let key = layout.blob(variant);
        let got = client
            .get_object()
            .bucket(bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| format!("variant {variant} is not stored: {}", storage_error(&e)))?;
        let body = got
            .body
            .collect()
            .await
            .map_err(|e| format!("reading variant {variant} failed: {e}"))?
            .into_bytes();
        let (encoding, file, hash) = (*encoding, file.clone(), *hash);
        let good = body.len() as u64 == *size
            && tokio::task::spawn_blocking(move || {
                decompresses_to(&body, encoding, &hash, file.len() as u64)
            })
            .await
            .map_err(|e| format!("checking variant {variant} failed: {e}"))?;
        if !good {
            return Err(format!(
                "blob {variant} is not the {} compression of blob {hash}",
                encoding.token()
            ));
        }
        out.insert(encoding, Some((*variant, *size)));
    }
    Ok(out)
}

/// Checks every variant `recorded` does not vouch for, refusing the first that is not its
/// file's compression, then records the checked ones on their file blobs.
pub(super) async fn check_variants(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    layout: &ObjectLayout,
    manifest: &Manifest,
    recorded: &BTreeMap<ContentHash, Recorded>,
) -> Result<(), String> {
    let claims = unvouched(manifest, recorded);
    let permits = Arc::new(Semaphore::new(PARALLEL));
    let mut checks = JoinSet::new();
    for claim in claims.iter().copied() {
        let (client, bucket, key, permits) = (
            client.clone(),
            bucket.to_owned(),
            layout.blob(&claim.variant),
            permits.clone(),
        );
        checks.spawn(async move {
            let _permit = permits.acquire_owned().await.map_err(|e| e.to_string())?;
            let got = client
                .get_object()
                .bucket(&bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| {
                    format!(
                        "reading variant {} failed: {}",
                        claim.variant,
                        storage_error(&e)
                    )
                })?;
            let body = got
                .body
                .collect()
                .await
                .map_err(|e| format!("reading variant {} failed: {e}", claim.variant))?
                .into_bytes();
            let good = tokio::task::spawn_blocking(move || {
                decompresses_to(&body, claim.encoding, &claim.file, claim.size)
            })
            .await
            .map_err(|e| format!("checking variant {} failed: {e}", claim.variant))?;
            if good {
                Ok(())
            } else {
                Err(format!(
                    "blob {} is not the {} compression of blob {}",
                    claim.variant,
                    claim.encoding.token(),
                    claim.file
                ))
            }
        });
    }
    while let Some(done) = checks.join_next().await {
        done.map_err(|e| format!("checking a variant failed: {e}"))??;
    }
    // Recorded so the next publish of these files reuses the variants: best effort, since a
    // record that could not be written only costs a compression later.
    let mut by_file: BTreeMap<ContentHash, Recorded> = BTreeMap::new();
    for claim in &claims {
        by_file
            .entry(claim.file)
            .or_insert_with(|| recorded.get(&claim.file).cloned().unwrap_or_default())
            .insert(claim.encoding, Some((claim.variant, claim.variant_size)));
    }
    for (file, record) in by_file {
        let key = layout.blob(&file);
        let _ = client
            .copy_object()
            .bucket(bucket)
            .key(&key)
            .copy_source(crate::storage::copy_source(bucket, &key))
            .metadata_directive(MetadataDirective::Replace)
            .metadata(VARIANTS_METADATA, write_recorded(&record))
            .send()
            .await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::compress;

    fn hash(bytes: &[u8]) -> ContentHash {
        ContentHash::from_digest(Sha256::digest(bytes).into())
    }

    #[test]
    fn a_variant_must_decompress_to_its_file_exactly() {
        let file = b"hello world, hello world, hello world, hello world".repeat(40);
        let (h, n) = (hash(&file), file.len() as u64);
        for enc in [Encoding::Br, Encoding::Gzip] {
            let good = compress(&file, enc);
            assert!(decompresses_to(&good, enc, &h, n));
            let other = compress(b"something else entirely", enc);
            assert!(!decompresses_to(&other, enc, &h, n), "other bytes");
            assert!(!decompresses_to(&good, enc, &h, n - 1), "a size that lies");
            assert!(
                !decompresses_to(&good[..good.len() / 2], enc, &h, n),
                "cut short"
            );
            assert!(!decompresses_to(&file, enc, &h, n), "not compressed at all");
        }
        assert!(!decompresses_to(
            &compress(&file, Encoding::Gzip),
            Encoding::Br,
            &h,
            n
        ));
        // A bomb: far more bytes than the file; decompression stops one byte past its size.
        let bomb = compress(&vec![0u8; 64 << 20], Encoding::Br);
        assert!(!decompresses_to(&bomb, Encoding::Br, &h, n));
    }

    #[test]
    fn only_variants_the_store_did_not_record_are_checked() {
        let (f, v, w) = (hash(b"f"), hash(b"v"), hash(b"w"));
        let entry = |variant: ContentHash| gitdeploy_core::FileEntry {
            size: 100,
            etag: String::new(),
            content_type: "text/plain".into(),
            hash: Some(f),
            encodings: [(
                Encoding::Br,
                gitdeploy_core::Variant {
                    size: 40,
                    etag: String::new(),
                    hash: Some(variant),
                },
            )]
            .into(),
        };
        let manifest = Manifest {
            version: gitdeploy_core::manifest::MANIFEST_VERSION,
            deployment: "k3f9q2m8x1ab".into(),
            project: None,
            commit: None,
            created_unix_ms: 0,
            files: [
                ("a.txt".to_owned(), entry(v)),
                ("b.txt".to_owned(), entry(v)),
            ]
            .into(),
            rules: Default::default(),
        };
        let none = BTreeMap::new();
        assert_eq!(
            unvouched(&manifest, &none).len(),
            1,
            "one claim for two paths"
        );
        let mut recorded = BTreeMap::new();
        recorded.insert(f, Recorded::from([(Encoding::Br, Some((v, 40)))]));
        assert!(unvouched(&manifest, &recorded).is_empty());
        // A record for another variant, or another size, vouches for nothing here.
        recorded.insert(f, Recorded::from([(Encoding::Br, Some((w, 40)))]));
        assert_eq!(unvouched(&manifest, &recorded).len(), 1);
        recorded.insert(f, Recorded::from([(Encoding::Br, Some((v, 41)))]));
        assert_eq!(unvouched(&manifest, &recorded).len(), 1);
    }
}
