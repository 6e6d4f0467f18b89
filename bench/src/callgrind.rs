//! `bench callgrind`: instructions per request, counted by callgrind rather than timed, for the
//! hot path's two cases (#18): a revalidation answered `304` and a 10 KiB file from the object
//! cache. Counts repeat to within a fraction of a percent from run to run, so a change that
//! saves a few hundred instructions per request shows, where requests/s on this shared machine
//! would hide it.
//!
//! Method: the release edge runs under `valgrind --tool=callgrind`, serving a deployment from the
//! shared S3 server (a native edge deployed it); for each case, 200 warm-up requests on one
//! kept-alive connection (`h2load --h1 -c 1`), `callgrind_control --zero`, exactly `REQUESTS`
//! more, `callgrind_control --dump`, and `callgrind_annotate` on that dump. Totals cover every
//! thread of the process. The tables list where the instructions sit: inclusive per proxy phase,
//! and the functions with the most instructions of their own.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use gitdeploy_harness::{S3Server, Up, S3_KEY};

/// Requests counted per case.
pub const REQUESTS: u64 = 2_000;
/// Warm-up requests before counting.
const WARM_UP: u64 = 200;

/// One case: a path and the extra request headers.
pub struct Case {
    /// What the table calls it.
    pub name: &'static str,
    /// The path requested.
    pub path: String,
    /// Extra headers, `name: value`.
    pub headers: Vec<String>,
}

/// What one case counted.
pub struct Counted {
    name: String,
    per_request: u64,
    /// Proxy phases, inclusive, per request.
    phases: Vec<(String, u64)>,
    /// Functions by their own instructions, per request.
    own: Vec<(String, u64)>,
}

/// Runs every case against the edge `gitdeploy` under callgrind, serving `host` from `s3`.
pub async fn measure(
    gitdeploy: &Path,
    s3: &S3Server,
    host: &str,
    cases: &[Case],
    keep: Option<&Path>,
) -> anyhow::Result<Vec<Counted>> {
    let dir = tempfile::tempdir()?;
    let wrapper = under_callgrind(dir.path(), gitdeploy)?;
    let data = dir.path().join("data");
    let up = Up::new(&wrapper, &data)
        .flags(&["--s3-endpoint", &s3.endpoint])
        .env("AWS_ACCESS_KEY_ID", S3_KEY.0)
        .env("AWS_SECRET_ACCESS_KEY", S3_KEY.1)
        .log_filter("error");
    let (process, _) = up.start().await;
    let counted = count_cases(dir.path(), process.pid(), up.port, host, cases, "", keep);
    drop(process);
    counted
}

/// Runs every case against the ceiling responder (`pingora-ceiling` in `mode`, serving
/// `root`) under callgrind; the case names get `suffix`.
pub fn measure_ceiling(
    ceiling: &Path,
    root: &Path,
    mode: &str,
    cases: &[Case],
    suffix: &'static str,
    keep: Option<&Path>,
) -> anyhow::Result<Vec<Counted>> {
    let dir = tempfile::tempdir()?;
    let wrapper = under_callgrind(dir.path(), ceiling)?;
    let port = gitdeploy_harness::free_port();
    let mut process = gitdeploy_harness::Process::spawn(
        Command::new(&wrapper)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--root")
            .arg(root)
            .args(["--mode", mode])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
        "pingora-ceiling under callgrind",
    );
    gitdeploy_harness::wait_for_port(([127, 0, 0, 1], port).into(), &mut process, "ceiling");
    let counted = count_cases(
        dir.path(),
        process.pid(),
        port,
        "localhost",
        cases,
        suffix,
        keep,
    );
    drop(process);
    counted
}

/// A script that starts `binary` under callgrind, its dumps in `dir`.
fn under_callgrind(dir: &Path, binary: &Path) -> anyhow::Result<PathBuf> {
    for tool in [
        "valgrind",
        "callgrind_control",
        "callgrind_annotate",
        "h2load",
    ] {
        which(tool)?;
    }
    let wrapper = dir.join("under-callgrind");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file={}/callgrind.out.%p {} \"$@\"\n",
            dir.display(),
            binary.display()
        ),
    )?;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    Ok(wrapper)
}

/// Counts each case on the server `pid` listening on `port`, whose dumps go to `dir`; with
/// `keep`, each dump is moved there as `<case><suffix>.callgrind` instead of deleted.
fn count_cases(
    dir: &Path,
    pid: u32,
    port: u16,
    host: &str,
    cases: &[Case],
    suffix: &'static str,
    keep: Option<&Path>,
) -> anyhow::Result<Vec<Counted>> {
    let pid = pid.to_string();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let mut out = Vec::new();
    for case in cases {
        let load = |n: u64| -> anyhow::Result<()> {
            let mut cmd = Command::new("h2load");
            cmd.args(["--h1", "-c", "1", "-n", &n.to_string()])
                .args(["-H", &format!(":authority: {host}")]);
            for h in &case.headers {
                cmd.args(["-H", h]);
            }
            let text = run(cmd.arg(url(&case.path)))?;
            anyhow::ensure!(
                text.contains(&format!("{n} succeeded")),
                "h2load did not complete {n} requests: {text}"
            );
            Ok(())
        };
        load(WARM_UP)?;
        run(Command::new("callgrind_control").args(["--zero", &pid]))?;
        load(REQUESTS)?;
        run(Command::new("callgrind_control").args(["--dump", &pid]))?;
        let dump = newest_dump(dir)?;
        let inclusive = annotate(&dump, true)?;
        let own = annotate(&dump, false)?;
        let total = inclusive
            .iter()
            .find(|(name, _)| name == "PROGRAM TOTALS")
            .map(|(_, n)| *n)
            .context("no program totals")?;
        let per = |n: u64| n / REQUESTS;
        out.push(Counted {
            name: format!("{}{suffix}", case.name),
            per_request: per(total),
            phases: inclusive
                .iter()
                .filter(|(name, _)| {
                    name.contains("SitesProxy as pingora_proxy::proxy_trait::ProxyHttp>::")
                })
                .map(|(name, n)| (short(name), per(*n)))
                .collect(),
            // Thread entries and the runtime's loop stay on the stack through a dump and are
            // listed with (nearly) the total as their own cost: not a function's work.
            own: own
                .iter()
                .filter(|(name, n)| name != "PROGRAM TOTALS" && *n < total / 10 * 9)
                .take(15)
                .map(|(name, n)| (short(name), per(*n)))
                .collect(),
        });
        match keep {
            Some(folder) => {
                std::fs::create_dir_all(folder)?;
                let name: String = format!("{}{suffix}", case.name)
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                    .collect();
                std::fs::copy(&dump, folder.join(format!("{name}.callgrind")))?;
                std::fs::remove_file(&dump)?;
            }
            None => std::fs::remove_file(&dump)?,
        }
    }
    Ok(out)
}

fn which(tool: &str) -> anyhow::Result<()> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()?
        .status
        .success();
    anyhow::ensure!(
        found,
        "{tool} is missing: apt-get install valgrind nghttp2-client"
    );
    Ok(())
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(out.status.success(), "{cmd:?}: {text}");
    Ok(text)
}

/// The dump `callgrind_control --dump` just wrote (`callgrind.out.<pid>.<n>`).
fn newest_dump(dir: &Path) -> anyhow::Result<PathBuf> {
    let mut dumps: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("callgrind.out.") && n.matches('.').count() == 3)
        })
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    dumps.sort();
    dumps
        .pop()
        .map(|(_, p)| p)
        .context("callgrind wrote no dump")
}

/// `callgrind_annotate`'s lines as (function, instructions), most first.
fn annotate(dump: &Path, inclusive: bool) -> anyhow::Result<Vec<(String, u64)>> {
    let text = run(Command::new("callgrind_annotate")
        .arg(format!(
            "--inclusive={}",
            if inclusive { "yes" } else { "no" }
        ))
        .args(["--threshold=100", "--auto=no"])
        .arg(dump))?;
    Ok(text.lines().filter_map(parse_line).collect())
}

/// `  68,956,287 (33.51%)  ???:name [binary]` → (`name`, 68956287).
fn parse_line(line: &str) -> Option<(String, u64)> {
    let line = line.trim();
    let (count, rest) = line.split_once(' ')?;
    let count: u64 = count.replace(',', "").parse().ok()?;
    let rest = rest.trim_start();
    let rest = rest.strip_prefix('(')?.split_once(')')?.1.trim();
    let name = rest.strip_prefix("???:").unwrap_or(rest);
    let name = match name.rfind(" [") {
        Some(i) => &name[..i],
        None => name,
    };
    Some((name.to_owned(), count))
}

/// A readable function name: without crate paths of trait impls' closures.
fn short(name: &str) -> String {
    name.replace(
        "<gitdeploy::sites::SitesProxy as pingora_proxy::proxy_trait::ProxyHttp>::",
        "SitesProxy::",
    )
    .replace("::{{closure}}", "")
}

/// The tables.
pub fn render(rows: &[Counted]) -> anyhow::Result<String> {
    let mut out = String::new();
    writeln!(
        out,
        "\n## Instructions per request (callgrind)\n\n{REQUESTS} requests per case on one kept-alive \
         connection after {WARM_UP} to warm; every thread of the edge counted.\n"
    )?;
    writeln!(out, "| case | instructions / request |")?;
    writeln!(out, "|---|---:|")?;
    for r in rows {
        writeln!(out, "| {} | {} |", r.name, r.per_request)?;
    }
    for r in rows {
        if !r.phases.is_empty() {
            writeln!(out, "\n### {}: proxy phases (inclusive)\n", r.name)?;
            writeln!(out, "| phase | instructions / request |\n|---|---:|")?;
            for (name, n) in &r.phases {
                writeln!(out, "| `{name}` | {n} |")?;
            }
        }
        writeln!(
            out,
            "\n### {}: functions by their own instructions\n",
            r.name
        )?;
        writeln!(out, "| function | instructions / request |\n|---|---:|")?;
        for (name, n) in &r.own {
            writeln!(out, "| `{}` | {n} |", name.replace('|', "\\|"))?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::parse_line;

    #[test]
    fn annotate_lines() {
        assert_eq!(
            parse_line("205,754,693 (100.0%)  PROGRAM TOTALS"),
            Some(("PROGRAM TOTALS".into(), 205_754_693))
        );
        assert_eq!(
            parse_line(" 6,688,000 ( 3.25%)  ???:gitdeploy::request_info::host [/x/gitdeploy]"),
            Some(("gitdeploy::request_info::host".into(), 6_688_000))
        );
        assert_eq!(parse_line("Profile data file 'x'"), None);
        assert_eq!(parse_line("--------"), None);
    }
}
