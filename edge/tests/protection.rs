//! Visitor protection through the real server: previews (or everything) behind a password, the
//! same login page for every path, a host-scoped signed cookie, a bypass token for CI, private
//! caching of what is behind it, wrong passwords counted and rate-limited, and the settings'
//! bad input refused.

mod common;

use common::{git, GitServer, Gitdeploy};
use reqwest::Method;
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery";

async fn patch(gd: &Gitdeploy, body: Value) -> (u16, Value) {
    gd.call_json(reqwest::Method::PATCH, "/api/projects/site", Some(body))
        .await
}

/// `GET path` of `label` with extra headers: status, headers, body.
async fn get(
    gd: &Gitdeploy,
    label: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = gd.site(Method::GET, label, path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    (status, headers, resp.text().await.unwrap())
}

/// Posts the login form to `label`: status, headers.
async fn login(
    gd: &Gitdeploy,
    label: &str,
    password: &str,
    next: &str,
) -> (u16, reqwest::header::HeaderMap) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = client
        .post(format!("http://127.0.0.1:{}/.gitdeploy/login", gd.port))
        .header("host", format!("{label}.localhost:{}", gd.port))
        .form(&[("password", password), ("next", next)])
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.headers().clone())
}

#[tokio::test]
async fn protected_previews_ask_for_a_password_and_tell_nothing_else() {
    let mut server = GitServer::new();
    let repo = server.add_repo(
        "site",
        &[("index.html", "production"), ("a.html", "page a")],
    );
    git(&repo, &["checkout", "-q", "-b", "feature"]);
    std::fs::write(repo.join("index.html"), "preview").unwrap();
    git(&repo, &["commit", "-q", "-am", "preview"]);
    git(&repo, &["checkout", "-q", "main"]);
    server.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    let url = server.url("site");
    common::deploy_and_follow(&gd, json!({"repo": url, "project": "site"})).await;
    let (preview_id, _) = common::deploy_and_follow(
        &gd,
        json!({"repo": url, "project": "site", "ref": "feature"}),
    )
    .await;
    assert_eq!(get(&gd, "feature--site", "/", &[]).await.2, "preview");

    // Bad settings are refused and change nothing.
    for body in [
        json!({"protection": {"password": "short"}}),
        json!({"protection": {}}),
        json!({"protection": {"scope": "some"}}),
        json!({"protection": {"password": PASSWORD, "extra": 1}}),
    ] {
        let (status, answer) = patch(&gd, body.clone()).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some("invalid_protection")),
            "{body}: {answer}"
        );
    }
    assert_eq!(get(&gd, "feature--site", "/", &[]).await.0, 200);

    let (status, project) = patch(
        &gd,
        json!({"protection": {"scope": "previews", "password": PASSWORD, "bypass_token": true}}),
    )
    .await;
    assert_eq!(status, 200, "{project}");
    assert_eq!(project["protection"]["scope"], "previews");
    assert_eq!(project["protection"]["password"], true);
    let bypass = project["protection"]["bypass_token_value"]
        .as_str()
        .unwrap()
        .to_owned();
    let shown = gd.get_json("/api/projects/site").await;
    assert!(
        shown["protection"]["bypass_token_value"].is_null(),
        "shown once"
    );
    for secret in [PASSWORD, bypass.as_str()] {
        assert!(!shown.to_string().contains(secret));
    }
    assert!(!shown.to_string().contains("salt"));

    // Production stays open; every preview host and path gets the same login page.
    assert_eq!(get(&gd, "site", "/", &[]).await.2, "production");
    let (status, headers, page) = get(&gd, "feature--site", "/", &[]).await;
    assert_eq!(status, 401);
    assert_eq!(headers["cache-control"], "no-store");
    assert!(page.contains("name=password"), "{page}");
    for (label, path) in [
        ("feature--site", "/a.html"),
        ("feature--site", "/no-such-page"),
        ("feature--site", "/assets/app.12345678.js"),
        (preview_id.as_str(), "/"),
        (preview_id.as_str(), "/no-such-page"),
    ] {
        let (status, _, body) = get(&gd, label, path, &[]).await;
        assert_eq!(status, 401, "{label}{path}");
        assert_eq!(
            body.replace(path, "/"),
            page.replace("value=\"/\"", &format!("value=\"{}\"", "/")),
            "{label}{path}: the page says nothing of the path"
        );
    }
    let resp = gd
        .site(Method::POST, "feature--site", "/")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);

    // The bypass token: in, and privately cached only.
    let (status, headers, body) = get(
        &gd,
        "feature--site",
        "/",
        &[("x-gitdeploy-bypass", &bypass)],
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "preview"));
    assert!(
        headers["cache-control"]
            .to_str()
            .unwrap()
            .starts_with("private"),
        "{headers:?}"
    );
    assert_eq!(
        get(
            &gd,
            "feature--site",
            "/",
            &[("x-gitdeploy-bypass", "gdb_wrong")]
        )
        .await
        .0,
        401
    );

    // A wrong password, then the right one: a cookie for this host, back to where the visitor was.
    let (status, _) = login(&gd, "feature--site", "not it at all", "/a.html").await;
    assert_eq!(status, 401);
    let (status, headers) = login(&gd, "feature--site", PASSWORD, "/a.html").await;
    assert_eq!(status, 303);
    assert_eq!(headers["location"], "/a.html");
    let set = headers["set-cookie"].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(set.contains(attribute), "{set}");
    }
    assert!(
        !set.to_ascii_lowercase().contains("domain="),
        "host-scoped: {set}"
    );
    let cookie = set.split(';').next().unwrap().to_owned();
    let (status, headers, body) =
        get(&gd, "feature--site", "/a.html", &[("cookie", &cookie)]).await;
    assert_eq!((status, body.as_str()), (200, "page a"));
    assert!(headers["cache-control"]
        .to_str()
        .unwrap()
        .starts_with("private"));
    // A revalidation behind protection is private too.
    let etag = headers["etag"].to_str().unwrap().to_owned();
    let (status, headers, _) = get(
        &gd,
        "feature--site",
        "/a.html",
        &[("cookie", &cookie), ("if-none-match", &etag)],
    )
    .await;
    assert_eq!(status, 304);
    assert!(headers["cache-control"]
        .to_str()
        .unwrap()
        .starts_with("private"));
    // The cookie is for that host only; a login elsewhere may not send the visitor away.
    assert_eq!(
        get(&gd, &preview_id, "/", &[("cookie", &cookie)]).await.0,
        401
    );
    let (status, headers) = login(&gd, &preview_id, PASSWORD, "//evil.example/").await;
    assert_eq!((status, headers["location"].to_str().unwrap()), (303, "/"));

    // Everything: production asks too.
    let (status, _) = patch(&gd, json!({"protection": {"scope": "all"}})).await;
    assert_eq!(status, 200);
    assert_eq!(get(&gd, "site", "/", &[]).await.0, 401);
    assert_eq!(
        get(&gd, "feature--site", "/", &[("cookie", &cookie)])
            .await
            .0,
        200,
        "the password did not change"
    );
    // A new password signs everyone out.
    let (status, _) = patch(
        &gd,
        json!({"protection": {"password": "another long password"}}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        get(&gd, "feature--site", "/", &[("cookie", &cookie)])
            .await
            .0,
        401
    );

    // A thousand wrong passwords: at most ten (the burst, less the attempts above, plus one per
    // six seconds) are checked, the rest refused at once.
    let started = std::time::Instant::now();
    let mut codes = std::collections::BTreeMap::new();
    for _ in 0..1000 {
        let (status, headers) = login(&gd, "site", "guess", "/").await;
        if status == 429 {
            assert!(headers.contains_key("retry-after"));
        }
        *codes.entry(status).or_insert(0) += 1;
    }
    let checked = codes.get(&401).copied().unwrap_or(0);
    let earned = started.elapsed().as_secs() / 6 + 1;
    assert!(checked >= 1 && checked <= 10 + earned, "{codes:?}");
    assert_eq!(
        checked + codes.get(&429).copied().unwrap_or(0),
        1000,
        "{codes:?}"
    );
    let limited = gd
        .metric("gitdeploy_visitor_denials_total{reason=\"rate_limited\"}")
        .await;
    assert!(limited >= (1000 - checked) as f64, "{limited}");
    assert!(
        gd.metric("gitdeploy_visitor_denials_total{reason=\"wrong_password\"}")
            .await
            >= 1.0 + checked as f64
    );
    assert!(
        gd.metric("gitdeploy_visitor_denials_total{reason=\"login_required\"}")
            .await
            >= 8.0
    );

    // Off: open again.
    let (status, project) = patch(&gd, json!({"protection": null})).await;
    assert_eq!(status, 200);
    assert!(project["protection"].is_null());
    assert_eq!(get(&gd, "feature--site", "/", &[]).await.2, "preview");
    let (status, headers, _) = get(&gd, "site", "/", &[]).await;
    assert_eq!(status, 200);
    assert!(headers["cache-control"]
        .to_str()
        .unwrap()
        .starts_with("public"));
    // Without protection there is no login to post to.
    assert_eq!(login(&gd, "site", PASSWORD, "/").await.0, 404);
}
