//! What the harness starts stops, children included, when it is dropped.

use std::io::{Read, Write};

use std::time::Duration;

use gitdeploy_harness::{survivors, survivors_after, GitServer, Redis};

/// Long enough for the kernel to tear killed processes down, on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(10);

#[test]
fn a_git_server_and_its_daemon_children_are_gone_after_drop() {
    let mut server = GitServer::new();
    server.add_repo("site", &[("index.html", "hi")]);
    server.start();
    let group = server.group().unwrap();
    // A request makes the daemon fork a child that serves it.
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let request = "git-upload-pack /site\0host=127.0.0.1\0";
    write!(conn, "{:04x}{request}", request.len() + 4).unwrap();
    let mut first = [0u8; 4];
    conn.read_exact(&mut first).unwrap();
    assert!(
        survivors(group).len() >= 2,
        "the daemon serves through children: {:?}",
        survivors(group)
    );
    drop(server);
    assert_eq!(survivors_after(group, PATIENCE), Vec::<u32>::new());
}

#[test]
fn redis_is_gone_after_drop_and_a_crash_restart_keeps_one_server() {
    let mut redis = Redis::start();
    let first = redis.group();
    redis.crash_and_restart();
    assert_eq!(survivors_after(first, PATIENCE), Vec::<u32>::new());
    let second = redis.group();
    assert_eq!(survivors(second).len(), 1);
    drop(redis);
    assert_eq!(survivors_after(second, PATIENCE), Vec::<u32>::new());
}
