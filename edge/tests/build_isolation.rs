//! Hostile repositories against the real `gitdeploy up` and its sandbox: what a build can reach
//! of the host. Each test is the attack itself (a symlinked output directory, loader variables,
//! the control plane on loopback, a disk filler) and what the platform must answer.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{
    deploy_and_follow as deploy, git, log_text as text, outcome_of as outcome, GitServer, Gitdeploy,
};
use gitdeploy_core::DeploymentStatus;
use reqwest::Method;
use serde_json::json;

/// A directory of the host with a root-only file in it, as the data directory's `state/` is.
fn host_secret_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "host secret").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(dir.path().join("index.html"), "host index").unwrap();
    dir
}

#[tokio::test]
async fn an_output_directory_that_is_a_symlink_cannot_publish_the_host() {
    let host = host_secret_dir();
    let mut gits = GitServer::new();
    // A committed `public -> /host/dir` with no build step at all.
    let repo = gits.add_repo("committed", &[("README.md", "static")]);
    std::os::unix::fs::symlink(host.path(), repo.join("public")).unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "link"]);
    // A build that makes `dist` a symlink.
    let link = format!("ln -s '{}' dist", host.path().display());
    gits.add_repo("built", &[("README.md", "built")]);
    gits.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;

    let cases = [
        json!({"repo": gits.url("committed")}),
        json!({"repo": gits.url("built"), "build": {"build_command": link, "output_dir": "dist"}}),
    ];
    let (id, log) = deploy(&gd, cases[0].clone()).await;
    let (status, error) = outcome(&log);
    assert_eq!(status, DeploymentStatus::Failed, "{}", text(&log));
    assert!(error.contains("resolves outside the repository"), "{error}");
    for path in ["/secret.txt", "/"] {
        let resp = gd.site(Method::GET, &id, path).send().await.unwrap();
        assert_ne!(resp.status(), 200, "{path} was published");
    }
    let (_, log) = deploy(&gd, cases[1].clone()).await;
    let (status, error) = outcome(&log);
    assert_eq!(status, DeploymentStatus::Failed, "{}", text(&log));
    assert!(error.contains("resolves outside the repository"), "{error}");
    assert!(!text(&log).contains("host secret"));
}

#[tokio::test]
async fn loader_variables_are_refused_and_the_environment_reaches_only_the_command() {
    let mut gits = GitServer::new();
    gits.add_repo("probe", &[("README.md", "probe")]);
    gits.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;

    // Variables that change how programs load are refused up front, as env or as secret, in a
    // deploy request and in a project's stored settings.
    for (kind, name) in [
        ("env", "LD_PRELOAD"),
        ("env", "LD_LIBRARY_PATH"),
        ("secrets", "LD_AUDIT"),
        ("env", "GCONV_PATH"),
        ("env", "BASH_ENV"),
    ] {
        let (status, answer) = gd
            .deploy(json!({"repo": gits.url("probe"), "build": {kind: {name: "/tmp/evil.so"}}}))
            .await;
        assert_eq!(status, 400, "{name}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_build", "{answer}");
        assert!(
            answer["error"]["message"].as_str().unwrap().contains(name),
            "{answer}"
        );
    }
    let created = gd
        .http()
        .post(gd.api("/api/projects"))
        .json(&json!({"name": "loader", "repo": gits.url("probe")}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let patched = gd
        .http()
        .patch(gd.api("/api/projects/loader"))
        .json(&json!({"build": {"env": {"LD_PRELOAD": "/tmp/evil.so"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 400);

    // While a build runs, every process on the host that holds the build's environment runs
    // as the build user with no capabilities: the wrappers (prlimit, nsenter, bwrap) never see
    // it. The build waits for the test to let it go; the test sees it through /proc.
    let marker = format!("probe-{}", std::process::id());
    let script = format!(
        "echo {marker}; while [ ! -e \"$TMPDIR/go\" ]; do sleep 0.05; done; \
         grep -E '^(NoNewPrivs|CapEff|CapBnd|Uid)' /proc/self/status; echo \"tmp=$TMPDIR var=$PROBE_VAR\"; \
         mkdir -p out && echo ok > out/index.html"
    );
    let (status, answer) = gd
        .deploy(json!({"repo": gits.url("probe"), "build": {
            "build_command": script, "output_dir": "out", "env": {"PROBE_VAR": "probe-value"},
        }}))
        .await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (holders, wrappers) = loop {
        let seen = processes_with(&marker);
        let holders: Vec<_> = seen.iter().filter(|p| p.has("PROBE_VAR=")).collect();
        let wrappers = seen.iter().filter(|p| p.uid == 0).count();
        if !holders.is_empty() && wrappers > 0 {
            for p in &holders {
                assert_ne!(
                    p.uid, 0,
                    "a root process holds the build's environment: {p:?}"
                );
            }
            break (holders.len(), wrappers);
        }
        assert!(
            Instant::now() < deadline,
            "the build never started: {seen:?}"
        );
        tokio::task::yield_now().await;
    };
    std::fs::write(data.path().join("work").join(&id).join("tmp/go"), "").unwrap();
    let log = gd.follow(&id, 0).await;
    let all = text(&log);
    assert_eq!(outcome(&log).0, DeploymentStatus::Ready, "{all}");
    assert!(all.contains("tmp=/tmp var=probe-value"), "{all}");
    assert!(all.contains("NoNewPrivs:\t1"), "{all}");
    assert!(
        all.contains("CapEff:\t0000000000000000"),
        "no capabilities: {all}"
    );
    eprintln!("holders of the build environment: {holders}, root wrappers seen: {wrappers}");
}

/// A process whose command line contains a marker.
#[derive(Debug)]
struct Proc {
    uid: u32,
    environ: String,
}

impl Proc {
    fn has(&self, prefix: &str) -> bool {
        self.environ.split('\0').any(|e| e.starts_with(prefix))
    }
}

fn processes_with(marker: &str) -> Vec<Proc> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if entry.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let dir = entry.path();
        let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains(marker) {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|u| u.parse().ok())
            .unwrap_or(u32::MAX);
        out.push(Proc {
            uid,
            environ: String::from_utf8_lossy(
                &std::fs::read(dir.join("environ")).unwrap_or_default(),
            )
            .into_owned(),
        });
    }
    out
}

/// The host's own IPv4 addresses other than loopback.
fn host_addresses() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|a| a.split('/').next())
        .filter(|a| !a.starts_with("127."))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_build_reaches_the_registry_but_nothing_of_the_host_or_the_cloud() {
    // A listener on every address of the host, as an API or a metrics port bound to 0.0.0.0.
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let open_port = listener.local_addr().unwrap().port();
    let mut targets = vec![];
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    targets.push(format!("127.0.0.1:{}", gd.port));
    targets.push(format!("127.0.0.1:{}", gd.metrics_port));
    targets.push(format!("10.0.2.2:{}", gd.port));
    targets.push("169.254.169.254:80".to_owned());
    targets.push("169.254.170.2:80".to_owned());
    for addr in host_addresses() {
        targets.push(format!("{addr}:{open_port}"));
    }
    let probe = format!(
        r#"const net=require('net'),https=require('https');
const targets={targets:?};
let left=targets.length+1;const done=()=>{{if(--left===0)process.exit(0)}};
for(const t of targets){{const [h,p]=t.split(':');const s=net.connect({{host:h,port:+p,timeout:3000}});
s.on('connect',()=>{{console.log('reachable '+t);s.destroy();done()}});
s.on('timeout',()=>{{console.log('unreachable '+t+' timeout');s.destroy();done()}});
s.on('error',e=>{{console.log('unreachable '+t+' '+e.code);done()}})}}
https.get('https://registry.npmjs.org/is-number',r=>{{console.log('registry '+r.statusCode);r.resume();done()}}).on('error',e=>{{console.log('registry error '+e.code);done()}});"#
    );
    let mut gits = GitServer::new();
    gits.add_repo("probe", &[("probe.js", &probe)]);
    gits.start();
    let mut ids = vec![];
    for network in [true, false] {
        let (id, log) = deploy(
            &gd,
            json!({"repo": gits.url("probe"), "build": {
                "build_command": "node probe.js && mkdir -p out && echo ok > out/index.html",
                "output_dir": "out", "network": network,
            }}),
        )
        .await;
        let all = text(&log);
        assert_eq!(outcome(&log).0, DeploymentStatus::Ready, "{all}");
        for t in &targets {
            assert!(
                all.lines()
                    .any(|l| l.starts_with(&format!("unreachable {t} "))),
                "network {network}: {t} was reachable: {all}"
            );
        }
        assert_eq!(
            all.contains("registry 200"),
            network,
            "network {network}: the registry: {all}"
        );
        ids.push(id);
    }
    drop(listener);
    for id in ids {
        assert!(
            !std::path::Path::new("/run/netns")
                .join(format!("gd-{id}"))
                .exists(),
            "the network namespace of {id} was left behind"
        );
    }
}

#[tokio::test]
async fn a_build_that_fills_the_disk_is_stopped_and_cleaned_up() {
    let mut gits = GitServer::new();
    gits.add_repo("filler", &[("README.md", "fill")]);
    gits.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start_with(data.path(), &["--build-max-disk-bytes", "100000000"]).await;
    // Writes into the checkout and into /tmp until stopped (the timeout is only a backstop).
    let fill = "i=0; while true; do head -c 8000000 /dev/zero > f$i; head -c 8000000 /dev/zero > /tmp/t$i; i=$((i+1)); done";
    let (id, log) = deploy(
        &gd,
        json!({"repo": gits.url("filler"), "build": {"build_command": fill, "timeout_secs": 120}}),
    )
    .await;
    let (status, error) = outcome(&log);
    assert_eq!(status, DeploymentStatus::Failed, "{}", text(&log));
    assert!(error.contains("over its limit of 95.4 MiB"), "{error}");
    let work = data.path().join("work").join(&id);
    assert!(
        !work.exists() || common_usage(&work) < 200_000_000,
        "the filler went far past its limit"
    );
}

fn common_usage(dir: &std::path::Path) -> u64 {
    let out = std::process::Command::new("du")
        .args(["-sb"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn file_names_the_storage_or_a_url_cannot_hold_are_refused_by_name() {
    let mut gits = GitServer::new();
    gits.add_repo("names", &[("README.md", "names")]);
    gits.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    let build = |script: &str| json!({"repo": gits.url("names"), "build": {"build_command": script, "output_dir": "out"}});
    // A long path that the embedded store holds is published and served.
    let ok_path = format!("{}/page.html", "d".repeat(80));
    let (id, log) = deploy(
        &gd,
        build(&format!(
            "mkdir -p out/{} && echo long > out/{ok_path} && echo hi > out/index.html",
            "d".repeat(80)
        )),
    )
    .await;
    assert_eq!(outcome(&log).0, DeploymentStatus::Ready, "{}", text(&log));
    let resp = gd
        .site(Method::GET, &id, &format!("/{ok_path}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "long\n");
    // Longer than the store's keys, and names no URL can hold: refused, naming the file.
    for (script, named) in [
        (
            format!(
                "mkdir -p out/{0} && echo x > out/{0}/{0}.html",
                "e".repeat(120)
            ),
            "is 120 bytes long; the storage accepts paths of up to 104 bytes",
        ),
        (
            "mkdir -p out && printf x > \"out/new\nline.html\"".to_owned(),
            "new\\nline.html",
        ),
        (
            "mkdir -p out && printf x > 'out/back\\slash.html'".to_owned(),
            "back\\\\slash.html",
        ),
        (
            "mkdir -p out && printf x > \"out/tab\t.html\"".to_owned(),
            "tab\\t.html",
        ),
    ] {
        let (_, log) = deploy(&gd, build(&script)).await;
        let (status, error) = outcome(&log);
        assert_eq!(status, DeploymentStatus::Failed, "{}", text(&log));
        assert!(error.contains(named), "{named}: {error}");
        assert!(!error.contains("unhandled error"), "{error}");
    }
}

#[tokio::test]
async fn a_server_killed_mid_build_leaves_nothing_behind_after_restart() {
    let mut gits = GitServer::new();
    gits.add_repo("hang", &[("README.md", "hang")]);
    gits.start();
    let data = tempfile::tempdir().unwrap();
    let flags = ["--heartbeat-interval-ms", "200"];
    let gd = Gitdeploy::start_with(data.path(), &flags).await;
    let marker = format!("hang-{}", std::process::id());
    let script = format!("echo {marker}; while true; do sleep 0.1; done");
    let (status, answer) = gd
        .deploy(json!({"repo": gits.url("hang"), "build": {"build_command": script}}))
        .await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    while processes_with(&marker).is_empty() {
        assert!(Instant::now() < deadline, "the build never started");
        tokio::task::yield_now().await;
    }
    let work = data.path().join("work").join(&id);
    assert!(work.is_dir());
    gd.kill();

    // The new server's reconciler fails the build whose runner is gone; a follower that joins
    // before that waits for its final record.
    let gd = Gitdeploy::start_with(data.path(), &flags).await;
    let log = gd.follow(&id, 0).await;
    let (status, error) = outcome(&log);
    assert_eq!(status, DeploymentStatus::Failed);
    assert!(error.contains("runner of this build stopped"), "{error}");
    assert!(!work.exists(), "the work directory outlived the restart");
    let archived = data
        .path()
        .join("s3/gitdeploy/logs")
        .join(format!("{id}.ndjson"));
    // The archive is written before the final record is published; allow for a slow store.
    let deadline = Instant::now() + Duration::from_secs(10);
    let archive = loop {
        match std::fs::read_to_string(&archived) {
            Ok(text) => break text,
            Err(e) => assert!(Instant::now() < deadline, "the log was not archived: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        archive.contains("Build started on the local runner") && archive.contains("\"outcome\""),
        "{archive}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_with(&marker).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the build's processes outlived its server"
        );
        tokio::task::yield_now().await;
    }
    assert!(!std::path::Path::new("/run/netns")
        .join(format!("gd-{id}"))
        .exists());
}

#[tokio::test]
async fn credentials_in_a_repository_url_are_never_stored_or_logged() {
    let mut gits = GitServer::new();
    gits.add_repo("private", &[("index.html", "private site")]);
    gits.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    let url = gits
        .url("private")
        .replacen("git://", "git://builder:pw-7f3a9c2e@", 1);
    // git:// has no credentials: the clone fails, and git's error names the URL it was given.
    let (id, log) = deploy(&gd, json!({"repo": url})).await;
    let all = text(&log);
    let (_, error) = outcome(&log);
    assert!(all.contains("unable to look up"), "{all}");
    assert!(
        !all.contains("pw-7f3a9c2e") && !error.contains("pw-7f3a9c2e"),
        "{all}"
    );
    assert!(gd.status(&id).await["repo"]
        .as_str()
        .unwrap()
        .contains("***@"));
    let mut stack = vec![data.path().join("state")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                assert!(
                    !text.contains("pw-7f3a9c2e"),
                    "{} holds the password",
                    path.display()
                );
            }
        }
    }
}

/// Another machine on a private network: a network namespace behind a veth pair, with the
/// host at `.1` and the peer at `.2` of each of `subnets` (`a.b.c`), and a listener on every
/// address of the peer. Removed when dropped.
struct PrivatePeer {
    netns: String,
    host_link: String,
    listener: common::Process,
    port: u16,
}

impl PrivatePeer {
    fn start(subnets: &[&str]) -> PrivatePeer {
        let n = std::process::id() % 100_000;
        let (netns, host_link, peer_link) =
            (format!("gdpeer-{n}"), format!("gdh{n}"), format!("gdp{n}"));
        let ip = |args: &[&str]| {
            let status = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap();
            assert!(status.success(), "ip {args:?}");
        };
        ip(&["netns", "add", &netns]);
        ip(&[
            "link", "add", &host_link, "type", "veth", "peer", "name", &peer_link,
        ]);
        ip(&["link", "set", &peer_link, "netns", &netns]);
        for s in subnets {
            ip(&["addr", "add", &format!("{s}.1/24"), "dev", &host_link]);
            ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{s}.2/24"),
                "dev",
                &peer_link,
            ]);
        }
        ip(&["link", "set", &host_link, "up"]);
        ip(&["-n", &netns, "link", "set", &peer_link, "up"]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        let port = common::free_port();
        let listener = common::Process::spawn(
            std::process::Command::new("ip")
                .args(["netns", "exec", &netns, "python3", "-c"])
                .arg(format!(
                    "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',{port}))\ns.listen(64)\nwhile True:\n  c,_=s.accept()\n  c.close()\n"
                )),
            "the private peer's listener",
        );
        let mut peer = PrivatePeer {
            netns,
            host_link,
            listener,
            port,
        };
        let first: std::net::SocketAddr = format!("{}.2:{port}", subnets[0]).parse().unwrap();
        common::wait_for_port(first, &mut peer.listener, "the private peer's listener");
        peer
    }
}

impl Drop for PrivatePeer {
    fn drop(&mut self) {
        self.listener.kill();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_link])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// A private range the operator allows (`--build-allow-network`) is reachable from a build;
/// the rest of the private space, and the host's own address inside the allowed range, stay
/// closed.
#[tokio::test]
async fn an_allowed_private_range_is_reachable_and_the_rest_stays_closed() {
    let peer = PrivatePeer::start(&["10.213.77", "10.214.77"]);
    let host_listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = host_listener.local_addr().unwrap().port();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start_with(data.path(), &["--build-allow-network", "10.213.77.0/24"]).await;
    let reachable = format!("10.213.77.2:{}", peer.port);
    let closed = [
        format!("10.214.77.2:{}", peer.port),
        format!("10.213.77.1:{host_port}"),
    ];
    let targets: Vec<&String> = std::iter::once(&reachable).chain(closed.iter()).collect();
    let probe = format!(
        r#"const net=require('net');
const targets={targets:?};
let left=targets.length;const done=()=>{{if(--left===0)process.exit(0)}};
for(const t of targets){{const [h,p]=t.split(':');const s=net.connect({{host:h,port:+p,timeout:3000}});
s.on('connect',()=>{{console.log('reachable '+t);s.destroy();done()}});
s.on('timeout',()=>{{console.log('unreachable '+t+' timeout');s.destroy();done()}});
s.on('error',e=>{{console.log('unreachable '+t+' '+e.code);done()}})}}"#
    );
    let mut gits = GitServer::new();
    gits.add_repo("probe", &[("probe.js", &probe)]);
    gits.start();
    let (_, log) = deploy(
        &gd,
        json!({"repo": gits.url("probe"), "build": {
            "build_command": "node probe.js && mkdir -p out && echo ok > out/index.html",
            "output_dir": "out",
        }}),
    )
    .await;
    let all = text(&log);
    assert_eq!(outcome(&log).0, DeploymentStatus::Ready, "{all}");
    assert!(
        all.contains(&format!("reachable {reachable}\n"))
            || all.lines().any(|l| l == format!("reachable {reachable}")),
        "{all}"
    );
    for t in &closed {
        assert!(
            all.lines()
                .any(|l| l.starts_with(&format!("unreachable {t} "))),
            "{t} was reachable: {all}"
        );
    }
    assert!(
        all.contains("private networks allowed by the platform: 10.213.77.0/24"),
        "{all}"
    );
    drop(host_listener);
    // Refused at start: what can never be opened.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_gitdeploy"))
        .args(["up", "--build-allow-network", "169.254.0.0/16"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--build-allow-network"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
