//! Certificates for custom domains from a real ACME CA (#15): Let's Encrypt's `pebble`, with
//! `pebble-challtestsrv` as the DNS both pebble and the edge's ownership checks ask. A domain
//! gets a certificate only once it is verified (an unverified one, or an unknown SNI, causes no
//! ACME traffic); it is then served over HTTPS and HTTP/2 with pebble's chain, renewed before
//! it expires, and kept serving when the CA is down. Two edges sharing Redis order a name once
//! and both present it, whichever edge the CA's HTTP-01 request reaches.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    add_domain, curl_tls, deploy_and_follow as deploy, free_port, DnsServer, GitServer, Gitdeploy,
    Pebble, PebblePorts, Redis, S3_KEY,
};
use serde_json::{json, Value};

/// The serial and issuer of the certificate the edge presents for `sni` (empty when none).
fn presented(port: u16, sni: &str) -> String {
    let script = format!(
        "openssl s_client -connect 127.0.0.1:{port} -servername {sni} </dev/null 2>/dev/null \
         | openssl x509 -noout -serial -issuer"
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn domain_of(gd: &Gitdeploy, project: &str, domain: &str) -> Value {
    let list = gd
        .get_json(&format!("/api/projects/{project}/domains"))
        .await;
    list.as_array()
        .unwrap()
        .iter()
        .find(|d| d["domain"] == domain)
        .cloned()
        .unwrap_or_else(|| panic!("{domain} is not listed: {list}"))
}

/// Waits (bounded) until `ok` holds of `domain`'s record, which it returns.
async fn until(
    gd: &Gitdeploy,
    project: &str,
    domain: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut backoff = Duration::from_millis(20);
    loop {
        let d = domain_of(gd, project, domain).await;
        if ok(&d) {
            return d;
        }
        assert!(Instant::now() < deadline, "{domain} never {what}: {d}");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(300));
    }
}

/// The flags of an edge ordering from `pebble` (at `ports`), checking DNS with `dns`.
fn acme_flags(ports: &PebblePorts, https_ca: &Path, dns: &DnsServer, tls_port: u16) -> Vec<String> {
    [
        "--domain",
        "sites.test",
        "--tls-listen",
        &format!("127.0.0.1:{tls_port}"),
        "--acme-directory",
        &ports.directory(),
        "--acme-ca-file",
        https_ca.to_str().unwrap(),
        "--acme-email",
        "ops@sites.test",
        "--dns-resolver",
        &dns.dns.to_string(),
        "--public-address",
        "127.0.0.1",
        "--domain-check-interval-ms",
        "200",
        "--acme-check-interval-ms",
        "200",
        "--acme-retry-ms",
        "300",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The test CA pebble's HTTPS uses, made before the edge starts (the edge must trust it).
fn pebble_https_ca() -> common::TestCa {
    common::TestCa::new()
}

#[tokio::test]
async fn a_verified_domain_gets_a_real_certificate_renewed_and_kept_through_an_outage() {
    let dns = DnsServer::start();
    let mut git = GitServer::new();
    git.add_repo("shop", &[("index.html", "the shop")]);
    git.start();
    let data = tempfile::tempdir().unwrap();
    let tls_port = free_port();
    let ports = PebblePorts::new();
    let https_ca = pebble_https_ca();
    let mut flags = acme_flags(&ports, &https_ca.ca_pem(), &dns, tls_port);
    // Certificates valid an hour, renewed when fewer than 3,590 s are left: 10 s after issue.
    flags.extend(["--acme-renew-before-ms".into(), "3590000".into()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let gd = Gitdeploy::start_with(data.path(), &flags).await;
    let mut pebble = Pebble::start_with_ca(ports, https_ca, &dns, gd.port, tls_port, 3600);
    let root = data.path().join("pebble-root.pem");
    pebble.write_root(&root);
    deploy(&gd, json!({"repo": git.url("shop"), "project": "shop"})).await;

    // Claimed but not pointing at the platform: no order, no account, no certificate; an
    // unknown name's handshake fails and orders nothing either.
    assert_eq!(add_domain(&gd, "shop", "www.shop.org").await.0, 201);
    until(&gd, "shop", "www.shop.org", "was checked", |d| {
        d["error"]
            .as_str()
            .is_some_and(|e| e.contains("does not resolve"))
    })
    .await;
    assert_eq!(presented(tls_port, "www.shop.org"), "");
    assert_eq!(presented(tls_port, "unknown.example.org"), "");
    let accounts = data.path().join("state/tls/accounts");
    assert_eq!(std::fs::read_dir(&accounts).unwrap().count(), 0);
    let orders = "gitdeploy_acme_orders_total{outcome=\"issued\"}";
    assert_eq!(gd.metric(orders).await, 0.0);

    // Pointed at the platform: verified, ordered (HTTP-01 on the plain listener), active.
    dns.add_a("www.shop.org", &["127.0.0.1"]);
    let d = until(&gd, "shop", "www.shop.org", "became active", |d| {
        d["status"] == "active"
    })
    .await;
    let first_expiry = d["not_after_unix_ms"].as_u64().expect("an expiry");
    assert!(d.get("error").is_none(), "{d}");
    assert_eq!(
        curl_tls(&root, "www.shop.org", tls_port, "/", "--http2"),
        (0, "the shop".into(), "2".into())
    );
    let first = presented(tls_port, "www.shop.org");
    assert!(first.contains("Pebble Intermediate"), "{first}");
    assert_eq!(std::fs::read_dir(&accounts).unwrap().count(), 1);
    // The key is the data directory's secret.
    use std::os::unix::fs::PermissionsExt;
    let stored = data.path().join("state/tls/certs/www.shop.org.json");
    let mode = std::fs::metadata(&stored).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // Plain HTTP now redirects to HTTPS.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_redirects
        .get(gd.api("/"))
        .header("host", "www.shop.org")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 308);
    assert_eq!(
        resp.headers()["location"],
        format!("https://www.shop.org:{tls_port}/").as_str()
    );

    // Due for renewal: a new certificate, presented without a restart.
    let d = until(&gd, "shop", "www.shop.org", "was renewed", |d| {
        d["not_after_unix_ms"]
            .as_u64()
            .is_some_and(|t| t > first_expiry)
    })
    .await;
    assert_eq!(d["status"], "active");
    let deadline = Instant::now() + Duration::from_secs(30);
    while presented(tls_port, "www.shop.org") == first {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was never presented"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(gd.metric(orders).await >= 2.0);

    // The CA goes down: the next renewal fails, the domain says why, and it keeps serving.
    pebble.stop();
    let d = until(&gd, "shop", "www.shop.org", "showed the outage", |d| {
        d["error"]
            .as_str()
            .is_some_and(|e| e.contains("certificate order failed"))
    })
    .await;
    assert_eq!(d["status"], "active", "{d}");
    assert!(
        d["error"].as_str().unwrap().contains("goes on serving"),
        "{d}"
    );
    assert_eq!(
        curl_tls(&root, "www.shop.org", tls_port, "/", "--http2"),
        (0, "the shop".into(), "2".into())
    );
    assert!(
        gd.metric("gitdeploy_acme_orders_total{outcome=\"failed\"}")
            .await
            >= 1.0
    );
    let metrics = gd.scrape().await;
    assert!(
        metrics.contains("gitdeploy_tls_certificates{state=\"renewal_due\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gitdeploy_tls_certificate_days_left{kind=\"custom\"} 0.0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn two_edges_order_a_name_once_and_both_present_it() {
    let dns = DnsServer::start();
    let redis = Redis::start();
    let s3 = common::s3_server();
    let mut git = GitServer::new();
    git.add_repo("shop", &[("index.html", "the shop")]);
    git.start();
    let ports = PebblePorts::new();
    let https_ca = pebble_https_ca();
    let (tls_a, tls_b) = (free_port(), free_port());
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let start = |data: &Path, tls_port: u16| {
        let mut flags = acme_flags(&ports, &https_ca.ca_pem(), &dns, tls_port);
        flags.extend(["--redis-url", &redis.url, "--s3-endpoint", &s3.endpoint].map(String::from));
        let data = data.to_owned();
        async move {
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            Gitdeploy::start_with_env(
                &data,
                &flags,
                &[
                    ("AWS_ACCESS_KEY_ID", S3_KEY.0),
                    ("AWS_SECRET_ACCESS_KEY", S3_KEY.1),
                ],
            )
            .await
        }
    };
    let a = start(data_a.path(), tls_a).await;
    let b = start(data_b.path(), tls_b).await;
    // The CA validates through edge A's plain port only: whichever edge orders, A answers
    // from the shared state.
    let pebble = Pebble::start_with_ca(ports, https_ca, &dns, a.port, tls_a, 90 * 24 * 3600);
    let root = data_a.path().join("pebble-root.pem");
    pebble.write_root(&root);
    deploy(&a, json!({"repo": git.url("shop"), "project": "shop"})).await;
    assert_eq!(add_domain(&b, "shop", "www.shop.org").await.0, 201);
    dns.add_a("www.shop.org", &["127.0.0.1"]);
    for gd in [&a, &b] {
        until(gd, "shop", "www.shop.org", "became active", |d| {
            d["status"] == "active"
        })
        .await;
    }
    // Both present the one certificate, over HTTP/2.
    for port in [tls_a, tls_b] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while presented(port, "www.shop.org").is_empty() {
            assert!(
                Instant::now() < deadline,
                "edge on {port} never presented it"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            curl_tls(&root, "www.shop.org", port, "/", "--http2"),
            (0, "the shop".into(), "2".into())
        );
    }
    assert_eq!(
        presented(tls_a, "www.shop.org"),
        presented(tls_b, "www.shop.org")
    );
    let issued = "gitdeploy_acme_orders_total{outcome=\"issued\"}";
    let failed = "gitdeploy_acme_orders_total{outcome=\"failed\"}";
    assert_eq!(a.metric(issued).await + b.metric(issued).await, 1.0);
    assert_eq!(a.metric(failed).await + b.metric(failed).await, 0.0);
    // Nothing of it is left on either edge's disk: it lives in Redis.
    assert!(!data_a
        .path()
        .join("state/tls/certs/www.shop.org.json")
        .exists());
    assert!(!data_b
        .path()
        .join("state/tls/certs/www.shop.org.json")
        .exists());
}
