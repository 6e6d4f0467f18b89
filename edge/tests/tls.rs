//! HTTPS and HTTP/2 on the edge itself (#15): a TLS listener beside the plain one, serving sites
//! and the API with the platform certificate (`--tls-cert`/`--tls-key`, read again when the
//! files change), HTTP/2 by ALPN, HTTP/1.1 still; a name the platform does not serve fails the
//! handshake. Checked with `curl` and `openssl s_client`, with a CA the test makes.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{curl_tls, deploy_and_follow as deploy, free_port, GitServer, Gitdeploy, TestCa};
use serde_json::json;

/// The platform certificate for `sites.test` and `*.sites.test`, serial `serial`.
fn issue_platform(ca: &TestCa, serial: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    ca.issue("site", &["DNS:sites.test", "DNS:*.sites.test"], serial)
}

/// The serial of the certificate the edge presents for `sni`.
fn presented_serial(port: u16, sni: &str) -> String {
    let script = format!(
        "openssl s_client -connect 127.0.0.1:{port} -servername {sni} </dev/null 2>/dev/null \
         | openssl x509 -noout -serial"
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn sites_and_the_api_are_served_over_https_and_http2_with_a_reloaded_certificate() {
    let ca = TestCa::new();
    let (cert, key) = issue_platform(&ca, "0x1001");
    let mut git = GitServer::new();
    git.add_repo("shop", &[("index.html", "the shop")]);
    git.start();
    let data = tempfile::tempdir().unwrap();
    let tls_port = free_port();
    let tls_listen = format!("127.0.0.1:{tls_port}");
    // A platform domain of two labels: a wildcard directly under a single label
    // (`*.localhost`) is too broad for TLS clients.
    let gd = Gitdeploy::start_with(
        data.path(),
        &[
            "--domain",
            "sites.test",
            "--tls-listen",
            &tls_listen,
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    )
    .await;
    let (id, _) = deploy(&gd, json!({"repo": git.url("shop"), "project": "shop"})).await;

    // Sites and the API, over HTTP/2 and HTTP/1.1.
    let dir = ca.ca_pem();
    let dir = dir.as_path();
    assert_eq!(
        curl_tls(dir, "shop.sites.test", tls_port, "/", "--http2"),
        (0, "the shop".into(), "2".into())
    );
    assert_eq!(
        curl_tls(dir, &format!("{id}.sites.test"), tls_port, "/", "--http1.1"),
        (0, "the shop".into(), "1.1".into())
    );
    let (code, body, version) = curl_tls(dir, "sites.test", tls_port, "/api/health", "--http2");
    assert_eq!((code, version.as_str()), (0, "2"), "{body}");
    assert!(body.contains("\"ok\":true"), "{body}");
    let (code, body, _) = curl_tls(dir, "shop.sites.test", tls_port, "/missing", "--http2");
    assert_eq!(code, 0);
    assert!(body.contains("could not be found"), "{body}");
    // Over plain HTTP a site now redirects to HTTPS (308: the method stays), but not an ACME
    // challenge; the API stays on both, for clients given a plain URL.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let plain = |host: &'static str, path: &'static str| {
        let (gd, client) = (&gd, &no_redirects);
        async move {
            client
                .get(gd.api(path))
                .header("host", host)
                .send()
                .await
                .unwrap()
        }
    };
    let resp = plain("shop.sites.test", "/a?b=1").await;
    assert_eq!(resp.status(), 308);
    assert_eq!(
        resp.headers()["location"],
        format!("https://shop.sites.test:{tls_port}/a?b=1").as_str()
    );
    let resp = plain("shop.sites.test", "/.well-known/acme-challenge/x").await;
    assert_eq!(resp.status(), 404);
    let resp = plain("sites.test", "/api/health").await;
    assert_eq!(resp.status(), 200);

    // A name the platform does not serve gets no certificate: the handshake fails.
    let (code, _, _) = curl_tls(dir, "www.other.org", tls_port, "/", "--http2");
    assert_eq!(code, 35, "curl reports a TLS handshake failure");
    let (code, _, _) = curl_tls(dir, "a.b.sites.test", tls_port, "/", "--http2");
    assert_eq!(code, 35);
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", gd.metrics_port))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (result, count) in [("no_certificate", 2), ("http1", 1)] {
        let line = format!("gitdeploy_tls_handshakes_total{{result=\"{result}\"}} {count}");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    assert!(
        metrics.contains("gitdeploy_tls_handshakes_total{result=\"h2\"} 3"),
        "{metrics}"
    );

    // A renewed certificate in the same files is presented without a restart.
    assert_eq!(presented_serial(tls_port, "shop.sites.test"), "serial=1001");
    issue_platform(&ca, "0x1002");
    let deadline = Instant::now() + Duration::from_secs(20);
    while presented_serial(tls_port, "shop.sites.test") != "serial=1002" {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never presented"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        curl_tls(dir, "shop.sites.test", tls_port, "/", "--http2"),
        (0, "the shop".into(), "2".into())
    );
    // A broken replacement is refused and the last good one goes on serving.
    std::fs::write(&cert, "not a certificate").unwrap();
    let metrics = format!("http://127.0.0.1:{}/metrics", gd.metrics_port);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
        if text.contains("gitdeploy_tls_certificate_loads_total{result=\"failed\"} 1") {
            break;
        }
        assert!(Instant::now() < deadline, "the broken file was never read");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(presented_serial(tls_port, "shop.sites.test"), "serial=1002");
}

#[test]
fn a_certificate_without_its_key_is_refused_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_gitdeploy"))
        .args([
            "up",
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            "/nonexistent.pem",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls-key"), "{err}");
}

/// `up --tls-listen` without certificate files: a CA of the server's own in the data directory
/// issues a certificate for each name asked for (exactly that name: `<label>.localhost` works
/// where a `*.localhost` wildcard would not), and keeps it across restarts.
#[tokio::test]
async fn without_certificate_files_a_local_ca_issues_one_per_name() {
    let mut git = GitServer::new();
    git.add_repo("shop", &[("index.html", "the shop")]);
    git.start();
    let data = tempfile::tempdir().unwrap();
    let tls_port = free_port();
    let tls_listen = format!("127.0.0.1:{tls_port}");
    let gd = Gitdeploy::start_with(data.path(), &["--tls-listen", &tls_listen]).await;
    let (id, _) = deploy(&gd, json!({"repo": git.url("shop"), "project": "shop"})).await;
    let ca = data.path().join("tls").join("ca.pem");
    assert_eq!(
        curl_tls(&ca, "shop.localhost", tls_port, "/", "--http2"),
        (0, "the shop".into(), "2".into())
    );
    assert_eq!(
        curl_tls(&ca, &format!("{id}.localhost"), tls_port, "/", "--http2").1,
        "the shop"
    );
    let (code, body, _) = curl_tls(&ca, "localhost", tls_port, "/api/health", "--http2");
    assert_eq!(code, 0, "{body}");
    // Names outside the platform get nothing, even from its own CA.
    assert_eq!(
        curl_tls(&ca, "www.other.org", tls_port, "/", "--http2").0,
        35
    );
    use std::os::unix::fs::PermissionsExt;
    let key = std::fs::metadata(data.path().join("tls").join("ca.key")).unwrap();
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    let before = std::fs::read(&ca).unwrap();
    drop(gd);
    let gd = Gitdeploy::start_with(data.path(), &["--tls-listen", &tls_listen]).await;
    assert_eq!(
        std::fs::read(&ca).unwrap(),
        before,
        "the same CA after a restart"
    );
    assert_eq!(
        curl_tls(&ca, "shop.localhost", tls_port, "/", "--http2").1,
        "the shop"
    );
    drop(gd);
}

/// The response headers `curl` gets over HTTP/2 for `https://<host>:<port><path>`.
fn headers(ca_pem: &Path, host: &str, port: u16, path: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--http2",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-D",
            "-",
        ])
        .arg("--cacert")
        .arg(ca_pem)
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .expect("curl is installed");
    String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
}

/// HSTS is a project's option: on every HTTPS response of its production host (a file, a 404),
/// never on its deployments' own hosts, never over plain HTTP; off again with 0; more than two
/// years is refused.
#[tokio::test]
async fn hsts_is_sent_for_a_project_that_asks_for_it() {
    let mut git = GitServer::new();
    git.add_repo("shop", &[("index.html", "the shop")]);
    git.start();
    let data = tempfile::tempdir().unwrap();
    let tls_port = free_port();
    let tls_listen = format!("127.0.0.1:{tls_port}");
    let gd = Gitdeploy::start_with(data.path(), &["--tls-listen", &tls_listen]).await;
    let (id, _) = deploy(&gd, json!({"repo": git.url("shop"), "project": "shop"})).await;
    let ca = data.path().join("tls").join("ca.pem");
    let hsts = "strict-transport-security: max-age=31536000";
    assert!(!headers(&ca, "shop.localhost", tls_port, "/").contains("strict-transport"));

    let patch = |body: serde_json::Value| {
        let gd = &gd;
        async move {
            let resp = gd
                .http()
                .patch(gd.api("/api/projects/shop"))
                .json(&body)
                .send()
                .await
                .unwrap();
            (
                resp.status().as_u16(),
                resp.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (status, body) = patch(json!({"hsts_max_age_secs": 63_072_001u64})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_hsts", "{body}");
    let (status, body) = patch(json!({"hsts_max_age_secs": 31_536_000})).await;
    assert_eq!(status, 200);
    assert_eq!(body["hsts_max_age_secs"], 31_536_000);
    // Alias lookups are cached for up to 5 s.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !headers(&ca, "shop.localhost", tls_port, "/").contains(hsts) {
        assert!(Instant::now() < deadline, "HSTS never appeared");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(headers(&ca, "shop.localhost", tls_port, "/missing").contains(hsts));
    assert!(!headers(&ca, &format!("{id}.localhost"), tls_port, "/").contains("strict-transport"));
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(gd.api("/"))
        .header("host", "shop.localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 308);
    assert!(plain.headers().get("strict-transport-security").is_none());
    let (status, body) = patch(json!({"hsts_max_age_secs": 0})).await;
    assert_eq!(status, 200);
    assert!(body["hsts_max_age_secs"].is_null(), "{body}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while headers(&ca, "shop.localhost", tls_port, "/").contains(hsts) {
        assert!(Instant::now() < deadline, "HSTS never went away");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
