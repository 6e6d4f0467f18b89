//! A DNS server whose answers the test sets: Let's Encrypt's `pebble-challtestsrv` (Debian's
//! `pebble` package) on loopback, answering only what was added (no default address), with its
//! management API for the records.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};

use crate::{free_port, wait_for_port, Process};

/// A running `pebble-challtestsrv`; stopped when dropped.
pub struct DnsServer {
    /// Where it answers DNS (UDP and TCP).
    pub dns: SocketAddr,
    management: SocketAddr,
    _process: Process,
}

impl DnsServer {
    /// Starts one on free loopback ports.
    pub fn start() -> DnsServer {
        let dns: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let management: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut process = Process::spawn(
            Command::new("pebble-challtestsrv")
                .arg("-dns01")
                .arg(dns.to_string())
                .arg("-management")
                .arg(management.to_string())
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-defaultIPv4", "", "-defaultIPv6", ""])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            "pebble-challtestsrv (scripts/prereqs --test installs it)",
        );
        wait_for_port(management, &mut process, "pebble-challtestsrv");
        wait_for_port(dns, &mut process, "pebble-challtestsrv's DNS");
        DnsServer {
            dns,
            management,
            _process: process,
        }
    }

    /// Answers `host`'s CNAME queries with `target`.
    pub fn set_cname(&self, host: &str, target: &str) {
        self.call(
            "/set-cname",
            serde_json::json!({"host": fqdn(host), "target": fqdn(target)}),
        );
    }

    /// Forgets `host`'s CNAME.
    pub fn clear_cname(&self, host: &str) {
        self.call("/clear-cname", serde_json::json!({"host": fqdn(host)}));
    }

    /// Answers `host`'s A queries with `addresses`.
    pub fn add_a(&self, host: &str, addresses: &[&str]) {
        self.call(
            "/add-a",
            serde_json::json!({"host": fqdn(host), "addresses": addresses}),
        );
    }

    /// Forgets `host`'s A records.
    pub fn clear_a(&self, host: &str) {
        self.call("/clear-a", serde_json::json!({"host": fqdn(host)}));
    }

    fn call(&self, path: &str, body: serde_json::Value) {
        let body = body.to_string();
        let mut s = TcpStream::connect(self.management).expect("challtestsrv's management API");
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.management,
            body.len()
        )
        .expect("a request to challtestsrv");
        let mut answer = String::new();
        s.read_to_string(&mut answer)
            .expect("challtestsrv's answer");
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "challtestsrv {path}: {answer}"
        );
    }
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}
