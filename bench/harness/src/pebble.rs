//! Let's Encrypt's ACME test server, `pebble` (Debian's `pebble` package), on loopback: its own
//! HTTPS with a certificate of a [`TestCa`], validation requests sent to the edge's ports, names
//! resolved through a [`DnsServer`], no random sleeps or nonce rejections (so a test waits
//! only for real work), and every order validated afresh (no authorization reuse).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::{free_port, wait_for_port, DnsServer, Process, TestCa};

/// A running `pebble`; stopped when dropped.
pub struct Pebble {
    /// Where its ACME API listens (HTTPS).
    pub address: SocketAddr,
    management: SocketAddr,
    /// Trust for its HTTPS (the test CA).
    pub https_ca: PathBuf,
    process: Option<Process>,
    _ca: TestCa,
}

/// Where a `pebble` will listen, chosen before the edge starts (the edge is given the
/// directory URL; pebble, the edge's ports).
pub struct PebblePorts {
    /// Its ACME API.
    pub address: SocketAddr,
    management: SocketAddr,
}

impl Default for PebblePorts {
    fn default() -> Self {
        Self::new()
    }
}

impl PebblePorts {
    /// Two free loopback ports.
    pub fn new() -> PebblePorts {
        PebblePorts {
            address: ([127, 0, 0, 1], free_port()).into(),
            management: ([127, 0, 0, 1], free_port()).into(),
        }
    }

    /// The directory URL.
    pub fn directory(&self) -> String {
        format!("https://{}/dir", self.address)
    }
}

impl Pebble {
    /// Starts pebble on `ports` with an HTTPS certificate of `ca` (which the edge was told to
    /// trust), validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port` of whatever
    /// `dns` resolves a name to; certificates valid `validity_secs`.
    pub fn start_with_ca(
        ports: PebblePorts,
        ca: TestCa,
        dns: &DnsServer,
        http_port: u16,
        tls_port: u16,
        validity_secs: u64,
    ) -> Pebble {
        let (cert, key) = ca.issue("pebble", &["DNS:localhost", "IP:127.0.0.1"], "0x7001");
        let config = serde_json::json!({"pebble": {
            "listenAddress": ports.address.to_string(),
            "managementListenAddress": ports.management.to_string(),
            "certificate": cert,
            "privateKey": key,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity_secs,
        }});
        let config_path = ca.dir().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).expect("pebble's configuration");
        let mut process = Process::spawn(
            Command::new("pebble")
                .arg("-config")
                .arg(&config_path)
                .arg("-dnsserver")
                .arg(dns.dns.to_string())
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0")
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            "pebble (scripts/prereqs --test installs it)",
        );
        wait_for_port(ports.address, &mut process, "pebble");
        wait_for_port(ports.management, &mut process, "pebble's management API");
        Pebble {
            address: ports.address,
            management: ports.management,
            https_ca: ca.ca_pem(),
            process: Some(process),
            _ca: ca,
        }
    }

    /// The root that signs the certificates it issues (PEM), written to `path`.
    pub fn write_root(&self, path: &std::path::Path) {
        let out = Command::new("curl")
            .args(["-sSf", "--max-time", "10", "--cacert"])
            .arg(&self.https_ca)
            .arg(format!("https://{}/roots/0", self.management))
            .output()
            .expect("curl is installed");
        assert!(
            out.status.success(),
            "pebble's root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(path, &out.stdout).expect("the root written");
    }

    /// Stops it (an ACME outage).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }
}
