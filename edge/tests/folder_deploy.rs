//! `gitdeploy deploy ./dist --prebuilt` and the upload protocol under it, through a real
//! `gitdeploy up` (embedded S3, state on disk): a folder is published as is and served, a
//! redeploy uploads only what changed, and every bad input (a path that climbs out or holds
//! a NUL, a path listed twice, bytes that are not their hash, a blob never uploaded, a size that
//! lies, a variant that is not its file's compression, an upload after finalize) is refused with
//! its own error while nothing is published or lost.

mod common;

use std::io::Read;

use common::Gitdeploy;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn write(dir: &std::path::Path, rel: &str, body: &[u8]) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, body).unwrap();
}

fn line_after<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in {out}"))
}

#[tokio::test]
async fn a_folder_is_published_as_is_and_a_redeploy_uploads_only_what_changed() {
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    let dist = tempfile::tempdir().unwrap();
    let page = format!(
        "<h1>folder</h1>{}",
        "<p>words and more words</p>".repeat(200)
    );
    write(dist.path(), "index.html", page.as_bytes());
    write(
        dist.path(),
        "app.js",
        "console.log('one');".repeat(100).as_bytes(),
    );
    write(dist.path(), "docs/guide.html", b"<p>guide</p>");
    write(dist.path(), ".env", b"SECRET=never-served");
    write(dist.path(), "_redirects", b"/old /docs/guide.html 301\n");
    // Larger than the multipart threshold: sent streamed, spooled and uploaded in parts.
    let big: Vec<u8> = (0..(17u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    write(dist.path(), "media/big.bin", &big);
    let folder = dist.path().to_str().unwrap();

    let (code, out, err) = gd
        .cli(
            None,
            &[
                "deploy",
                folder,
                "--prebuilt",
                "--project",
                "folder-site",
                "--prod",
            ],
        )
        .await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("Uploaded 4 of 4 files"), "{out}");
    let url = line_after(&out, "Ready: ");
    let id = url
        .trim_start_matches("http://")
        .split('.')
        .next()
        .unwrap()
        .to_owned();
    assert!(
        line_after(&out, "Production: ").contains("folder-site"),
        "{out}"
    );
    // Not a terminal here: plain lines, no progress bar.
    assert!(err.contains("Hashed 4 files"), "{err}");
    assert!(!err.contains('\r'), "{err:?}");

    let d = gd.status(&id).await;
    assert_eq!(d["status"], "ready", "{d}");
    assert_eq!(d["source"], "local folder", "{d}");
    assert_eq!(d["repo"], Value::Null, "{d}");
    assert_eq!(gd.page("folder-site", "/").await, (200, page.clone()));
    assert_eq!(gd.page("folder-site", "/docs/guide.html").await.0, 200);
    let (_, dotfile) = gd.page("folder-site", "/.env").await;
    assert!(!dotfile.contains("never-served"), "dotfiles stay private");
    let moved = gd
        .site(reqwest::Method::GET, "folder-site", "/old")
        .send()
        .await
        .unwrap();
    // (The client follows redirects.)
    assert_eq!(
        moved.url().path(),
        "/docs/guide.html",
        "_redirects compiled by the server"
    );
    let br = gd
        .site(reqwest::Method::GET, "folder-site", "/index.html")
        .header("accept-encoding", "br")
        .send()
        .await
        .unwrap();
    assert_eq!(br.headers()["content-encoding"], "br");
    let etag = br.headers()["etag"].to_str().unwrap().to_owned();
    let compressed = br.bytes().await.unwrap();
    let mut plain = String::new();
    brotli::Decompressor::new(&compressed[..], 4096)
        .read_to_string(&mut plain)
        .unwrap();
    assert_eq!(plain, page);
    let got = gd
        .site(reqwest::Method::GET, "folder-site", "/media/big.bin")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(got[..] == big[..], "the large file comes back whole");

    // One file changed: one blob uploaded; the unchanged page keeps its ETag.
    write(dist.path(), "app.js", b"console.log('two');");
    let (code, out, err) = gd
        .cli(
            None,
            &["deploy", folder, "--prebuilt", "--project", "folder-site"],
        )
        .await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("Uploaded 1 of 4 files (1 blob, 19 B)"),
        "only the changed bytes, no variant again: {out}"
    );
    assert!(out.contains("3 already stored"), "{out}");
    let second = line_after(&out, "Ready: ");
    assert_ne!(second, url);
    assert!(
        !out.contains("Production: "),
        "a folder is a preview unless --prod"
    );
    assert_eq!(
        gd.page("folder-site", "/app.js").await.1,
        "console.log('one');".repeat(100),
        "production did not move"
    );
    let label = second
        .trim_start_matches("http://")
        .split('.')
        .next()
        .unwrap();
    assert_eq!(gd.page(label, "/app.js").await.1, "console.log('two');");
    let again = gd
        .site(reqwest::Method::GET, label, "/index.html")
        .header("accept-encoding", "br")
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.status(),
        304,
        "the same file keeps its ETag across deployments"
    );

    // A folder over the limits, and a missing one, are refused before anything is opened.
    let (code, _, err) = gd
        .cli(None, &["deploy", "/nonexistent/dist", "--prebuilt"])
        .await;
    assert_eq!(code, Some(2));
    assert!(err.contains("is not a folder"), "{err}");
    let listed = gd.get_json("/api/deployments").await;
    assert_eq!(
        listed["deployments"].as_array().unwrap().len(),
        2,
        "{listed}"
    );
    gd.terminate().await;
}

/// Sends one request of the protocol: status and JSON (Null for an empty body).
async fn call(
    gd: &Gitdeploy,
    method: reqwest::Method,
    path: &str,
    body: Option<Vec<u8>>,
    json_body: Option<Value>,
) -> (u16, Value) {
    let mut req = gd.http().request(method, gd.api(path));
    if let Some(b) = body {
        req = req.body(b);
    }
    if let Some(j) = json_body {
        req = req.json(&j);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_upload_protocol_refuses_bad_input_and_publishes_nothing() {
    use reqwest::Method;
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    for (body, code) in [
        (
            json!({"source": "local folder", "repo": "https://example.com/r"}),
            "invalid_body",
        ),
        (
            json!({"source": "local folder", "ref": "main"}),
            "invalid_body",
        ),
        (json!({"source": "svn"}), "invalid_source"),
    ] {
        let (status, answer) = gd.deploy(body.clone()).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some(code)),
            "{body}"
        );
    }
    let (status, opened) = gd.deploy(json!({"source": "local folder"})).await;
    assert_eq!(status, 201, "{opened}");
    assert_eq!(opened["status"], "uploading");
    let id = opened["id"].as_str().unwrap().to_owned();
    let page = "<p>hello</p>".repeat(200);
    let h = hex(page.as_bytes());
    let missing = format!("/api/deployments/{id}/missing");
    let plan = |files: Value| json!({ "files": files });
    for (files, want) in [
        (
            json!([{"path": "../etc/passwd", "hash": h, "size": 1}]),
            (400, "invalid_path"),
        ),
        (
            json!([{"path": "a\u{0}b", "hash": h, "size": 1}]),
            (400, "invalid_path"),
        ),
        (
            json!([{"path": "a", "hash": h, "size": 1}, {"path": "a", "hash": h, "size": 1}]),
            (400, "duplicate_path"),
        ),
        (
            json!([{"path": "a", "hash": h, "size": 300u64 << 20}]),
            (413, "too_large"),
        ),
        (
            json!([{"path": "a", "hash": "AB", "size": 1}]),
            (400, "invalid_body"),
        ),
    ] {
        let (status, answer) =
            call(&gd, Method::POST, &missing, None, Some(plan(files.clone()))).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str().unwrap_or("")),
            want,
            "{files} {answer}"
        );
    }
    let good_plan = plan(json!([{"path": "index.html", "hash": h, "size": page.len()}]));
    let (status, answer) = call(&gd, Method::POST, &missing, None, Some(good_plan.clone())).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["missing"], json!([h]));

    // Bytes that are not their hash are refused and not stored.
    let blob = |hash: &str| format!("/api/deployments/{id}/blobs/{hash}");
    let (status, answer) = call(&gd, Method::PUT, &blob(&h), Some(b"forged".to_vec()), None).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (422, Some("hash_mismatch")),
        "{answer}"
    );
    let (_, answer) = call(&gd, Method::POST, &missing, None, Some(good_plan.clone())).await;
    assert_eq!(answer["missing"], json!([h]), "nothing was stored");

    // Finalizes that must be refused, each leaving the upload open and nothing served.
    let finalize = format!("/api/deployments/{id}/finalize");
    let file = |size: usize, encodings: Value| json!({"files": [{"path": "index.html", "hash": h, "size": size, "content_type": "text/html", "encodings": encodings}]});
    let (status, answer) = call(
        &gd,
        Method::POST,
        &finalize,
        None,
        Some(file(page.len(), json!({}))),
    )
    .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (422, Some("upload_refused"))
    );
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("never uploaded"),
        "{answer}"
    );
    let (status, _) = call(
        &gd,
        Method::PUT,
        &blob(&h),
        Some(page.as_bytes().to_vec()),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, answer) = call(
        &gd,
        Method::POST,
        &finalize,
        None,
        Some(file(page.len() + 1, json!({}))),
    )
    .await;
    assert_eq!(status, 422, "a size that lies: {answer}");
    // A "br variant" that is other bytes (uploaded honestly under their own hash).
    let fake = b"<script>alert(1)</script>".repeat(3);
    let fh = hex(&fake);
    assert_eq!(
        call(&gd, Method::PUT, &blob(&fh), Some(fake.clone()), None)
            .await
            .0,
        204
    );
    let (status, answer) = call(
        &gd,
        Method::POST,
        &finalize,
        None,
        Some(file(
            page.len(),
            json!({"br": {"hash": fh, "size": fake.len()}}),
        )),
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is not the br compression"),
        "{answer}"
    );
    // A variant claimed with its file at upload is checked there.
    let resp = gd
        .http()
        .put(gd.api(&blob(&h)))
        .header("x-gitdeploy-variants", format!("br={fh}:{}", fake.len()))
        .body(page.as_bytes().to_vec())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (422, Some("variant_mismatch")),
        "{answer}"
    );
    assert_eq!(
        gd.status(&id).await["status"],
        "uploading",
        "a refused finalize loses nothing"
    );
    assert_eq!(
        gd.page(&id, "/").await.0,
        404,
        "nothing is served before a finalize"
    );

    let (status, answer) = call(
        &gd,
        Method::POST,
        &finalize,
        None,
        Some(file(page.len(), json!({}))),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "ready");
    assert_eq!(gd.page(&id, "/").await, (200, page.clone()));
    // After finalize, nothing more is accepted.
    let (status, answer) = call(&gd, Method::PUT, &blob(&fh), Some(fake.clone()), None).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (409, Some("not_uploading"))
    );
    let (status, _) = call(
        &gd,
        Method::POST,
        &finalize,
        None,
        Some(file(page.len(), json!({}))),
    )
    .await;
    assert_eq!(status, 409);
    let log = common::log_text(&gd.follow(&id, 0).await);
    assert!(log.contains("Published 1 files"), "{log}");

    // An upload canceled before its finalize ends canceled.
    let (_, opened) = gd.deploy(json!({"source": "local folder"})).await;
    let other = opened["id"].as_str().unwrap().to_owned();
    let (status, _) = call(
        &gd,
        Method::POST,
        &format!("/api/deployments/{other}/cancel"),
        None,
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(gd.status(&other).await["status"], "canceled");
    gd.terminate().await;
}

/// Skew protection: after a promotion the project's host still serves the hashed chunks of the
/// deployments it replaced (a page loaded before the promotion keeps working), and only those:
/// not their other files, not unknown chunks, and none once the window is set to 0.
#[tokio::test]
async fn a_promotion_keeps_serving_the_replaced_builds_hashed_chunks() {
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    let deploy = |files: Vec<(&'static str, String)>| {
        let gd = &gd;
        async move {
            let dir = tempfile::tempdir().unwrap();
            for (rel, body) in &files {
                write(dir.path(), rel, body.as_bytes());
            }
            let (code, out, err) = gd
                .cli(
                    None,
                    &[
                        "deploy",
                        dir.path().to_str().unwrap(),
                        "--prebuilt",
                        "--project",
                        "skew",
                        "--prod",
                    ],
                )
                .await;
            assert_eq!(code, Some(0), "{out}{err}");
        }
    };
    let build = |n: &str, chunk: &'static str| {
        vec![
            (
                "index.html",
                format!("<script src=/assets/{chunk}></script> build {n}"),
            ),
            ("about.js", format!("about {n}")),
            (chunk, format!("chunk of build {n}")),
        ]
    };
    deploy(build("one", "assets/index-AbCd1234.js")).await;
    deploy(build("two", "assets/index-EfGh5678.js")).await;
    let (status, body) = gd.page("skew", "/assets/index-AbCd1234.js").await;
    assert_eq!((status, body.as_str()), (200, "chunk of build one"));
    let old = gd
        .site(reqwest::Method::GET, "skew", "/assets/index-AbCd1234.js")
        .send()
        .await
        .unwrap();
    assert_eq!(
        old.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(
        gd.page("skew", "/assets/index-EfGh5678.js").await.1,
        "chunk of build two"
    );
    assert_eq!(
        gd.page("skew", "/about.js").await.1,
        "about two",
        "only missing chunks"
    );
    assert_eq!(gd.page("skew", "/assets/index-Zz999999.js").await.0, 404);

    // The window is the project's: too long is refused, 0 turns it off.
    let patch = |body: Value| {
        gd.http()
            .patch(gd.api("/api/projects/skew"))
            .json(&body)
            .send()
    };
    let refused = patch(json!({"skew_protection_secs": 10_000_000}))
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let project: Value = patch(json!({"skew_protection_secs": 0}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(project["skew_protection_secs"], 0, "{project}");
    deploy(build("three", "assets/index-IjKl9012.js")).await;
    for chunk in ["/assets/index-AbCd1234.js", "/assets/index-EfGh5678.js"] {
        assert_eq!(
            gd.page("skew", chunk).await.0,
            404,
            "{chunk} with the window off"
        );
    }
    assert_eq!(gd.page("skew", "/assets/index-IjKl9012.js").await.0, 200);
    gd.terminate().await;
}
