//! The build, step by step, each with a system line and its duration.

use std::path::Path;
use std::time::Instant;

use gitdeploy_core::repo::{redact_repo_url, validate_repo_url, RepoScheme};
use gitdeploy_core::BuilderEvent;

use crate::config::BuilderConfig;
use crate::events::Emitter;
use crate::{detect, exec, publish, EXIT_BUILD_FAILED, EXIT_INTERNAL, EXIT_READY};

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

/// Runs every step and reports the outcome; returns the exit status.
pub async fn run(config: &BuilderConfig, emitter: &Emitter) -> i32 {
    let started = Instant::now();
    match steps(config, emitter).await {
        Ok(published) => {
            emitter.system(&format!(
                "Deployment ready in {:.1}s: {} files, {} bytes",
                started.elapsed().as_secs_f64(),
                published.1.files,
                published.1.bytes
            ));
            emitter.event(&BuilderEvent::Published {
                commit: published.0,
                files: published.1.files,
                bytes: published.1.bytes,
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

async fn steps(
    config: &BuilderConfig,
    emitter: &Emitter,
) -> Result<(String, publish::Published), Failure> {
    let job = &config.job;
    let home = config.work_dir.join("home");
    let src = config.work_dir.join("src");
    for dir in [&home, &src] {
        std::fs::create_dir_all(dir)
            .map_err(|e| Failure::Internal(format!("cannot create {}: {e}", dir.display())))?;
    }
    let env = exec::scrubbed_env(&home, config.cache_dir.as_deref());

    // Clone: one shallow fetch of the ref (or HEAD), so branches, tags and commits share a path.
    let all = [
        RepoScheme::Https,
        RepoScheme::Http,
        RepoScheme::Git,
        RepoScheme::Ssh,
        RepoScheme::Local,
    ];
    let scheme = validate_repo_url(&job.repo, &all).map_err(|e| Failure::Build {
        error: e,
        exit_code: None,
    })?;
    let git_ref = job.git_ref.as_deref().unwrap_or("HEAD");
    let step = Instant::now();
    emitter.system(&format!(
        "Cloning {} ({git_ref})",
        redact_repo_url(&job.repo)
    ));
    let mut git_env = env.clone();
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
        run_step(emitter, &argv, &src, &git_env, "git").await?;
    }
    let commit = rev_parse_head(&src).await?;
    emitter.system(&format!("Cloned commit {commit} in {}", secs(step)));
    emitter.phase("clone", step);

    // Detect.
    let package_json = read_optional(&src.join("package.json"))?;
    let has_lockfile =
        src.join("package-lock.json").exists() || src.join("npm-shrinkwrap.json").exists();
    let plan =
        detect::plan(package_json.as_deref(), has_lockfile).map_err(|error| Failure::Build {
            error,
            exit_code: None,
        })?;
    emitter.system(&format!("Detected: {}", plan.reason));

    // Install and build.
    let built = plan.build.is_some();
    for (what, argv) in [("Install", plan.install), ("Build", plan.build)] {
        if let Some(argv) = argv {
            let step = Instant::now();
            emitter.system(&format!("{what}: {}", argv.join(" ")));
            run_step(emitter, &argv, &src, &env, &argv.join(" ")).await?;
            emitter.system(&format!("{what} finished in {}", secs(step)));
            emitter.phase(&what.to_ascii_lowercase(), step);
        }
    }

    // Collect the output.
    let output =
        detect::choose_output(built, |d| src.join(d).is_dir()).ok_or_else(|| Failure::Build {
            error: format!(
                "the build produced no output directory (looked for {})",
                detect::BUILD_OUTPUT_DIRS.join(", ")
            ),
            exit_code: None,
        })?;
    let shown = if output.is_empty() {
        "the repository root"
    } else {
        output
    };
    emitter.system(&format!("Publishing {shown}"));
    let output_dir = src.join(output);
    let build_failure = |error| Failure::Build {
        error,
        exit_code: None,
    };
    let files = publish::collect(&output_dir, output.is_empty()).map_err(build_failure)?;
    let rules = publish::site_rules(&output_dir, &job.serving, emitter).map_err(build_failure)?;
    if files.is_empty() {
        return Err(Failure::Build {
            error: format!("{shown} has no files to publish"),
            exit_code: None,
        });
    }

    // Upload, manifest last.
    let step = Instant::now();
    let client = publish::s3_client(config);
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
        "Uploaded {} files ({} bytes) and {} precompressed variants in {}",
        published.files,
        published.bytes,
        published.variants,
        secs(step)
    ));
    emitter.phase("upload", step);
    Ok((commit, published))
}

async fn run_step(
    emitter: &Emitter,
    argv: &[String],
    cwd: &Path,
    env: &[(String, String)],
    label: &str,
) -> Result<(), Failure> {
    match exec::run(emitter, argv, cwd, env).await {
        Ok(Some(0)) => Ok(()),
        Ok(code) => Err(Failure::Build {
            error: match code {
                Some(c) => format!("`{label}` exited with code {c}"),
                None => format!("`{label}` was killed by a signal"),
            },
            exit_code: code,
        }),
        Err(e) => Err(Failure::Internal(format!("cannot run `{label}`: {e}"))),
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
        Err(e) => Err(Failure::Build {
            error: format!("cannot read {}: {e}", path.display()),
            exit_code: None,
        }),
    }
}

fn secs(since: Instant) -> String {
    format!("{:.1}s", since.elapsed().as_secs_f64())
}
