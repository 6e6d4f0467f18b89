//! Runs one command of the build with a scrubbed environment and streams its stdout and stderr
//! to the log line by line, as the lines appear.

use std::path::Path;
use std::process::Stdio;

use gitdeploy_core::LogStream;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

use crate::events::Emitter;

/// Environment a build command starts from: nothing of the builder's own environment except
/// `PATH`, so storage credentials and runner settings never reach repository code.
pub fn scrubbed_env(home: &Path, cache_dir: Option<&Path>) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "PATH".to_owned(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        ),
        ("HOME".to_owned(), home.display().to_string()),
        ("LANG".to_owned(), "C.UTF-8".to_owned()),
        ("CI".to_owned(), "true".to_owned()),
        ("GIT_TERMINAL_PROMPT".to_owned(), "0".to_owned()),
        ("npm_config_update_notifier".to_owned(), "false".to_owned()),
        ("npm_config_fund".to_owned(), "false".to_owned()),
        ("npm_config_audit".to_owned(), "false".to_owned()),
    ];
    if let Some(cache) = cache_dir {
        env.push((
            "npm_config_cache".to_owned(),
            cache.join("npm").display().to_string(),
        ));
    }
    env
}

/// Runs `argv` in `cwd` with exactly `env`, logging every output line. Returns the exit code
/// (`None` when killed by a signal) or a spawn error.
pub async fn run(
    emitter: &Emitter,
    argv: &[String],
    cwd: &Path,
    env: &[(String, String)],
) -> std::io::Result<Option<i32>> {
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
    let status = child.wait().await?;
    // The readers end when every holder of the pipes (grandchildren too) has exited or closed them.
    for reader in [stdout, stderr].into_iter().flatten() {
        let _ = reader.await;
    }
    Ok(status.code())
}

fn pump(
    emitter: Emitter,
    source: impl AsyncRead + Unpin + Send + 'static,
    stream: LogStream,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(source);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf);
                    emitter.line(stream, text.trim_end_matches(['\n', '\r']));
                }
            }
        }
    })
}
