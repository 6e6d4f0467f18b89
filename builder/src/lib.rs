//! One GitDeploy build job: clone → detect → install → build → collect → upload → manifest.
//!
//! The builder reads its job from the environment (the same variables for the local runner and an
//! ECS container override), reports progress as NDJSON [`BuilderEvent`]s on stdout and exits with
//! an [`ExitCode`]-style status. The user's commands run with a scrubbed environment: the storage
//! credentials the builder holds never reach them.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod build_cache;
pub mod collect;
mod compress;
mod config;
mod confine;
mod detect;
mod disk;
mod events;
mod exec;
mod failure;
mod lines;
mod network;
mod node_version;
mod prepare;
pub mod publish;
mod remote_cache;
mod sandbox;
mod skip;
pub mod source_archive;
mod steps;
pub mod storage;
mod tool_fetch;
mod uploaded_source;

pub use config::BuilderConfig;
pub use confine::run_if_asked as confine_if_asked;

/// Exit status: the site was published.
pub const EXIT_READY: i32 = 0;
/// Exit status: the build failed for a reason in the repository (clone, install, build, output).
pub const EXIT_BUILD_FAILED: i32 = 1;
/// Exit status: the builder could not do its job (bad job description, storage unreachable).
pub const EXIT_INTERNAL: i32 = 2;

use gitdeploy_core::BuilderEvent;

/// Kills what is left of a build named `deployment` (a builder killed by its runner cannot clean
/// up) and removes its cgroups.
pub async fn clean_up_after_kill(deployment: &str) {
    sandbox::Cgroups::leftovers(deployment).remove().await;
    let _ = network::FilteredNetwork::remove(&prepare::netns_name(deployment));
}

/// Makes this process undumpable: its memory and `/proc/<pid>/environ` (which hold storage
/// credentials) can then not be read through /proc or ptrace by another process of the same
/// user, such as a build's command where no other uid is available.
pub fn make_undumpable() {
    let _ = nix::sys::prctl::set_dumpable(false);
}

/// Runs the job described by the environment and returns the process exit status.
pub async fn run_from_env() -> i32 {
    make_undumpable();
    let emitter = events::Emitter::stdout();
    let config = match BuilderConfig::from_env() {
        Ok(c) => c,
        Err(e) => {
            emitter.system(&format!("builder misconfigured: {e}"));
            emitter.event(&BuilderEvent::Failed {
                error: format!("builder misconfigured: {e}"),
                exit_code: None,
            });
            return EXIT_INTERNAL;
        }
    };
    let deployment = config.job.deployment.to_string();
    tokio::select! {
        code = steps::run(&config, &emitter) => code,
        () = stop_when_orphaned(&deployment) => EXIT_INTERNAL,
    }
}

/// A builder whose runner died (its parent process changed) stops: the sandbox is torn down and
/// the builder's process group killed, so nothing goes on publishing into a deployment the
/// platform has already failed. Builders run as PID 1 (a container) or not as their own group
/// leader are not watched.
async fn stop_when_orphaned(deployment: &str) {
    use nix::unistd::{getpgrp, getpid};
    let parent = std::os::unix::process::parent_id();
    if parent <= 1 || getpgrp() != getpid() {
        return std::future::pending().await;
    }
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    while std::os::unix::process::parent_id() == parent {
        tick.tick().await;
    }
    clean_up_after_kill(deployment).await;
    let _ = nix::sys::signal::killpg(getpgrp(), nix::sys::signal::Signal::SIGKILL);
}
