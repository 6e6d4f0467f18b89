//! Custom domains (#15): a project claims a name, which serves the project's production
//! deployment once DNS (a real DNS server the test sets, `pebble-challtestsrv`) points it at the
//! platform: a CNAME under the platform domain, or an A record to a configured public address.
//! Until then, and for any name nobody claimed, the edge answers 404.

mod common;

use std::time::{Duration, Instant};

use common::{add_domain, deploy_and_follow as deploy, DnsServer, GitServer, Gitdeploy};
use reqwest::Method;
use serde_json::{json, Value};

/// What `host` answers at `/` on the public port: status and body.
async fn at(gd: &Gitdeploy, host: &str) -> (u16, String) {
    let resp = gd
        .http()
        .request(Method::GET, gd.api("/"))
        .header("host", host)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

async fn domains(gd: &Gitdeploy, project: &str) -> Vec<Value> {
    let resp = gd
        .http()
        .get(gd.api(&format!("/api/projects/{project}/domains")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json::<Vec<Value>>().await.unwrap()
}

async fn status_of(gd: &Gitdeploy, project: &str, domain: &str) -> Value {
    domains(gd, project)
        .await
        .into_iter()
        .find(|d| d["domain"] == domain)
        .unwrap_or_else(|| panic!("{domain} is not listed"))
}

/// Waits (bounded) until `domain` reaches `want`.
async fn until_status(gd: &Gitdeploy, project: &str, domain: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut backoff = Duration::from_millis(20);
    loop {
        let d = status_of(gd, project, domain).await;
        if d["status"] == want {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "{domain} never became {want}: {d}"
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

#[tokio::test]
async fn a_custom_domain_serves_its_project_once_dns_points_at_the_platform() {
    let dns = DnsServer::start();
    let mut git = GitServer::new();
    git.add_repo("shop", &[("index.html", "the shop")]);
    git.add_repo("blog", &[("index.html", "the blog")]);
    git.start();
    let data = tempfile::tempdir().unwrap();
    let resolver = dns.dns.to_string();
    let gd = Gitdeploy::start_with(
        data.path(),
        &[
            "--dns-resolver",
            &resolver,
            "--public-address",
            "192.0.2.10",
            "--domain-check-interval-ms",
            "200",
        ],
    )
    .await;
    for project in ["shop", "blog"] {
        deploy(&gd, json!({"repo": git.url(project), "project": project})).await;
    }

    // Claimed, not yet pointed at us: listed as pending_dns with what DNS says, not served.
    let (status, d) = add_domain(&gd, "shop", "WWW.Acme-Shop.com").await;
    assert_eq!(status, 201, "{d}");
    assert_eq!(
        d,
        json!({"domain": "www.acme-shop.com", "status": "pending_dns"})
    );
    let d = until_error(&gd, "shop", "www.acme-shop.com").await;
    assert!(
        d["error"]
            .as_str()
            .unwrap()
            .contains("does not point at the platform (it does not resolve)"),
        "{d}"
    );
    assert_eq!(at(&gd, "www.acme-shop.com").await.0, 404);

    // A CNAME under the platform domain verifies it; it then serves the project's production.
    dns.set_cname("www.acme-shop.com", "shop.localhost");
    until_status(&gd, "shop", "www.acme-shop.com", "active").await;
    assert_eq!(at(&gd, "www.acme-shop.com").await, (200, "the shop".into()));
    assert_eq!(
        at(&gd, &format!("www.acme-shop.com:{}", gd.port)).await,
        (200, "the shop".into())
    );

    // An A record to a public address verifies too; one to a stranger's does not.
    dns.add_a("acme-shop.com", &["192.0.2.10"]);
    assert_eq!(add_domain(&gd, "shop", "acme-shop.com").await.0, 201);
    until_status(&gd, "shop", "acme-shop.com", "active").await;
    assert_eq!(at(&gd, "acme-shop.com").await, (200, "the shop".into()));
    dns.add_a("blog.example-cdn.net", &["198.51.100.1"]);
    assert_eq!(add_domain(&gd, "blog", "blog.example-cdn.net").await.0, 201);
    let d = until_error(&gd, "blog", "blog.example-cdn.net").await;
    assert!(
        d["error"]
            .as_str()
            .unwrap()
            .contains("resolves to 198.51.100.1"),
        "{d}"
    );
    assert_eq!(at(&gd, "blog.example-cdn.net").await.0, 404);

    // One project per name; the platform's own names, addresses and wildcards are refused.
    let (status, e) = add_domain(&gd, "blog", "www.acme-shop.com").await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (409, Some("domain_taken"))
    );
    for bad in [
        "shop.localhost",
        "192.0.2.10",
        "*.acme-shop.com",
        "no_such",
        "com",
    ] {
        let (status, e) = add_domain(&gd, "blog", bad).await;
        assert_eq!(status, 400, "{bad}: {e}");
        assert_eq!(e["error"]["code"], "invalid_domain", "{bad}: {e}");
    }
    let (status, _) = add_domain(&gd, "nope", "a.acme-shop.com").await;
    assert_eq!(status, 404);
    // A name nobody claimed is a 404, whatever DNS says.
    dns.set_cname("other.acme-shop.com", "shop.localhost");
    assert_eq!(at(&gd, "other.acme-shop.com").await.0, 404);

    // The CLI sees and changes the same.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gitdeploy"))
            .args(args)
            .args(["--api", &gd.api("")])
            .env("XDG_CONFIG_HOME", data.path())
            .env_remove("GITDEPLOY_TOKEN")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = cli(&["domains", "ls", "shop"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("www.acme-shop.com") && out.contains("active"),
        "{out}"
    );
    let (code, out, err) = cli(&["domains", "add", "blog", "news.example-cdn.net"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Added news.example-cdn.net to blog (pending_dns)")
            && out.contains("CNAME record to blog.localhost"),
        "{out}"
    );
    let (code, _, err) = cli(&["domains", "add", "blog", "www.acme-shop.com"]);
    assert_eq!(code, 2);
    assert!(err.contains("already belongs to another project"), "{err}");

    // Removed: no longer served; the name is free for another project.
    let (code, out, err) = cli(&["domains", "rm", "shop", "www.acme-shop.com"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Removed www.acme-shop.com from shop"), "{out}");
    assert_eq!(at(&gd, "www.acme-shop.com").await.0, 404);
    assert_eq!(add_domain(&gd, "blog", "www.acme-shop.com").await.0, 201);
    let resp = gd
        .http()
        .delete(gd.api("/api/projects/shop/domains/www.acme-shop.com"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

/// Waits (bounded) until `domain` has been checked and carries an error.
async fn until_error(gd: &Gitdeploy, project: &str, domain: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut backoff = Duration::from_millis(20);
    loop {
        let d = status_of(gd, project, domain).await;
        if d.get("error").is_some() {
            return d;
        }
        assert!(Instant::now() < deadline, "{domain} was never checked: {d}");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

/// Without an ACME directory, `up --tls-listen` without certificate files serves a verified
/// custom domain over HTTPS with a certificate of its local CA; a domain still waiting for its
/// DNS gets none (the local CA never issues for a name nobody verified).
#[tokio::test]
async fn the_local_ca_serves_verified_custom_domains_only() {
    let dns = DnsServer::start();
    let mut git = GitServer::new();
    git.add_repo("shop", &[("index.html", "the shop")]);
    git.start();
    let data = tempfile::tempdir().unwrap();
    let tls_port = common::free_port();
    let tls_listen = format!("127.0.0.1:{tls_port}");
    let resolver = dns.dns.to_string();
    let gd = Gitdeploy::start_with(
        data.path(),
        &[
            "--tls-listen",
            &tls_listen,
            "--dns-resolver",
            &resolver,
            "--public-address",
            "192.0.2.10",
            "--domain-check-interval-ms",
            "200",
        ],
    )
    .await;
    deploy(&gd, json!({"repo": git.url("shop"), "project": "shop"})).await;
    let ca = data.path().join("tls").join("ca.pem");
    assert_eq!(add_domain(&gd, "shop", "www.acme-shop.com").await.0, 201);
    until_error(&gd, "shop", "www.acme-shop.com").await;
    assert_eq!(
        common::curl_tls(&ca, "www.acme-shop.com", tls_port, "/", "--http2").0,
        35,
        "no certificate before it is verified"
    );
    dns.add_a("www.acme-shop.com", &["192.0.2.10"]);
    until_status(&gd, "shop", "www.acme-shop.com", "active").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = common::curl_tls(&ca, "www.acme-shop.com", tls_port, "/", "--http2");
        if got.0 == 0 {
            assert_eq!(got, (0, "the shop".into(), "2".into()));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never served over HTTPS: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
