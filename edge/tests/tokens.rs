//! Named API tokens with scopes and a project, and the audit log, through the real server and
//! the CLI: each scope reaches what it should and is refused the rest with its own code, a
//! project-restricted token sees and touches its project only, a revoked token stops at once,
//! and every mutation (refused ones included) is in the audit log with who made it.

mod common;

use common::{GitServer, Gitdeploy};
use reqwest::Method;
use serde_json::{json, Value};

const ROOT: &str = "a-long-enough-test-token";

struct Api<'a> {
    gd: &'a Gitdeploy,
}

impl Api<'_> {
    async fn call(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .gd
            .http()
            .request(method, self.gd.api(path))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn token(&self, name: &str, scopes: &[&str], project: Option<&str>) -> (String, String) {
        let (status, body) = self
            .call(
                ROOT,
                Method::POST,
                "/api/tokens",
                Some(json!({"name": name, "scopes": scopes, "project": project})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        (
            body["id"].as_str().unwrap().to_owned(),
            body["token"].as_str().unwrap().to_owned(),
        )
    }
}

#[tokio::test]
async fn scoped_tokens_reach_what_they_may_and_every_mutation_is_audited() {
    let mut git = GitServer::new();
    git.add_repo("docs", &[("index.html", "docs")]);
    git.add_repo("blog", &[("index.html", "blog")]);
    git.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start_with(data.path(), &["--api-token", ROOT]).await;
    let api = Api { gd: &gd };
    for name in ["docs", "blog"] {
        let (status, body) = api
            .call(
                ROOT,
                Method::POST,
                "/api/projects",
                Some(json!({"name": name, "repo": git.url(name)})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (_, blog_deploy) = api
        .call(
            ROOT,
            Method::POST,
            "/api/deployments",
            Some(json!({"repo": git.url("blog"), "project": "blog"})),
        )
        .await;
    let blog_id = blog_deploy["id"].as_str().unwrap().to_owned();

    // Bad token requests are refused with their own codes.
    for (body, status, code) in [
        (json!({"name": "x", "scopes": []}), 400, "invalid_scope"),
        (
            json!({"name": "x", "scopes": ["write"]}),
            400,
            "invalid_scope",
        ),
        (json!({"name": "", "scopes": ["read"]}), 400, "invalid_name"),
        (
            json!({"name": "x", "scopes": ["read"], "project": "nope"}),
            404,
            "not_found",
        ),
        (json!({"name": "x"}), 400, "invalid_body"),
    ] {
        let (got, answer) = api
            .call(ROOT, Method::POST, "/api/tokens", Some(body.clone()))
            .await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }

    let (_, reader) = api.token("reader", &["read"], None).await;
    let (deployer_id, deployer) = api.token("ci-docs", &["deploy"], Some("docs")).await;
    let (_, admin) = api.token("ops", &["admin"], None).await;
    let (status, _) = api
        .call(
            ROOT,
            Method::POST,
            "/api/tokens",
            Some(json!({"name": "ops", "scopes": ["read"]})),
        )
        .await;
    assert_eq!(status, 409, "names are unique");

    // The list never shows a secret (nor its hash).
    let (status, list) = api
        .call(admin.as_str(), Method::GET, "/api/tokens", None)
        .await;
    assert_eq!(status, 200);
    let text = list.to_string();
    for secret in [&reader, &deployer, &admin] {
        assert!(!text.contains(secret.as_str()), "{text}");
    }
    assert!(!text.contains("sha256"), "{text}");
    assert_eq!(list["tokens"].as_array().unwrap().len(), 3);

    // read: every GET, no mutation.
    assert_eq!(
        api.call(&reader, Method::GET, "/api/projects", None)
            .await
            .0,
        200
    );
    for (method, path, body) in [
        (
            Method::POST,
            "/api/deployments",
            Some(json!({"repo": git.url("docs")})),
        ),
        (
            Method::PATCH,
            "/api/projects/docs",
            Some(json!({"production_branch": "main"})),
        ),
        (Method::GET, "/api/tokens", None),
        (Method::GET, "/api/audit", None),
    ] {
        let (status, body) = api.call(&reader, method.clone(), path, body).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "insufficient_scope", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("[read]"),
            "{body}"
        );
    }

    // deploy, restricted to docs: deploys docs, sees docs only, touches nothing else.
    let (status, body) = api
        .call(
            &deployer,
            Method::POST,
            "/api/deployments",
            Some(json!({"repo": git.url("docs"), "project": "docs"})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let docs_id = body["id"].as_str().unwrap().to_owned();
    for (method, path, body, code) in [
        (
            Method::POST,
            "/api/deployments",
            Some(json!({"repo": git.url("blog"), "project": "blog"})),
            "project_not_allowed",
        ),
        (
            Method::POST,
            "/api/deployments",
            Some(json!({"repo": git.url("docs")})),
            "project_not_allowed",
        ),
        (
            Method::GET,
            &format!("/api/deployments/{blog_id}") as &str,
            None,
            "project_not_allowed",
        ),
        (
            Method::POST,
            &format!("/api/deployments/{blog_id}/cancel"),
            None,
            "project_not_allowed",
        ),
        (
            Method::GET,
            "/api/projects/blog",
            None,
            "project_not_allowed",
        ),
        (
            Method::PATCH,
            "/api/projects/docs",
            Some(json!({"production_branch": "main"})),
            "insufficient_scope",
        ),
        (
            Method::POST,
            "/api/tokens",
            Some(json!({"name": "mine", "scopes": ["read"]})),
            "insufficient_scope",
        ),
    ] {
        let (status, answer) = api.call(&deployer, method.clone(), path, body).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (403, Some(code)),
            "{method} {path}: {answer}"
        );
    }
    let (_, projects) = api
        .call(&deployer, Method::GET, "/api/projects", None)
        .await;
    let names: Vec<&str> = projects["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["docs"]);
    let (_, deployments) = api
        .call(&deployer, Method::GET, "/api/deployments", None)
        .await;
    assert!(deployments["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["project"] == "docs"));
    assert_eq!(
        api.call(
            &deployer,
            Method::GET,
            &format!("/api/deployments/{docs_id}"),
            None
        )
        .await
        .0,
        200
    );

    // The CLI: tokens made, listed and revoked with an admin token; a revoked token stops.
    let cli = |args: &[&str], token: &str| {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(["--api".into(), gd.api(""), "--token".into(), token.into()]);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gitdeploy"))
            .args(&all)
            .env("XDG_CONFIG_HOME", "/nonexistent")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, secret, said) = cli(
        &[
            "tokens",
            "create",
            "from-cli",
            "--scope",
            "read",
            "--project",
            "docs",
        ],
        &admin,
    );
    assert_eq!(code, Some(0), "{said}");
    assert!(
        secret.trim().starts_with("gdt_") && said.contains("shown this once"),
        "{secret} {said}"
    );
    let (code, table, _) = cli(&["tokens", "ls"], &admin);
    assert_eq!(code, Some(0));
    assert!(
        table.contains("from-cli") && table.contains("ci-docs") && !table.contains(secret.trim()),
        "{table}"
    );
    let (code, _, said) = cli(&["tokens", "revoke", &deployer_id], &admin);
    assert_eq!(code, Some(0), "{said}");
    let (status, body) = api
        .call(&deployer, Method::GET, "/api/projects", None)
        .await;
    assert_eq!(status, 401, "{body}");
    let (code, _, said) = cli(&["tokens", "ls"], secret.trim());
    assert_eq!(code, Some(2));
    assert!(said.contains("needs admin"), "{said}");

    // The audit log: who did what, when, refused attempts included, secrets never.
    let (code, audit_table, said) = cli(&["audit", "--limit", "100"], &admin);
    assert_eq!(code, Some(0), "{said}");
    assert!(audit_table.contains("ci-docs"), "{audit_table}");
    let (status, audit) = api
        .call(&admin, Method::GET, "/api/audit?limit=1000", None)
        .await;
    assert_eq!(status, 200);
    let entries = audit["entries"].as_array().unwrap();
    let find = |actor: &str, method: &str, path: &str, status: u64| {
        entries.iter().any(|e| {
            e["actor"].as_str().unwrap().contains(actor)
                && e["method"] == method
                && e["path"] == path
                && e["status"] == status
                && e["time_unix_ms"].as_u64().unwrap() > 0
        })
    };
    assert!(
        find("platform token", "POST", "/api/projects", 201),
        "{audit}"
    );
    assert!(
        find("platform token", "POST", "/api/tokens", 201),
        "{audit}"
    );
    assert!(find("ci-docs", "POST", "/api/deployments", 202), "{audit}");
    assert!(
        find("ci-docs", "PATCH", "/api/projects/docs", 403),
        "{audit}"
    );
    assert!(find("reader", "POST", "/api/deployments", 403), "{audit}");
    assert!(
        find("ops", "DELETE", &format!("/api/tokens/{deployer_id}"), 204),
        "{audit}"
    );
    assert!(
        !entries.iter().any(|e| e["method"] == "GET"),
        "reads are not audited"
    );
    for secret in [&reader, &deployer, &admin] {
        assert!(!audit.to_string().contains(secret.as_str()));
    }
    // Newest first.
    let times: Vec<u64> = entries
        .iter()
        .map(|e| e["time_unix_ms"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
}

#[tokio::test]
async fn an_open_api_makes_no_tokens() {
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    let resp = gd
        .http()
        .post(gd.api("/api/tokens"))
        .json(&json!({"name": "ci", "scopes": ["read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "api_open");
}
