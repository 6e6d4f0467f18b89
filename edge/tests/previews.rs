//! Pull requests and branch previews through the real server: signed GitHub `push` and
//! `pull_request` events build previews at stable aliases (`<branch>--<project>`,
//! `pr-<n>--<project>`) that follow the latest ready build, with the preview environment's
//! variables (a fork's pull request without any secret), and are retired when the pull request
//! closes or the branch is deleted. Replayed and forged deliveries run nothing.

mod common;

use common::{git, hub_signature, GitServer, Gitdeploy};
use serde_json::{json, Value};

const SECRET: &str = "webhook-secret-0123456789";

fn sign(body: &[u8]) -> String {
    hub_signature(SECRET, body)
}
const BUILD: &str = "mkdir -p out && printf '%s|%s|%s' \"$(cat page.txt)\" \"$GREETING\" \"$TOKEN\" > out/index.html";

/// Commits `page` as `page.txt` on a new branch `branch` from `main`; its commit.
fn commit_branch(repo: &std::path::Path, branch: &str, page: &str) -> String {
    git(repo, &["checkout", "-q", "-B", branch, "main"]);
    std::fs::write(repo.join("page.txt"), page).unwrap();
    git(repo, &["commit", "-q", "-am", page]);
    let sha = rev_parse(repo, "HEAD");
    git(repo, &["checkout", "-q", "main"]);
    sha
}

fn rev_parse(repo: &std::path::Path, what: &str) -> String {
    let out = std::process::Command::new("git")
        .args(["rev-parse", what])
        .current_dir(repo)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

struct Hook<'a> {
    gd: &'a Gitdeploy,
    url: String,
}

impl Hook<'_> {
    async fn send(&self, event: &str, body: &Value) -> (u16, Value) {
        let bytes = serde_json::to_vec(body).unwrap();
        self.send_signed(event, bytes.clone(), sign(&bytes)).await
    }

    async fn send_signed(&self, event: &str, body: Vec<u8>, signature: String) -> (u16, Value) {
        let resp = self
            .gd
            .http()
            .post(self.gd.api("/api/hooks/github"))
            .header("x-github-event", event)
            .header("x-github-delivery", uuid_like())
            .header("x-hub-signature-256", signature)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    fn repository(&self) -> Value {
        json!({"clone_url": self.url, "default_branch": "main", "full_name": "owner/site"})
    }

    fn push(&self, branch: &str, after: &str) -> Value {
        json!({"ref": format!("refs/heads/{branch}"), "after": after, "deleted": false,
               "repository": self.repository()})
    }

    fn pull_request(&self, action: &str, n: u64, sha: &str, head_repo: Option<&str>) -> Value {
        json!({
            "action": action,
            "number": n,
            "pull_request": {
                "number": n,
                "head": {"ref": "topic", "sha": sha,
                         "repo": head_repo.map(|r| json!({"full_name": r}))},
                "base": {"ref": "main", "sha": "0".repeat(40), "repo": {"full_name": "owner/site"}},
            },
            "repository": self.repository(),
        })
    }

    /// Sends an event that queues one build, and follows it to its end; the deployment.
    async fn build(&self, event: &str, body: &Value) -> Value {
        let (status, answer) = self.send(event, body).await;
        assert_eq!(status, 202, "{answer}");
        let d = answer["deployments"][0].clone();
        let log = self.gd.follow(d["id"].as_str().unwrap(), 0).await;
        let last = log.last().unwrap();
        assert_eq!(
            last.outcome.as_ref().map(|o| o.status),
            Some(gitdeploy_core::DeploymentStatus::Ready),
            "{log:#?}"
        );
        d
    }
}

fn uuid_like() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The label of a URL `http://<label>.localhost:<port>/`.
fn label_of(url: &str) -> String {
    url.split("://")
        .nth(1)
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn pull_requests_and_branches_get_stable_previews_with_their_environment() {
    let mut server = GitServer::new();
    let repo = server.add_repo("site", &[("page.txt", "main")]);
    let login = commit_branch(&repo, "feature/login", "login");
    let long_branch = format!("feat/{}", "x".repeat(200));
    let long = commit_branch(&repo, &long_branch, "long");
    let pr = commit_branch(&repo, "topic", "pr");
    let fork = commit_branch(&repo, "fork-topic", "fork");
    // GitHub keeps a pull request's head at refs/pull/<n>/head of the base repository.
    git(&repo, &["update-ref", "refs/pull/7/head", &pr]);
    git(&repo, &["update-ref", "refs/pull/8/head", &fork]);
    git(&repo, &["branch", "-D", "fork-topic"]);
    server.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    let hook = Hook {
        gd: &gd,
        url: server.url("site"),
    };

    let resp = gd
        .http()
        .post(gd.api("/api/projects"))
        .json(
            &json!({"name": "site", "repo": server.url("site"), "production_branch": "main",
               "webhook_secret": SECRET,
               "build": {"build_command": BUILD, "output_dir": "out",
                         "env": {"GREETING": "prod"}, "secrets": {"TOKEN": "prod-token"}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    // Preview variables: GREETING differs, TOKEN falls back to production's.
    let resp = gd
        .http()
        .patch(gd.api("/api/projects/site"))
        .json(&json!({"environments": {"preview": {"env": {"GREETING": "preview"}}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let project: Value = resp.json().await.unwrap();
    assert_eq!(
        project["environments"]["preview"]["env"]["GREETING"],
        "preview"
    );
    assert_eq!(
        project["environments"]["production"]["secrets"],
        json!(["TOKEN"])
    );
    assert!(!project.to_string().contains("prod-token"));
    // Bad environment settings are refused and change nothing.
    for body in [
        json!({"environments": {"preview": {"env": {"LD_PRELOAD": "x"}}}}),
        json!({"environments": {"preview": {"secrets": {"NEW": ""}}}}),
        json!({"environments": {"staging": {}}}),
    ] {
        let resp = gd
            .http()
            .patch(gd.api("/api/projects/site"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{body}");
    }

    // The production branch: production, and its branch alias.
    let main_sha = rev_parse(&repo, "main");
    hook.build("push", &hook.push("main", &main_sha)).await;
    assert_eq!(
        gd.page("site", "/").await,
        (200, "main|prod|prod-token".into())
    );
    assert_eq!(
        gd.page("main--site", "/").await,
        (200, "main|prod|prod-token".into())
    );

    // A branch with a slash: a preview at its alias, with the preview environment.
    let d = hook
        .build("push", &hook.push("feature/login", &login))
        .await;
    let alias = d["alias"]["url"].as_str().unwrap().to_owned();
    let label = label_of(&alias);
    assert!(
        label.starts_with("feature-login-") && label.ends_with("--site"),
        "{label}"
    );
    assert_eq!(d["alias"]["branch"], "feature/login");
    assert_eq!(d["head_sha"], login.as_str());
    assert_eq!(
        gd.page(&label, "/").await,
        (200, "login|preview|prod-token".into())
    );
    assert_eq!(
        gd.page("site", "/").await.1,
        "main|prod|prod-token",
        "production unchanged"
    );

    // A replay of the same signed delivery runs nothing; a forged one neither.
    let body = serde_json::to_vec(&hook.push("feature/login", &login)).unwrap();
    let (status, answer) = hook.send_signed("push", body.clone(), sign(&body)).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (409, Some("replayed")),
        "{answer}"
    );
    let forged = serde_json::to_vec(&hook.push("main", &login)).unwrap();
    assert_eq!(hook.send_signed("push", forged, sign(&body)).await.0, 401);

    // A new commit on the branch: the alias follows it.
    let login2 = commit_branch(&repo, "feature/login", "login two");
    hook.build("push", &hook.push("feature/login", &login2))
        .await;
    assert_eq!(gd.page(&label, "/").await.1, "login two|preview|prod-token");

    // A 200-character branch name: a label of at most 63 characters that serves it.
    let d = hook.build("push", &hook.push(&long_branch, &long)).await;
    let long_label = label_of(d["alias"]["url"].as_str().unwrap());
    assert!(
        long_label.len() <= 63 && long_label.ends_with("--site"),
        "{long_label}"
    );
    assert_eq!(gd.page(&long_label, "/").await.1, "long|preview|prod-token");
    // A branch name outside git's safe set is refused with the reason.
    let (status, answer) = hook.send("push", &hook.push("fëature", &login)).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("invalid_ref"))
    );

    // A pull request: its head commit at pr-7--site; a fork's gets no secret.
    let d = hook
        .build(
            "pull_request",
            &hook.pull_request("opened", 7, &pr, Some("owner/site")),
        )
        .await;
    assert_eq!(d["alias"]["pull_request"], 7);
    assert_eq!(d["fork"], false);
    assert_eq!(
        gd.page("pr-7--site", "/").await,
        (200, "pr|preview|prod-token".into())
    );
    let d = hook
        .build(
            "pull_request",
            &hook.pull_request("opened", 8, &fork, Some("stranger/site")),
        )
        .await;
    assert_eq!(d["fork"], true);
    assert_eq!(
        gd.page("pr-8--site", "/").await,
        (200, "fork|preview|".into())
    );
    let fork_log = gd.follow(d["id"].as_str().unwrap(), 0).await;
    assert!(fork_log.iter().all(|r| !r.line.contains("prod-token")));
    // Other pull request actions build nothing.
    let (status, answer) = hook
        .send(
            "pull_request",
            &hook.pull_request("labeled", 7, &pr, Some("owner/site")),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["ignored"].is_string());

    // The project lists its aliases with their URLs.
    let project = gd.get_json("/api/projects/site").await;
    let labels: Vec<&str> = project["previews"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["label"].as_str().unwrap())
        .collect();
    for want in [
        "main--site",
        label.as_str(),
        "pr-7--site",
        "pr-8--site",
        long_label.as_str(),
    ] {
        assert!(labels.contains(&want), "{want} in {labels:?}");
    }

    // Closing the pull request and deleting the branch retire their aliases; the builds stay at
    // their own addresses.
    let pr7_id = d["id"].as_str().unwrap().to_owned();
    let (status, answer) = hook
        .send(
            "pull_request",
            &hook.pull_request("closed", 8, &fork, Some("stranger/site")),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["retired"], json!(["pr-8--site"]));
    assert_eq!(gd.page("pr-8--site", "/").await.0, 404);
    assert_eq!(gd.page(&pr7_id, "/").await.0, 200);
    let mut deleted = hook.push("feature/login", &"0".repeat(40));
    deleted["deleted"] = json!(true);
    let (status, answer) = hook.send("push", &deleted).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["retired"], json!([label]));
    assert_eq!(gd.page(&label, "/").await.0, 404);
    assert_eq!(
        gd.page("pr-7--site", "/").await.0,
        200,
        "other aliases stay"
    );

    // A project name holding the separator is refused; an invented alias is a 404.
    let resp = gd
        .http()
        .post(gd.api("/api/projects"))
        .json(&json!({"name": "a--b", "repo": server.url("site")}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(gd.page("nope--site", "/").await.0, 404);
    assert_eq!(gd.page("main--nope", "/").await.0, 404);

    // The CLI prints the branch URL of a deploy of a branch.
    let (code, out, err) = gd
        .cli(
            None,
            &[
                "deploy",
                &server.url("site"),
                "--project",
                "site",
                "--ref",
                "feature/login",
                "--follow",
            ],
        )
        .await;
    assert_eq!(code, Some(0), "{out}{err}");
    let branch_url = out
        .lines()
        .find_map(|l| l.strip_prefix("Branch URL: "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(branch_url.contains("--site.localhost"), "{branch_url}");
    assert_eq!(
        gd.page(&label_of(branch_url), "/").await.1,
        "login two|preview|prod-token"
    );
}
