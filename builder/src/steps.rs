//! The build, step by step, each with a system line and its duration.

use std::path::{Path, PathBuf};
use std::time::Instant;

use gitdeploy_core::job::BuildJob;
use gitdeploy_core::keys::cache_scope;
use gitdeploy_core::repo::{redact_repo_url, validate_repo_url, RepoScheme};
use gitdeploy_core::BuilderEvent;

use std::os::unix::fs::DirBuilderExt;

use crate::config::BuilderConfig;
use crate::events::Emitter;
use crate::exec::{self, Exit};
use crate::failure::{build_failure, Failure};
use crate::lines::Redactor;
use crate::prepare::{prepare_sandbox, write_private, SandboxDirs};
use crate::sandbox::{self, Cgroups, Mount, NEUTRAL};
use crate::{build_cache, node_version, remote_cache, skip, tool_fetch, uploaded_source};
use crate::{
    collect, confine, detect, disk, publish, EXIT_BUILD_FAILED, EXIT_INTERNAL, EXIT_READY,
};

/// Runs every step and reports the outcome; returns the exit status.
pub async fn run(config: &BuilderConfig, emitter: &Emitter) -> i32 {
    let job = &config.job;
    let emitter = emitter.configured(
        // Secret values and the repository URL's credentials (git prints URLs in its errors).
        Redactor::new(
            job.build
                .secrets
                .values()
                .map(String::as_str)
                .chain(gitdeploy_core::repo::url_credentials(&job.repo)),
        ),
        job.limits.max_log_bytes,
    );
    let started = Instant::now();
    let (cgroups, notes) = Cgroups::create(job.deployment.as_str(), &job.limits);
    let result = steps(config, &emitter, &cgroups, notes).await;
    cgroups.remove().await;
    match result {
        Ok(Done::Skipped { commit, reason }) => {
            emitter.system(&format!("Skipped: {reason}"));
            emitter.event(&BuilderEvent::Skipped { commit, reason });
            EXIT_READY
        }
        Ok(Done::Published { commit, published }) => {
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

/// How a build that did not fail ended.
enum Done {
    /// Built and published.
    Published {
        /// None for an uploaded source folder.
        commit: Option<String>,
        published: publish::Published,
    },
    /// Nothing it depends on changed since the last ready build ([`skip`]).
    Skipped { commit: String, reason: String },
}

async fn steps(
    config: &BuilderConfig,
    emitter: &Emitter,
    cgroups: &Cgroups,
    notes: Vec<String>,
) -> Result<Done, Failure> {
    let job = &config.job;
    let timeout = job
        .build
        .timeout_secs
        .unwrap_or(job.limits.timeout_secs)
        .min(job.limits.timeout_secs);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(timeout);
    let home = config.work_dir.join("home");
    let src = config.work_dir.join("src");
    let tmp = config.work_dir.join("tmp");
    let cache = config
        .cache_dir
        .clone()
        .unwrap_or_else(|| config.work_dir.join("cache"))
        .join(cache_scope(job.cache_key.as_deref()));
    for dir in [&home, &src, &cache, &tmp] {
        std::fs::create_dir_all(dir)
            .map_err(|e| Failure::Internal(format!("cannot create {}: {e}", dir.display())))?;
    }
    // The sandbox's own files (the build's environment, its resolv.conf): the builder's only.
    let private = config.work_dir.join("sandbox");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .or_else(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Ok(()),
            _ => Err(e),
        })
        .map_err(|e| Failure::Internal(format!("cannot create {}: {e}", private.display())))?;
    let base_env = exec::scrubbed_env(&home, &cache);
    let disk = DiskWatch {
        roots: vec![src.clone(), home.clone(), cache.clone(), tmp.clone()],
        limit: job.limits.max_disk_bytes,
    };

    let commit = match &job.archive {
        Some(archive) => {
            uploaded_source::unpack(config, emitter, archive, &src).await?;
            None
        }
        None => {
            let git_env = git_env(job, &base_env)?;
            let commit = clone(job, emitter, &src, &git_env, deadline, &disk).await?;
            match skip::decide(job, &src, &git_env, &commit).await {
                Some(skip::Decision::Skip(reason)) => return Ok(Done::Skipped { commit, reason }),
                Some(skip::Decision::Build(reason)) => {
                    emitter.system(&format!("Building: {reason}"))
                }
                None => {}
            }
            Some(commit)
        }
    };

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
    let next_config = [
        "next.config.js",
        "next.config.mjs",
        "next.config.cjs",
        "next.config.ts",
    ]
    .iter()
    .map(|name| read(name))
    .find_map(|r| r.transpose())
    .transpose()?;
    let angular_json = read("angular.json")?;
    let mkdocs_yml = match read("mkdocs.yml")? {
        Some(text) => Some(text),
        None => read("mkdocs.yaml")?,
    };
    let files = detect::RepoFiles {
        package_json: package_json.as_deref(),
        npm_lock: root.join("package-lock.json").exists()
            || root.join("npm-shrinkwrap.json").exists(),
        yarn_lock: yarn_lock.as_deref(),
        pnpm_lock: pnpm_lock.as_deref(),
        bun_lock: root.join("bun.lock").exists() || root.join("bun.lockb").exists(),
        next_config: next_config.as_deref(),
        angular_json: angular_json.as_deref(),
        mkdocs_yml: mkdocs_yml.as_deref(),
        requirements_txt: root.join("requirements.txt").is_file(),
    };
    let plan = detect::plan(&files, &job.build).map_err(build_failure)?;
    emitter.system(&format!("Detected: {}", plan.reason));

    // Install and build, sandboxed. `ran_as` is the uid the repository's commands ran as when
    // it is not the builder's own: everything published must then be theirs.
    let mut ran_as = None;
    if plan.install.is_some() || plan.build.is_some() {
        if let Some(name) = job
            .build
            .env
            .keys()
            .chain(job.build.secrets.keys())
            .find(|k| confine::is_loader_variable(k))
        {
            return Err(build_failure(format!(
                "{name} changes how programs are loaded and is not allowed in a build's environment"
            )));
        }
        let mount = |host: &PathBuf, inside: &str| Mount {
            host: host.clone(),
            inside: inside.into(),
        };
        let dirs = SandboxDirs {
            writable: vec![
                mount(&src, NEUTRAL.checkout),
                mount(&home, NEUTRAL.home),
                mount(&cache, NEUTRAL.cache),
            ],
            tmp: tmp.clone(),
            private: private.clone(),
        };
        // The kept build caches: in the project's cache directory, and on a builder whose disk
        // does not last also in the bucket (fetched before the sandbox is handed over).
        let store = build_cache::store(job.build.root_dir.as_deref().unwrap_or(""));
        let archive = cache.join(build_cache::archive(&store));
        let remote = (config.remote_cache && plan.build.is_some()).then(|| {
            format!(
                "{}{}",
                config
                    .layout
                    .build_cache_prefix(&cache_scope(job.cache_key.as_deref())),
                build_cache::archive(&store)
            )
        });
        let client = match &remote {
            Some(key) => {
                let client = publish::s3_client(config).await;
                let step = Instant::now();
                match remote_cache::fetch(&client, &config.bucket, key, &archive).await {
                    Ok(Some(bytes)) => emitter.system(&format!(
                        "Build cache: fetched the stored copy ({} KiB) in {}",
                        bytes / 1024,
                        secs(step)
                    )),
                    Ok(None) => emitter.system("Build cache: no stored copy yet"),
                    Err(e) => emitter.system(&format!("Build cache: not fetched ({e})")),
                }
                Some(client)
            }
            None => None,
        };
        let (mut spec, _network) = prepare_sandbox(job, emitter, cgroups, notes, &dirs).await?;
        // Runtimes live beside the projects' caches, shared by all (no cache key starts with a
        // dot).
        let tools = cache.parent().unwrap_or(&cache).join(".tools");
        let mut runtimes = Vec::new();
        if let Some(request) = node_request(job, &root, package_json.as_deref())? {
            runtimes.extend(
                tool_fetch::provide(&tool_fetch::NODE, &request, &tools, &base_env, emitter)
                    .await?,
            );
        }
        if let Some(named) = &plan.bun {
            let request = node_version::bun_requested(
                job.build
                    .env
                    .get(node_version::BUN_SETTING)
                    .map(String::as_str),
                named.as_deref(),
            );
            let bun = tool_fetch::bun();
            runtimes.extend(tool_fetch::provide(bun, &request, &tools, &base_env, emitter).await?);
        }
        for tool in &runtimes {
            spec.tools.push(Mount {
                host: tool.root.clone(),
                inside: tool.tool.inside().into(),
            });
        }
        // The build sees its directories at neutral paths (inside bubblewrap), so no log shows
        // where the platform keeps its data.
        let mut env = exec::scrubbed_env(&spec.inside(&home), &spec.inside(&cache));
        env.push(("TMPDIR".into(), spec.inside(&tmp).display().to_string()));
        for tool in &runtimes {
            let bin = tool.bin_dir(spec.bwrap.is_some());
            for (name, value) in env.iter_mut().filter(|(k, _)| k == "PATH") {
                debug_assert_eq!(name, "PATH");
                *value = format!("{bin}:{value}");
            }
        }
        env.extend(
            job.build
                .env
                .iter()
                .chain(&job.build.secrets)
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        write_private(&spec.env_file, &confine::encode_env(&env))?;
        let wrapper_env: Vec<(String, String)> = sandbox::WRAPPER_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let store_inside = spec.inside(&cache.join(&store)).display().to_string();
        let archive_inside = spec.inside(&archive).display().to_string();
        let archive_arg = remote.as_ref().map(|_| archive_inside.as_str());
        let restore = plan
            .build
            .as_ref()
            .map(|_| build_cache::restore(&store_inside, archive_arg, plan.caches));
        let save = plan
            .build
            .as_ref()
            .map(|_| build_cache::save(&store_inside, archive_arg, plan.caches));
        let steps = [
            ("Install", &plan.install),
            ("Restore the build cache", &restore),
            ("Build", &plan.build),
            ("Keep the build cache", &save),
        ];
        for (what, argv) in steps {
            let Some(argv) = argv else { continue };
            let quiet = what.contains("build cache");
            let step = Instant::now();
            let shown = if argv.first().is_some_and(|a| a == "sh") {
                argv[2].clone()
            } else {
                argv.join(" ")
            };
            if !quiet {
                emitter.system(&format!("{what}: {shown}"));
            }
            let wrapped = sandbox::wrap(&spec, argv, &root);
            let run = Step {
                argv: &wrapped,
                cwd: &root,
                env: &wrapper_env,
                label: &shown,
            };
            let label = if quiet { what } else { &shown };
            let run = Step { label, ..run };
            run_step(emitter, &run, deadline, timeout, &disk).await?;
            if !quiet {
                emitter.system(&format!("{what} finished in {}", secs(step)));
                emitter.phase(&what.to_ascii_lowercase(), step);
            }
        }
        ran_as = spec.run_as.map(|(uid, _)| uid);
        // Nothing the build started may still run while its output is read.
        cgroups.kill_all().await;
        if let (Some(key), Some(client)) = (&remote, &client) {
            let step = Instant::now();
            match remote_cache::store(client, &config.bucket, key, &archive).await {
                Ok(Some(bytes)) => emitter.system(&format!(
                    "Build cache: stored a copy ({} KiB) in {}",
                    bytes / 1024,
                    secs(step)
                )),
                Ok(None) => {}
                Err(e) => emitter.system(&format!("Build cache: not stored ({e})")),
            }
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
    let output_dir = collect::confined_output_root(&root.join(&output), &src)
        .map_err(|e| build_failure(format!("{shown}: {e}")))?;
    let source = collect::OutputSource {
        root: &output_dir,
        checkout: &src,
        owner: ran_as,
        from_repo_root: output.is_empty(),
        // The longest key is a precompressed variant's (`<path>.br`).
        max_path_bytes: (job.limits.max_key_bytes as usize)
            .saturating_sub(config.layout.site_prefix(&job.deployment).len() + 3),
    };
    let files = collect::collect(&source, &job.limits).map_err(build_failure)?;
    if files.is_empty() {
        return Err(build_failure(format!("{shown} has no files to publish")));
    }
    // Unknown paths: the project's setting, else what the detected framework needs.
    let serving = gitdeploy_core::job::ServingOptions {
        spa: job.serving.spa.or(plan.spa),
        ..job.serving.clone()
    };
    emitter.system(&match job.serving.spa {
        Some(true) => "Unknown paths: serving.spa is on: they fall back to index.html".to_owned(),
        Some(false) => "Unknown paths: serving.spa is off: they are 404s".to_owned(),
        None => format!("Unknown paths: {}", plan.spa_reason),
    });
    let rules = collect::site_rules(&output_dir, &serving, emitter).map_err(build_failure)?;

    // Upload, manifest last.
    let step = Instant::now();
    let placement = if config.staged_upload {
        publish::Placement::Staged
    } else {
        publish::Placement::Shared
    };
    let blobs = publish::S3Blobs::new(
        publish::s3_client(config).await,
        &config.bucket,
        &config.layout,
        &job.deployment,
        placement,
    )
    .with_base(job.base.clone());
    let published = publish::publish(
        &blobs,
        publish::Release {
            id: &job.deployment,
            project: job.project.as_deref(),
            commit: commit.as_deref(),
        },
        files,
        rules,
        &Default::default(),
    )
    .await
    .map_err(Failure::Internal)?;
    emitter.system(&published.summary(&secs(step)));
    emitter.phase("upload", step);
    Ok(Done::Published { commit, published })
}

/// Shallow-fetches the ref (or HEAD) so branches, tags and commits share one path, then
/// checks out submodules over https only. Returns the commit.
/// The environment git runs with: `env`, only the repository URL's protocol, no system
/// configuration, no prompts.
fn git_env(job: &BuildJob, env: &[(String, String)]) -> Result<Vec<(String, String)>, Failure> {
    let all = [
        RepoScheme::Https,
        RepoScheme::Http,
        RepoScheme::Git,
        RepoScheme::Ssh,
        RepoScheme::Local,
    ];
    let scheme = validate_repo_url(&job.repo, &all).map_err(build_failure)?;
    let mut git_env = env.to_vec();
    git_env.push(("GIT_ALLOW_PROTOCOL".into(), scheme.git_protocol().into()));
    git_env.push(("GIT_CONFIG_NOSYSTEM".into(), "1".into()));
    git_env.push(("GIT_SSH_COMMAND".into(), "ssh -o BatchMode=yes".into()));
    Ok(git_env)
}

async fn clone(
    job: &BuildJob,
    emitter: &Emitter,
    src: &Path,
    git_env: &[(String, String)],
    deadline: tokio::time::Instant,
    disk: &DiskWatch,
) -> Result<String, Failure> {
    let git_ref = job.git_ref.as_deref().unwrap_or("HEAD");
    let step = Instant::now();
    emitter.system(&format!(
        "Cloning {} ({git_ref})",
        redact_repo_url(&job.repo)
    ));
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
        let step = Step {
            argv: &argv,
            cwd: src,
            env: git_env,
            label: "git",
        };
        run_step(emitter, &step, deadline, timeout, disk).await?;
    }
    if src.join(".gitmodules").exists() {
        emitter.system("Checking out submodules (https only)");
        let mut sub_env = git_env.to_vec();
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
        let step = Step {
            argv: &argv,
            cwd: src,
            env: &sub_env,
            label: "git submodule update",
        };
        run_step(emitter, &step, deadline, timeout, disk).await?;
    }
    let commit = rev_parse_head(src).await?;
    emitter.system(&format!("Cloned commit {commit} in {}", secs(step)));
    emitter.phase("clone", step);
    Ok(commit)
}

/// What the disk watch measures and its limit.
struct DiskWatch {
    roots: Vec<PathBuf>,
    limit: u64,
}

/// One command of the build.
struct Step<'a> {
    argv: &'a [String],
    cwd: &'a Path,
    env: &'a [(String, String)],
    label: &'a str,
}

async fn run_step(
    emitter: &Emitter,
    step: &Step<'_>,
    deadline: tokio::time::Instant,
    timeout_secs: u64,
    disk: &DiskWatch,
) -> Result<(), Failure> {
    let label = step.label;
    let exit = tokio::select! {
        exit = exec::run(emitter, step.argv, step.cwd, step.env, deadline) => exit
            .map_err(|e| Failure::Internal(format!("cannot run `{label}`: {e}")))?,
        used = disk::exceeded(disk.roots.clone(), disk.limit) => {
            // Dropping the command kills it (and the sandbox with everything in it).
            return Err(build_failure(format!(
                "the build wrote {} to disk, over its limit of {}; `{label}` was stopped",
                disk::human(used),
                disk::human(disk.limit)
            )));
        }
    };
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

/// The Node.js version the project asks for, if it names one.
fn node_request(
    job: &BuildJob,
    root: &Path,
    package_json: Option<&str>,
) -> Result<Option<node_version::Request>, Failure> {
    let json = package_json.and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok());
    let (nvmrc, node_version_file) = (
        read_optional(&root.join(".nvmrc"))?,
        read_optional(&root.join(".node-version"))?,
    );
    Ok(node_version::requested(&node_version::Sources {
        setting: job.build.env.get(node_version::SETTING).map(String::as_str),
        nvmrc: nvmrc.as_deref(),
        node_version: node_version_file.as_deref(),
        package_json: json.as_ref(),
    }))
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
