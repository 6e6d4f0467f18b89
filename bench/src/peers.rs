//! The peers the edge is measured against: nginx serving the same files from disk or in front
//! of the same S3, and the original design's Node proxy. Each runs on a free loopback port with
//! its own temporary directory, as a process group the harness stops whole when dropped.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use gitdeploy_harness::{
    free_port, wait_for_port, Process, S3Server, S3_BUCKET, S3_KEY, S3_REGION,
};

use crate::host::with_children;

/// A server under load: where to send requests and which processes do its work.
pub trait Server {
    /// `127.0.0.1:port`.
    fn addr(&self) -> &str;
    /// Its processes (threads are counted with them).
    fn pids(&self) -> Vec<u32>;
    /// Starts a new peak-memory measurement, where the server reports one.
    fn reset_peak_rss(&self) {}
    /// Peak resident memory since the reset, in KiB.
    fn peak_rss_kib(&self) -> Option<u64> {
        None
    }
}

/// How nginx in front of S3 keeps what it fetched.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ProxyCache {
    /// Every request goes to S3.
    Off,
    /// `proxy_cache` on local disk (the page cache, in practice), filled on first request.
    Disk,
}

/// nginx serving a directory.
pub struct Nginx {
    /// `127.0.0.1:port`.
    pub addr: String,
    process: Process,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Serves `root` with a production-like static configuration.
    pub fn start_static(root: &Path) -> anyhow::Result<Self> {
        let server = format!(
            "open_file_cache max=1000 inactive=60s;
  if_modified_since before;
  types {{ text/html html; text/css css; application/javascript js; image/svg+xml svg; application/json json; }}
  default_type application/octet-stream;
  server {{ listen 127.0.0.1:{{port}}; root {root}; }}",
            root = root.display(),
        );
        Self::start("", &server)
    }

    /// Serves `root` like [`Nginx::start_static`] over TLS 1.2/1.3 with `cert` and `key`, HTTP/2
    /// by ALPN, no session resumption (each new connection is a full handshake, as for the edge).
    pub fn start_static_tls(root: &Path, cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let server = format!(
            "open_file_cache max=1000 inactive=60s;
  types {{ text/html html; text/css css; application/javascript js; image/svg+xml svg; application/json json; }}
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{{port}} ssl http2;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets off;
    root {root};
  }}",
            root = root.display(),
            cert = cert.display(),
            key = key.display(),
        );
        Self::start("", &server)
    }

    /// Proxies every path of the site to the object in `s3` that holds its bytes (`keys`: path →
    /// `blobs/<sha256>`, as the deployment's manifest maps it; other paths 404), each upstream
    /// GET signed with SigV4 by `bench/nginx/s3sign.js` (njs, as nginx's S3 gateway does;
    /// `apt-get install libnginx-mod-http-js`), over keep-alive connections. Client headers
    /// never reach S3.
    pub fn start_s3_proxy(
        s3: &S3Server,
        keys: &[(String, String)],
        cache: ProxyCache,
    ) -> anyhow::Result<Self> {
        let map: String = keys
            .iter()
            .map(|(path, key)| format!("    \"{path}\" /{S3_BUCKET}/{key};\n"))
            .collect();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("nginx/s3sign.js");
        let caching = match cache {
            ProxyCache::Off => "proxy_buffering off;".to_owned(),
            ProxyCache::Disk => "proxy_cache sites; proxy_cache_key $uri; \
                 proxy_cache_valid 200 1h; proxy_cache_lock on; \
                 proxy_ignore_headers Cache-Control Expires Set-Cookie;"
                .to_owned(),
        };
        let server = format!(
            "js_import s3 from {script};
  js_var $s3_amz_date;
  js_var $s3_host {s3};
  js_var $s3_region {S3_REGION};
  js_var $s3_access_key {access};
  js_var $s3_secret_key {secret};
  js_set $s3_authorization s3.authorization;
  js_set $s3_date s3.amzDate;
  map $uri $s3_key {{
    default \"\";
{map}  }}
  upstream s3 {{ server {s3}; keepalive 64; }}
  proxy_cache_path {{dir}}/cache levels=1:2 keys_zone=sites:10m max_size=2g inactive=1h use_temp_path=off;
  server {{
    listen 127.0.0.1:{{port}};
    # With TCP_CORK, cache hits of 64 KiB and more waited for a delayed ACK: 25 requests/s
    # per connection instead of 20,000.
    tcp_nopush off;
    location / {{
      if ($s3_key = \"\") {{ return 404; }}
      rewrite ^ $s3_key break;
      proxy_pass http://s3;
      proxy_http_version 1.1;
      proxy_pass_request_headers off;
      proxy_set_header Connection \"\";
      proxy_set_header Host $s3_host;
      proxy_set_header Authorization $s3_authorization;
      proxy_set_header x-amz-date $s3_date;
      proxy_set_header x-amz-content-sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855;
      proxy_hide_header x-amz-request-id;
      {caching}
    }}
  }}",
            script = script.display(),
            s3 = s3.addr,
            access = S3_KEY.0,
            secret = S3_KEY.1,
        );
        Self::start(
            "load_module /usr/lib/nginx/modules/ngx_http_js_module.so;",
            &server,
        )
    }

    /// Starts nginx with `http` inside its `http` block (`{port}` and `{dir}` filled in).
    fn start(main: &str, http: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let http = http
            .replace("{port}", &port.to_string())
            .replace("{dir}", &dir.path().display().to_string());
        let conf = format!(
            "{main}
worker_processes 2;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log error;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  {http}
}}
",
            dir = dir.path().display(),
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let check = Command::new("nginx")
            .arg("-t")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .output()
            .context("running nginx (apt-get install nginx)")?;
        if !check.status.success() {
            bail!(
                "nginx rejected the bench configuration: {}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
        let mut process = Process::spawn(
            Command::new("nginx")
                .args(["-p"])
                .arg(dir.path())
                .args(["-c"])
                .arg(&conf_path)
                .stderr(Stdio::null()),
            "nginx (apt-get install nginx)",
        );
        wait_for_port(([127, 0, 0, 1], port).into(), &mut process, "nginx");
        Ok(Nginx {
            addr: format!("127.0.0.1:{port}"),
            process,
            _dir: dir,
        })
    }
}

impl Server for Nginx {
    fn addr(&self) -> &str {
        &self.addr
    }
    fn pids(&self) -> Vec<u32> {
        with_children(self.process.pid())
    }
}

/// Debian's Caddy serving a directory over TLS with a given certificate (`file_server`, HTTP/2
/// and HTTP/1.1 by ALPN; no admin endpoint, no automatic HTTPS, nothing logged).
pub struct Caddy {
    /// `127.0.0.1:port`.
    pub addr: String,
    process: Process,
    _dir: tempfile::TempDir,
}

impl Caddy {
    /// Serves `root` for `localhost` with `cert` and `key`.
    pub fn start_static_tls(root: &Path, cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let site = format!(
            "https://localhost:{{port}} {{
	tls {cert} {key}
	root * {root}
	file_server
}}
",
            cert = cert.display(),
            key = key.display(),
            root = root.display(),
        );
        Self::start(&site)
    }

    /// Serves `root` over plain HTTP on any host name (`file_server`).
    pub fn start_static(root: &Path) -> anyhow::Result<Self> {
        let site = format!(
            "http://:{{port}} {{
	root * {root}
	file_server
}}
",
            root = root.display(),
        );
        Self::start(&site)
    }

    /// Runs Caddy with the global options and `site` (its `{port}` filled in).
    fn start(site: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let conf = format!(
            "{{
	admin off
	auto_https off
	default_sni localhost
	storage file_system {dir}/storage
}}
{site}",
            dir = dir.path().display(),
            site = site.replace("{port}", &port.to_string()),
        );
        let conf_path = dir.path().join("Caddyfile");
        std::fs::write(&conf_path, conf)?;
        let mut process = Process::spawn(
            Command::new("caddy")
                .args(["run", "--adapter", "caddyfile", "--config"])
                .arg(&conf_path)
                .env("HOME", dir.path())
                .env("XDG_DATA_HOME", dir.path())
                .env("XDG_CONFIG_HOME", dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            "caddy (apt-get install caddy)",
        );
        wait_for_port(([127, 0, 0, 1], port).into(), &mut process, "caddy");
        Ok(Caddy {
            addr: format!("127.0.0.1:{port}"),
            process,
            _dir: dir,
        })
    }
}

impl Server for Caddy {
    fn addr(&self) -> &str {
        &self.addr
    }
    fn pids(&self) -> Vec<u32> {
        with_children(self.process.pid())
    }
}

/// The ceiling: a minimal Pingora server answering the site's files from memory with the
/// edge's headers (`bench/src/bin/pingora-ceiling.rs`), in `proxy` mode (a `pingora-proxy`
/// session per request, as the edge) or `app` mode (a bare `pingora-core` HTTP app).
pub struct Ceiling {
    /// `127.0.0.1:port`.
    pub addr: String,
    process: Process,
}

impl Ceiling {
    /// Serves `root` with the binary `ceiling` in `mode`.
    pub fn start(ceiling: &Path, root: &Path, mode: &str) -> anyhow::Result<Self> {
        let port = free_port();
        let mut process = Process::spawn(
            Command::new(ceiling)
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .arg("--root")
                .arg(root)
                .args(["--mode", mode])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            "pingora-ceiling",
        );
        wait_for_port(
            ([127, 0, 0, 1], port).into(),
            &mut process,
            "pingora-ceiling",
        );
        Ok(Ceiling {
            addr: format!("127.0.0.1:{port}"),
            process,
        })
    }
}

impl Server for Ceiling {
    fn addr(&self) -> &str {
        &self.addr
    }
    fn pids(&self) -> Vec<u32> {
        with_children(self.process.pid())
    }
}

/// The original design's edge: a Node http-proxy forwarding every request, no cache
/// (`bench/node/proxy.js`, installed with `npm ci`). Given keep-alive to its upstream, which
/// the original did not have: a charitable baseline.
pub struct NodeProxy {
    /// `127.0.0.1:port`.
    pub addr: String,
    process: Process,
}

impl NodeProxy {
    /// Starts the proxy in front of `target` (`127.0.0.1:port`).
    pub fn start(target: &str) -> anyhow::Result<Self> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("node");
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefer-offline"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .status()
            .context("npm")?;
        if !status.success() {
            bail!("npm ci in bench/node failed");
        }
        let port = free_port();
        let mut process = Process::spawn(
            Command::new("node")
                .arg("proxy.js")
                .current_dir(&dir)
                .env("PORT", port.to_string())
                .env("TARGET", format!("http://{target}"))
                .stdout(Stdio::null()),
            "node",
        );
        wait_for_port(([127, 0, 0, 1], port).into(), &mut process, "node proxy");
        Ok(NodeProxy {
            addr: format!("127.0.0.1:{port}"),
            process,
        })
    }
}

impl Server for NodeProxy {
    fn addr(&self) -> &str {
        &self.addr
    }
    fn pids(&self) -> Vec<u32> {
        vec![self.process.pid()]
    }
}
