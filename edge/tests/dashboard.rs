//! The dashboard in a real browser: headless Chromium (Debian's `chromium`, driven by
//! playwright-core from `tests/browser/`) against a real `gitdeploy up` that requires a token.
//! The script signs in, deploys a fixture repository over git on loopback, watches its log
//! arrive, opens the site, deploys again, rolls back and promotes, saves settings, shows a folder
//! published with `deploy --prebuilt` and one built with `deploy .` with their sources, deploys
//! a branch and finds its preview URL, puts previews behind a password and signs in as a visitor,
//! adds a webhook and sees its delivery, connects GitHub, makes and revokes a token and reads the
//! audit log, and checks the pages at 375 px. Screenshots of every page land in `target/tmp/dashboard/`.

mod common;

use std::path::Path;
use std::process::Command;

use common::{GitServer, Gitdeploy};

const TOKEN: &str = "dashboard-test-token";

/// A build that takes a moment and writes to both streams, with colours.
const BUILD_JS: &str = r#"
const fs = require('fs');
console.log('\x1b[32mgreen text\x1b[0m from the build');
console.error('a warning on stderr');
let page = 0;
const timer = setInterval(() => {
  console.log(`compiling page ${page}`);
  if (++page === 5) {
    clearInterval(timer);
    fs.mkdirSync('dist', { recursive: true });
    fs.writeFileSync('dist/index.html', '<!doctype html><title>fixture</title><h1>version 1</h1>');
  }
}, 250);
"#;

fn npm(dir: &Path, args: &[&str]) {
    let out = Command::new("npm")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("npm is installed (scripts/prereqs)");
    assert!(
        out.status.success(),
        "npm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn dashboard_deploys_follows_promotes_and_rolls_back_in_chromium() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: run scripts/prereqs --test (installs Debian's chromium)"
    );
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    npm(
        &browser_dir,
        &["ci", "--prefer-offline", "--no-audit", "--no-fund"],
    );

    let mut git = GitServer::new();
    let repo_dir = git.add_repo(
        "dash",
        &[
            (
                "package.json",
                r#"{"name":"dash","version":"1.0.0","private":true,"scripts":{"build":"node build.js"}}"#,
            ),
            ("build.js", BUILD_JS),
        ],
    );
    git.start();
    let data = tempfile::tempdir().unwrap();
    // A webhook receiver on loopback, which the platform may reach here.
    let hooks = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", hooks.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(|| async { axum::http::StatusCode::NO_CONTENT }),
    );
    tokio::spawn(async move { axum::serve(hooks, app).await.unwrap() });
    let gd = Gitdeploy::start_with(
        data.path(),
        &[
            "--api-token",
            TOKEN,
            "--traffic-flush-interval-ms",
            "100",
            "--notify-allow-network",
            "127.0.0.0/8",
            "--github-api",
            "http://127.0.0.1:9/api/v3",
        ],
    )
    .await;

    // A folder published through the CLI, for the dashboard to show with its source.
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(folder.path().join("index.html"), "<h1>from a folder</h1>").unwrap();
    let published = Command::new(env!("CARGO_BIN_EXE_gitdeploy"))
        .args(["deploy", folder.path().to_str().unwrap(), "--prebuilt"])
        .args(["--api", &gd.api(""), "--token", TOKEN])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&published.stdout);
    assert!(
        published.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&published.stderr)
    );
    let folder_id = printed.split_whitespace().nth(1).unwrap().to_owned();
    // And a source folder, built on the server (`deploy .`).
    let source = tempfile::tempdir().unwrap();
    std::fs::write(
        source.path().join("index.html"),
        "<h1>built from a folder</h1>",
    )
    .unwrap();
    let built = Command::new(env!("CARGO_BIN_EXE_gitdeploy"))
        .args(["deploy", "."])
        .args(["--api", &gd.api(""), "--token", TOKEN])
        .current_dir(source.path())
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&built.stdout);
    assert!(
        built.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let source_id = printed
        .lines()
        .find_map(|l| l.strip_prefix("Deployment "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();

    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    let _ = std::fs::remove_dir_all(&artifacts);
    let script = browser_dir.join("dashboard.mjs");
    let out = tokio::process::Command::new("node")
        .arg(&script)
        .current_dir(&browser_dir)
        .env("GITDEPLOY_URL", format!("http://localhost:{}", gd.port))
        .env("API_TOKEN", TOKEN)
        .env("REPO_URL", git.url("dash"))
        .env("REPO_DIR", &repo_dir)
        .env("FOLDER_ID", &folder_id)
        .env("SOURCE_ID", &source_id)
        .env("ARTIFACTS", &artifacts)
        .env("HOOK_URL", &hook_url)
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser test failed (screenshots in {}):\n{stdout}\n{stderr}",
        artifacts.display()
    );
    assert!(stdout.contains("dashboard ok"), "{stdout}");
    for shot in [
        "01-sign-in",
        "05-ready",
        "07-project",
        "09b-traffic",
        "10d-previews",
        "10e-protection",
        "10f-visitor-signed-in",
        "10g-notifications",
        "10h-tokens",
        "11-phone-home",
    ] {
        let png = std::fs::read(artifacts.join(format!("{shot}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{shot} is a PNG");
    }
}
