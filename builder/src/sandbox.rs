//! The sandbox around the user's install and build commands.
//!
//! Layers, each used where this machine allows it:
//! - bubblewrap: read-only system, only the checkout, home and cache writable, private `/tmp`,
//!   new PID/IPC/UTS namespaces (and network, when turned off), dies with its parent, so killing
//!   it kills everything the build started;
//! - an unprivileged user (when the builder runs as root), no capabilities, no new privileges;
//! - cgroups (v1 or v2, when writable): a memory cap and a process cap for the whole build;
//! - rlimits via `prlimit`: CPU seconds, file size, core dumps, and processes when no cgroup.
//!
//! [`wrap`] builds the command line from a [`SandboxSpec`] and is a pure function.

use std::path::{Path, PathBuf};

use gitdeploy_core::job::BuildLimits;

/// Everything that decides how a command is wrapped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxSpec {
    /// bubblewrap, when present and working.
    pub bwrap: Option<PathBuf>,
    /// User and group to run as (when the builder is root).
    pub run_as: Option<(u32, u32)>,
    /// Network access.
    pub network: bool,
    /// Directories the build may write.
    pub writable: Vec<PathBuf>,
    /// Extra read-only directories (a Node.js installed outside `/usr`).
    pub read_only: Vec<PathBuf>,
    /// `cgroup.procs` files to join before anything else runs.
    pub cgroup_procs: Vec<PathBuf>,
    /// Limits.
    pub limits: BuildLimits,
}

/// The command line that runs `argv` in `cwd` inside the sandbox.
pub fn wrap(spec: &SandboxSpec, argv: &[String], cwd: &Path) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let s = |v: &str| v.to_owned();
    if !spec.cgroup_procs.is_empty() {
        // Join the cgroups in a shell that then becomes the command, so no child escapes them.
        let joins: Vec<String> = spec
            .cgroup_procs
            .iter()
            .map(|p| format!("echo $$ > '{}'", p.display()))
            .collect();
        out.extend([
            s("/bin/sh"),
            s("-c"),
            format!("{} && exec \"$@\"", joins.join(" && ")),
            s("sh"),
        ]);
    }
    out.extend([
        s("prlimit"),
        format!("--cpu={}", spec.limits.cpu_secs),
        format!("--fsize={}", spec.limits.max_file_bytes),
        s("--core=0"),
    ]);
    if spec.cgroup_procs.is_empty() {
        out.push(format!("--nproc={}", spec.limits.max_processes));
    }
    out.push(s("--"));
    if let Some(bwrap) = &spec.bwrap {
        out.push(bwrap.display().to_string());
        for flag in [
            "--die-with-parent",
            "--new-session",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
        ] {
            out.push(s(flag));
        }
        if !spec.network {
            out.push(s("--unshare-net"));
        }
        for dir in ["/usr", "/etc"] {
            out.extend([s("--ro-bind"), s(dir), s(dir)]);
        }
        for (link, target) in [
            ("/bin", "usr/bin"),
            ("/sbin", "usr/sbin"),
            ("/lib", "usr/lib"),
            ("/lib64", "usr/lib64"),
        ] {
            out.extend([s("--symlink"), s(target), s(link)]);
        }
        for dir in &spec.read_only {
            let d = dir.display().to_string();
            out.extend([s("--ro-bind"), d.clone(), d]);
        }
        out.extend([
            s("--proc"),
            s("/proc"),
            s("--dev"),
            s("/dev"),
            s("--tmpfs"),
            s("/tmp"),
        ]);
        // bwrap would create the parents of the writable directories private to root, which
        // the build user could not pass through.
        let mut parents: Vec<&Path> = spec
            .writable
            .iter()
            .flat_map(|d| d.ancestors().skip(1))
            .collect();
        parents
            .retain(|p| *p != Path::new("/") && !p.starts_with("/usr") && !p.starts_with("/etc"));
        parents.sort();
        parents.dedup();
        for parent in parents {
            out.extend([
                s("--perms"),
                s("0755"),
                s("--dir"),
                parent.display().to_string(),
            ]);
        }
        for dir in &spec.writable {
            let d = dir.display().to_string();
            out.extend([s("--bind"), d.clone(), d]);
        }
        out.extend([s("--chdir"), cwd.display().to_string(), s("--")]);
    }
    if let Some((uid, gid)) = spec.run_as {
        out.extend([
            s("setpriv"),
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            s("--clear-groups"),
            s("--inh-caps=-all"),
            s("--bounding-set=-all"),
            s("--no-new-privs"),
            s("--"),
        ]);
    }
    out.extend(argv.iter().cloned());
    out
}

/// cgroups created for one build; removed (killing what is left in them) by [`Cgroups::remove`].
#[derive(Debug, Default)]
pub struct Cgroups {
    dirs: Vec<PathBuf>,
}

impl Cgroups {
    /// Creates a memory and a pids cgroup for `name` where the hierarchy is writable (v1 layout
    /// first, then v2). Returns what was created and notes for the log.
    pub fn create(name: &str, limits: &BuildLimits) -> (Self, Vec<String>) {
        let mut dirs = Vec::new();
        let mut notes = Vec::new();
        let root = Path::new("/sys/fs/cgroup");
        let v1 = [
            (
                "memory",
                "memory.limit_in_bytes",
                limits.memory_bytes.to_string(),
            ),
            ("pids", "pids.max", limits.max_processes.to_string()),
        ];
        for (controller, file, value) in v1 {
            let base = root.join(controller);
            if !base.join("cgroup.procs").exists() {
                continue;
            }
            let dir = base.join("gitdeploy").join(name);
            match std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(dir.join(file), &value))
            {
                Ok(()) => dirs.push(dir),
                Err(e) => notes.push(format!(
                    "no {controller} cgroup ({e}): {controller} is not capped"
                )),
            }
        }
        if dirs.is_empty() && root.join("cgroup.controllers").exists() {
            let dir = root.join("gitdeploy").join(name);
            let created = std::fs::create_dir_all(&dir)
                .and_then(|_| {
                    std::fs::write(dir.join("memory.max"), limits.memory_bytes.to_string())
                })
                .and_then(|_| {
                    std::fs::write(dir.join("pids.max"), limits.max_processes.to_string())
                });
            match created {
                Ok(()) => dirs.push(dir),
                Err(e) => notes.push(format!(
                    "no cgroup ({e}): memory and processes are capped by rlimits only"
                )),
            }
        }
        (Cgroups { dirs }, notes)
    }

    /// The cgroups a build named `name` may have left behind (every layout this module creates),
    /// for a runner that killed the builder before it could clean up.
    pub fn leftovers(name: &str) -> Self {
        let root = Path::new("/sys/fs/cgroup");
        let dirs = [root.join("memory"), root.join("pids"), root.to_path_buf()]
            .into_iter()
            .map(|base| base.join("gitdeploy").join(name))
            .filter(|dir| dir.is_dir())
            .collect();
        Cgroups { dirs }
    }

    /// The `cgroup.procs` files to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Kills every process still in the cgroups and removes them.
    pub async fn remove(self) {
        for dir in &self.dirs {
            for _ in 0..100 {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                let pids: Vec<i32> = procs
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect();
                for pid in &pids {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(*pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                // Killed processes take a moment to leave the cgroup.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Finds a working bubblewrap: present on `PATH` and able to create its namespaces here.
pub async fn probe_bwrap() -> Option<PathBuf> {
    let path = find_on_path("bwrap")?;
    let ok = tokio::process::Command::new(&path)
        .args(["--ro-bind", "/", "/", "--unshare-pid", "--", "true"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success());
    ok.then_some(path)
}

/// The first executable called `name` on `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Directories outside `/usr` that the toolchain lives in (e.g. a Node.js from nvm), to be
/// mounted read-only.
pub fn toolchain_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for tool in ["node", "git"] {
        if let Some(real) = find_on_path(tool).and_then(|p| p.canonicalize().ok()) {
            if !real.starts_with("/usr") {
                // <prefix>/bin/node → <prefix>
                if let Some(prefix) = real.parent().and_then(Path::parent) {
                    dirs.push(prefix.to_owned());
                }
            }
        }
    }
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Gives the build user the directories it must write (recursively).
pub fn chown_tree(root: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    let mut stack = vec![root.to_owned()];
    while let Some(path) = stack.pop() {
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SandboxSpec {
        SandboxSpec {
            bwrap: Some("/usr/bin/bwrap".into()),
            run_as: Some((65534, 65534)),
            network: true,
            writable: vec!["/w/src".into(), "/w/home".into()],
            read_only: vec![],
            cgroup_procs: vec!["/sys/fs/cgroup/pids/gitdeploy/x/cgroup.procs".into()],
            limits: BuildLimits::default(),
        }
    }

    fn argv() -> Vec<String> {
        vec!["npm".into(), "ci".into()]
    }

    #[test]
    fn full_sandbox_layers_in_order() {
        let cmd = wrap(&spec(), &argv(), Path::new("/w/src"));
        let pos = |s: &str| {
            cmd.iter()
                .position(|a| a == s)
                .unwrap_or_else(|| panic!("{s} missing: {cmd:?}"))
        };
        assert_eq!(cmd[0], "/bin/sh");
        assert!(cmd[2].contains("echo $$ > '/sys/fs/cgroup/pids/gitdeploy/x/cgroup.procs'"));
        assert!(pos("prlimit") < pos("/usr/bin/bwrap"));
        assert!(pos("/usr/bin/bwrap") < pos("setpriv"));
        assert_eq!(&cmd[cmd.len() - 2..], &argv()[..]);
        assert!(cmd.contains(&"--die-with-parent".to_owned()));
        assert!(!cmd.contains(&"--unshare-net".to_owned()));
        assert!(
            !cmd.iter().any(|a| a.starts_with("--nproc")),
            "the pids cgroup caps processes"
        );
        let binds: Vec<_> = cmd
            .windows(2)
            .filter(|w| w[0] == "--bind")
            .map(|w| w[1].clone())
            .collect();
        assert_eq!(binds, ["/w/src", "/w/home"]);
        assert!(cmd.windows(3).any(|w| w == ["--ro-bind", "/usr", "/usr"]));
        let dirs: Vec<_> = cmd
            .windows(2)
            .filter(|w| w[0] == "--dir")
            .map(|w| w[1].clone())
            .collect();
        assert_eq!(
            dirs,
            ["/w"],
            "parents of the writable directories are made passable"
        );
    }

    #[test]
    fn degrades_to_what_is_available() {
        let mut s = spec();
        s.network = false;
        assert!(wrap(&s, &argv(), Path::new("/w")).contains(&"--unshare-net".to_owned()));
        s.bwrap = None;
        s.run_as = None;
        s.cgroup_procs.clear();
        let cmd = wrap(&s, &argv(), Path::new("/w"));
        assert_eq!(cmd[0], "prlimit");
        assert!(cmd.iter().any(|a| a.starts_with("--nproc=")));
        assert_eq!(
            &cmd[cmd.len() - 3..],
            &["--".to_owned(), "npm".into(), "ci".into()]
        );
    }
}
