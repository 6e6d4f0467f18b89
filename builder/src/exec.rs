//! Runs one command of the build with a scrubbed environment and a deadline, and streams its
//! stdout and stderr to the log line by line, as the lines appear.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use gitdeploy_core::job::env;
use gitdeploy_core::LogStream;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::time::Instant;

use crate::events::{Emitter, MAX_LINE};
use crate::lines::LineAssembler;

/// Environment a build command starts from: nothing of the builder's own environment except
/// `PATH` and the machine's trust and proxy settings ([`env::INHERITED`]), so storage credentials and
/// runner settings never reach repository code.
pub fn scrubbed_env(home: &Path, cache_dir: &Path) -> Vec<(String, String)> {
    let var = |k: &str, v: String| (k.to_owned(), v);
    let inherited = env::INHERITED
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| var(k, v)));
    inherited
        .chain([
            var(
                "PATH",
                std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
            ),
            var("HOME", home.display().to_string()),
            var("LANG", "C.UTF-8".into()),
            var("CI", "true".into()),
            var("GIT_TERMINAL_PROMPT", "0".into()),
            var("npm_config_update_notifier", "false".into()),
            var("npm_config_fund", "false".into()),
            var("npm_config_audit", "false".into()),
            var(
                "npm_config_cache",
                cache_dir.join("npm").display().to_string(),
            ),
            var(
                "YARN_CACHE_FOLDER",
                cache_dir.join("yarn").display().to_string(),
            ),
            // pnpm keeps its store under XDG_DATA_HOME, other tools their caches under XDG_CACHE_HOME.
            var(
                "XDG_DATA_HOME",
                cache_dir.join("data").display().to_string(),
            ),
            var(
                "XDG_CACHE_HOME",
                cache_dir.join("xdg").display().to_string(),
            ),
            var(
                "COREPACK_HOME",
                cache_dir.join("corepack").display().to_string(),
            ),
            var("COREPACK_ENABLE_DOWNLOAD_PROMPT", "0".into()),
            var("PIP_CACHE_DIR", cache_dir.join("pip").display().to_string()),
            var(
                "BUN_INSTALL_CACHE_DIR",
                cache_dir.join("bun").display().to_string(),
            ),
            // Bun (and other tools that honour it) send no telemetry.
            var("DO_NOT_TRACK", "1".into()),
            var("PIP_DISABLE_PIP_VERSION_CHECK", "1".into()),
            var("COREPACK_INTEGRITY_KEYS", "0".into()),
        ])
        .collect()
}

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Killed,
    /// It ran past the deadline and was killed.
    TimedOut,
}

/// Runs `argv` in `cwd` with exactly `env`, logging every output line, killing it at `deadline`.
pub async fn run(
    emitter: &Emitter,
    argv: &[String],
    cwd: &Path,
    env: &[(String, String)],
    deadline: Instant,
) -> std::io::Result<Exit> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| std::io::Error::other("empty command"))?;
    let mut child = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .map(|s| pump(emitter.clone(), s, LogStream::Stdout));
    let stderr = child
        .stderr
        .take()
        .map(|s| pump(emitter.clone(), s, LogStream::Stderr));
    let exit = match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(status) => match status?.code() {
            Some(code) => Exit::Code(code),
            None => Exit::Killed,
        },
        Err(_) => {
            // Killing the sandbox kills everything in it (it dies with its parent).
            let _ = child.start_kill();
            let _ = child.wait().await;
            Exit::TimedOut
        }
    };
    // The readers end when every holder of the pipes has exited; a process that escaped the
    // sandbox and keeps them open must not hold the build up (its cgroup is killed after).
    for reader in [stdout, stderr].into_iter().flatten() {
        let abort = reader.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    Ok(exit)
}

fn pump(
    emitter: Emitter,
    mut source: impl AsyncRead + Unpin + Send + 'static,
    stream: LogStream,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = LineAssembler::new(MAX_LINE, emitter.redactor().clone());
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match source.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    for line in lines.push(&buf[..n]) {
                        emitter.line(stream, &line);
                    }
                }
            }
        }
        if let Some(line) = lines.finish() {
            emitter.line(stream, &line);
        }
    })
}
