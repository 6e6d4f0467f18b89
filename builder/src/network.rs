//! The build's network when it is on: egress to the internet (git hosts, package registries)
//! and nothing of the platform's own.
//!
//! A build never shares the host's network namespace. It gets a fresh one whose only way out is
//! `slirp4netns` (user-mode TCP/IP: the build's packets become ordinary sockets of an
//! unprivileged helper on the host), started with `--disable-host-loopback` so the gateway
//! address does not lead to the host's `127.0.0.1` (the API, the metrics listener, Redis, the
//! embedded S3). Inside the namespace, `prohibit` routes, which the build's unprivileged user
//! cannot change, close the address ranges a build has no business with: the host's own
//! addresses, link-local (`169.254.0.0/16`, where the ECS and EC2 metadata endpoints live), the
//! private and shared ranges (RFC 1918, RFC 6598), multicast and reserved space. Parts of the
//! private ranges the operator allows (`--build-allow-network`) get a route of their own
//! through slirp's gateway; the host's own addresses stay closed.
//!
//! Why slirp4netns: a veth pair would need NAT and firewall rules in the host's own namespace
//! (shared, global state); slirp4netns needs neither, answers DNS on its own address (so the
//! build's `resolv.conf` never points at a private resolver), and Debian's version supports
//! `--netns-type=path` and `--ready-fd`. passt offers the same kind of isolation with better
//! throughput; slirp4netns is the one checked here end to end (the tests run builds through it),
//! and the routes inside the namespace do the filtering whichever forwarder is used.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::AsyncReadExt;

/// The address slirp4netns answers DNS on, inside the namespace.
pub const DNS_ADDRESS: &str = "10.0.2.3";
/// slirp4netns's gateway inside the namespace.
const GATEWAY: &str = "10.0.2.2";

/// Ranges no build may reach, whatever it resolves or is told.
const BLOCKED_RANGES: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// The destinations closed inside a build's namespace: the fixed ranges above and each of the
/// host's own IPv4 addresses (a public address of the host would otherwise lead back to its
/// listeners). The namespace has no IPv6 route at all.
pub fn blocked_destinations(host_addresses: &[IpAddr]) -> Vec<String> {
    let mut out: Vec<String> = BLOCKED_RANGES.iter().map(|r| r.to_string()).collect();
    for addr in host_addresses {
        if let IpAddr::V4(v4) = addr {
            if !v4.is_loopback() {
                out.push(format!("{v4}/32"));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The `resolv.conf` a build sees.
pub fn resolv_conf() -> String {
    format!("nameserver {DNS_ADDRESS}\noptions edns0\n")
}

/// A network namespace with filtered egress, removed (with its slirp4netns) when dropped.
#[derive(Debug)]
pub struct FilteredNetwork {
    name: String,
    slirp: tokio::process::Child,
}

impl FilteredNetwork {
    /// Creates the namespace `name`, connects it through slirp4netns and closes the blocked
    /// destinations. Fails (so the build fails closed) when any piece is missing.
    pub async fn start(name: &str, allowed: &[String]) -> Result<Self, String> {
        let _ = Self::remove(name);
        ip(&["netns", "add", name]).await?;
        let path = Self::path_of(name);
        let slirp = tokio::process::Command::new("slirp4netns")
            .args([
                "--configure",
                "--mtu=65520",
                "--disable-host-loopback",
                "--ready-fd=1",
                "--netns-type=path",
            ])
            .arg(&path)
            .arg("tap0")
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let mut slirp = match slirp {
            Ok(child) => child,
            Err(e) => {
                let _ = Self::remove(name);
                return Err(format!(
                    "the build network needs slirp4netns ({e}); install it (scripts/prereqs) \
                     or turn the build's network off"
                ));
            }
        };
        let network = FilteredNetwork {
            name: name.to_owned(),
            slirp: {
                // slirp4netns writes "1" to its ready fd once the interface is configured.
                let mut ready = [0u8; 1];
                let read = match slirp.stdout.as_mut() {
                    Some(out) => tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        out.read(&mut ready),
                    )
                    .await
                    .map_err(|_| "slirp4netns did not become ready in 10 s".to_owned())
                    .and_then(|r| r.map_err(|e| e.to_string())),
                    None => Err("slirp4netns has no ready pipe".into()),
                };
                if !matches!(read, Ok(1)) {
                    let _ = slirp.start_kill();
                    let _ = Self::remove(name);
                    return Err(format!(
                        "slirp4netns did not start the build network: {}",
                        read.err().unwrap_or_else(|| "it exited".into())
                    ));
                }
                slirp
            },
        };
        for destination in blocked_destinations(&host_addresses()) {
            ip(&["-n", name, "route", "add", "prohibit", &destination]).await?;
        }
        // An allowed range leaves through slirp's gateway: more specific than the closed range
        // around it (or replacing it), and never more specific than a host address's /32.
        for cidr in allowed {
            gitdeploy_core::egress::parse_allowed_network(cidr)?;
            ip(&[
                "-n", name, "route", "replace", cidr, "via", GATEWAY, "dev", "tap0",
            ])
            .await?;
        }
        Ok(network)
    }

    /// The namespace's path, for `nsenter --net=`.
    pub fn path(&self) -> PathBuf {
        Self::path_of(&self.name)
    }

    fn path_of(name: &str) -> PathBuf {
        Path::new("/run/netns").join(name)
    }

    /// Removes a namespace a killed builder left behind.
    pub fn remove(name: &str) -> std::io::Result<()> {
        let status = std::process::Command::new("ip")
            .args(["netns", "delete", name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other("ip netns delete failed"))
        }
    }
}

impl Drop for FilteredNetwork {
    fn drop(&mut self) {
        let _ = self.slirp.start_kill();
        let _ = Self::remove(&self.name);
    }
}

async fn ip(args: &[&str]) -> Result<(), String> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("the build network needs iproute2's ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "cannot set up the build network (ip {}): {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The host's own addresses, from `/proc/net/fib_trie` (every local address of every
/// interface) without a netlink dependency.
fn host_addresses() -> Vec<IpAddr> {
    let text = std::fs::read_to_string("/proc/net/fib_trie").unwrap_or_default();
    local_addresses_from_fib_trie(&text)
}

/// The addresses marked `/32 host LOCAL` in a `/proc/net/fib_trie` listing.
fn local_addresses_from_fib_trie(text: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut last: Option<IpAddr> = None;
    for line in text.lines() {
        let trimmed = line.trim_start_matches([' ', '|', '+', '-']).trim();
        if let Some(addr) = trimmed
            .split_whitespace()
            .next()
            .and_then(|a| a.parse().ok())
        {
            last = Some(addr);
        } else if trimmed.starts_with("/32 host LOCAL") {
            if let Some(addr) = last {
                if !out.contains(&addr) {
                    out.push(addr);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_destinations_cover_the_platform_and_the_host() {
        let host: Vec<IpAddr> = ["127.0.0.1", "192.0.2.2", "203.0.113.7", "fd00::2"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let blocked = blocked_destinations(&host);
        for want in [
            "169.254.0.0/16",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
            "192.0.2.2/32",
            "203.0.113.7/32",
        ] {
            assert!(blocked.contains(&want.to_owned()), "{want} in {blocked:?}");
        }
        assert!(
            !blocked.iter().any(|b| b.starts_with("127.")),
            "loopback is the namespace's own"
        );
        assert!(
            !blocked.iter().any(|b| b.contains(':')),
            "no IPv6 route exists to close"
        );
    }

    #[test]
    fn local_addresses_are_read_from_fib_trie() {
        let trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     +-- 192.0.2.0/24 2 0 2\n        |-- 192.0.2.0\n           /24 link UNICAST\n        |-- 192.0.2.2\n           /32 host LOCAL\n  |-- 127.0.0.1\n     /32 host LOCAL\nLocal:\n        |-- 192.0.2.2\n           /32 host LOCAL\n";
        let addrs = local_addresses_from_fib_trie(trie);
        assert_eq!(
            addrs,
            vec![
                "192.0.2.2".parse::<IpAddr>().unwrap(),
                "127.0.0.1".parse().unwrap()
            ]
        );
    }
}
