//! What the bench reads of this machine and its processes: CPU time from `/proc/<pid>/stat`,
//! a server's worker processes, total memory and the peers' versions for the report header.

use std::process::Command;

/// The fields of `/proc/<pid>/stat` after the command name (which is in parentheses and may
/// contain spaces): index 0 is the state, 1 the parent, 11 and 12 user and system time.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// CPU time (user + system, all threads) of `pids` in clock ticks; `None` if one has gone.
pub fn cpu_ticks(pids: &[u32]) -> Option<u64> {
    let mut total = 0;
    for pid in pids {
        let fields = stat_fields(*pid)?;
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        total += utime + stime;
    }
    Some(total)
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
pub fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// `pid` and its direct children (nginx's workers).
pub fn with_children(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let parent = stat_fields(child).and_then(|f| f.get(1)?.parse::<u32>().ok());
            if parent == Some(pid) {
                pids.push(child);
            }
        }
    }
    pids
}

/// Total memory, for the report header.
pub fn memory_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| format!("{} GiB RAM", kib / 1024 / 1024))
        .unwrap_or_else(|| "unknown RAM".into())
}

/// Versions of the peers, for the report header.
pub fn versions() -> String {
    let first_line = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .output()
            .ok()
            .map(|o| {
                let text = if o.stdout.is_empty() {
                    o.stderr
                } else {
                    o.stdout
                };
                String::from_utf8_lossy(&text)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            })
            .unwrap_or_default()
    };
    format!(
        "gitdeploy {}; {}; {}",
        env!("CARGO_PKG_VERSION"),
        first_line("nginx", "-v"),
        first_line("wrk", "--version")
            .split(" Copyright")
            .next()
            .unwrap_or("")
    )
}
