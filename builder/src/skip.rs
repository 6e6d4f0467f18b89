//! Skipping a push's build when nothing it depends on changed (monorepos). The commit of the
//! branch's last ready build (`BuildJob::previous_commit`) is fetched beside the shallow
//! checkout, `git diff --name-only` lists what changed since, and
//! [`gitdeploy_core::watch`] decides whether any of it lies under the root directory or the
//! watch paths. Whatever prevents the comparison (the commit is gone after a force-push, git
//! fails, it takes too long) builds, and the log says why.

use std::path::Path;
use std::time::Duration;

use gitdeploy_core::{watch, BuildJob};
use tokio::process::Command;

/// Longest wait for fetching the previous commit or listing the changes.
const GIT_TIMEOUT: Duration = Duration::from_secs(120);

/// What the comparison found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Build: the reason, for the log.
    Build(String),
    /// Skip: the reason, for the log and the deployment.
    Skip(String),
}

/// Compares `commit` (checked out in `src`) with the job's previous commit; `None` when the job
/// names none (an API deploy, a deploy hook, a branch's first build).
pub(crate) async fn decide(
    job: &BuildJob,
    src: &Path,
    git_env: &[(String, String)],
    commit: &str,
) -> Option<Decision> {
    let previous = job.previous_commit.as_deref()?;
    let short = |c: &str| c.chars().take(12).collect::<String>();
    if !is_object_id(previous) {
        return Some(Decision::Build(format!(
            "the previous commit {previous:?} is not a commit id: building"
        )));
    }
    let watched = describe(job.build.root_dir.as_deref(), &job.build.watch_paths);
    if previous == commit {
        return Some(Decision::Skip(format!(
            "commit {} is the one the last ready build was made from",
            short(commit)
        )));
    }
    let fetched = git(
        src,
        git_env,
        &[
            "fetch",
            "--depth",
            "1",
            "--no-tags",
            "--quiet",
            "origin",
            "--",
            previous,
        ],
    )
    .await;
    let listed = match fetched {
        Ok(_) => {
            git(
                src,
                git_env,
                &[
                    "diff",
                    "--name-only",
                    "-z",
                    "--no-renames",
                    "--no-ext-diff",
                    previous,
                    commit,
                    "--",
                ],
            )
            .await
        }
        Err(e) => Err(e),
    };
    let changed = match listed {
        Ok(out) => changed_paths(&out),
        Err(e) => {
            return Some(Decision::Build(format!(
                "cannot compare with the last ready build's commit {} ({e}): building",
                short(previous)
            )))
        }
    };
    Some(
        match watch::first_affecting(
            &changed,
            job.build.root_dir.as_deref(),
            &job.build.watch_paths,
        ) {
            Some(path) => Decision::Build(format!(
                "{path} changed since {} ({} {} changed; watching {watched})",
                short(previous),
                changed.len(),
                if changed.len() == 1 { "file" } else { "files" },
            )),
            None => Decision::Skip(format!(
                "nothing under {watched} changed since {} ({} other {} changed)",
                short(previous),
                changed.len(),
                if changed.len() == 1 { "file" } else { "files" },
            )),
        },
    )
}

/// The watched paths, in words: `web/ and shared/, except web/README.md`.
fn describe(root_dir: Option<&str>, patterns: &[String]) -> String {
    let mut includes: Vec<String> = root_dir
        .map(|r| format!("{}/", r.trim_end_matches('/')))
        .into_iter()
        .collect();
    includes.extend(patterns.iter().filter(|p| !p.starts_with('!')).cloned());
    let excludes: Vec<&str> = patterns
        .iter()
        .filter_map(|p| p.strip_prefix('!'))
        .collect();
    let mut text = if includes.is_empty() {
        "the repository".to_owned()
    } else {
        includes.join(" and ")
    };
    if !excludes.is_empty() {
        text.push_str(", except ");
        text.push_str(&excludes.join(" and "));
    }
    text
}

/// A full SHA-1 or SHA-256 object id in lowercase hex.
fn is_object_id(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The paths of `git diff --name-only -z`.
fn changed_paths(out: &[u8]) -> Vec<String> {
    out.split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}

/// Runs git in `src`; its stdout, or the last line of its stderr.
async fn git(src: &Path, env: &[(String, String)], args: &[&str]) -> Result<Vec<u8>, String> {
    let run = Command::new("git")
        .args(args)
        .current_dir(src)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(GIT_TIMEOUT, run)
        .await
        .map_err(|_| format!("git {} took over {} s", args[0], GIT_TIMEOUT.as_secs()))?
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        return Err(format!(
            "git {} failed: {}",
            args[0],
            last.unwrap_or("no message")
        ));
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watched_paths_in_words() {
        let v = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(describe(None, &[]), "the repository");
        assert_eq!(describe(Some("web/"), &[]), "web/");
        assert_eq!(
            describe(Some("web"), &v(&["shared/", "!web/README.md"])),
            "web/ and shared/, except web/README.md"
        );
        assert_eq!(
            describe(None, &v(&["!docs"])),
            "the repository, except docs"
        );
    }

    #[test]
    fn object_ids_and_diff_output() {
        assert!(is_object_id(&"a".repeat(40)));
        assert!(is_object_id(&"0".repeat(64)));
        for bad in [
            "",
            "abc",
            &"A".repeat(40),
            &"g".repeat(40),
            "--upload-pack=x",
        ] {
            assert!(!is_object_id(bad), "{bad}");
        }
        assert_eq!(
            changed_paths(b"web/a.ts\0shared/b c.ts\0"),
            ["web/a.ts", "shared/b c.ts"]
        );
        assert!(changed_paths(b"").is_empty());
    }
}
