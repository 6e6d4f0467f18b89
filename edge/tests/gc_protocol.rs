//! The two rules that keep a garbage collection from deleting what a publish is about to
//! reuse (`builder::publish::gc`), one at a time against the real S3 server, so each is seen
//! to matter: a publish's plan keeps an old unreferenced blob it found (and without the plan
//! the same blob is collected), and a publish's lookups wait while a collection runs.

mod common;

use std::time::{Duration, SystemTime};

use aws_sdk_s3::primitives::ByteStream;
use common::S3_KEY;
use gitdeploy_builder::publish::{gc, BlobSink, Placement, Planned, S3Blobs};
use gitdeploy_builder::storage;
use gitdeploy_core::{ContentHash, DeploymentId, ObjectLayout};
use sha2::{Digest, Sha256};

const BUCKET: &str = "gitdeploy";
const GRACE: Duration = Duration::from_secs(3600);

struct Store {
    client: aws_sdk_s3::Client,
    layout: ObjectLayout,
    dir: std::path::PathBuf,
    _s3: common::S3Server,
}

impl Store {
    async fn start() -> Store {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let s3 = common::s3_server_in(dir);
        let client = storage::client(
            &storage::Endpoint {
                url: Some(s3.endpoint.clone()),
                region: "us-east-1".into(),
            },
            storage::static_keys(S3_KEY.0, S3_KEY.1, None),
        );
        let _ = client.create_bucket().bucket(BUCKET).send().await;
        Store {
            client,
            layout: ObjectLayout::new(""),
            dir: path,
            _s3: s3,
        }
    }

    /// Stores `bytes` as a blob last written two hours ago, named by nothing.
    async fn old_blob(&self, bytes: &[u8]) -> ContentHash {
        let hash = ContentHash::from_digest(Sha256::digest(bytes).into());
        self.client
            .put_object()
            .bucket(BUCKET)
            .key(self.layout.blob(&hash))
            .body(ByteStream::from(bytes.to_vec()))
            .send()
            .await
            .unwrap();
        // The store dates an object by its file.
        let file = self.dir.join(BUCKET).join(self.layout.blob(&hash));
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .set_modified(SystemTime::now() - Duration::from_secs(7200))
            .unwrap();
        hash
    }

    fn blobs(&self, id: &DeploymentId) -> S3Blobs {
        S3Blobs::new(
            self.client.clone(),
            BUCKET,
            &self.layout,
            id,
            Placement::Shared,
        )
    }

    async fn exists(&self, hash: &ContentHash) -> bool {
        self.client
            .head_object()
            .bucket(BUCKET)
            .key(self.layout.blob(hash))
            .send()
            .await
            .is_ok()
    }
}

fn planned(hash: ContentHash) -> Vec<Planned> {
    vec![Planned {
        path: "index.html".into(),
        hash,
        size: 5,
    }]
}

#[tokio::test]
async fn a_plan_keeps_what_its_publish_found_and_only_a_plan_does() {
    let store = Store::start().await;
    let hash = store.old_blob(b"hello").await;
    let id = DeploymentId::random();
    let found = BlobSink::lookup(&store.blobs(&id), planned(hash))
        .await
        .unwrap();
    assert!(
        found[0].is_some(),
        "the publish finds the old blob and will reuse it"
    );
    // A collection now: the blob is named by no manifest and past the grace, but planned.
    let report = gc::collect(&store.client, BUCKET, &store.layout, GRACE)
        .await
        .unwrap();
    assert_eq!((report.plans, report.deleted), (1, 0), "{report:?}");
    assert!(store.exists(&hash).await);
    // The control: without the plan (the publish gone), the same collection deletes it.
    gitdeploy_builder::publish::remove_staging(&store.client, BUCKET, &store.layout, &id)
        .await
        .unwrap();
    let report = gc::collect(&store.client, BUCKET, &store.layout, GRACE)
        .await
        .unwrap();
    assert_eq!((report.plans, report.deleted), (0, 1), "{report:?}");
    assert!(!store.exists(&hash).await);
    // A blob written within the grace stays, planned or not.
    let young = ContentHash::from_digest(Sha256::digest(b"young").into());
    store
        .blobs(&id)
        .put(&young, b"young".to_vec(), None)
        .await
        .unwrap();
    let report = gc::collect(&store.client, BUCKET, &store.layout, GRACE)
        .await
        .unwrap();
    assert_eq!((report.deleted, report.in_grace), (0, 1), "{report:?}");
}

#[tokio::test]
async fn lookups_wait_while_a_collection_runs() {
    let store = Store::start().await;
    let hash = store.old_blob(b"hello").await;
    // A collection in progress, as its marker says.
    let marker = store.layout.gc_running("someone");
    store
        .client
        .put_object()
        .bucket(BUCKET)
        .key(&marker)
        .body(ByteStream::from_static(b"0"))
        .send()
        .await
        .unwrap();
    let blobs = store.blobs(&DeploymentId::random());
    let lookup = tokio::spawn(async move { BlobSink::lookup(&blobs, planned(hash)).await });
    // Still waiting a while later (its plan is written, its lookups are not made).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !lookup.is_finished(),
        "a lookup went ahead during a collection"
    );
    store
        .client
        .delete_object()
        .bucket(BUCKET)
        .key(&marker)
        .send()
        .await
        .unwrap();
    let found = lookup.await.unwrap().unwrap();
    assert!(found[0].is_some());
}

#[tokio::test]
async fn a_base_manifest_answers_for_the_files_it_names_while_it_exists() {
    use gitdeploy_core::manifest::MANIFEST_VERSION;
    use gitdeploy_core::{Encoding, FileEntry, Manifest, Variant};
    let store = Store::start().await;
    // The base names a file and its br variant; neither blob is looked at while it exists.
    let (file, br) = (
        ContentHash::from_digest([1; 32]),
        ContentHash::from_digest([2; 32]),
    );
    let base = DeploymentId::random();
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        deployment: base.to_string(),
        project: None,
        commit: None,
        created_unix_ms: 0,
        files: [(
            "index.html".to_owned(),
            FileEntry {
                size: 5,
                etag: file.etag(),
                content_type: "text/html".into(),
                hash: Some(file),
                encodings: [(
                    Encoding::Br,
                    Variant {
                        size: 3,
                        etag: file.variant_etag("br"),
                        hash: Some(br),
                    },
                )]
                .into(),
            },
        )]
        .into(),
        rules: Default::default(),
    };
    let key = store.layout.manifest(&base);
    store
        .client
        .put_object()
        .bucket(BUCKET)
        .key(&key)
        .body(ByteStream::from(serde_json::to_vec(&manifest).unwrap()))
        .send()
        .await
        .unwrap();
    let id = DeploymentId::random();
    let blobs = store.blobs(&id).with_base(Some(base.clone()));
    let found = BlobSink::lookup(&blobs, planned(file)).await.unwrap();
    let recorded = found[0].clone().expect("answered by the base manifest");
    assert_eq!(recorded[&Encoding::Br], Some((br, 3)));
    assert_eq!(recorded[&Encoding::Gzip], None, "not made again either");
    // Its plan names the variant it reuses, so a collection keeps both.
    let plans = store
        .client
        .list_objects_v2()
        .bucket(BUCKET)
        .prefix(store.layout.upload_prefix(&id))
        .send()
        .await
        .unwrap();
    let plan_key = plans.contents()[0].key().unwrap().to_owned();
    let plan = store
        .client
        .get_object()
        .bucket(BUCKET)
        .key(&plan_key)
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    let planned_hashes: Vec<ContentHash> = serde_json::from_slice(&plan).unwrap();
    assert!(planned_hashes.contains(&file) && planned_hashes.contains(&br));
    // Once the base is gone, the store itself answers (and lacks the blob).
    store
        .client
        .delete_object()
        .bucket(BUCKET)
        .key(&key)
        .send()
        .await
        .unwrap();
    let found = BlobSink::lookup(&blobs, planned(file)).await.unwrap();
    assert_eq!(found[0], None);
}
