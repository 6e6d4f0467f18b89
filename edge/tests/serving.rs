//! The edge's serving rules and HTTP semantics, through the real `gitdeploy up`, its embedded S3
//! and a site built from a fixture repository: SPA and nested 404s, `_redirects` and `_headers`,
//! conditional requests, ranges, precompressed variants, HEAD, cache lifetimes, S3 failures.

mod common;

use std::io::Read;

use common::{assert_complete_log, GitServer, Gitdeploy};
use gitdeploy_core::DeploymentStatus;
use reqwest::header::HeaderMap;
use reqwest::Method;

/// Served with 1 KiB+ of text so the builder keeps compressed variants.
fn page(title: &str) -> String {
    format!(
        "<!doctype html><title>{title}</title>\n{}",
        "<p>lorem ipsum dolor sit amet</p>\n".repeat(60)
    )
}

struct Site {
    gd: Gitdeploy,
    id: String,
    log: Vec<gitdeploy_core::LogRecord>,
    big: Vec<u8>,
    _git: GitServer,
    _data: tempfile::TempDir,
}

async fn deploy_fixture() -> Site {
    let index = page("home");
    let docs = page("docs");
    let docs_404 = page("docs 404");
    let app_js = "export const answer = 42;\n".repeat(100);
    let big: String = (0..3 * 1024 * 1024 / 16)
        .map(|i| format!("{:015}\n", i))
        .collect();
    let mut git = GitServer::new();
    git.add_repo(
        "site",
        &[
            ("index.html", index.as_str()),
            ("docs/index.html", docs.as_str()),
            ("docs/404.html", docs_404.as_str()),
            ("app.js", app_js.as_str()),
            ("assets/app.3f2a1b9c.js", "console.log('hashed')"),
            ("posts/hello.html", "<h1>hello post</h1>"),
            ("big.bin", big.as_str()),
            ("_redirects", "/old/* /new/:splat 301\n/blog/:slug /posts/:slug 302\n/shell /docs/index.html 200\nthis line is wrong\n"),
            ("_headers", "/*\n  X-Frame-Options: DENY\n/assets/*\n  X-Asset: yes\n  Content-Length: 1\n"),
        ],
    );
    git.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    let id = gd.deploy_repo(&git.url("site")).await;
    let log = gd.follow(&id, 0).await;
    assert_complete_log(&log);
    assert_eq!(
        log.last().unwrap().outcome.as_ref().unwrap().status,
        DeploymentStatus::Ready,
        "{log:#?}"
    );
    Site {
        gd,
        id,
        log,
        big: big.into_bytes(),
        _git: git,
        _data: data,
    }
}

async fn get(site: &Site, path: &str, headers: &[(&str, &str)]) -> (u16, HeaderMap, Vec<u8>) {
    let mut req = site.gd.site(Method::GET, &site.id, path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.bytes().await.unwrap().to_vec())
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn serving_rules_and_http_semantics() {
    let site = deploy_fixture().await;
    let gd = &site.gd;

    // The build log reports the malformed rule lines with their numbers.
    assert!(
        site.log
            .iter()
            .any(|r| r.line.contains("_redirects line 4")),
        "{:#?}",
        site.log
    );
    assert!(site
        .log
        .iter()
        .any(|r| r.line.contains("_headers line 5") && r.line.contains("content-length")));
    // Rule files are never served.
    let (status, _, body) = get(&site, "/_redirects", &[]).await;
    assert!(
        status == 404 || !String::from_utf8_lossy(&body).contains("/old/*"),
        "{status}"
    );
    let (status, _, _) = get(&site, "/_headers.txt", &[]).await;
    assert_eq!(status, 404);

    // Plain static files: an unknown path is a real 404 (no SPA fallback: that is for sites
    // recognised as single-page apps, tests/frameworks.rs), and a nested 404 page.
    let (status, _, body) = get(&site, "/app/settings/profile", &[]).await;
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("404 Not Found"));
    let (status, _, body) = get(&site, "/docs/nope", &[]).await;
    assert_eq!((status, body), (404, page("docs 404").into_bytes()));
    let (status, _, _) = get(&site, "/missing.js", &[]).await;
    assert_eq!(status, 404);

    // Redirects with a splat and a placeholder keep the query; a 200 rule rewrites.
    let client = no_redirects();
    let go = |path: &str| {
        client
            .get(gd.api(path))
            .header("host", format!("{}.localhost", site.id))
            .send()
    };
    let resp = go("/old/a/b.html?x=1").await.unwrap();
    assert_eq!(resp.status(), 301);
    assert_eq!(resp.headers()["location"], "/new/a/b.html?x=1");
    let resp = go("/blog/hello").await.unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(resp.headers()["location"], "/posts/hello");
    let (status, _, body) = get(&site, "/shell", &[]).await;
    assert_eq!((status, body), (200, page("docs").into_bytes()));

    // Header rules apply by path; reserved headers cannot be overridden.
    let (_, headers, body) = get(&site, "/assets/app.3f2a1b9c.js", &[]).await;
    assert_eq!(headers["x-asset"], "yes");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["content-length"], body.len().to_string());
    // Hashed assets are immutable; HTML revalidates.
    assert_eq!(
        headers["cache-control"],
        "public, max-age=31536000, immutable"
    );
    let (_, headers, _) = get(&site, "/", &[]).await;
    assert_eq!(
        headers["cache-control"],
        "public, max-age=0, must-revalidate"
    );
    assert!(headers.get("x-asset").is_none());

    // Precompressed variants by Accept-Encoding, with Vary and per-representation ETags.
    let identity = get(&site, "/app.js", &[("accept-encoding", "identity")]).await;
    let gzip = get(&site, "/app.js", &[("accept-encoding", "gzip")]).await;
    let br = get(
        &site,
        "/app.js",
        &[("accept-encoding", "gzip, deflate, br")],
    )
    .await;
    assert!(identity.1.get("content-encoding").is_none());
    assert_eq!(
        identity.2,
        "export const answer = 42;\n".repeat(100).into_bytes()
    );
    assert_eq!(gzip.1["content-encoding"], "gzip");
    assert_eq!(br.1["content-encoding"], "br");
    for (_, headers, _) in [&identity, &gzip, &br] {
        assert_eq!(headers["vary"], "Accept-Encoding");
        assert_eq!(headers["content-type"], "text/javascript; charset=utf-8");
    }
    let etags: std::collections::HashSet<_> = [&identity, &gzip, &br]
        .iter()
        .map(|r| r.1["etag"].clone())
        .collect();
    assert_eq!(etags.len(), 3);
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(&gzip.2[..])
        .read_to_end(&mut unzipped)
        .unwrap();
    assert_eq!(unzipped, identity.2);
    let mut unbrotli = Vec::new();
    brotli::Decompressor::new(&br.2[..], 4096)
        .read_to_end(&mut unbrotli)
        .unwrap();
    assert_eq!(unbrotli, identity.2);
    assert!(br.2.len() < identity.2.len() && gzip.2.len() < identity.2.len());
    // A second round comes from the object cache with the same bytes.
    assert_eq!(
        get(&site, "/app.js", &[("accept-encoding", "br")]).await.2,
        br.2
    );

    // Conditional requests: 304 with validators, 412 for a failed If-Match.
    let etag = identity.1["etag"].to_str().unwrap().to_owned();
    let last_modified = identity.1["last-modified"].to_str().unwrap().to_owned();
    let (status, headers, body) = get(
        &site,
        "/app.js",
        &[("if-none-match", &etag), ("accept-encoding", "identity")],
    )
    .await;
    assert_eq!((status, body.len()), (304, 0));
    assert_eq!(headers["etag"], etag.as_str());
    let (status, _, _) = get(&site, "/app.js", &[("if-modified-since", &last_modified)]).await;
    assert_eq!(status, 304);
    let (status, _, _) = get(&site, "/app.js", &[("if-match", "\"not-it\"")]).await;
    assert_eq!(status, 412);
    let (status, _, _) = get(
        &site,
        "/app.js",
        &[
            ("if-none-match", "\"other\""),
            ("if-modified-since", &last_modified),
        ],
    )
    .await;
    assert_eq!(status, 200, "If-None-Match takes precedence");

    // Ranges on a cached object and on a streamed one (3 MiB: above the cache limit).
    let (status, headers, body) = get(&site, "/app.js", &[("range", "bytes=0-5")]).await;
    assert_eq!((status, body.as_slice()), (206, &b"export"[..]));
    assert_eq!(
        headers["content-range"],
        format!("bytes 0-5/{}", identity.2.len())
    );
    assert!(
        headers.get("content-encoding").is_none(),
        "ranges are served from the identity form"
    );
    let size = site.big.len();
    for (range, start, end) in [
        ("bytes=16-31", 16, 31),
        ("bytes=-16", size - 16, size - 1),
        ("bytes=3145000-", 3_145_000, size - 1),
    ] {
        let (status, headers, body) = get(&site, "/big.bin", &[("range", range)]).await;
        assert_eq!(status, 206, "{range}");
        assert_eq!(
            headers["content-range"],
            format!("bytes {start}-{end}/{size}")
        );
        assert_eq!(body, site.big[start..=end], "{range}");
    }
    let (status, headers, _) = get(&site, "/big.bin", &[("range", "bytes=99999999-")]).await;
    assert_eq!(status, 416);
    assert_eq!(headers["content-range"], format!("bytes */{size}"));
    let (status, _, body) = get(
        &site,
        "/big.bin",
        &[("range", "bytes=0-9"), ("if-range", "\"stale\"")],
    )
    .await;
    assert_eq!(
        (status, body.len()),
        (200, size),
        "a stale If-Range gets the whole file"
    );
    let (status, headers, body) = get(&site, "/big.bin", &[]).await;
    assert_eq!((status, body.len()), (200, size));
    assert_eq!(headers["accept-ranges"], "bytes");
    assert_eq!(body, site.big);

    // HEAD: the headers of GET, no body.
    let resp = gd
        .site(Method::HEAD, &site.id, "/big.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], size.to_string());
    assert!(resp.bytes().await.unwrap().is_empty());
    // 405 for other methods.
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
        let resp = gd.site(method.clone(), &site.id, "/").send().await.unwrap();
        assert_eq!(resp.status(), 405, "{method}");
    }
    // Traversal.
    assert_eq!(
        gd.raw_get_status(&format!("{}.localhost", site.id), "/docs/%2e%2e/%2e%2e/x"),
        400
    );
}

#[tokio::test]
async fn s3_failures_become_small_502_pages_and_cached_copies_still_serve() {
    let site = deploy_fixture().await;
    let gd = &site.gd;
    // Warm the object cache with one file.
    let (status, _, cached) = get(&site, "/posts/hello.html", &[]).await;
    assert_eq!(status, 200);
    // Remove blobs behind the edge's back: S3 now answers 404 for them.
    let bucket = gd.data_dir.join("s3/gitdeploy");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(bucket.join(format!("manifests/{}.json", site.id))).unwrap(),
    )
    .unwrap();
    for path in ["posts/hello.html", "big.bin"] {
        let hash = manifest["files"][path]["hash"].as_str().unwrap();
        std::fs::remove_file(bucket.join("blobs").join(hash)).unwrap();
    }
    let (status, headers, body) = get(&site, "/big.bin", &[]).await;
    assert_eq!(status, 502);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("502") && !text.contains("<?xml") && !text.contains("NoSuchKey"),
        "{text}"
    );
    assert!(headers.keys().all(|k| !k.as_str().starts_with("x-amz")));
    // The cached copy is still served.
    let (status, _, body) = get(&site, "/posts/hello.html", &[]).await;
    assert_eq!((status, body), (200, cached));
}

#[tokio::test]
async fn a_burst_of_requests_for_a_cold_object_costs_one_s3_get() {
    let site = deploy_fixture().await;
    let gd = &site.gd;
    let ok = r#"gitdeploy_s3_requests_total{kind="object",outcome="ok"}"#;
    let before = gd.metric(ok).await;
    let requests = (0..40).map(|_| {
        let req = gd.site(Method::GET, &site.id, "/posts/hello.html");
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    });
    let results = futures_util::future::join_all(requests).await;
    assert!(
        results
            .iter()
            .all(|(s, b)| *s == 200 && b == "<h1>hello post</h1>"),
        "{results:?}"
    );
    assert_eq!(
        gd.metric(ok).await - before,
        1.0,
        "one S3 GET for the whole burst"
    );
    assert!(
        gd.metric(r#"gitdeploy_object_cache_requests_total{result="hit"}"#)
            .await
            >= 39.0
    );
}
