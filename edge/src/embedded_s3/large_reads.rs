//! Object bodies of the embedded S3 read in large blocks: one blocking call opens the file,
//! checks it is still the size s3s-fs answered for, and reads the first block; each further
//! block is one more call. s3s-fs's own body reads 4 KiB per call, so a 10 KiB object took
//! three hops to the blocking pool and a 50 MiB one 12,800; here they take one and 200. No
//! thread is held between blocks, so a slow reader costs no blocking thread while it waits.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::Stream;

/// Bytes read per blocking call.
const BLOCK: u64 = 256 << 10;

/// Which bytes of the object the answer carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// First byte.
    pub start: u64,
    /// How many.
    pub len: u64,
    /// The whole object's size.
    pub total: u64,
}

/// The file s3s-fs keeps `key` of `bucket` in, when both are plain relative paths (any `.`,
/// `..`, empty part or NUL, which s3s-fs resolves its own way, gets `None`: its body is kept).
pub fn object_file(root: &Path, bucket: &str, key: &str) -> Option<PathBuf> {
    let plain = |s: &str| {
        !s.is_empty()
            && !s.contains('\0')
            && s.split('/').all(|p| !p.is_empty() && p != "." && p != "..")
    };
    (plain(bucket) && !bucket.contains('/') && plain(key)).then(|| root.join(bucket).join(key))
}

/// The span an answer with `content_range` (`bytes 0-99/1000`, as s3s-fs writes it) and
/// `content_length` carries; `None` when unreadable.
pub fn span(content_range: Option<&str>, content_length: Option<i64>) -> Option<Span> {
    let len = u64::try_from(content_length?).ok()?;
    match content_range {
        None => Some(Span {
            start: 0,
            len,
            total: len,
        }),
        Some(range) => {
            let (first_last, total) = range.strip_prefix("bytes ")?.split_once('/')?;
            let (first, last) = first_last.split_once('-')?;
            let (start, last, total): (u64, u64, u64) =
                (first.parse().ok()?, last.parse().ok()?, total.parse().ok()?);
            (last >= start && last - start + 1 == len && last < total).then_some(Span {
                start,
                len,
                total,
            })
        }
    }
}

/// Opens `file` for `span`: an error (then the caller keeps s3s-fs's body) when it cannot be
/// read or is not `span.total` bytes long any more.
pub async fn open(
    file: PathBuf,
    span: Span,
) -> std::io::Result<impl Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static> {
    let (file, first) = tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&file)?;
        if f.metadata()?.len() != span.total {
            return Err(std::io::Error::other("the object changed size"));
        }
        f.seek(SeekFrom::Start(span.start))?;
        let first = read_block(&mut f, span.len.min(BLOCK))?;
        Ok((f, first))
    })
    .await
    .map_err(std::io::Error::other)??;
    let rest = span.len - first.len() as u64;
    let state = (Some(first), Some(file), rest);
    Ok(futures_util::stream::unfold(
        state,
        |(first, file, rest)| async move {
            if let Some(first) = first {
                return Some((Ok(first), (None, file, rest)));
            }
            let mut f = file.filter(|_| rest > 0)?;
            let read = tokio::task::spawn_blocking(move || {
                let block = read_block(&mut f, rest.min(BLOCK))?;
                Ok::<_, std::io::Error>((f, block))
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
            match read {
                Ok((f, block)) => {
                    let rest = rest - block.len() as u64;
                    Some((Ok(block), (None, Some(f), rest)))
                }
                // The error ends the body; nothing follows it.
                Err(e) => Some((Err(e), (None, None, 0))),
            }
        },
    ))
}

/// Exactly `n` bytes from `f`: a file that ends sooner is an error (it was cut short).
fn read_block(f: &mut std::fs::File, n: u64) -> std::io::Result<Bytes> {
    let mut buf = vec![0u8; n as usize];
    f.read_exact(&mut buf)?;
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[test]
    fn only_plain_keys_are_read_here() {
        let root = Path::new("/data");
        for (bucket, key, want) in [
            ("b", "blobs/abc", Some("/data/b/blobs/abc")),
            (
                "b",
                "sites/x/index.html",
                Some("/data/b/sites/x/index.html"),
            ),
            ("b", "../etc/passwd", None),
            ("b", "a/./b", None),
            ("b", "a//b", None),
            ("b", "/abs", None),
            ("b", "", None),
            ("b/c", "k", None),
            ("..", "k", None),
            ("b", "nul\0", None),
        ] {
            assert_eq!(
                object_file(root, bucket, key),
                want.map(PathBuf::from),
                "{bucket} {key}"
            );
        }
    }

    #[test]
    fn spans_follow_the_answer() {
        let s = |start, len, total| Some(Span { start, len, total });
        for (range, length, want) in [
            (None, Some(10), s(0, 10, 10)),
            (Some("bytes 0-99/1000"), Some(100), s(0, 100, 1000)),
            (Some("bytes 900-999/1000"), Some(100), s(900, 100, 1000)),
            (Some("bytes 5-5/6"), Some(1), s(5, 1, 6)),
            (Some("bytes 0-99/1000"), Some(99), None),
            (Some("bytes 0-1000/1000"), Some(1001), None),
            (Some("bytes 9-0/10"), Some(0), None),
            (Some("items 0-1/2"), Some(2), None),
            (None, Some(-1), None),
            (None, None, None),
        ] {
            assert_eq!(span(range, length), want, "{range:?} {length:?}");
        }
    }

    async fn body(file: &Path, span: Span) -> std::io::Result<Vec<u8>> {
        let stream = open(file.to_owned(), span).await?;
        let mut out = Vec::new();
        let mut stream = std::pin::pin!(stream);
        while let Some(block) = stream.next().await {
            out.extend_from_slice(&block?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn bodies_and_ranges_read_whole_in_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("object");
        let bytes: Vec<u8> = (0..(BLOCK * 3 + 17)).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let total = bytes.len() as u64;
        let all = body(
            &path,
            Span {
                start: 0,
                len: total,
                total,
            },
        )
        .await
        .unwrap();
        assert_eq!(all, bytes);
        let mid = body(
            &path,
            Span {
                start: BLOCK - 5,
                len: BLOCK + 10,
                total,
            },
        )
        .await
        .unwrap();
        assert_eq!(mid, &bytes[(BLOCK - 5) as usize..(2 * BLOCK + 5) as usize]);
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert!(body(
            &empty,
            Span {
                start: 0,
                len: 0,
                total: 0
            }
        )
        .await
        .unwrap()
        .is_empty());
        // A file that is not the size answered is refused, so the caller keeps s3s-fs's body.
        assert!(body(
            &path,
            Span {
                start: 0,
                len: 10,
                total: 10
            }
        )
        .await
        .is_err());
        assert!(body(
            &dir.path().join("gone"),
            Span {
                start: 0,
                len: 1,
                total: 1
            }
        )
        .await
        .is_err());
    }
}
