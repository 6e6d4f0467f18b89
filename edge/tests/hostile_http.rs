//! Hostile clients against the real `gitdeploy up`, over raw sockets (a client library would
//! refuse to send most of these bytes): slow and oversized heads, idle connections, connection
//! floods, pipelining, ambiguous hosts and malformed request lines. Every test also checks that
//! ordinary requests keep being served while the attack goes on.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::Gitdeploy;

fn connect(gd: &Gitdeploy) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", gd.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Everything the server sends until it closes the connection (or 30 s pass).
fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the server kept the connection open: {e}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status codes of the responses in `text`, in order.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text[i + 9..i + 12].parse().ok())
        .collect()
}

fn health(gd: &Gitdeploy) -> u16 {
    gd.raw_get_status(&format!("127.0.0.1:{}", gd.port), "/api/health")
}

#[tokio::test]
async fn slow_heads_are_cut_off_as_a_whole_while_others_are_served() {
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start_with(data.path(), &["--client-header-timeout-ms", "800"]).await;
    let gd = std::sync::Arc::new(gd);
    // 50 clients send empty lines first (which a server may skip), then a request line and one
    // header line every 200 ms: each read is prompt, the head never ends.
    let started = Instant::now();
    let mut slow = vec![];
    for _ in 0..50 {
        let gd = gd.clone();
        slow.push(std::thread::spawn(move || {
            let mut s = connect(&gd);
            s.write_all(b"\r\n\r\nGET / HTTP/1.1\r\nHost: localhost\r\n")
                .unwrap();
            let began = Instant::now();
            for i in 0..100 {
                std::thread::sleep(Duration::from_millis(200));
                if s.write_all(format!("X-Dribble-{i}: 1\r\n").as_bytes())
                    .is_err()
                {
                    break;
                }
            }
            (read_to_close(&mut s), began.elapsed())
        }));
    }
    // Ordinary requests are served meanwhile.
    for _ in 0..5 {
        assert_eq!(health(&gd), 200);
    }
    for t in slow {
        let (answer, took) = t.join().unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
        assert!(took < Duration::from_secs(5), "cut off after {took:?}");
    }
    eprintln!(
        "50 slow-head clients cut off within {:?} of starting",
        started.elapsed()
    );
    assert_eq!(health(&gd), 200);
}

#[tokio::test]
async fn oversized_heads_are_refused_before_they_are_buffered() {
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    // One 900 KiB header, and a head of many small ones past 64 KiB, without an end.
    for head in [
        format!(
            "GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n",
            "a".repeat(900 << 10)
        ),
        format!(
            "GET / HTTP/1.1\r\nHost: localhost\r\n{}",
            format!("X-Many: {}\r\n", "a".repeat(400)).repeat(200)
        ),
    ] {
        let mut s = connect(&gd);
        // The server may close while the client is still writing.
        let _ = s.write_all(head.as_bytes());
        let answer = read_to_close(&mut s);
        assert!(
            answer.starts_with("HTTP/1.1 431"),
            "{:?}",
            &answer[..answer.len().min(200)]
        );
    }
    // A head just under the limit is served.
    let mut s = connect(&gd);
    let pad = "b".repeat(60 << 10);
    write!(
        s,
        "GET /api/health HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nX-Pad: {pad}\r\nConnection: close\r\n\r\n",
        gd.port
    )
    .unwrap();
    assert_eq!(statuses(&read_to_close(&mut s)), [200]);
}

#[tokio::test]
async fn idle_connections_are_closed_and_the_connection_count_is_capped() {
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start_with(
        data.path(),
        &[
            "--client-idle-timeout-ms",
            "1500",
            "--max-connections",
            "40",
        ],
    )
    .await;
    // 40 idle connections fill the edge: a further one is refused cleanly, at once. (Accepts
    // are spread over worker threads, so a probe may overtake an idle connection: it then stays
    // open as one more idle connection, and the next probe tries again.)
    let mut idle: Vec<TcpStream> = (0..40).map(|_| connect(&gd)).collect();
    let refused = loop {
        let mut s = connect(&gd);
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(n) => break String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                idle.push(s);
                assert!(idle.len() < 60, "never refused");
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused:?}");
    assert!(refused.contains("retry-after: 1"), "{refused}");
    // Idle connections are closed after the idle timeout, and then the edge serves again.
    let began = Instant::now();
    for mut s in idle {
        // Closed silently when idle, or refused if a probe overtook it to the limit.
        let answer = read_to_close(&mut s);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 503"),
            "an idle connection got {answer:?}"
        );
    }
    let took = began.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "idle connections held {took:?}"
    );
    assert_eq!(health(&gd), 200);
    // A kept-alive connection is closed when idle after its response, too.
    let mut s = connect(&gd);
    write!(
        s,
        "GET /api/health HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
        gd.port
    )
    .unwrap();
    assert_eq!(statuses(&read_to_close(&mut s)), [200]);
}

#[tokio::test]
async fn pipelined_requests_are_each_answered_in_order() {
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    let api = format!("127.0.0.1:{}", gd.port);
    for count in [3, 20] {
        let mut s = connect(&gd);
        let mut all = String::new();
        let mut want = vec![];
        for i in 0..count {
            // Control plane and sites alternate on one connection: each request is routed by
            // its own host.
            let (host, path, status) = if i % 2 == 0 {
                (api.as_str(), "/api/health", 200)
            } else {
                ("nosuchsite.localhost", "/", 404)
            };
            let close = if i == count - 1 {
                "Connection: close\r\n"
            } else {
                ""
            };
            all.push_str(&format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\n{close}\r\n"
            ));
            want.push(status);
        }
        s.write_all(all.as_bytes()).unwrap();
        assert_eq!(statuses(&read_to_close(&mut s)), want, "{count} pipelined");
    }
}

#[tokio::test]
async fn ambiguous_hosts_and_malformed_request_lines_are_400() {
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start_with(
        data.path(),
        &["--api-rate-burst", "5", "--api-rate-per-second", "0.01"],
    )
    .await;
    let api = format!("127.0.0.1:{}", gd.port);
    let raw = |bytes: String| {
        let mut s = connect(&gd);
        s.write_all(bytes.as_bytes()).unwrap();
        statuses(&read_to_close(&mut s))
    };
    for request in [
        format!("GET /api/health HTTP/1.1\r\nHost: {api}\r\nHost: x.localhost\r\n\r\n"),
        format!("GET /api/health HTTP/1.1\r\nHost: x.localhost\r\nHost: {api}\r\n\r\n"),
        format!("GET api/health HTTP/1.1\r\nHost: {api}\r\n\r\n"),
        format!("GET index.html HTTP/1.1\r\nHost: {api}\r\n\r\n"),
        format!("GET  /api/health HTTP/1.1\r\nHost: {api}\r\n\r\n"),
        format!("GET /api/he alth HTTP/1.1\r\nHost: {api}\r\n\r\n"),
        "GET /api/health HTTP/1.1\r\n\r\n".to_owned(),
    ] {
        assert_eq!(raw(request.clone()), [400], "{request:?}");
    }
    // A Host header after 16 KiB of other headers is the same request as any other: routed to
    // the API by the one parse, and held to the same per-client limits.
    let padding = format!("X-Pad: {}\r\n", "p".repeat(17 << 10));
    let mut limited = 0;
    for _ in 0..10 {
        let body = "{}";
        let statuses = raw(format!(
            "POST /api/deployments HTTP/1.1\r\n{padding}Host: {api}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ));
        assert_eq!(statuses.len(), 1);
        assert!([400, 429].contains(&statuses[0]), "{statuses:?}");
        limited += usize::from(statuses[0] == 429);
    }
    assert!(
        limited >= 4,
        "only {limited} of 10 mutations were rate limited"
    );
}

#[tokio::test]
async fn long_log_streams_outlive_the_client_timeouts() {
    use futures_util::{SinkExt, StreamExt};
    let mut gits = common::GitServer::new();
    gits.add_repo("slow", &[("README.md", "slow")]);
    gits.start();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start_with(
        data.path(),
        &[
            "--client-idle-timeout-ms",
            "400",
            "--client-header-timeout-ms",
            "400",
        ],
    )
    .await;
    // A build that logs a line now and then for longer than either timeout.
    let (status, answer) = gd
        .deploy(serde_json::json!({"repo": gits.url("slow"), "build": {
            "build_command": "for i in 1 2 3 4 5 6; do echo tick $i; sleep 0.3; done; mkdir -p out && echo ok > out/index.html",
            "output_dir": "out",
        }}))
        .await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["id"].as_str().unwrap().to_owned();
    // A WebSocket follower that also sends frames of its own (pings), and an SSE follower.
    let url = format!("ws://127.0.0.1:{}/api/deployments/{id}/logs/ws", gd.port);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let sse = gd
        .http()
        .get(gd.api(&format!("/api/deployments/{id}/logs?follow=1")))
        .send()
        .await
        .unwrap();
    let sse = tokio::spawn(async move { sse.text().await.unwrap() });
    let mut lines = vec![];
    while let Some(msg) = ws.next().await {
        match msg.unwrap() {
            tokio_tungstenite::tungstenite::Message::Text(t) => {
                lines.push(t.to_string());
                ws.send(tokio_tungstenite::tungstenite::Message::Ping(
                    vec![1].into(),
                ))
                .await
                .unwrap();
            }
            tokio_tungstenite::tungstenite::Message::Close(_) => break,
            _ => {}
        }
    }
    let all = lines.join("\n");
    assert!(
        all.contains("tick 6") && all.contains("\"outcome\""),
        "{all}"
    );
    let events = sse.await.unwrap();
    assert!(
        events.contains("tick 6") && events.contains("outcome"),
        "{events}"
    );
}

#[tokio::test]
async fn every_api_error_has_the_json_shape() {
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start(data.path()).await;
    let huge = format!("{{\"repo\": \"{}\"}}", "a".repeat(200 << 10));
    let cases = [
        (
            gd.http()
                .post(gd.api("/api/deployments"))
                .header("content-type", "application/json")
                .body(huge),
            413,
            "too_large",
        ),
        (
            gd.http()
                .get(gd.api("/api/deployments/abc/logs?since=notanumber")),
            400,
            "bad_request",
        ),
        (
            gd.http().put(gd.api("/api/deployments")),
            405,
            "method_not_allowed",
        ),
    ];
    for (request, status, code) in cases {
        let resp = request.send().await.unwrap();
        assert_eq!(resp.status(), status);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
}

#[tokio::test]
async fn memory_comes_back_after_a_burst_of_connections() {
    // This test holds 2,000 sockets itself.
    let _ = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg("--nofile=16384:16384")
        .status();
    let data = tempfile::tempdir().unwrap();
    let gd = Gitdeploy::start_with(data.path(), &["--max-connections", "5000"]).await;
    let rss = || gd.rss_kib();
    let idle = rss();
    let burst: Vec<TcpStream> = (0..2000).map(|_| connect(&gd)).collect();
    // Held: the edge has accepted them all (its memory grew with them).
    let deadline = Instant::now() + Duration::from_secs(30);
    while gd.open_fds() < 2000 {
        assert!(
            Instant::now() < deadline,
            "the edge did not accept the burst"
        );
        tokio::task::yield_now().await;
    }
    let held = rss();
    drop(burst);
    // Back near its idle level within a few trim intervals.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut now = rss();
    while now > idle + (held - idle) / 4 {
        assert!(
            Instant::now() < deadline,
            "RSS stayed at {now} KiB after the burst (idle {idle}, held {held})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = rss();
    }
    eprintln!("RSS: idle {idle} KiB, 2000 connections {held} KiB, after {now} KiB");
    assert!(
        held > idle + 10_000,
        "the burst did not cost memory: {idle} → {held}"
    );
}
