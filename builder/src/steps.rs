//! The build, step by step, each with a system line and its duration.

use std::path::{Path, PathBuf};
use std::time::Instant;

use gitdeploy_core::job::BuildJob;
use gitdeploy_core::repo::{redact_repo_url, validate_repo_url, RepoScheme};
use gitdeploy_core::BuilderEvent;

use crate::config::BuilderConfig;
use crate::events::Emitter;
use crate::exec::{self, Exit};
use crate::lines::Redactor;
use crate::sandbox::{self, Cgroups, SandboxSpec};
use crate::{detect, publish, EXIT_BUILD_FAILED, EXIT_INTERNAL, EXIT_READY};

/// The unprivileged user builds run as when the builder is root (`nobody`).
const BUILD_UID: u32 = 65534;
const BUILD_GID: u32 = 65534;

/// Why a build stopped.
enum Failure {
    /// The repository's fault: clone, install, build or output.
    Build {
        error: String,
        exit_code: Option<i32>,
    },
    /// Ours: storage, spawning tools.
    Internal(String),
}

fn build_failure(error: String) -> Failure {
    Failure::Build {
        error,
        exit_code: None,
    }
}

/// Runs every step and reports the outcome; returns the exit status.
pub async fn run(config: &BuilderConfig, emitter: &Emitter) -> i32 {
    let job = &config.job;
    let emitter = emitter.configured(
        Redactor::new(job.build.secrets.values().map(String::as_str)),
        job.limits.max_log_bytes,
    );
    let started = Instant::now();
    let (cgroups, notes) = Cgroups::create(job.deployment.as_str(), &job.limits);
    let result = steps(config, &emitter, &cgroups, notes).await;
    cgroups.remove().await;
    match result {
        Ok((commit, published)) => {
            emitter.system(&format!(
                "Deployment ready in {:.1}s: {} files, {} bytes",
                started.elapsed().as_secs_f64(),
                published.files,
                published.bytes
            ));
            emitter.event(&BuilderEvent::Published {
                commit,
                files: published.files,
                bytes: published.bytes,
            });
            EXIT_READY
        }
        Err(Failure::Build { error, exit_code }) => {
            emitter.system(&format!("Build failed: {error}"));
            emitter.event(&BuilderEvent::Failed { error, exit_code });
            EXIT_BUILD_FAILED
        }
        Err(Failure::Internal(error)) => {
            emitter.system(&format!("Internal error: {error}"));
            emitter.event(&BuilderEvent::Failed {
                error,
                exit_code: None,
            });
            EXIT_INTERNAL
        }
    }
}

/// A name safe as a directory for a cache key.
fn cache_dir_name(key: Option<&str>) -> String {
    let key = key.unwrap_or("shared");
    let safe: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if safe.is_empty() {
        "shared".into()
    } else {
        safe
    }
}

async fn steps(
    config: &BuilderConfig,
    emitter: &Emitter,
    cgroups: &Cgroups,
    notes: Vec<String>,
) -> Result<(String, publish::Published), Failure> {
    let job = &config.job;
    let timeout = job
        .build
        .timeout_secs
        .unwrap_or(job.limits.timeout_secs)
        .min(job.limits.timeout_secs);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(timeout);
    let home = config.work_dir.join("home");
    let src = config.work_dir.join("src");
    let cache = config
        .cache_dir
        .clone()
        .unwrap_or_else(|| config.work_dir.join("cache"))
        .join(cache_dir_name(job.cache_key.as_deref()));
    for dir in [&home, &src, &cache] {
        std::fs::create_dir_all(dir)
            .map_err(|e| Failure::Internal(format!("cannot create {}: {e}", dir.display())))?;
    }
    let base_env = exec::scrubbed_env(&home, &cache);

    let commit = clone(job, emitter, &src, &base_env, deadline).await?;

    // Detect, in the root directory (a monorepo subfolder when configured).
    let root = match &job.build.root_dir {
        Some(dir) => {
            let root = src.join(dir);
            let inside = root
                .canonicalize()
                .is_ok_and(|r| src.canonicalize().is_ok_and(|s| r.starts_with(s)));
            if !root.is_dir() || !inside {
                return Err(build_failure(format!(
                    "root_dir {dir:?} is not a directory of the repository"
                )));
            }
            emitter.system(&format!("Root directory: {dir}"));
            root
        }
        None => src.clone(),
    };
    let read = |name: &str| read_optional(&root.join(name));
    let (package_json, yarn_lock, pnpm_lock) = (
        read("package.json")?,
        read("yarn.lock")?,
        read("pnpm-lock.yaml")?,
    );
    let files = detect::RepoFiles {
        package_json: package_json.as_deref(),
        npm_lock: root.join("package-lock.json").exists()
            || root.join("npm-shrinkwrap.json").exists(),
        yarn_lock: yarn_lock.as_deref(),
        pnpm_lock: pnpm_lock.as_deref(),
    };
    let plan = detect::plan(&files, &job.build).map_err(build_failure)?;
    emitter.system(&format!("Detected: {}", plan.reason));

    // Install and build, sandboxed.
    if plan.install.is_some() || plan.build.is_some() {
        let spec = prepare_sandbox(job, emitter, cgroups, notes, &[&src, &home, &cache]).await?;
        let mut env = base_env.clone();
        env.extend(
            job.build
                .env
                .iter()
                .chain(&job.build.secrets)
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        for (what, argv) in [("Install", &plan.install), ("Build", &plan.build)] {
            let Some(argv) = argv else { continue };
            let step = Instant::now();
            let shown = if argv.first().is_some_and(|a| a == "sh") {
                argv[2].clone()
            } else {
                argv.join(" ")
            };
            emitter.system(&format!("{what}: {shown}"));
            let wrapped = sandbox::wrap(&spec, argv, &root);
            run_step(emitter, &wrapped, &root, &env, deadline, &shown, timeout).await?;
            emitter.system(&format!("{what} finished in {}", secs(step)));
            emitter.phase(&what.to_ascii_lowercase(), step);
        }
    }

    // Collect the output.
    let output = detect::choose_output(&plan, |d| root.join(d).is_dir()).map_err(build_failure)?;
    let shown = if output.is_empty() {
        "the root directory".to_owned()
    } else {
        format!("{output}/ ({})", plan.output_reason)
    };
    emitter.system(&format!("Publishing {shown}"));
    let output_dir = root.join(&output);
    let files =
        publish::collect(&output_dir, output.is_empty(), &job.limits).map_err(build_failure)?;
    if files.is_empty() {
        return Err(build_failure(format!("{shown} has no files to publish")));
    }
    let rules = publish::site_rules(&output_dir, &job.serving, emitter).map_err(build_failure)?;

    // Upload, manifest last.
    let step = Instant::now();
    let client = publish::s3_client(config).await;
    let published = publish::publish(
        &client,
        &config.bucket,
        &config.layout,
        &job.deployment,
        &commit,
        files,
        rules,
    )
    .await
    .map_err(Failure::Internal)?;
    emitter.system(&format!(
        "Uploaded {} files ({} bytes, {} in parts) and {} precompressed variants in {}",
        published.files,
        published.bytes,
        published.multipart,
        published.variants,
        secs(step)
    ));
    emitter.phase("upload", step);
    Ok((commit, published))
}

/// Shallow-fetches the ref (or HEAD) so branches, tags and commits share one path, then
/// checks out submodules over https only. Returns the commit.
async fn clone(
    job: &BuildJob,
    emitter: &Emitter,
    src: &Path,
    env: &[(String, String)],
    deadline: tokio::time::Instant,
) -> Result<String, Failure> {
    let all = [
        RepoScheme::Https,
        RepoScheme::Http,
        RepoScheme::Git,
        RepoScheme::Ssh,
        RepoScheme::Local,
    ];
    let scheme = validate_repo_url(&job.repo, &all).map_err(build_failure)?;
    let git_ref = job.git_ref.as_deref().unwrap_or("HEAD");
    let step = Instant::now();
    emitter.system(&format!(
        "Cloning {} ({git_ref})",
        redact_repo_url(&job.repo)
    ));
    let mut git_env = env.to_vec();
    git_env.push(("GIT_ALLOW_PROTOCOL".into(), scheme.git_protocol().into()));
    git_env.push(("GIT_CONFIG_NOSYSTEM".into(), "1".into()));
    git_env.push(("GIT_SSH_COMMAND".into(), "ssh -o BatchMode=yes".into()));
    let git = |args: &[&str]| -> Vec<String> {
        let mut argv = vec![
            "git".to_owned(),
            "-c".into(),
            "advice.detachedHead=false".into(),
        ];
        argv.extend(args.iter().map(|s| s.to_string()));
        argv
    };
    let timeout = deadline
        .saturating_duration_since(tokio::time::Instant::now())
        .as_secs();
    for argv in [
        git(&["init", "--quiet"]),
        git(&["remote", "add", "origin", "--", &job.repo]),
        git(&[
            "fetch",
            "--depth",
            "1",
            "--no-tags",
            "--quiet",
            "origin",
            "--",
            git_ref,
        ]),
        git(&["checkout", "--quiet", "--detach", "FETCH_HEAD"]),
    ] {
        run_step(emitter, &argv, src, &git_env, deadline, "git", timeout).await?;
    }
    if src.join(".gitmodules").exists() {
        emitter.system("Checking out submodules (https only)");
        let mut sub_env = git_env.clone();
        sub_env.retain(|(k, _)| k != "GIT_ALLOW_PROTOCOL");
        sub_env.push(("GIT_ALLOW_PROTOCOL".into(), "https".into()));
        let argv = git(&[
            "submodule",
            "update",
            "--init",
            "--recursive",
            "--depth",
            "1",
        ]);
        run_step(
            emitter,
            &argv,
            src,
            &sub_env,
            deadline,
            "git submodule update",
            timeout,
        )
        .await?;
    }
    let commit = rev_parse_head(src).await?;
    emitter.system(&format!("Cloned commit {commit} in {}", secs(step)));
    emitter.phase("clone", step);
    Ok(commit)
}

async fn prepare_sandbox(
    job: &BuildJob,
    emitter: &Emitter,
    cgroups: &Cgroups,
    notes: Vec<String>,
    writable: &[&PathBuf],
) -> Result<SandboxSpec, Failure> {
    let bwrap = sandbox::probe_bwrap().await;
    let is_root = nix::unistd::Uid::effective().is_root();
    let run_as = is_root.then_some((BUILD_UID, BUILD_GID));
    if let Some((uid, gid)) = run_as {
        for dir in writable {
            sandbox::chown_tree(dir, uid, gid).map_err(|e| {
                Failure::Internal(format!(
                    "cannot hand {} to the build user: {e}",
                    dir.display()
                ))
            })?;
        }
    }
    let network = job.build.network.unwrap_or(true);
    let mut layers = vec![];
    layers.push(if bwrap.is_some() {
        "bubblewrap"
    } else {
        "no bubblewrap (not installed or not usable)"
    });
    layers.push(if run_as.is_some() {
        "unprivileged user"
    } else {
        "builder's own user"
    });
    if !cgroups.procs_files().is_empty() {
        layers.push("cgroup memory and process caps");
    }
    layers.push(if network { "network on" } else { "network off" });
    emitter.system(&format!("Sandbox: {}", layers.join(", ")));
    for note in notes {
        emitter.system(&format!("Sandbox: {note}"));
    }
    if !network && bwrap.is_none() {
        return Err(Failure::Internal(
            "network off needs bubblewrap, which is not available".into(),
        ));
    }
    Ok(SandboxSpec {
        bwrap,
        run_as,
        network,
        writable: writable.iter().map(|d| d.to_path_buf()).collect(),
        read_only: sandbox::toolchain_dirs(),
        cgroup_procs: cgroups.procs_files(),
        limits: job.limits.clone(),
    })
}

async fn run_step(
    emitter: &Emitter,
    argv: &[String],
    cwd: &Path,
    env: &[(String, String)],
    deadline: tokio::time::Instant,
    label: &str,
    timeout_secs: u64,
) -> Result<(), Failure> {
    let exit = exec::run(emitter, argv, cwd, env, deadline)
        .await
        .map_err(|e| Failure::Internal(format!("cannot run `{label}`: {e}")))?;
    if emitter.over_budget() {
        return Err(build_failure(
            "the build log exceeded its size limit".into(),
        ));
    }
    match exit {
        Exit::Code(0) => Ok(()),
        Exit::Code(c) => Err(Failure::Build {
            error: format!("`{label}` exited with code {c}"),
            exit_code: Some(c),
        }),
        Exit::Killed => Err(Failure::Build {
            error: format!("`{label}` was killed by a signal (out of memory or a limit?)"),
            exit_code: None,
        }),
        Exit::TimedOut => Err(build_failure(format!(
            "the build timed out after {timeout_secs}s; `{label}` and everything it started were stopped"
        ))),
    }
}

async fn rev_parse_head(src: &Path) -> Result<String, Failure> {
    let out = tokio::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(src)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .await
        .map_err(|e| Failure::Internal(format!("cannot run git: {e}")))?;
    let commit = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || commit.is_empty() {
        return Err(Failure::Internal(
            "cannot read the checked-out commit".into(),
        ));
    }
    Ok(commit)
}

fn read_optional(path: &Path) -> Result<Option<String>, Failure> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(build_failure(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

fn secs(since: Instant) -> String {
    format!("{:.1}s", since.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::cache_dir_name;

    #[test]
    fn cache_dir_names_are_safe() {
        assert_eq!(cache_dir_name(None), "shared");
        assert_eq!(cache_dir_name(Some("my-site")), "my-site");
        assert_eq!(cache_dir_name(Some("../../etc")), "______etc");
        assert_eq!(cache_dir_name(Some("")), "shared");
    }
}
