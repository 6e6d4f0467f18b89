//! Real framework builds (#16): fixture repositories written the way each framework's starter
//! is (`tests/fixtures/frameworks/<name>`, with the lockfile `npm install` wrote), installed
//! from the npm registry and built by `gitdeploy up` in its sandbox. Each checks the detected
//! framework and output directory, how an unknown path is answered, and every output file byte
//! for byte against the same build run here outside GitDeploy (with npm; the same Vite site
//! installed with pnpm and with Bun must match it too). A second Next.js build restores the
//! build cache the first one kept.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{
    deploy_and_follow as deploy, log_text as text, outcome_of as outcome, GitServer, Gitdeploy,
};
use gitdeploy_core::DeploymentStatus;
use reqwest::Method;
use serde_json::json;

/// How a fixture answers a path it does not have.
#[derive(Clone, Copy, Debug)]
enum Unknown {
    /// A single-page app: its `index.html`, 200.
    Fallback,
    /// Its own `404.html`, 404.
    OwnPage,
    /// The platform's small 404 page.
    Platform,
}

struct Fixture {
    dir: &'static str,
    /// What the log says of the package manager.
    package_manager: &'static str,
    /// The fixture whose local npm build this one must match (itself, or the same site with
    /// npm when this one uses another package manager).
    reference: &'static str,
    detected: &'static str,
    output: &'static str,
    unknown: Unknown,
}

const FIXTURES: &[Fixture] = &[
    Fixture {
        dir: "vite",
        package_manager: "package-lock.json found: npm ci",
        reference: "vite",
        detected: "Vite",
        output: "dist",
        unknown: Unknown::Fallback,
    },
    Fixture {
        dir: "astro",
        package_manager: "package-lock.json found: npm ci",
        reference: "astro",
        detected: "Astro",
        output: "dist",
        unknown: Unknown::Platform,
    },
    Fixture {
        dir: "eleventy",
        package_manager: "package-lock.json found: npm ci",
        reference: "eleventy",
        detected: "Eleventy",
        output: "_site",
        unknown: Unknown::Platform,
    },
    Fixture {
        dir: "vitepress",
        package_manager: "package-lock.json found: npm ci",
        reference: "vitepress",
        detected: "VitePress",
        output: "docs/.vitepress/dist",
        unknown: Unknown::OwnPage,
    },
    Fixture {
        dir: "sveltekit",
        package_manager: "package-lock.json found: npm ci",
        reference: "sveltekit",
        detected: "SvelteKit (static adapter)",
        output: "build",
        unknown: Unknown::Platform,
    },
    Fixture {
        dir: "next",
        package_manager: "package-lock.json found: npm ci",
        reference: "next",
        detected: "Next.js static export",
        output: "out",
        unknown: Unknown::OwnPage,
    },
    Fixture {
        dir: "vite-pnpm",
        package_manager: "packageManager field: pnpm@9.15.9",
        reference: "vite",
        detected: "Vite",
        output: "dist",
        unknown: Unknown::Fallback,
    },
    Fixture {
        dir: "vite-bun",
        package_manager: "bun.lock found: bun install",
        reference: "vite",
        detected: "Vite",
        output: "dist",
        unknown: Unknown::Fallback,
    },
];

/// Environment of both builds (GitDeploy's and the local one).
const BUILD_ENV: &[(&str, &str)] = &[("NEXT_TELEMETRY_DISABLED", "1")];

fn fixture_root(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/frameworks")
        .join(dir)
}

/// Every file under `root` as (relative path, contents), sorted.
fn files_under(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned();
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// The fixture built here, outside GitDeploy: `npm ci`, then `npm run build`, with the
/// checkout at the path GitDeploy's sandbox shows it (`/build/repo`: some bundlers hash module
/// paths into chunk names) inside a bubblewrap of the machine's `/usr` and `/etc`.
fn local_build(fixture: &Fixture) -> Vec<(String, Vec<u8>)> {
    let work = tempfile::tempdir().unwrap();
    for (rel, bytes) in files_under(&fixture_root(fixture.dir)) {
        let path = work.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    // The machine's npm cache, so packages come from the registry once.
    let npm_cache =
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".npm");
    std::fs::create_dir_all(&npm_cache).unwrap();
    let mut bwrap = std::process::Command::new("bwrap");
    bwrap
        .args(["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"])
        .args([
            "--symlink",
            "usr/bin",
            "/bin",
            "--symlink",
            "usr/lib",
            "/lib",
        ])
        .args([
            "--symlink",
            "usr/lib64",
            "/lib64",
            "--symlink",
            "usr/sbin",
            "/sbin",
        ])
        .args(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"])
        .arg("--bind")
        .arg(work.path())
        .arg("/build/repo")
        .arg("--bind")
        .arg(&npm_cache)
        .arg("/build/home/.npm")
        .args(["--setenv", "HOME", "/build/home", "--setenv", "CI", "true"])
        .args(["--chdir", "/build/repo", "--die-with-parent"]);
    for (k, v) in BUILD_ENV {
        bwrap.args(["--setenv", k, v]);
    }
    let out = bwrap
        .args([
            "sh",
            "-c",
            "npm ci --no-audit --no-fund --loglevel=error && npm run build",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: the local build failed: {}{}",
        fixture.dir,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    files_under(&work.path().join(fixture.output))
}

/// A build's duration as its log reports it (`<what> finished in 1.2s`).
fn step_secs(log: &str, what: &str) -> String {
    log.lines()
        .find_map(|l| {
            l.strip_prefix(what)?
                .split(" finished in ")
                .nth(1)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "-".into())
}

#[tokio::test]
async fn real_framework_builds_match_a_local_build_file_for_file() {
    let mut git = GitServer::new();
    for f in FIXTURES {
        let files = files_under(&fixture_root(f.dir));
        let text: Vec<(String, String)> = files
            .into_iter()
            .map(|(p, b)| (p, String::from_utf8(b).unwrap()))
            .collect();
        let refs: Vec<(&str, &str)> = text.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
        git.add_repo(f.dir, &refs);
    }
    git.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    let env: serde_json::Map<String, serde_json::Value> = BUILD_ENV
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let mut table = Vec::new();
    let mut local_builds = std::collections::HashMap::new();
    for f in FIXTURES {
        let started = Instant::now();
        let body = json!({"repo": git.url(f.dir), "project": f.dir, "build": {"env": env}});
        let (id, log) = deploy(&gd, body).await;
        let all = text(&log);
        let took = started.elapsed().as_secs_f64();
        assert_eq!(outcome(&log).0, DeploymentStatus::Ready, "{}: {all}", f.dir);
        assert!(
            all.contains(&format!("Detected: {}", f.package_manager)),
            "{}: {all}",
            f.dir
        );
        assert!(
            all.contains(&format!(
                "Publishing {}/ ({} detected)",
                f.output, f.detected
            )),
            "{}: {all}",
            f.dir
        );
        table.push(format!(
            "{:<10} install {:>6}  build {:>6}  ready in {took:.1}s",
            f.dir,
            step_secs(&all, "Install"),
            step_secs(&all, "Build")
        ));

        // Every file as the local build made it.
        if !local_builds.contains_key(f.reference) {
            let reference = FIXTURES.iter().find(|r| r.dir == f.reference).unwrap();
            // Off the runtime's thread, which must go on driving the client's pooled
            // connections.
            let built = tokio::task::spawn_blocking(move || local_build(reference))
                .await
                .unwrap();
            local_builds.insert(f.reference, built);
        }
        let local = &local_builds[f.reference];
        assert!(!local.is_empty(), "{}", f.dir);
        for (rel, bytes) in local {
            let resp = gd
                .site(Method::GET, &id, &format!("/{rel}"))
                .header("accept-encoding", "identity")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{}: /{rel}", f.dir);
            let served = resp.bytes().await.unwrap();
            assert!(
                served.as_ref() == bytes.as_slice(),
                "{}: /{rel} differs from the local build ({} vs {} bytes)",
                f.dir,
                served.len(),
                bytes.len()
            );
        }

        // A path the site does not have.
        let resp = gd
            .site(Method::GET, &id, "/no-such-page/anywhere")
            .header("accept-encoding", "identity")
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap();
        let file = |name: &str| {
            local
                .iter()
                .find(|(p, _)| p == name)
                .map(|(_, b)| b.clone())
                .unwrap_or_else(|| panic!("{}: the local build has no {name}", f.dir))
        };
        match f.unknown {
            Unknown::Fallback => {
                assert_eq!(status, 200, "{}", f.dir);
                assert_eq!(body.as_ref(), file("index.html").as_slice(), "{}", f.dir);
            }
            Unknown::OwnPage => {
                assert_eq!(status, 404, "{}", f.dir);
                assert_eq!(body.as_ref(), file("404.html").as_slice(), "{}", f.dir);
            }
            Unknown::Platform => {
                assert_eq!(status, 404, "{}", f.dir);
                assert!(
                    local.iter().all(|(_, b)| b.as_slice() != body.as_ref()),
                    "{}: the platform's page, not one of the site's",
                    f.dir
                );
            }
        }
    }

    // Next.js again: its build cache comes back.
    let started = Instant::now();
    let body = json!({"repo": git.url("next"), "project": "next", "build": {"env": env}});
    let (_, log) = deploy(&gd, body).await;
    let all = text(&log);
    assert_eq!(outcome(&log).0, DeploymentStatus::Ready, "{all}");
    assert!(all.contains("Build cache: restored .next/cache"), "{all}");
    table.push(format!(
        "{:<10} install {:>6}  build {:>6}  ready in {:.1}s (second build)",
        "next",
        step_secs(&all, "Install"),
        step_secs(&all, "Build"),
        started.elapsed().as_secs_f64()
    ));
    eprintln!("{}", table.join("\n"));
}
