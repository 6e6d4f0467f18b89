//! The sandbox's last wrapper: the builder's own executable, started as
//! `<exe> __gitdeploy-confine <env-file> <uid:gid|-> -- <command...>` inside every other layer.
//!
//! It is the only process that holds the build's environment before the command does: it reads
//! the environment from a file (never from its own environment or command line, which other
//! processes can see), drops to the build user (no groups, no capabilities, no new privileges),
//! and executes the command with exactly that environment. So `LD_PRELOAD` and friends, even
//! where they slip past validation, act on the user's own command only, never on a process that
//! is root or outside the namespaces.
//!
//! Both binaries that run builds (`gitdeploy` and `gitdeploy-builder`) call [`run_if_asked`]
//! before anything else.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;

/// The first argument that turns the executable into this wrapper.
pub const ARG: &str = "__gitdeploy-confine";

/// Exit status when the wrapper itself fails (as a shell does for a command it cannot run).
const EXIT_CANNOT_RUN: i32 = 126;

/// Names that change how programs are loaded or how shells start: refused in a build's
/// environment (`gitdeploy_core` refuses them in requests; this is the builder's own check for
/// settings stored before that rule).
pub fn is_loader_variable(name: &str) -> bool {
    gitdeploy_core::job::is_loader_variable(name)
}

/// Encodes an environment for the wrapper: `NAME=value` entries separated by NUL.
pub fn encode_env(env: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in env {
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Decodes [`encode_env`]'s output; the last value of a name wins.
pub fn decode_env(bytes: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for entry in bytes.split(|b| *b == 0).filter(|e| !e.is_empty()) {
        let text = std::str::from_utf8(entry).map_err(|_| "an entry is not UTF-8".to_owned())?;
        let (k, v) = text
            .split_once('=')
            .ok_or_else(|| "an entry has no '='".to_owned())?;
        if k.is_empty() {
            return Err("an entry has an empty name".into());
        }
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

/// Parses `uid:gid` or `-` (stay as is).
fn parse_identity(text: &str) -> Result<Option<(u32, u32)>, String> {
    if text == "-" {
        return Ok(None);
    }
    let (u, g) = text
        .split_once(':')
        .ok_or_else(|| format!("bad identity {text:?}"))?;
    let parse = |v: &str| {
        v.parse::<u32>()
            .map_err(|_| format!("bad identity {text:?}"))
    };
    Ok(Some((parse(u)?, parse(g)?)))
}

/// When this process was started as the wrapper, becomes the command (or exits with 126);
/// otherwise returns at once.
pub fn run_if_asked() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_none_or(|a| a != ARG) {
        return;
    }
    let err = confine_and_exec(&args[2..]);
    eprintln!("sandbox: {err}");
    std::process::exit(EXIT_CANNOT_RUN);
}

fn confine_and_exec(args: &[std::ffi::OsString]) -> String {
    let [env_file, identity, dashes, command @ ..] = args else {
        return "usage: __gitdeploy-confine ENV_FILE UID:GID|- -- COMMAND...".into();
    };
    if dashes != "--" || command.is_empty() {
        return "usage: __gitdeploy-confine ENV_FILE UID:GID|- -- COMMAND...".into();
    }
    let env = match std::fs::read(env_file)
        .map_err(|e| format!("cannot read the build environment: {e}"))
        .and_then(|b| decode_env(&b))
    {
        Ok(env) => env,
        Err(e) => return e,
    };
    let identity = match parse_identity(&identity.to_string_lossy()) {
        Ok(i) => i,
        Err(e) => return e,
    };
    if let Some((uid, gid)) = identity {
        use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
        let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
        if let Err(e) = setgroups(&[])
            .and_then(|_| setresgid(gid, gid, gid))
            .and_then(|_| setresuid(uid, uid, uid))
        {
            return format!("cannot drop to the build user: {e}");
        }
        // Leaving uid 0 clears every capability; check that nothing is left.
        if nix::unistd::geteuid().is_root() || nix::unistd::getuid().is_root() {
            return "still root after dropping privileges".into();
        }
    }
    if let Err(e) = nix::sys::prctl::set_no_new_privs() {
        return format!("cannot set no-new-privileges: {e}");
    }
    let err = std::process::Command::new(&command[0])
        .args(&command[1..])
        .env_clear()
        .envs(&env)
        .exec();
    format!("cannot run {}: {err}", command[0].to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_round_trips_through_the_file_format() {
        let env = vec![
            ("A".to_owned(), "1".to_owned()),
            ("MULTI".to_owned(), "line one\nline two = x".to_owned()),
            ("EMPTY".to_owned(), String::new()),
            ("A".to_owned(), "2".to_owned()),
        ];
        let decoded = decode_env(&encode_env(&env)).unwrap();
        assert_eq!(decoded["A"], "2");
        assert_eq!(decoded["MULTI"], "line one\nline two = x");
        assert_eq!(decoded["EMPTY"], "");
        assert!(decode_env(b"NOEQUALS\0").is_err());
        assert!(decode_env(b"=x\0").is_err());
        assert!(decode_env(&[0xff, b'=', b'x', 0]).is_err());
    }

    #[test]
    fn identities() {
        assert_eq!(parse_identity("-").unwrap(), None);
        assert_eq!(parse_identity("65534:65534").unwrap(), Some((65534, 65534)));
        for bad in ["", "1", "a:b", "1:", ":1", "-1:0"] {
            assert!(parse_identity(bad).is_err(), "{bad}");
        }
    }
}
