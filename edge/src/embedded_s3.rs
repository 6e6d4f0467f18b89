//! The embedded S3 server of `gitdeploy up`: s3s over s3s-fs, on loopback, with SigV4
//! authentication by a key generated at start-up, on a runtime of its own that outlives the
//! Pingora server ([`RunningS3`]). Builders upload to it and the sites proxy
//! streams from it exactly as they would with real S3; an unsigned request is refused.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;

use async_trait::async_trait;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};

mod large_reads;

/// The embedded S3 server (a Pingora background service for `gitdeploy s3-server`).
pub struct EmbeddedS3 {
    listener: Mutex<Option<std::net::TcpListener>>,
    service: S3Service,
}

impl EmbeddedS3 {
    /// The longest object key this store holds in `bucket`. s3s-fs keeps each object's
    /// metadata in a file named after the base64 of bucket and key (`.bucket-<b64>.object-<b64>
    /// .upload-<uuid>.metadata.json`), and a file name has at most 255 bytes; S3 itself allows
    /// 1,024. Builds refuse longer paths with a message naming the file.
    pub fn max_key_bytes(bucket: &str) -> u64 {
        let b64 = |n: usize| n.div_ceil(3) * 4;
        let fixed = ".bucket-".len()
            + b64(bucket.len())
            + ".object-".len()
            + ".upload-".len()
            + 36
            + ".metadata.json".len();
        // The largest key whose base64 still fits.
        (255usize.saturating_sub(fixed) / 4 * 3) as u64
    }

    /// Binds `addr` (`127.0.0.1:0` for any free port) and prepares a server over `root` with
    /// `bucket` created. Returns the server and the address it will answer on.
    pub fn bind(
        addr: SocketAddr,
        root: &Path,
        bucket: &str,
        access_key: &str,
        secret_key: &str,
    ) -> anyhow::Result<(Self, SocketAddr)> {
        std::fs::create_dir_all(root.join(bucket))?;
        let fs = s3s_fs::FileSystem::new(root)
            .map_err(|e| anyhow::anyhow!("embedded S3 storage: {e:?}"))?;
        let mut builder = S3ServiceBuilder::new(InWords {
            fs,
            root: root.to_owned(),
        });
        builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        Ok((
            EmbeddedS3 {
                listener: Mutex::new(Some(listener)),
                service: builder.build(),
            },
            addr,
        ))
    }
}

/// The embedded S3 on a runtime of its own, outside the Pingora server: it keeps answering
/// while the server shuts down, so that what the other services store last (a build's log
/// archive, the access log's final batch) is stored.
pub struct RunningS3 {
    rt: tokio::runtime::Runtime,
    stop: tokio::sync::watch::Sender<bool>,
}

impl EmbeddedS3 {
    /// Starts serving on `threads` worker threads.
    pub fn spawn(self, threads: usize) -> std::io::Result<RunningS3> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("gitdeploy-s3")
            .enable_all()
            .build()?;
        let (stop, watch) = tokio::sync::watch::channel(false);
        rt.spawn(async move { self.start(watch).await });
        Ok(RunningS3 { rt, stop })
    }
}

impl RunningS3 {
    /// Stops accepting, and gives requests in flight a moment to finish.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        self.rt.shutdown_timeout(std::time::Duration::from_secs(2));
    }
}

#[async_trait]
impl BackgroundService for EmbeddedS3 {
    async fn start(&self, shutdown: ShutdownWatch) {
        let Some(std_listener) = self.listener.lock().ok().and_then(|mut l| l.take()) else {
            return;
        };
        let listener = match tokio::net::TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("embedded S3 cannot listen: {e}");
                return;
            }
        };
        let http = ConnBuilder::new(TokioExecutor::new());
        let stop = crate::control::shutdown_requested(shutdown);
        tokio::pin!(stop);
        loop {
            let socket = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((socket, _)) => socket,
                    Err(e) => {
                        tracing::warn!("embedded S3 accept failed: {e}");
                        continue;
                    }
                },
                _ = &mut stop => break,
            };
            let conn = http
                .serve_connection(TokioIo::new(socket), self.service.clone())
                .into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    }
}

#[cfg(test)]
mod key_limit_tests {
    #[test]
    fn the_longest_key_fits_a_file_name() {
        let limit = super::EmbeddedS3::max_key_bytes("gitdeploy") as usize;
        let b64 = |n: usize| n.div_ceil(3) * 4;
        let name = |key: usize| {
            ".bucket-".len()
                + b64(9)
                + ".object-".len()
                + b64(key)
                + ".upload-".len()
                + 36
                + ".metadata.json".len()
        };
        assert!(name(limit) <= 255, "{limit}");
        assert!(name(limit + 3) > 255, "{limit} is not the largest");
        assert!(limit > 100, "{limit}");
    }
}

/// s3s-fs with its internal errors said in words: s3s-fs answers `InternalError` with no
/// message for any I/O failure, so a full disk read as "InternalError" to the builder. The I/O
/// error's own text becomes the message, and a full disk is `InsufficientStorage` (507).
///
/// It also reads object bodies itself ([`large_reads`]): s3s-fs reads them 4 KiB at a time,
/// each read a hop to a blocking thread, which held the embedded store (and so the cold path
/// and large files of every `up`) to ~270 MB/s.
struct InWords {
    fs: s3s_fs::FileSystem,
    /// The folder s3s-fs keeps buckets in, as `<root>/<bucket>/<key>`.
    root: std::path::PathBuf,
}

/// The words for an s3s-fs error.
fn in_words(mut e: s3s::S3Error) -> s3s::S3Error {
    if e.message().is_some() {
        return e;
    }
    let mut io = None;
    let mut source: Option<&(dyn std::error::Error + 'static)> =
        e.source().map(|s| s as &(dyn std::error::Error + 'static));
    while let Some(inner) = source {
        if let Some(found) = inner.downcast_ref::<std::io::Error>() {
            io = Some((found.raw_os_error(), found.to_string()));
            break;
        }
        source = inner.source();
    }
    let Some((os, text)) = io else { return e };
    if os == Some(libc::ENOSPC) || os == Some(libc::EDQUOT) {
        let mut full = s3s::S3Error::with_message(
            s3s::S3ErrorCode::Custom("InsufficientStorage".into()),
            format!("the storage's disk is full ({text})"),
        );
        full.set_status_code(http::StatusCode::INSUFFICIENT_STORAGE);
        return full;
    }
    e.set_message(text);
    e
}

macro_rules! in_words {
    ($($name:ident: $input:ident => $output:ident,)* { $($own:tt)* }) => {
        #[async_trait]
        impl s3s::S3 for InWords {
            $(
                async fn $name(
                    &self,
                    req: s3s::S3Request<s3s::dto::$input>,
                ) -> s3s::S3Result<s3s::S3Response<s3s::dto::$output>> {
                    self.fs.$name(req).await.map_err(in_words)
                }
            )*
            $($own)*
        }
    };
}

in_words! {
    create_bucket: CreateBucketInput => CreateBucketOutput,
    copy_object: CopyObjectInput => CopyObjectOutput,
    delete_bucket: DeleteBucketInput => DeleteBucketOutput,
    delete_object: DeleteObjectInput => DeleteObjectOutput,
    delete_objects: DeleteObjectsInput => DeleteObjectsOutput,
    get_bucket_location: GetBucketLocationInput => GetBucketLocationOutput,
    head_bucket: HeadBucketInput => HeadBucketOutput,
    head_object: HeadObjectInput => HeadObjectOutput,
    list_buckets: ListBucketsInput => ListBucketsOutput,
    list_objects: ListObjectsInput => ListObjectsOutput,
    list_objects_v2: ListObjectsV2Input => ListObjectsV2Output,
    put_object: PutObjectInput => PutObjectOutput,
    create_multipart_upload: CreateMultipartUploadInput => CreateMultipartUploadOutput,
    upload_part: UploadPartInput => UploadPartOutput,
    upload_part_copy: UploadPartCopyInput => UploadPartCopyOutput,
    list_parts: ListPartsInput => ListPartsOutput,
    complete_multipart_upload: CompleteMultipartUploadInput => CompleteMultipartUploadOutput,
    abort_multipart_upload: AbortMultipartUploadInput => AbortMultipartUploadOutput,
    {
        /// s3s-fs answers (headers, ranges, conditions, errors); the body is then read again
        /// from the same file in large reads, unless the key is not a plain path or the file
        /// changed size since (then s3s-fs's own body is kept).
        async fn get_object(
            &self,
            req: s3s::S3Request<s3s::dto::GetObjectInput>,
        ) -> s3s::S3Result<s3s::S3Response<s3s::dto::GetObjectOutput>> {
            let file = large_reads::object_file(&self.root, &req.input.bucket, &req.input.key);
            let mut resp = self.fs.get_object(req).await.map_err(in_words)?;
            let out = &mut resp.output;
            let span = large_reads::span(out.content_range.as_deref(), out.content_length);
            if let (Some(file), Some(span)) = (file, span) {
                if let Ok(body) = large_reads::open(file, span).await {
                    out.body = Some(s3s::dto::StreamingBlob::wrap(body));
                }
            }
            Ok(resp)
        }
    }
}
