//! Deployments stored by an earlier version (manifest version 1: files and variants under
//! `sites/<id>/`, no blobs) keep serving through the blob-era edge, with their ETags and
//! variants, and a garbage collection leaves them alone. Nothing has to be moved.

mod common;

use std::io::{Read, Write};

use common::Gitdeploy;
use gitdeploy_core::manifest::OLDEST_MANIFEST_VERSION;
use gitdeploy_core::{DeploymentId, Encoding, FileEntry, Manifest, Variant};

#[tokio::test]
async fn a_version_1_deployment_keeps_serving() {
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start_with(
        data.path(),
        &["--gc-grace-secs", "0", "--gc-interval-secs", "0"],
    )
    .await;
    let id = DeploymentId::random();
    let page = "<h1>stored before blobs</h1>".repeat(100);
    let mut br = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut br, 4096, 9, 20);
        w.write_all(page.as_bytes()).unwrap();
    }
    // Exactly what version 1 wrote, laid into the embedded store's directory.
    let bucket = data.path().join("s3/gitdeploy");
    let site = bucket.join(format!("sites/{id}"));
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("index.html"), &page).unwrap();
    std::fs::write(site.join("index.html.br"), &br).unwrap();
    let manifest = Manifest {
        version: OLDEST_MANIFEST_VERSION,
        deployment: id.to_string(),
        project: None,
        commit: Some("0123abc".into()),
        created_unix_ms: 1_700_000_000_000,
        files: [(
            "index.html".to_owned(),
            FileEntry {
                size: page.len() as u64,
                etag: "\"v1-etag-of-index\"".into(),
                content_type: "text/html; charset=utf-8".into(),
                hash: None,
                encodings: [(
                    Encoding::Br,
                    Variant {
                        size: br.len() as u64,
                        etag: "\"v1-etag-of-index-br\"".into(),
                        hash: None,
                    },
                )]
                .into(),
            },
        )]
        .into(),
        rules: Default::default(),
    };
    std::fs::create_dir_all(bucket.join("manifests")).unwrap();
    std::fs::write(
        bucket.join(format!("manifests/{id}.json")),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();

    let check = || async {
        assert_eq!(gd.page(id.as_str(), "/").await, (200, page.clone()));
        let resp = gd
            .site(reqwest::Method::GET, id.as_str(), "/")
            .header("accept-encoding", "br")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["content-encoding"], "br");
        assert_eq!(resp.headers()["etag"], "\"v1-etag-of-index-br\"");
        let mut plain = String::new();
        brotli::Decompressor::new(&resp.bytes().await.unwrap()[..], 4096)
            .read_to_string(&mut plain)
            .unwrap();
        assert_eq!(plain, page);
        let again = gd
            .site(reqwest::Method::GET, id.as_str(), "/")
            .header("if-none-match", "\"v1-etag-of-index\"")
            .send()
            .await
            .unwrap();
        assert_eq!(
            again.status(),
            304,
            "the browser's stored ETag still matches"
        );
    };
    check().await;
    // A collection touches blobs only: the old layout stays whole.
    let report: serde_json::Value = gd
        .http()
        .post(gd.api("/api/gc"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["manifests"], 1, "{report}");
    assert_eq!(report["deleted"], 0, "{report}");
    check().await;
    assert!(site.join("index.html.br").exists());
    gd.terminate().await;
}
