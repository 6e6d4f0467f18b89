//! The sandbox of one build, made ready before the first command runs: its directories handed
//! to the unprivileged build user, its filtered network started, and the layers that hold told
//! in the build log. The sandbox itself (bubblewrap, cgroups, limits) is `sandbox.rs`.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use gitdeploy_core::job::BuildJob;

use crate::events::Emitter;
use crate::failure::Failure;
use crate::network::{self, FilteredNetwork};
use crate::sandbox::{self, Cgroups, Mount, Network, SandboxSpec};

/// The unprivileged user builds run as when the builder is root (`nobody`).
const BUILD_UID: u32 = 65534;
const BUILD_GID: u32 = 65534;

/// The directories a sandbox is made of.
pub(crate) struct SandboxDirs {
    /// Checkout, home and package cache.
    pub(crate) writable: Vec<Mount>,
    /// What the build sees as `/tmp`.
    pub(crate) tmp: PathBuf,
    /// The builder's own: the build's environment file and `resolv.conf`.
    pub(crate) private: PathBuf,
}

/// The name of a build's network namespace.
pub(crate) fn netns_name(deployment: &str) -> String {
    format!("gd-{deployment}")
}

/// Hands the sandbox's directories to the build user, starts its filtered network, and says
/// which layers hold.
pub(crate) async fn prepare_sandbox(
    job: &BuildJob,
    emitter: &Emitter,
    cgroups: &Cgroups,
    notes: Vec<String>,
    dirs: &SandboxDirs,
) -> Result<(SandboxSpec, Option<FilteredNetwork>), Failure> {
    let bwrap = sandbox::probe_bwrap().await;
    let is_root = nix::unistd::Uid::effective().is_root();
    let run_as = is_root.then_some((BUILD_UID, BUILD_GID));
    if let Some((uid, gid)) = run_as {
        for dir in dirs.writable.iter().map(|m| &m.host).chain([&dirs.tmp]) {
            sandbox::chown_tree(dir, uid, gid).map_err(|e| {
                Failure::Internal(format!(
                    "cannot hand {} to the build user: {e}",
                    dir.display()
                ))
            })?;
        }
    }
    let wants_network = job.build.network.unwrap_or(true);
    let (network, filtered) = match (wants_network, &bwrap) {
        (false, Some(_)) => (Network::Off, None),
        (false, None) => {
            return Err(Failure::Internal(
                "network off needs bubblewrap, which is not available".into(),
            ))
        }
        (true, Some(_)) if is_root => {
            let filtered = FilteredNetwork::start(
                &netns_name(job.deployment.as_str()),
                &job.limits.allowed_networks,
            )
            .await
            .map_err(Failure::Internal)?;
            let resolv_conf = dirs.private.join("resolv.conf");
            write_private(&resolv_conf, network::resolv_conf().as_bytes())?;
            set_mode(&resolv_conf, 0o644)?;
            let netns = filtered.path();
            (Network::Filtered { netns, resolv_conf }, Some(filtered))
        }
        (true, _) => (Network::Host, None),
    };
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
    layers.push(match network {
        Network::Off => "network off",
        Network::Filtered { .. } => {
            "network on (internet only: no host, private or link-local addresses)"
        }
        Network::Host => "network on, not filtered (needs bubblewrap and root)",
    });
    emitter.system(&format!("Sandbox: {}", layers.join(", ")));
    if matches!(network, Network::Filtered { .. }) && !job.limits.allowed_networks.is_empty() {
        emitter.system(&format!(
            "Sandbox: private networks allowed by the platform: {}",
            job.limits.allowed_networks.join(", ")
        ));
    }
    for note in notes {
        emitter.system(&format!("Sandbox: {note}"));
    }
    let exec_helper = std::env::current_exe()
        .map_err(|e| Failure::Internal(format!("cannot find the builder's executable: {e}")))?;
    Ok((
        SandboxSpec {
            bwrap,
            run_as,
            network,
            writable: dirs.writable.clone(),
            tmp: dirs.tmp.clone(),
            read_only: sandbox::toolchain_dirs(),
            tools: Vec::new(),
            cgroup_procs: cgroups.procs_files(),
            exec_helper,
            env_file: dirs.private.join("env"),
            limits: job.limits.clone(),
        },
        filtered,
    ))
}

/// Writes a file only the builder's user can read (created afresh, never through a link).
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> Result<(), Failure> {
    use std::io::Write;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(contents))
        .map_err(|e| Failure::Internal(format!("cannot write {}: {e}", path.display())))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), Failure> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Failure::Internal(format!("cannot set the mode of {}: {e}", path.display())))
}
