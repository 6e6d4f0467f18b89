//! `gitdeploy deploy .`: a source folder sent through the upload protocol and built by a real
//! builder of a real `gitdeploy up`, exactly as a git checkout is. `.gitignore` decides what is
//! sent (and `node_modules` never is), the executable bit and links inside the folder survive,
//! an unchanged folder is not sent again, and every bad input (a link out of the folder, an
//! empty or oversized archive, blobs other than the archive, a finalize before the upload, an
//! archive that climbs out of the checkout) is refused with its own error.

mod common;

use std::io::Write as _;
use std::path::Path;

use common::Gitdeploy;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn write(dir: &Path, rel: &str, body: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, body).unwrap();
}

fn line_after<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in {out}"))
}

/// The build reports what it saw of its checkout in the page it makes.
const BUILD_JS: &str = r#"
const fs = require('fs');
const { execFileSync } = require('child_process');
const seen = [
  'message=' + fs.readFileSync('src/message.txt', 'utf8').trim(),
  'alias=' + fs.readFileSync('alias.txt', 'utf8').trim(),
  'tool=' + execFileSync('./tool.sh').toString().trim(),
  'secret=' + fs.existsSync('secret.txt'),
  'modules=' + fs.existsSync('node_modules/junk'),
  'stale=' + fs.existsSync('dist/stale.html'),
];
fs.mkdirSync('dist', { recursive: true });
fs.writeFileSync('dist/index.html', seen.join(';'));
"#;

fn source_folder(dir: &Path) {
    write(
        dir,
        "package.json",
        r#"{"name":"source-site","version":"1.0.0","private":true,"scripts":{"build":"node build.js"}}"#,
    );
    write(dir, "build.js", BUILD_JS);
    write(dir, "src/message.txt", "hello from a folder\n");
    write(dir, "tool.sh", "#!/bin/sh\necho ran\n");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("tool.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("src/message.txt", dir.join("alias.txt")).unwrap();
    write(dir, ".gitignore", "secret.txt\ndist/\n");
    write(dir, "secret.txt", "never sent");
    write(dir, "node_modules/junk/index.js", "never sent either");
    write(dir, "dist/stale.html", "an old build, ignored");
}

#[tokio::test]
async fn a_source_folder_is_built_as_a_checkout_and_sent_once() {
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    let folder = tempfile::tempdir().unwrap();
    source_folder(folder.path());

    let (code, out, err) = gd
        .cli(
            Some(folder.path()),
            &["deploy", ".", "--project", "source-site", "--prod"],
        )
        .await;
    assert_eq!(code, Some(0), "{out}{err}");
    // package.json, build.js, src/message.txt, tool.sh, .gitignore and the link alias.txt.
    assert!(out.contains("Packing 6 files"), "{out}");
    assert!(out.contains("Uploaded the source"), "{out}");
    let url = line_after(&out, "Ready: ");
    let id = url
        .trim_start_matches("http://")
        .split('.')
        .next()
        .unwrap()
        .to_owned();
    assert!(
        line_after(&out, "Production: ").contains("source-site"),
        "{out}"
    );
    let (status, page) = gd.page("source-site", "/").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        page,
        "message=hello from a folder;alias=hello from a folder;tool=ran;secret=false;modules=false;stale=false"
    );
    let d = gd.status(&id).await;
    assert_eq!(d["status"], "ready", "{d}");
    assert_eq!(d["source"], "local folder", "{d}");
    assert_eq!(d["repo"], Value::Null, "{d}");
    assert_eq!(d["archive"]["hash"].as_str().map(str::len), Some(64), "{d}");
    let log: Vec<String> = gd
        .follow(&id, 0)
        .await
        .into_iter()
        .map(|r| r.line)
        .collect();
    assert!(
        log.iter().any(|l| l.starts_with("Unpacked 5 files")),
        "{log:?}"
    );

    // The same folder again: the store has its archive, nothing is uploaded, and it builds.
    let (code, out, err) = gd
        .cli(
            Some(folder.path()),
            &["deploy", ".", "--project", "source-site"],
        )
        .await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("already stored: nothing uploaded"), "{out}");
    let again = line_after(&out, "Ready: ");
    assert_ne!(again, url);

    // A link out of the folder is refused before anything is sent.
    std::os::unix::fs::symlink("/etc/passwd", folder.path().join("passwd")).unwrap();
    let before = gd.get_json("/api/deployments").await;
    let (code, out, err) = gd.cli(Some(folder.path()), &["deploy", "."]).await;
    assert_ne!(code, Some(0), "{out}{err}");
    assert!(
        err.contains("link \"passwd\" -> \"/etc/passwd\" is absolute"),
        "{err}"
    );
    assert_eq!(
        gd.get_json("/api/deployments").await,
        before,
        "nothing was opened"
    );
    let (code, _, err) = gd
        .cli(Some(folder.path()), &["deploy", ".", "--ref", "main"])
        .await;
    assert_ne!(code, Some(0));
    assert!(err.contains("--ref is for repositories"), "{err}");
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A gzipped tar whose one entry is written as a hostile client could: path and link as given.
fn hostile_archive(path: &str, kind: tar::EntryType, link: &str) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_entry_type(kind);
    h.set_mode(0o644);
    let body = b"escaped";
    h.set_size(if kind == tar::EntryType::Regular {
        body.len() as u64
    } else {
        0
    });
    h.set_cksum();
    if kind == tar::EntryType::Regular {
        tar.append(&h, &body[..]).unwrap();
    } else {
        tar.append(&h, std::io::empty()).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

async fn call(gd: &Gitdeploy, method: reqwest::Method, path: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = gd
        .http()
        .request(method, gd.api(path))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_source_upload_refuses_bad_input_and_a_hostile_archive_fails_its_build() {
    use reqwest::Method;
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    let archive = hostile_archive("../escaped.txt", tar::EntryType::Regular, "");
    let hash = sha(&archive);
    for (body, status, code) in [
        (
            json!({"source": "local folder", "archive": {"hash": hash, "size": 0}}),
            400,
            "invalid_archive",
        ),
        (
            json!({"source": "local folder", "archive": {"hash": hash, "size": 1u64 << 40}}),
            413,
            "too_large",
        ),
        (
            json!({"repo": "https://example.com/r", "archive": {"hash": hash, "size": 5}}),
            400,
            "invalid_body",
        ),
        (
            json!({"source": "local folder", "archive": {"hash": "not-a-hash", "size": 5}}),
            400,
            "invalid_body",
        ),
        (
            json!({"source": "local folder", "archive": {"hash": hash, "size": 5}, "build": {"build_command": "x"}}),
            400,
            "invalid_body",
        ),
    ] {
        let (got, answer) = gd.deploy(body.clone()).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {answer}"
        );
    }

    let (status, opened) = gd
        .deploy(json!({"source": "local folder", "archive": {"hash": hash, "size": archive.len()}}))
        .await;
    assert_eq!(status, 201, "{opened}");
    assert_eq!(opened["status"], "uploading");
    assert_eq!(opened["missing"], json!([hash]));
    let id = opened["id"].as_str().unwrap().to_owned();
    let at = |tail: &str| format!("/api/deployments/{id}/{tail}");

    let (status, answer) = call(
        &gd,
        Method::POST,
        &at("missing"),
        br#"{"files":[]}"#.to_vec(),
    )
    .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (409, Some("source_upload")),
        "{answer}"
    );
    let other = b"some other blob".to_vec();
    let (status, answer) = call(
        &gd,
        Method::PUT,
        &at(&format!("blobs/{}", sha(&other))),
        other,
    )
    .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (409, Some("source_upload")),
        "{answer}"
    );
    let (status, answer) = call(&gd, Method::POST, &at("finalize"), b"{}".to_vec()).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (422, Some("upload_refused")),
        "{answer}"
    );
    let (status, answer) = call(
        &gd,
        Method::POST,
        &at("finalize"),
        br#"{"files":[]}"#.to_vec(),
    )
    .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("invalid_body")),
        "{answer}"
    );
    assert_eq!(
        gd.status(&id).await["status"],
        "uploading",
        "the upload stays open"
    );

    // Stored, then built: the builder refuses the path that climbs out before writing it.
    let (status, _) = call(
        &gd,
        Method::PUT,
        &at(&format!("blobs/{hash}")),
        archive.clone(),
    )
    .await;
    assert_eq!(status, 204);
    let (status, queued) = call(&gd, Method::POST, &at("finalize"), b"{}".to_vec()).await;
    assert_eq!(status, 200, "{queued}");
    assert_eq!(queued["status"], "queued", "{queued}");
    gd.follow(&id, 0).await;
    let d = gd.status(&id).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert!(
        d["error"]
            .as_str()
            .unwrap_or_default()
            .contains("has a `.` or `..` part"),
        "{d}"
    );
    let (status, answer) = call(&gd, Method::POST, &at("finalize"), b"{}".to_vec()).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (409, Some("not_uploading")),
        "{answer}"
    );

    // A link out of the checkout fails the same way.
    let link = hostile_archive("etc", tar::EntryType::Symlink, "/etc");
    let h = sha(&link);
    let (_, opened) = gd
        .deploy(json!({"source": "local folder", "archive": {"hash": h, "size": link.len()}}))
        .await;
    let id = opened["id"].as_str().unwrap().to_owned();
    let at = |tail: &str| format!("/api/deployments/{id}/{tail}");
    call(&gd, Method::PUT, &at(&format!("blobs/{h}")), link).await;
    let (status, _) = call(&gd, Method::POST, &at("finalize"), b"{}".to_vec()).await;
    assert_eq!(status, 200);
    gd.follow(&id, 0).await;
    let d = gd.status(&id).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert!(
        d["error"]
            .as_str()
            .unwrap_or_default()
            .contains("is absolute"),
        "{d}"
    );
}
