//! For the tests of `deploy/`: where it is, the pinned PyPI tools, and running a checker there.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's `deploy/` directory.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// A test tool from PyPI at the version `scripts/prereqs --test` pins, in the project's own
/// virtualenv (never whatever version the machine happens to carry).
pub fn test_tool(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.tools/venv/bin")
        .join(name)
        .display()
        .to_string()
}

/// Runs `program` in `deploy/`; its output, which the failure shows when it does not succeed.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(deploy_dir())
        .output()
        .unwrap_or_else(|e| panic!("{program} (scripts/prereqs --test installs it): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?}:\n{text}");
    text
}
