//! How much a running build has written, and the watch that stops it at its disk limit.
//!
//! Every directory a build can write (checkout, home, package cache, `/tmp`) lives on the work
//! directory's disk, so the build's footprint is the allocated size of those trees. Per-file
//! size is capped by `RLIMIT_FSIZE` already; this caps the sum. The trees are measured once a
//! second while a command runs: between two looks a build can overshoot by what it writes in a
//! second, which the limit's margin below the disk's size has to cover. A filesystem quota or a
//! loop-mounted image would be exact, but neither exists in a container such as an ECS task.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

/// How often the trees are measured while a command runs.
const INTERVAL: Duration = Duration::from_secs(1);

/// Bytes allocated on disk by everything under `roots` (hard links counted once, symlinks not
/// followed). Unreadable entries are skipped: the build cannot hide bytes from root that way,
/// and as another user it cannot make a directory root cannot read.
pub fn usage(roots: &[PathBuf]) -> u64 {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut stack: Vec<PathBuf> = roots.to_vec();
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        total = total.saturating_add(meta.blocks().saturating_mul(512));
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

/// Resolves with the measured usage once `roots` hold more than `limit` bytes; never otherwise.
pub async fn exceeded(roots: Vec<PathBuf>, limit: u64) -> u64 {
    let mut tick = tokio::time::interval(INTERVAL);
    loop {
        tick.tick().await;
        let roots = roots.clone();
        let used = tokio::task::spawn_blocking(move || usage(&roots))
            .await
            .unwrap_or(0);
        if used > limit {
            return used;
        }
    }
}

/// `1.4 GB`-style size for messages.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["bytes", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_allocated_bytes_once_per_inode() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, vec![1u8; 200_000]).unwrap();
        std::fs::hard_link(&a, dir.path().join("b")).unwrap();
        std::os::unix::fs::symlink("/usr", dir.path().join("link")).unwrap();
        let used = usage(&[dir.path().to_owned()]);
        assert!((200_000..400_000).contains(&used), "{used}");
        let twice = usage(&[dir.path().to_owned(), dir.path().to_owned()]);
        assert_eq!(twice, used, "a tree named twice counts once");
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human(512), "512 bytes");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
