//! A started component as one process group: a server that forks (`git daemon` serves through a
//! `git-daemon` child, nginx through workers) goes away whole, and a test can ask whether any
//! process of the group survived.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// A child process leading a process group of its own; dropping it kills the group (SIGKILL)
/// and reaps the leader.
pub struct Process {
    child: Child,
    what: String,
}

impl Process {
    /// Spawns `command` as the leader of a new process group; `what` names it in messages.
    pub fn spawn(command: &mut Command, what: &str) -> Process {
        let child = command
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Process {
            child,
            what: what.to_owned(),
        }
    }

    /// The leader's pid, which is also the group's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child itself (its pipes, `try_wait`).
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Panics if the leader has exited (a server that died while the test waited for it).
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited early with {status}", self.what);
        }
    }

    /// Sends `signal` to the leader only (a graceful stop, a hand-over).
    pub fn signal(&self, signal: Signal) {
        let _ = nix::sys::signal::kill(Pid::from_raw(self.pid() as i32), signal);
    }

    /// The leader's exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Kills the whole group now (a crash) and reaps the leader.
    pub fn kill(&mut self) {
        let _ = killpg(Pid::from_raw(self.pid() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The processes of group `group` still there after a kill has had up to `patience` to take
/// effect (a killed process leaves the table only once the kernel has torn it down).
pub fn survivors_after(group: u32, patience: std::time::Duration) -> Vec<u32> {
    let deadline = std::time::Instant::now() + patience;
    loop {
        let left = survivors(group);
        if left.is_empty() || std::time::Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The processes (other than zombies) still in process group `group`.
pub fn survivors(group: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // After the command name (in parentheses, may hold spaces): state, ppid, pgrp.
            let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else {
                return false;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.first() != Some(&"Z") && fields.get(2) == Some(&group.to_string().as_str())
        })
        .collect()
}
