//! What a build task holding only its own session stages (`uploads/<id>/`) is checked before it
//! is published: forged bytes, a blob never uploaded, a size that lies, a path that climbs out,
//! a manifest for another deployment are each refused with a clear error, and a refused upload
//! publishes nothing. Against the real S3 server (s3s-fs), which keeps and checks SHA-256
//! checksums as S3 does.

mod common;

use aws_sdk_s3::primitives::ByteStream;
use common::S3_KEY;
use gitdeploy_builder::publish::{publish_staged, remove_staging};
use gitdeploy_builder::storage;
use gitdeploy_core::manifest::MANIFEST_VERSION;
use gitdeploy_core::{ContentHash, DeploymentId, FileEntry, Manifest, ObjectLayout};
use sha2::{Digest, Sha256};

const BUCKET: &str = "gitdeploy";

fn hash(bytes: &[u8]) -> ContentHash {
    ContentHash::from_digest(Sha256::digest(bytes).into())
}

fn manifest(id: &DeploymentId, files: &[(&str, &[u8])]) -> Manifest {
    Manifest {
        version: MANIFEST_VERSION,
        deployment: id.to_string(),
        project: None,
        commit: None,
        created_unix_ms: 1,
        files: files
            .iter()
            .map(|(path, bytes)| {
                let h = hash(bytes);
                (
                    path.to_string(),
                    FileEntry {
                        size: bytes.len() as u64,
                        etag: h.etag(),
                        content_type: "text/plain".into(),
                        hash: Some(h),
                        encodings: Default::default(),
                    },
                )
            })
            .collect(),
        rules: Default::default(),
    }
}

struct Bucket {
    client: aws_sdk_s3::Client,
    layout: ObjectLayout,
    _s3: common::S3Server,
}

impl Bucket {
    async fn start() -> Bucket {
        let s3 = common::s3_server();
        let client = storage::client(
            &storage::Endpoint {
                url: Some(s3.endpoint.clone()),
                region: "us-east-1".into(),
            },
            storage::static_keys(S3_KEY.0, S3_KEY.1, None),
        );
        // The S3 server makes the bucket itself.
        let _ = client.create_bucket().bucket(BUCKET).send().await;
        Bucket {
            client,
            layout: ObjectLayout::new("gd"),
            _s3: s3,
        }
    }

    /// Stages `bytes` under the name `name` (not necessarily their hash), as a task could,
    /// with or without the store's checksum.
    async fn stage(&self, id: &DeploymentId, name: &ContentHash, bytes: &[u8], checksum: bool) {
        let mut put = self
            .client
            .put_object()
            .bucket(BUCKET)
            .key(self.layout.staged_blob(id, name))
            .body(ByteStream::from(bytes.to_vec()));
        if checksum {
            put = put.checksum_sha256(hash(bytes).base64());
        }
        put.send().await.unwrap();
    }

    async fn stage_manifest(&self, id: &DeploymentId, m: &Manifest) {
        self.client
            .put_object()
            .bucket(BUCKET)
            .key(format!("{}manifest.json", self.layout.upload_prefix(id)))
            .body(ByteStream::from(serde_json::to_vec(m).unwrap()))
            .send()
            .await
            .unwrap();
    }

    async fn publish(&self, id: &DeploymentId) -> Result<bool, String> {
        publish_staged(&self.client, BUCKET, &self.layout, id).await
    }

    async fn exists(&self, key: &str) -> bool {
        self.client
            .head_object()
            .bucket(BUCKET)
            .key(key)
            .send()
            .await
            .is_ok()
    }
}

#[tokio::test]
async fn a_checked_upload_is_published_and_a_forged_one_never_is() {
    let b = Bucket::start().await;

    // Nothing staged: nothing to do.
    let idle = DeploymentId::random();
    assert_eq!(b.publish(&idle).await, Ok(false));

    // An honest upload: one blob with the store's checksum, one without (read back and hashed).
    let good = DeploymentId::random();
    let m = manifest(
        &good,
        &[("index.html", b"<h1>hi</h1>"), ("a/b.txt", b"bee")],
    );
    b.stage(&good, &hash(b"<h1>hi</h1>"), b"<h1>hi</h1>", true)
        .await;
    b.stage(&good, &hash(b"bee"), b"bee", false).await;
    b.stage_manifest(&good, &m).await;
    assert_eq!(b.publish(&good).await, Ok(true));
    assert!(b.exists(&b.layout.manifest(&good)).await);
    for bytes in [&b"<h1>hi</h1>"[..], b"bee"] {
        let blob = b
            .client
            .get_object()
            .bucket(BUCKET)
            .key(b.layout.blob(&hash(bytes)))
            .send()
            .await
            .unwrap();
        assert!(blob.metadata().is_none_or(|m| m.is_empty()));
        assert_eq!(blob.body.collect().await.unwrap().into_bytes(), bytes);
    }
    assert_eq!(
        remove_staging(&b.client, BUCKET, &b.layout, &good).await,
        Ok(3)
    );

    // Each forgery: the error names it, and no manifest is written.
    let shared_before = hash(b"<h1>hi</h1>");
    type Forge = Box<dyn Fn(&DeploymentId) -> Manifest>;
    let cases: Vec<(&str, Forge, bool)> = vec![
        // Bytes that are not the ones their name says (no checksum: read back).
        (
            "do not have that hash",
            Box::new(|id| manifest(id, &[("x.txt", b"claimed")])),
            false,
        ),
        // The same, staged with the checksum of what they really are.
        (
            "do not have that hash",
            Box::new(|id| manifest(id, &[("x.txt", b"claimed")])),
            true,
        ),
        (
            "was never uploaded",
            Box::new(|id| manifest(id, &[("y.txt", b"never sent")])),
            false,
        ),
        (
            "not the 1 the manifest says",
            Box::new(|id| {
                let mut m = manifest(id, &[("index.html", b"<h1>hi</h1>")]);
                m.files.get_mut("index.html").unwrap().size = 1;
                m
            }),
            false,
        ),
        (
            "not a site path",
            Box::new(|id| manifest(id, &[("../manifests/x.json", b"<h1>hi</h1>")])),
            false,
        ),
        (
            "not k",
            Box::new(|_| manifest(&DeploymentId::random(), &[("a.txt", b"<h1>hi</h1>")])),
            false,
        ),
    ];
    for (want, make, checksum) in cases {
        let id = DeploymentId::random();
        // What the forger stages: other bytes under the name of "claimed".
        b.stage(&id, &hash(b"claimed"), b"forged!", checksum).await;
        b.stage_manifest(&id, &make(&id)).await;
        let err = b.publish(&id).await.unwrap_err();
        let want = want.replace("not k", &format!("not {id}"));
        assert!(err.contains(&want), "{want}: {err}");
        assert!(!b.exists(&b.layout.manifest(&id)).await, "{want}");
        assert!(!b.exists(&b.layout.blob(&hash(b"claimed"))).await, "{want}");
    }
    // The blob shared before is untouched.
    assert!(b.exists(&b.layout.blob(&shared_before)).await);
}
