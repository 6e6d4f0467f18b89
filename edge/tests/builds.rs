//! Builds of real-world shapes, run by the real `gitdeploy up` with its sandbox: npm with a
//! lockfile from the registry, settings (root directory, commands, env, secrets), limits,
//! timeouts, fork storms, hostile output, and what the build can and cannot see.

mod common;

use common::{
    deploy_and_follow as deploy, log_text as text, outcome_of as outcome, GitServer, Gitdeploy,
};
use gitdeploy_core::DeploymentStatus;
use reqwest::Method;
use serde_json::json;

const LOCKFILE: &str = r#"{
  "name": "fixture-lock",
  "version": "1.0.0",
  "lockfileVersion": 3,
  "requires": true,
  "packages": {
    "": { "name": "fixture-lock", "version": "1.0.0", "dependencies": { "is-number": "7.0.0" } },
    "node_modules/is-number": {
      "version": "7.0.0",
      "integrity": "sha512-41Cifkg6e8TylSpdtTpeLVMqvSBEVzTttHvERD741+pnZ8ANv0004MRL43QKPDlK9cGvNp6NZWZUBlbGXYxxng==",
      "engines": { "node": ">=0.12.0" }
    }
  }
}
"#;

/// Processes on this machine whose command line contains `marker`.
fn processes_matching(marker: &str) -> usize {
    let out = std::process::Command::new("pgrep")
        .args(["-f", marker])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[tokio::test]
async fn npm_ci_from_the_registry_in_a_monorepo_subfolder_uses_the_cache_the_second_time() {
    let build_js = r#"
const isNumber = require('is-number');
require('fs').mkdirSync('dist', { recursive: true });
require('fs').writeFileSync('dist/index.html', `<p>is-number(5) = ${isNumber(5)}; NODE_ENV=${process.env.SITE_FLAVOUR}</p>`);
"#;
    let mut git = GitServer::new();
    git.add_repo(
        "mono",
        &[
            ("README.md", "a monorepo"),
            (
                "packages/site/package.json",
                r#"{"name":"fixture-lock","version":"1.0.0","private":true,"scripts":{"build":"node build.js"},"dependencies":{"is-number":"7.0.0"}}"#,
            ),
            ("packages/site/package-lock.json", LOCKFILE),
            ("packages/site/build.js", build_js),
        ],
    );
    git.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    let body = json!({
        "repo": git.url("mono"),
        "build": { "root_dir": "packages/site", "env": { "SITE_FLAVOUR": "blue" } },
    });
    let mut durations = Vec::new();
    for round in 0..2 {
        let started = std::time::Instant::now();
        let (id, log) = deploy(&gd, body.clone()).await;
        durations.push(started.elapsed());
        assert_eq!(outcome(&log).0, DeploymentStatus::Ready, "{}", text(&log));
        let all = text(&log);
        assert!(all.contains("package-lock.json found: npm ci"), "{all}");
        assert!(all.contains("Install: npm ci"), "{all}");
        let resp = gd.site(Method::GET, &id, "/").send().await.unwrap();
        assert_eq!(
            resp.text().await.unwrap(),
            "<p>is-number(5) = true; NODE_ENV=blue</p>",
            "round {round}"
        );
    }
    eprintln!(
        "npm ci build: first {:?}, second (cached) {:?}",
        durations[0], durations[1]
    );
    // The package cache is kept per repository between builds.
    let cache_root = data.path().join("cache");
    let caches: Vec<_> = std::fs::read_dir(&cache_root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(caches.len(), 1, "{caches:?}");
    assert!(cache_root.join(&caches[0]).join("npm/_cacache").is_dir());
}

#[tokio::test]
async fn secrets_are_redacted_and_the_build_sees_no_platform_credentials() {
    let mut git = GitServer::new();
    let script = r#"
echo "token is $API_TOKEN"
printf 'split %s' "$API_TOKEN" | head -c 9; echo
env | sort
ls /etc/gitdeploy-nothing 2>&1 || true
cat "$DATA_DIR/state/deployments/"*.json 2>&1 | head -3 || true
ls "$DATA_DIR/s3" 2>&1 || true
id -u
mkdir -p out && echo ok > out/index.html
"#;
    git.add_repo("snoop", &[("build.sh", script)]);
    git.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    let secret = "tok-9f8e7d6c5b4a";
    let data_dir = data.path().canonicalize().unwrap().display().to_string();
    let (id, log) = deploy(
        &gd,
        json!({
            "repo": git.url("snoop"),
            "build": {
                "build_command": "sh build.sh",
                "output_dir": "out",
                "env": { "DATA_DIR": data_dir },
                "secrets": { "API_TOKEN": secret },
            },
        }),
    )
    .await;
    let all = text(&log);
    assert_eq!(outcome(&log).0, DeploymentStatus::Ready, "{all}");
    assert!(all.contains("token is ***"), "{all}");
    assert!(
        !all.contains(secret) && !all.contains("9f8e7d"),
        "the secret leaked: {all}"
    );
    // The build environment has the user's variables and none of the platform's.
    assert!(all.contains("API_TOKEN=***"), "{all}");
    for forbidden in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "GITDEPLOY_S3",
        "GITDEPLOY_JOB",
    ] {
        assert!(
            !all.contains(forbidden),
            "{forbidden} reached the build: {all}"
        );
    }
    // Nothing of the data directory is readable from the build.
    assert!(!all.contains("\"status\""), "{all}");
    assert!(
        all.contains("No such file or directory") || all.contains("Permission denied"),
        "{all}"
    );
    assert!(
        all.lines().any(|l| l.trim() == "65534"),
        "builds run unprivileged: {all}"
    );
    // The secret's value is not stored or shown; its name is.
    let shown = gd.status(&id).await;
    assert_eq!(shown["build"]["secrets"]["API_TOKEN"], "");
    for entry in walk(data.path().join("state").as_path()) {
        assert!(
            !std::fs::read_to_string(&entry)
                .unwrap_or_default()
                .contains(secret),
            "{entry:?}"
        );
    }
    // Bad settings are refused up front.
    let (status, answer) = gd
        .deploy(json!({"repo": git.url("snoop"), "build": {"secrets": {"PATH": "/evil"}}}))
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("invalid_build"))
    );
    let (status, _) = gd
        .deploy(json!({"repo": git.url("snoop"), "build": {"root_dir": "../.."}}))
        .await;
    assert_eq!(status, 400);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn a_build_past_its_timeout_is_killed_with_everything_it_started() {
    let marker = format!("sleep {}", 100_000 + std::process::id() % 50_000);
    let mut git = GitServer::new();
    git.add_repo(
        "slow",
        &[(
            "build.sh",
            &format!("{marker} &\n{marker} &\necho started\n{marker}\n"),
        )],
    );
    git.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    let (_, log) = deploy(
        &gd,
        json!({"repo": git.url("slow"), "build": {"build_command": "sh build.sh", "timeout_secs": 2}}),
    )
    .await;
    let (status, error) = outcome(&log);
    assert_eq!(status, DeploymentStatus::Failed);
    assert!(error.contains("timed out after 2s"), "{error}");
    assert!(text(&log).contains("started"));
    assert_eq!(
        processes_matching(&marker),
        0,
        "processes of the build survived it"
    );
}

#[tokio::test]
async fn a_fork_storm_is_contained_and_leaves_nothing_behind() {
    let marker = format!("sleep {}", 150_000 + std::process::id() % 50_000);
    let script = format!(
        "i=0\nwhile [ $i -lt 200 ]; do {marker} & i=$((i+1)); done\necho \"spawned\"\nmkdir -p out && echo ok > out/index.html\n"
    );
    let mut git = GitServer::new();
    git.add_repo("forks", &[("build.sh", &script)]);
    git.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start_with(data.path(), &["--build-max-processes", "32"]).await;
    let (_, log) = deploy(
        &gd,
        json!({"repo": git.url("forks"), "build": {"build_command": "sh build.sh", "output_dir": "out"}}),
    )
    .await;
    let all = text(&log);
    eprintln!("fork storm log:\n{all}");
    // The shell hit the process cap: forks failed instead of taking the machine down.
    assert!(
        all.contains("fork") || all.contains("Resource temporarily unavailable"),
        "no fork failure in the log: {all}"
    );
    assert_eq!(
        processes_matching(&marker),
        0,
        "processes of the build survived it"
    );
}

#[tokio::test]
async fn hostile_or_oversized_output_is_refused() {
    let mut git = GitServer::new();
    git.add_repo(
        "escape",
        &[(
            "build.sh",
            "mkdir -p out && echo hi > out/index.html && ln -s /etc/passwd out/passwd.txt\n",
        )],
    );
    git.add_repo(
        "huge",
        &[(
            "build.sh",
            "mkdir -p out && head -c 3000000 /dev/zero > out/big.bin && echo hi > out/index.html\n",
        )],
    );

    git.add_repo(
        "names",
        &[(
            "build.sh",
            "mkdir -p 'out/dir with space' && echo space > 'out/dir with space/page one.html' && echo unicode > 'out/café.html' && echo hi > out/index.html\n",
        )],
    );
    git.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start_with(data.path(), &["--build-max-output-bytes", "2000000"]).await;
    let build = |repo: &str| json!({"repo": git.url(repo), "build": {"build_command": "sh build.sh", "output_dir": "out"}});

    let (id, log) = deploy(&gd, build("escape")).await;
    let (status, error) = outcome(&log);
    assert_eq!(status, DeploymentStatus::Failed);
    assert!(
        error.contains("passwd.txt points outside the output directory"),
        "{error}"
    );
    assert_eq!(
        gd.site(Method::GET, &id, "/passwd.txt")
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    let (_, log) = deploy(&gd, build("huge")).await;
    let (status, error) = outcome(&log);
    assert_eq!(status, DeploymentStatus::Failed);
    assert!(error.contains("over the limit of 2000000 bytes"), "{error}");

    let (id, log) = deploy(&gd, build("names")).await;
    assert_eq!(outcome(&log).0, DeploymentStatus::Ready, "{}", text(&log));
    for (path, body) in [
        ("/dir%20with%20space/page%20one.html", "space\n"),
        ("/caf%C3%A9.html", "unicode\n"),
    ] {
        let resp = gd.site(Method::GET, &id, path).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.text().await.unwrap(), body);
    }
}

#[tokio::test]
async fn large_files_are_uploaded_in_parts_and_served_whole() {
    let mut git = GitServer::new();
    git.add_repo(
        "large",
        &[("build.sh", "mkdir -p out && yes 0123456789abcde | head -c 20000000 > out/large.bin && echo hi > out/index.html\n")],
    );
    git.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    let (id, log) = deploy(
        &gd,
        json!({"repo": git.url("large"), "build": {"build_command": "sh build.sh", "output_dir": "out"}}),
    )
    .await;
    assert_eq!(outcome(&log).0, DeploymentStatus::Ready, "{}", text(&log));
    assert!(
        text(&log).contains("Published 2 files (20000003 bytes)")
            && text(&log).contains(", 1 in parts)"),
        "{}",
        text(&log)
    );
    let body = gd
        .site(Method::GET, &id, "/large.bin")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.len(), 20_000_000);
    assert!(body
        .chunks(16)
        .all(|c| c == &b"0123456789abcde\n"[..c.len()]));
    // No part was left behind.
    let store = data.path().join("s3");
    let names: Vec<String> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with(".upload_id-")),
        "{names:?}"
    );
    let etag = gd
        .site(Method::HEAD, &id, "/large.bin")
        .send()
        .await
        .unwrap()
        .headers()["etag"]
        .clone();
    assert_eq!(
        etag.len(),
        34,
        "the manifest ETag is the content hash, not S3's multipart ETag"
    );
}

#[tokio::test]
async fn pnpm_lockfile_v6_builds_with_pnpm_8_through_corepack() {
    let mut git = GitServer::new();
    git.add_repo(
        "pnpm-site",
        &[
            (
                "package.json",
                r#"{"name":"pnpm-site","version":"1.0.0","private":true,"scripts":{"build":"node build.js"}}"#,
            ),
            (
                "pnpm-lock.yaml",
                "lockfileVersion: '6.0'\n\nsettings:\n  autoInstallPeers: true\n  excludeLinksFromLockfile: false\n",
            ),
            (
                "build.js",
                "require('fs').mkdirSync('dist');\nrequire('fs').writeFileSync('dist/index.html', 'built by ' + process.env.npm_config_user_agent.split(' ')[0]);\n",
            ),
        ],
    );
    git.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    let (id, log) = deploy(&gd, json!({"repo": git.url("pnpm-site")})).await;
    let all = text(&log);
    assert_eq!(outcome(&log).0, DeploymentStatus::Ready, "{all}");
    assert!(all.contains("pnpm-lock.yaml found: pnpm 8"), "{all}");
    assert!(
        all.contains("corepack pnpm@8 install --frozen-lockfile"),
        "{all}"
    );
    let body = gd
        .site(Method::GET, &id, "/")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.starts_with("built by pnpm/8."), "{body}");
}

#[tokio::test]
async fn canceling_stops_a_running_build_and_skips_a_queued_one() {
    let marker = format!("sleep {}", 200_000 + std::process::id() % 50_000);
    let mut git = GitServer::new();
    git.add_repo(
        "slow",
        &[("build.sh", &format!("echo started\n{marker}\n"))],
    );
    git.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start_with(data.path(), &["--concurrency", "1"]).await;
    let body = json!({"repo": git.url("slow"), "build": {"build_command": "sh build.sh"}});
    let (_, running) = gd.deploy(body.clone()).await;
    let (_, queued) = gd.deploy(body.clone()).await;
    let (running, queued) = (
        running["id"].as_str().unwrap().to_owned(),
        queued["id"].as_str().unwrap().to_owned(),
    );
    let cancel = |id: String| {
        let req = gd
            .http()
            .post(gd.api(&format!("/api/deployments/{id}/cancel")));
        async move { req.send().await.unwrap().status().as_u16() }
    };

    // Cancel the queued one first: it never runs.
    assert_eq!(cancel(queued.clone()).await, 202);
    // Wait (bounded) until the first build's command is running, then cancel it.
    let url = format!(
        "ws://127.0.0.1:{}/api/deployments/{running}/logs/ws",
        gd.port
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("build never started");
        let text = msg.unwrap().unwrap().into_text().unwrap();
        if text.contains("\"line\":\"started\"") {
            break;
        }
    }
    assert_eq!(cancel(running.clone()).await, 202);
    let log = gd.follow(&running, 0).await;
    let last = log.last().unwrap().outcome.clone().unwrap();
    assert_eq!(last.status, DeploymentStatus::Canceled, "{}", text(&log));
    assert_eq!(gd.status(&running).await["status"], "canceled");
    assert_eq!(
        processes_matching(&marker),
        0,
        "processes of the canceled build survived it"
    );
    for base in [
        "/sys/fs/cgroup/pids/gitdeploy",
        "/sys/fs/cgroup/memory/gitdeploy",
    ] {
        assert!(
            !std::path::Path::new(base).join(&running).exists(),
            "{base}/{running} was left behind"
        );
    }

    let log = gd.follow(&queued, 0).await;
    assert_eq!(
        log.last().unwrap().outcome.as_ref().unwrap().status,
        DeploymentStatus::Canceled
    );
    assert!(
        !text(&log).contains("Build started"),
        "the queued build ran: {}",
        text(&log)
    );
    // Finished builds cannot be canceled; unknown ones do not exist.
    assert_eq!(cancel(running).await, 409);
    assert_eq!(cancel("zzzzzzzzzzz9".into()).await, 404);
}
