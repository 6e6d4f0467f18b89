//! The sandbox around the user's install and build commands.
//!
//! Layers, each used where this machine allows it:
//! - bubblewrap: read-only system, only the checkout, home, cache and `/tmp` writable (all on
//!   the work directory's disk, where [`crate::disk`] measures them), new PID/IPC/UTS/network
//!   namespaces, dies with its parent, so killing it kills everything the build started;
//! - the network: none, or a namespace of its own whose egress is filtered
//!   ([`crate::network`]), entered with `nsenter` before anything else runs;
//! - an unprivileged user (when the builder is root), no capabilities, no new privileges;
//! - cgroups (v1 or v2, when writable): a memory cap and a process cap for the whole build;
//! - rlimits via `prlimit`: CPU seconds, file size, core dumps, and processes when no cgroup.
//!
//! The user's environment reaches only the user's command. Every wrapper (the shell that joins
//! the cgroups, `nsenter`, `prlimit`, `bwrap`) starts with the fixed [`WRAPPER_ENV`], so a
//! variable such as `LD_PRELOAD` can never run code in a process that is still root or still
//! outside the namespaces. The last wrapper is the builder's own executable
//! ([`crate::confine`]): it reads the build's environment from a file only root can read, drops
//! to the build user and then executes the command with exactly that environment.
//!
//! [`wrap`] builds the command line from a [`SandboxSpec`] and is a pure function.

use std::path::{Path, PathBuf};

use gitdeploy_core::job::BuildLimits;

/// The environment of every wrapper process: nothing of the build's.
pub const WRAPPER_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("LANG", "C.UTF-8"),
];

/// Where the builder's executable and the build's environment file appear inside bubblewrap.
const SANDBOX_EXEC: &str = "/run/gitdeploy/exec";
const SANDBOX_ENV: &str = "/run/gitdeploy/env";

/// Everything that decides how a command is wrapped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxSpec {
    /// bubblewrap, when present and working.
    pub bwrap: Option<PathBuf>,
    /// User and group to run as (when the builder is root).
    pub run_as: Option<(u32, u32)>,
    /// Network access: none, or the filtered namespace at this path.
    pub network: Network,
    /// Directories the build may write, and where the build sees them.
    pub writable: Vec<Mount>,
    /// The directory that is `/tmp` inside bubblewrap.
    pub tmp: PathBuf,
    /// Extra read-only directories (a Node.js installed outside `/usr`).
    pub read_only: Vec<PathBuf>,
    /// Tools fetched for this build (a project's Node.js), read-only at their neutral paths.
    pub tools: Vec<Mount>,
    /// `cgroup.procs` files to join before anything else runs.
    pub cgroup_procs: Vec<PathBuf>,
    /// The builder's own executable, the last wrapper ([`crate::confine`]).
    pub exec_helper: PathBuf,
    /// The file holding the command's environment (root-only when the builder is root).
    pub env_file: PathBuf,
    /// Limits.
    pub limits: BuildLimits,
}

/// A writable directory of the build: where it is on the builder's disk, and where the build
/// sees it. Inside bubblewrap that is a fixed, neutral path ([`NEUTRAL`]), so no build log shows
/// where the platform keeps its data; without bubblewrap both are the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// On the builder's disk.
    pub host: PathBuf,
    /// As the build sees it (inside bubblewrap).
    pub inside: PathBuf,
}

/// The neutral paths of a build's directories inside bubblewrap: the checkout, its home and the
/// project's package cache.
pub const NEUTRAL: Neutral = Neutral {
    checkout: "/build/repo",
    home: "/build/home",
    cache: "/build/cache",
};

/// See [`NEUTRAL`].
pub struct Neutral {
    /// The checkout (the build's working directory, or above it with a root directory).
    pub checkout: &'static str,
    /// `HOME`.
    pub home: &'static str,
    /// The package managers' caches.
    pub cache: &'static str,
}

impl SandboxSpec {
    /// Where the build sees `host` (a directory on the builder's disk): under the neutral path
    /// of the writable directory that holds it, or `host` itself without bubblewrap or outside
    /// every writable directory.
    pub fn inside(&self, host: &Path) -> PathBuf {
        // `join("")` would add a trailing slash.
        let under = |base: &Path, rest: &Path| match rest.as_os_str().is_empty() {
            true => base.to_owned(),
            false => base.join(rest),
        };
        if self.bwrap.is_none() {
            return host.to_owned();
        }
        if let Ok(rest) = host.strip_prefix(&self.tmp) {
            return under(Path::new("/tmp"), rest);
        }
        self.writable
            .iter()
            .find_map(|m| {
                let rest = host.strip_prefix(&m.host).ok()?;
                Some(under(&m.inside, rest))
            })
            .unwrap_or_else(|| host.to_owned())
    }
}

/// A build's network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Network {
    /// No network at all (bubblewrap's empty namespace).
    Off,
    /// The filtered namespace at this path, with the `resolv.conf` the build sees.
    Filtered {
        /// `/run/netns/<name>`.
        netns: PathBuf,
        /// A file naming the namespace's own DNS server.
        resolv_conf: PathBuf,
    },
    /// The builder's own network: only where no namespace can be made (no bubblewrap, e.g. a
    /// container that is itself the boundary).
    Host,
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
    if let Network::Filtered { netns, .. } = &spec.network {
        out.extend([s("nsenter"), format!("--net={}", netns.display()), s("--")]);
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
    let (exec_helper, env_file) = match &spec.bwrap {
        Some(bwrap) => {
            bwrap_args(spec, bwrap, cwd, &mut out);
            (s(SANDBOX_EXEC), s(SANDBOX_ENV))
        }
        None => (
            spec.exec_helper.display().to_string(),
            spec.env_file.display().to_string(),
        ),
    };
    out.extend([exec_helper, s(crate::confine::ARG), env_file]);
    out.push(match spec.run_as {
        Some((uid, gid)) => format!("{uid}:{gid}"),
        None => s("-"),
    });
    out.push(s("--"));
    out.extend(argv.iter().cloned());
    out
}

fn bwrap_args(spec: &SandboxSpec, bwrap: &Path, cwd: &Path, out: &mut Vec<String>) {
    let s = |v: &str| v.to_owned();
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
    if spec.network == Network::Off {
        out.push(s("--unshare-net"));
    }
    for dir in ["/usr", "/etc"] {
        out.extend([s("--ro-bind"), s(dir), s(dir)]);
    }
    if let Network::Filtered { resolv_conf, .. } = &spec.network {
        out.extend([
            s("--ro-bind"),
            resolv_conf.display().to_string(),
            s("/etc/resolv.conf"),
        ]);
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
        s("--ro-bind"),
        spec.exec_helper.display().to_string(),
        s(SANDBOX_EXEC),
        s("--ro-bind"),
        spec.env_file.display().to_string(),
        s(SANDBOX_ENV),
        s("--proc"),
        s("/proc"),
        s("--dev"),
        s("/dev"),
        s("--bind"),
        spec.tmp.display().to_string(),
        s("/tmp"),
    ]);
    // bwrap would create the parents of the writable directories private to root, which
    // the build user could not pass through.
    let mut parents: Vec<&Path> = spec
        .writable
        .iter()
        .chain(&spec.tools)
        .flat_map(|m| m.inside.ancestors().skip(1))
        .collect();
    parents.retain(|p| *p != Path::new("/") && !p.starts_with("/usr") && !p.starts_with("/etc"));
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
    for m in &spec.writable {
        out.extend([
            s("--bind"),
            m.host.display().to_string(),
            m.inside.display().to_string(),
        ]);
    }
    // After their parents were made passable (bwrap would make them root's only).
    for m in &spec.tools {
        out.extend([
            s("--ro-bind"),
            m.host.display().to_string(),
            m.inside.display().to_string(),
        ]);
    }
    out.extend([
        s("--chdir"),
        spec.inside(cwd).display().to_string(),
        s("--"),
    ]);
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
                kill_members(dir);
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                // Killed processes take a moment to leave the cgroup.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }

    /// Kills every process still in the cgroups (one that escaped the sandbox's process tree)
    /// and waits until they have left, keeping the cgroups.
    pub async fn kill_all(&self) {
        for dir in &self.dirs {
            for _ in 0..100 {
                if kill_members(dir) == 0 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Sends SIGKILL to every member of the cgroup at `dir`; returns how many there were.
fn kill_members(dir: &Path) -> usize {
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
    pids.len()
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
            network: Network::Filtered {
                netns: "/run/netns/gd-x".into(),
                resolv_conf: "/w/sandbox/resolv.conf".into(),
            },
            writable: vec![
                Mount {
                    host: "/w/src".into(),
                    inside: NEUTRAL.checkout.into(),
                },
                Mount {
                    host: "/w/home".into(),
                    inside: NEUTRAL.home.into(),
                },
            ],
            tmp: "/w/tmp".into(),
            read_only: vec![],
            tools: vec![Mount {
                host: "/cache/tools/node/22.1.0".into(),
                inside: "/build/tools/node".into(),
            }],
            cgroup_procs: vec!["/sys/fs/cgroup/pids/gitdeploy/x/cgroup.procs".into()],
            exec_helper: "/opt/gitdeploy".into(),
            env_file: "/w/sandbox/env".into(),
            limits: BuildLimits::default(),
        }
    }

    fn argv() -> Vec<String> {
        vec!["npm".into(), "ci".into()]
    }

    #[test]
    fn full_sandbox_layers_in_order() {
        let cmd = wrap(&spec(), &argv(), Path::new("/w/src/site"));
        let pos = |s: &str| {
            cmd.iter()
                .position(|a| a == s)
                .unwrap_or_else(|| panic!("{s} missing: {cmd:?}"))
        };
        assert_eq!(cmd[0], "/bin/sh");
        assert!(cmd[2].contains("echo $$ > '/sys/fs/cgroup/pids/gitdeploy/x/cgroup.procs'"));
        assert!(pos("nsenter") < pos("prlimit"));
        assert!(cmd.contains(&"--net=/run/netns/gd-x".to_owned()));
        assert!(pos("prlimit") < pos("/usr/bin/bwrap"));
        let helper = cmd.len() - 7;
        assert!(pos("/usr/bin/bwrap") < helper);
        assert_eq!(
            &cmd[helper..],
            [
                SANDBOX_EXEC,
                crate::confine::ARG,
                SANDBOX_ENV,
                "65534:65534",
                "--",
                "npm",
                "ci"
            ],
            "the builder's helper drops privileges and sets the environment last"
        );
        assert!(cmd.contains(&"--die-with-parent".to_owned()));
        assert!(
            !cmd.contains(&"--unshare-net".to_owned()),
            "the filtered namespace is entered instead"
        );
        assert!(cmd
            .windows(3)
            .any(|w| w == ["--ro-bind", "/w/sandbox/resolv.conf", "/etc/resolv.conf"]));
        assert!(cmd.windows(3).any(|w| w == ["--bind", "/w/tmp", "/tmp"]));
        assert!(
            !cmd.iter().any(|a| a.starts_with("--nproc")),
            "the pids cgroup caps processes"
        );
        let binds: Vec<_> = cmd
            .windows(2)
            .filter(|w| w[0] == "--bind")
            .map(|w| w[1].clone())
            .collect();
        assert_eq!(binds, ["/w/tmp", "/w/src", "/w/home"]);
        assert!(cmd
            .windows(3)
            .any(|w| w == ["--bind", "/w/src", "/build/repo"]));
        assert!(
            cmd.windows(2).any(|w| w == ["--chdir", "/build/repo/site"]),
            "the working directory is named by its neutral path"
        );
        assert!(
            !cmd.iter()
                .any(|a| a.starts_with("/w/") && a.contains("src/")),
            "no host path of the checkout reaches the build: {cmd:?}"
        );
        assert!(cmd.windows(3).any(|w| w == ["--ro-bind", "/usr", "/usr"]));
        let dirs: Vec<_> = cmd
            .windows(2)
            .filter(|w| w[0] == "--dir")
            .map(|w| w[1].clone())
            .collect();
        let tool = cmd
            .windows(3)
            .position(|w| w == ["--ro-bind", "/cache/tools/node/22.1.0", "/build/tools/node"])
            .expect("the tool is mounted");
        let last_dir = cmd.iter().rposition(|a| a == "--dir").unwrap();
        assert!(
            last_dir < tool,
            "a mount's parents are made passable before it"
        );
        assert_eq!(
            dirs,
            ["/build", "/build/tools"],
            "parents of the writable directories are made passable"
        );
        assert!(!cmd.iter().any(|a| a == "setpriv"));
    }

    #[test]
    fn host_paths_are_named_as_the_build_sees_them() {
        let with = spec();
        let mut without = spec();
        without.bwrap = None;
        for (host, inside_bwrap) in [
            ("/w/src", "/build/repo"),
            ("/w/src/packages/site", "/build/repo/packages/site"),
            ("/w/home/.npmrc", "/build/home/.npmrc"),
            ("/w/tmp/x", "/tmp/x"),
            ("/w/tmp", "/tmp"),
            ("/w/srcx", "/w/srcx"),
            ("/elsewhere", "/elsewhere"),
        ] {
            let shown = |p: PathBuf| p.display().to_string();
            assert_eq!(shown(with.inside(Path::new(host))), inside_bwrap, "{host}");
            assert_eq!(shown(without.inside(Path::new(host))), host, "{host}");
        }
    }

    #[test]
    fn degrades_to_what_is_available() {
        let mut s = spec();
        s.network = Network::Off;
        let cmd = wrap(&s, &argv(), Path::new("/w"));
        assert!(cmd.contains(&"--unshare-net".to_owned()));
        assert!(!cmd.iter().any(|a| a == "nsenter"));
        s.bwrap = None;
        s.run_as = None;
        s.network = Network::Host;
        s.cgroup_procs.clear();
        let cmd = wrap(&s, &argv(), Path::new("/w"));
        assert_eq!(cmd[0], "prlimit");
        assert!(cmd.iter().any(|a| a.starts_with("--nproc=")));
        assert_eq!(
            &cmd[cmd.len() - 7..],
            [
                "/opt/gitdeploy",
                crate::confine::ARG,
                "/w/sandbox/env",
                "-",
                "--",
                "npm",
                "ci"
            ]
        );
    }
}
