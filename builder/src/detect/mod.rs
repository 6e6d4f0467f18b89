//! What to run and what to publish, decided from the checkout's files. Pure functions over what
//! the caller read from disk, so every rule has a table test.

use gitdeploy_core::job::BuildSettings;
use serde_json::Value;

mod framework;
pub use framework::{framework, spa_rule, DEFAULT_CACHES};

/// What the detection reads from the checkout (contents of the files that exist).
#[derive(Clone, Debug, Default)]
pub struct RepoFiles<'a> {
    /// `package.json`.
    pub package_json: Option<&'a str>,
    /// `package-lock.json` or `npm-shrinkwrap.json` exists.
    pub npm_lock: bool,
    /// `yarn.lock`.
    pub yarn_lock: Option<&'a str>,
    /// `pnpm-lock.yaml`.
    pub pnpm_lock: Option<&'a str>,
    /// `bun.lock` or `bun.lockb` exists.
    pub bun_lock: bool,
    /// `next.config.js` (or `.mjs`, `.cjs`, `.ts`).
    pub next_config: Option<&'a str>,
    /// `angular.json`.
    pub angular_json: Option<&'a str>,
    /// `mkdocs.yml` (or `mkdocs.yaml`).
    pub mkdocs_yml: Option<&'a str>,
    /// `requirements.txt` exists.
    pub requirements_txt: bool,
}

/// The package manager of a Node project.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PackageManager {
    /// npm from the machine; `ci` when there is a lockfile.
    Npm {
        /// A lockfile exists.
        lockfile: bool,
    },
    /// Yarn at this version, through corepack.
    Yarn {
        /// Version or range for corepack.
        version: String,
        /// `yarn.lock` exists.
        lockfile: bool,
    },
    /// pnpm at this version, through corepack.
    Pnpm {
        /// Version or range for corepack.
        version: String,
        /// `pnpm-lock.yaml` exists.
        lockfile: bool,
    },
    /// Bun, fetched from the registry ([`crate::tool_fetch`]).
    Bun {
        /// The version `packageManager` names, if it does.
        version: Option<String>,
        /// `bun.lock` or `bun.lockb` exists.
        lockfile: bool,
    },
}

impl PackageManager {
    fn install(&self) -> Vec<String> {
        let words: Vec<String> = match self {
            // The lockfile pins every package by hash, so cached copies need no revalidation.
            PackageManager::Npm { lockfile: true } => {
                vec!["npm".into(), "ci".into(), "--prefer-offline".into()]
            }
            PackageManager::Npm { lockfile: false } => vec!["npm".into(), "install".into()],
            PackageManager::Yarn { version, lockfile } => {
                let frozen = if version.starts_with('1') {
                    "--frozen-lockfile"
                } else {
                    "--immutable"
                };
                let mut v = vec![
                    "corepack".into(),
                    format!("yarn@{version}"),
                    "install".into(),
                ];
                if *lockfile {
                    v.push(frozen.into());
                }
                v
            }
            PackageManager::Pnpm { version, lockfile } => {
                let mut v = vec![
                    "corepack".into(),
                    format!("pnpm@{version}"),
                    "install".into(),
                ];
                if *lockfile {
                    v.push("--frozen-lockfile".into());
                }
                v
            }
            PackageManager::Bun { lockfile, .. } => {
                let mut v = vec!["bun".into(), "install".into()];
                if *lockfile {
                    v.push("--frozen-lockfile".into());
                }
                v
            }
        };
        words
    }

    fn run_build(&self) -> Vec<String> {
        match self {
            PackageManager::Npm { .. } => vec!["npm".into(), "run".into(), "build".into()],
            PackageManager::Yarn { version, .. } => vec![
                "corepack".into(),
                format!("yarn@{version}"),
                "run".into(),
                "build".into(),
            ],
            PackageManager::Pnpm { version, .. } => vec![
                "corepack".into(),
                format!("pnpm@{version}"),
                "run".into(),
                "build".into(),
            ],
            PackageManager::Bun { .. } => vec!["bun".into(), "run".into(), "build".into()],
        }
    }
}

/// Picks the package manager: the `packageManager` field first, then the lockfile (Bun's first;
/// a lockfile's format also decides the version: a `lockfileVersion: '6.0'` pnpm lock needs
/// pnpm 8).
pub fn package_manager(
    package_json: &Value,
    files: &RepoFiles<'_>,
) -> Result<(PackageManager, String), String> {
    if let Some(field) = package_json.get("packageManager").and_then(Value::as_str) {
        let (name, version) = field
            .split_once('@')
            .ok_or_else(|| format!("packageManager {field:?} must look like name@version"))?;
        let version = version.split('+').next().unwrap_or(version).to_owned();
        if version.is_empty()
            || !version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Err(format!(
                "packageManager version {version:?} is not a version"
            ));
        }
        let reason = format!("packageManager field: {name}@{version}");
        return match name {
            "npm" => Ok((
                PackageManager::Npm {
                    lockfile: files.npm_lock,
                },
                reason,
            )),
            "yarn" => Ok((
                PackageManager::Yarn {
                    version,
                    lockfile: files.yarn_lock.is_some(),
                },
                reason,
            )),
            "pnpm" => Ok((
                PackageManager::Pnpm {
                    version,
                    lockfile: files.pnpm_lock.is_some(),
                },
                reason,
            )),
            "bun" => Ok((
                PackageManager::Bun {
                    version: Some(version),
                    lockfile: files.bun_lock,
                },
                reason,
            )),
            other => Err(format!(
                "packageManager {other:?} is not supported (npm, yarn, pnpm or bun)"
            )),
        };
    }
    // Only Bun writes its lockfile, and it migrates the lockfile it finds (leaving it behind):
    // a checkout with both is a Bun project that kept its old one.
    if files.bun_lock {
        return Ok((
            PackageManager::Bun {
                version: None,
                lockfile: true,
            },
            "bun.lock found: bun install".into(),
        ));
    }
    if let Some(lock) = files.pnpm_lock {
        let version = pnpm_for_lockfile(lock);
        return Ok((
            PackageManager::Pnpm {
                version: version.clone(),
                lockfile: true,
            },
            format!("pnpm-lock.yaml found: pnpm {version}"),
        ));
    }
    if let Some(lock) = files.yarn_lock {
        let (version, what) = if lock.contains("__metadata:") {
            ("4", "Yarn Berry")
        } else {
            ("1.22.22", "Yarn classic")
        };
        return Ok((
            PackageManager::Yarn {
                version: version.into(),
                lockfile: true,
            },
            format!("yarn.lock found ({what}): yarn {version}"),
        ));
    }
    if files.npm_lock {
        return Ok((
            PackageManager::Npm { lockfile: true },
            "package-lock.json found: npm ci".into(),
        ));
    }
    Ok((
        PackageManager::Npm { lockfile: false },
        "no lockfile: npm install".into(),
    ))
}

/// The pnpm major version that reads a lockfile, from its `lockfileVersion`.
fn pnpm_for_lockfile(lock: &str) -> String {
    let version = lock
        .lines()
        .find_map(|l| l.strip_prefix("lockfileVersion:"))
        .map(|v| v.trim().trim_matches(|c| c == '\'' || c == '"').to_owned())
        .unwrap_or_default();
    let major = version.split('.').next().unwrap_or("");
    match major {
        "5" => "7",
        "6" => "8",
        _ => "9",
    }
    .to_owned()
}

/// Output directories tried after a build when no framework is recognised, in order.
pub const BUILD_OUTPUT_DIRS: &[&str] = &["dist", "build", "out", "public"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Install command (argv), when there is one.
    pub install: Option<Vec<String>>,
    /// Build command (argv), when there is one.
    pub build: Option<Vec<String>>,
    /// Why these commands, for the log.
    pub reason: String,
    /// Output directories to try, in order (`""` is the root directory).
    pub outputs: Vec<String>,
    /// Why these directories, for the log.
    pub output_reason: String,
    /// The output directory was configured: it must exist.
    pub output_required: bool,
    /// The detected rule for unknown paths ([`spa_rule`]).
    pub spa: Option<bool>,
    /// Why that rule, for the log.
    pub spa_reason: String,
    /// The build caches to keep between builds ([`crate::build_cache`]).
    pub caches: &'static [&'static str],
    /// The commands run on Bun: `Some` with the version `packageManager` names (if it does).
    pub bun: Option<Option<String>>,
}

fn shell(cmd: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), cmd.into()]
}

/// Chooses install and build commands and output directories from the repository's files and
/// the deployment's settings (settings win).
pub fn plan(files: &RepoFiles<'_>, settings: &BuildSettings) -> Result<Plan, String> {
    let json: Option<Value> = files
        .package_json
        .map(|text| {
            serde_json::from_str(text).map_err(|e| format!("package.json is not valid JSON: {e}"))
        })
        .transpose()?;
    let has_build_script = json
        .as_ref()
        .and_then(|j| j.get("scripts"))
        .and_then(|s| s.get("build"))
        .and_then(Value::as_str)
        .is_some_and(|s| !s.trim().is_empty());
    if let (Some(config), false) = (files.mkdocs_yml, has_build_script) {
        return Ok(mkdocs_plan(config, files.requirements_txt, settings));
    }
    let builds = has_build_script || settings.build_command.is_some();
    let (pm, pm_reason) = match &json {
        Some(j) if builds || settings.install_command.is_some() => {
            let (pm, why) = package_manager(j, files)?;
            (Some(pm), why)
        }
        _ => (None, String::new()),
    };
    let install = match (&settings.install_command, &pm) {
        (Some(cmd), _) => Some(shell(cmd)),
        (None, Some(pm)) => Some(pm.install()),
        (None, None) => None,
    };
    let build = match (&settings.build_command, &pm) {
        (Some(cmd), _) => Some(shell(cmd)),
        (None, Some(pm)) if has_build_script => Some(pm.run_build()),
        _ => None,
    };
    let reason = match (&install, &build) {
        (None, None) if json.is_none() => {
            "no package.json: publishing static files as they are".to_owned()
        }
        (None, None) => {
            "package.json has no build script: publishing static files as they are".to_owned()
        }
        _ => {
            let mut parts = Vec::new();
            if !pm_reason.is_empty() {
                parts.push(pm_reason);
            }
            if settings.install_command.is_some() || settings.build_command.is_some() {
                parts.push("commands from the build settings".into());
            }
            parts.join("; ")
        }
    };
    let detected = match (&json, &build) {
        (Some(j), Some(_)) => framework(j, files)?,
        _ => None,
    };
    let (spa, spa_reason) = spa_rule(detected.as_ref());
    let (outputs, output_reason, output_required) = if let Some(dir) = &settings.output_dir {
        (
            vec![dir.trim_end_matches('/').to_owned()],
            "output_dir from the build settings".to_owned(),
            true,
        )
    } else if build.is_some() {
        match &detected {
            Some(f) => (vec![f.output.clone()], format!("{} detected", f.name), true),
            None => (
                BUILD_OUTPUT_DIRS.iter().map(|d| d.to_string()).collect(),
                "by convention".to_owned(),
                false,
            ),
        }
    } else {
        (
            vec!["public".into(), String::new()],
            "no build: public/ if present, else the root".into(),
            false,
        )
    };
    Ok(Plan {
        install,
        build,
        reason,
        outputs,
        output_reason,
        output_required,
        spa,
        spa_reason,
        caches: detected.as_ref().map_or(DEFAULT_CACHES, |f| f.caches),
        bun: match pm {
            Some(PackageManager::Bun { version, .. }) => Some(version),
            _ => None,
        },
    })
}

/// A Python documentation site: MkDocs in a virtualenv of the build's own (under its home), its
/// packages from `requirements.txt` (else MkDocs alone) through a wheelhouse in the project's
/// cache; `mkdocs build` writes `site/` (or `site_dir`).
fn mkdocs_plan(config: &str, requirements: bool, settings: &BuildSettings) -> Plan {
    // Wheels are kept in a wheelhouse in the project's pip cache: `pip wheel` fetches (or
    // builds) only what it lacks, then the install reads nothing but the wheelhouse. (pip's own
    // HTTP cache depends on the index's cache headers; a mirror may send none.)
    let what = if requirements {
        "-r requirements.txt"
    } else {
        "mkdocs"
    };
    let venv = format!(
        r#"python3 -m venv "$HOME/.venv" && W="$PIP_CACHE_DIR/wheelhouse" && mkdir -p "$W" && "$HOME/.venv/bin/pip" wheel -w "$W" --find-links "$W" {what} && "$HOME/.venv/bin/pip" install --no-index --find-links "$W" {what}"#
    );
    let install = match &settings.install_command {
        Some(cmd) => shell(cmd),
        None => shell(&venv),
    };
    let build = match &settings.build_command {
        Some(cmd) => shell(cmd),
        None => shell(r#""$HOME/.venv/bin/mkdocs" build"#),
    };
    let site_dir = config
        .lines()
        .find_map(|l| l.strip_prefix("site_dir:"))
        .map(|v| {
            v.trim()
                .trim_matches(|c| c == '"' || c == '\'')
                .trim_end_matches('/')
                .to_owned()
        })
        .filter(|d| !d.is_empty() && !d.starts_with('/') && !d.split('/').any(|s| s == ".."));
    let (outputs, output_reason) = match (&settings.output_dir, site_dir) {
        (Some(dir), _) => (
            dir.trim_end_matches('/').to_owned(),
            "output_dir from the build settings",
        ),
        (None, Some(dir)) => (dir, "MkDocs detected (site_dir)"),
        (None, None) => ("site".to_owned(), "MkDocs detected"),
    };
    let (spa, spa_reason) = (
        Some(false),
        "MkDocs builds one page per route: unknown paths are 404s".to_owned(),
    );
    Plan {
        install: Some(install),
        build: Some(build),
        reason: format!(
            "mkdocs.yml found: MkDocs in a virtualenv ({})",
            if requirements {
                "requirements.txt"
            } else {
                "no requirements.txt: mkdocs alone"
            }
        ),
        outputs: vec![outputs],
        output_reason: output_reason.to_owned(),
        output_required: true,
        spa,
        spa_reason,
        caches: &[],
        bun: None,
    }
}

/// Picks the directory to publish from the plan; `exists` answers whether a directory exists.
pub fn choose_output(plan: &Plan, exists: impl Fn(&str) -> bool) -> Result<String, String> {
    if let Some(dir) = plan.outputs.iter().find(|d| d.is_empty() || exists(d)) {
        return Ok(dir.clone());
    }
    let listed = plan
        .outputs
        .iter()
        .map(|d| format!("{d}/"))
        .collect::<Vec<_>>()
        .join(", ");
    Err(if plan.output_required {
        format!("the build produced no {listed} ({})", plan.output_reason)
    } else {
        format!("the build produced no output directory (looked for {listed})")
    })
}

/// Whether a file under the repository root is published when the root itself is the site:
/// dot-directories and dotfiles stay private, except `.well-known`.
pub fn publish_from_root(relative: &str) -> bool {
    relative
        .split('/')
        .all(|segment| !segment.starts_with('.') || segment == ".well-known")
}

/// `Content-Type` for a file name, with `charset=utf-8` on text types.
pub fn content_type(path: &str) -> String {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let essence = mime.essence_str();
    let texty = mime.type_() == mime_guess::mime::TEXT
        || matches!(
            essence,
            "application/javascript" | "application/json" | "application/xml" | "image/svg+xml"
        );
    if texty {
        format!("{essence}; charset=utf-8")
    } else {
        essence.to_owned()
    }
}

#[cfg(test)]
mod tests;
