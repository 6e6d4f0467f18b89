//! The sites proxy: Pingora's request phases mapped onto serving static sites from S3.
//!
//! * `request_filter` decides everything from the host and the manifest: control plane or site,
//!   method, path → file (or redirect, or 404 page), preconditions (304/412), range (206/416),
//!   precompressed variant, object cache hit. Only a cache miss continues to S3.
//! * `upstream_peer` / `upstream_request_filter`: the control plane's socket, or a SigV4-signed
//!   GET of the object key with none of the client's headers (a range is re-derived from ours).
//! * `response_filter` / `response_body_filter`: our headers instead of S3's, S3 errors replaced
//!   by a small page, small bodies copied into the object cache as they stream.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use gitdeploy_core::host::{is_health_probe, route_host, HostRoute};
use gitdeploy_core::{DeploymentId, Resolution, SitePath};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::access_log::AccessLog;
use crate::cache::{Claim, ManifestCache, ManifestError, ObjectCache, ObjectKey};
use crate::client_addr::TrustedProxies;
use crate::control::{HostRules, CLIENT_HEADER};
use crate::draining::Draining;
use crate::metrics::EdgeMetrics;
use crate::origin::S3Origin;
use crate::respond::{error_page, html_response, send, send_error, FilePlan};
use crate::serving::conditional::{self, Conditions, Precondition};
use crate::serving::encoding;
use crate::serving::range::{self, RangeOutcome};
use crate::tls_routes::TlsRoutes;

mod ctx;
mod labels;
mod protect;
mod skew;
pub use ctx::RequestCtx;
use ctx::{ObjectRequest, Target};
use gitdeploy_api::AliasResolver;

/// How long one write to a slow client may take before the connection is dropped.
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request waits for another request's fill of the same object before going to S3
/// itself.
const FILL_WAIT: Duration = Duration::from_secs(10);

/// The sites proxy.
pub struct SitesProxy {
    hosts: HostRules,
    origin: Arc<S3Origin>,
    manifests: Arc<ManifestCache>,
    objects: Arc<ObjectCache>,
    control_plane: HttpPeer,
    metrics: EdgeMetrics,
    aliases: Arc<dyn AliasResolver>,
    draining: Draining,
    tls: TlsRoutes,
    trusted: TrustedProxies,
    access_log: Option<Arc<AccessLog>>,
    traffic: Option<Arc<crate::traffic::TrafficRecorder>>,
    visitors: protect::Gate,
}

impl SitesProxy {
    /// A proxy serving sites from `origin` and forwarding control-plane hosts to `control_plane`.
    pub fn new(
        hosts: HostRules,
        origin: Arc<S3Origin>,
        manifests: Arc<ManifestCache>,
        objects: Arc<ObjectCache>,
        control_plane: HttpPeer,
        metrics: EdgeMetrics,
        aliases: Arc<dyn AliasResolver>,
    ) -> Self {
        SitesProxy {
            hosts,
            origin,
            manifests,
            objects,
            control_plane,
            aliases,
            draining: Draining::default(),
            tls: TlsRoutes::default(),
            trusted: TrustedProxies::default(),
            access_log: None,
            traffic: None,
            visitors: protect::Gate::new(metrics.clone()),
            metrics,
        }
    }

    /// Responses close their connections once `draining` is on (see [`crate::public`]).
    pub fn with_draining(mut self, draining: Draining) -> Self {
        self.draining = draining;
        self
    }

    /// Whose `X-Forwarded-For` names the client (see [`crate::client_addr`]).
    pub fn with_trusted_proxies(mut self, trusted: TrustedProxies) -> Self {
        self.trusted = trusted;
        self
    }

    /// Every request (or the sampled share) logged (see [`crate::access_log`]).
    pub fn with_access_log(mut self, log: Option<Arc<AccessLog>>) -> Self {
        self.access_log = log;
        self
    }

    /// Per-project traffic counted (see [`crate::traffic`]).
    pub fn with_traffic(mut self, traffic: Arc<crate::traffic::TrafficRecorder>) -> Self {
        self.traffic = Some(traffic);
        self
    }

    /// ACME challenges and HTTPS redirects (see [`crate::tls_routes`]).
    pub fn with_tls(mut self, tls: TlsRoutes) -> Self {
        self.tls = tls;
        self
    }
}

impl SitesProxy {
    /// Decides a site request for `label` (reached as `host`); `Ok(true)` when the response
    /// was already sent.
    async fn route_site(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        label: &str,
        host: &str,
    ) -> Result<bool> {
        let method = session.req_header().method.clone();
        let head = method == http::Method::HEAD;
        let login = session.req_header().uri.path() == protect::LOGIN_PATH;
        if method != http::Method::GET && !head && !login {
            let body = error_page(405, "Sites accept GET and HEAD only.");
            let mut resp = html_response(405, body.len())?;
            resp.insert_header("allow", "GET, HEAD")?;
            return send(session, resp, body, false).await;
        }
        session.set_write_timeout(Some(CLIENT_WRITE_TIMEOUT));
        // Filled only for a project's production host (no allocation otherwise).
        let mut earlier = None;
        let Some(site) = self.site_of(session, label, &mut earlier).await else {
            return send_error(session, 404, "There is no site at this address.", head).await;
        };
        let (mut id, project) = (site.id, site.project);
        if ctx.logged {
            ctx.deployment = Some(id.clone());
            ctx.project = project.map(str::to_owned);
        }
        let mut manifest = match self.manifests.get(&id).await {
            Ok(m) => {
                // Manifests from before the project was recorded: the alias names it.
                if ctx.project.is_none() && m.project.is_none() {
                    ctx.project = project.map(str::to_owned);
                }
                ctx.manifest = Some(m.clone());
                m
            }
            Err(e) => {
                return match e.as_ref() {
                    ManifestError::Missing => {
                        send_error(session, 404, "There is no site at this address.", head).await
                    }
                    other => {
                        tracing::error!(%id, "manifest unavailable: {other}");
                        send_error(session, 502, "The site is temporarily unavailable.", head).await
                    }
                };
            }
        };
        // Visitor protection, before anything about the path is answered.
        let view = match (site.view, manifest.project.as_deref()) {
            (Some(view), _) => Some(view),
            (None, Some(project)) => self.aliases.project(project).await,
            (None, None) => None,
        };
        let protection = view
            .and_then(|v| v.protection.clone())
            .filter(|p| p.covers(site.production));
        if login {
            return match protection {
                Some(p) => {
                    let client = crate::request_info::client(session, &self.trusted);
                    self.visitors.login(session, p, host, client).await
                }
                None => send_error(session, 404, "This page could not be found.", head).await,
            };
        }
        if let Some(p) = &protection {
            if !self.visitors.admits(session, p, host) {
                return self.visitors.turn_away(session, head).await;
            }
        }
        let private = protection.is_some();
        let path = match SitePath::parse(session.req_header().uri.path()) {
            Ok(p) => p,
            Err(e) => return send_error(session, 400, &format!("Bad path: {e}."), head).await,
        };
        let query = session.req_header().uri.query().map(str::to_owned);
        let resolved = match manifest.resolve(&path, query.as_deref()) {
            Resolution::File { path, status, .. } => match manifest.file(path) {
                Some(file) => Some((file.clone(), status)),
                None => {
                    return send_error(session, 502, "The site is temporarily unavailable.", head)
                        .await
                }
            },
            Resolution::Redirect { location, status } => {
                let mut resp = html_response(status, 0)?;
                resp.insert_header("location", location)?;
                return send(session, resp, Bytes::new(), head).await;
            }
            Resolution::NotFound => None,
        };
        // Skew protection: what production cannot answer may be an earlier build's chunk.
        let skewed = match &resolved {
            Some((_, status)) if *status != 404 => None,
            _ => match earlier.as_deref() {
                None | Some([]) => None,
                Some(earlier) => {
                    skew::earlier_file(&self.manifests, earlier, path.relative()).await
                }
            },
        };
        let (file, status) = match (skewed, resolved) {
            (Some((earlier_id, earlier_manifest, file)), _) => {
                if ctx.logged {
                    ctx.deployment = Some(earlier_id.clone());
                }
                ctx.manifest = Some(earlier_manifest.clone());
                (id, manifest) = (earlier_id, earlier_manifest);
                (file, 200)
            }
            (None, Some(found)) => found,
            (None, None) => {
                return send_error(session, 404, "This page could not be found.", head).await
            }
        };
        let req = session.req_header();
        // By known names: a lookup by a string parses the name first, each time.
        let header = |name: &http::HeaderName| req.headers.get(name).map(|v| v.as_bytes());
        let (modified, last_modified) = manifest.modified();
        let mut plan = FilePlan {
            file,
            status,
            encoding: None,
            range: None,
            modified: (modified, last_modified.clone()),
            extra: manifest.extra_headers(&path).cloned().collect(),
            private,
        };
        if status == 200 {
            // Validators are per representation: pick the variant first.
            let range_requested = !head && header(&http::header::RANGE).is_some();
            if !range_requested {
                plan.encoding = encoding::choose(
                    header(&http::header::ACCEPT_ENCODING),
                    plan.entry().encodings.keys().copied(),
                );
            }
            let conditions = Conditions {
                if_match: header(&http::header::IF_MATCH),
                if_none_match: header(&http::header::IF_NONE_MATCH),
                if_modified_since: header(&http::header::IF_MODIFIED_SINCE),
                if_unmodified_since: header(&http::header::IF_UNMODIFIED_SINCE),
            };
            match conditional::evaluate(&conditions, plan.etag(), plan.modified.0) {
                Precondition::Proceed => {}
                Precondition::NotModified => {
                    let resp = plan.not_modified()?;
                    session.write_response_header(Box::new(resp), true).await?;
                    return Ok(true);
                }
                Precondition::Failed => {
                    return send_error(session, 412, "The precondition failed.", head).await;
                }
            }
            if range_requested {
                let size = plan.representation_size();
                match range::evaluate(
                    header(&http::header::RANGE),
                    header(&http::header::IF_RANGE),
                    plan.etag(),
                    plan.modified.0,
                    size,
                ) {
                    RangeOutcome::Full => {}
                    RangeOutcome::Partial { start, end } => plan.range = Some((start, end)),
                    RangeOutcome::Unsatisfiable => {
                        let body = error_page(416, "The requested range is not available.");
                        let mut resp = html_response(416, body.len())?;
                        resp.insert_header("content-range", format!("bytes */{size}"))?;
                        return send(session, resp, body, false).await;
                    }
                }
            }
        }
        let cache_key = ObjectKey::of(&id, &plan.file.path, plan.entry(), plan.encoding);
        let mut fill_guard = None;
        if self.objects.admits(plan.representation_size()) {
            // One lookup for a hit; a miss claims the fill and looks again after it.
            let mut cached = self.objects.get(&cache_key);
            if cached.is_none() && !head && plan.range.is_none() {
                match self.objects.claim(&cache_key) {
                    Claim::Leader(guard) => fill_guard = Some(guard),
                    Claim::Follower(mut done) => {
                        // Either way, look again: on success the body is cached now.
                        let _ = tokio::time::timeout(FILL_WAIT, done.changed()).await;
                    }
                }
                cached = self.objects.get(&cache_key);
            }
            if let Some(body) = cached {
                ctx.cache = "hit";
                self.metrics.object_cache_lookup(true);
                let body = match plan.range {
                    Some((start, end)) => body.slice(start as usize..=end as usize),
                    None => body,
                };
                let resp = plan.response()?;
                return send(session, resp, body, head).await;
            }
        }
        let key =
            self.origin
                .layout()
                .representation(&id, &plan.file.path, plan.entry(), plan.encoding);
        ctx.cache = "miss";
        self.metrics.object_cache_lookup(false);
        ctx.target = Target::Object(Box::new(ObjectRequest {
            key,
            cache_key,
            plan,
            head,
            fill: None,
            fill_guard,
            error_page: None,
        }));
        Ok(false)
    }
}

#[async_trait]
impl ProxyHttp for SitesProxy {
    type CTX = RequestCtx;

    fn init_downstream_modules(&self, modules: &mut pingora_core::modules::http::HttpModules) {
        // Not Pingora's default compression module (off, yet built, called and dropped on every
        // request, ~0.9k instructions): files are served in the precompressed variant chosen
        // from the manifest, and nothing else here is ever compressed on the fly.
        // HSTS goes out over TLS only: without a TLS listener no request pays for the module.
        if self.tls.certificates.is_some() {
            modules.add_module(Box::new(crate::hsts::HstsModule));
        }
    }

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.access_log.as_ref().is_some_and(|l| l.wants()))
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Pipelined requests are answered in order (RFC 9112 §9.3.2), not dropped. Not for a
        // protocol upgrade: what follows it on the connection is the new protocol's.
        let upgrade = crate::upgrade::is_upgrade(session.req_header());
        session.as_downstream_mut().set_pipelining_enabled(!upgrade);
        if self.draining.is_on() {
            session.set_keepalive(None);
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let head = session.req_header().method == http::Method::HEAD;
        if let Some(sent) = self.tls.answer_challenge(session).await? {
            return Ok(sent);
        }
        let host = match crate::request_info::host(session) {
            Ok(host) => host.unwrap_or_default(),
            Err(why) => {
                session.set_keepalive(None);
                return send_error(session, 400, &format!("Bad request: {why}."), head).await;
            }
        };
        if ctx.logged {
            ctx.host = Some(host.clone());
        }
        let route = match host.is_empty() {
            true => HostRoute::Unknown,
            false => route_host(&host, &self.hosts.domain, &self.hosts.control_hosts),
        };
        match route {
            HostRoute::ControlPlane if crate::upgrade::is_upgrade(session.req_header()) => {
                // Relayed by us: Pingora's own upgrade proxying can close the stream at once.
                let client = crate::request_info::client(session, &self.trusted);
                crate::upgrade::relay_to(session, &self.control_plane, client).await
            }
            HostRoute::ControlPlane => {
                ctx.target = Target::ControlPlane;
                Ok(false)
            }
            HostRoute::Site(label) => {
                if let Some(sent) = self.tls.to_https(session, &host, false, head).await? {
                    return Ok(sent);
                }
                self.route_site(session, ctx, &label, &host).await
            }
            // A custom domain serves its project exactly as `<project>.<domain>` does.
            HostRoute::Custom(domain) => match self.aliases.custom_domain(&domain).await {
                Some(project) => {
                    if let Some(sent) = self.tls.to_https(session, &domain, true, head).await? {
                        return Ok(sent);
                    }
                    self.route_site(session, ctx, &project, &domain).await
                }
                None => send_error(session, 404, "There is no site at this address.", head).await,
            },
            // A load balancer's health check, addressed to our IP: the API answers it as its own.
            HostRoute::Unknown if is_health_probe(&host, session.req_header().uri.path()) => {
                ctx.target = Target::ControlPlane;
                ctx.probe = true;
                Ok(false)
            }
            HostRoute::Unknown => {
                send_error(session, 404, "There is no site at this address.", head).await
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        match ctx.target {
            Target::ControlPlane => Ok(Box::new(self.control_plane.clone())),
            Target::Object(_) => Ok(Box::new(self.origin.peer())),
            Target::Answered => Error::e_explain(
                ErrorType::InternalError,
                "no upstream for an answered request",
            ),
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let obj = match &ctx.target {
            Target::Object(obj) => obj,
            Target::ControlPlane => {
                // The API learns whom the request stands for from us alone.
                upstream.remove_header(CLIENT_HEADER);
                // Hop-by-hop: the client's `Connection: close` ends the client's connection,
                // not the pooled one to the API (which would then be reused closed: a 502).
                upstream.remove_header(&http::header::CONNECTION);
                if let Some(client) = crate::request_info::client(session, &self.trusted) {
                    upstream.insert_header(CLIENT_HEADER, client.to_string())?;
                }
                if ctx.probe {
                    upstream.insert_header(http::header::HOST, self.hosts.domain.as_str())?;
                }
                return Ok(());
            }
            Target::Answered => return Ok(()),
        };
        let method = if obj.head { "HEAD" } else { "GET" };
        let path = self.origin.object_path(&obj.key);
        // A fresh request: none of the client's headers (cookies, authorization, x-amz-*) reach S3.
        let mut req = RequestHeader::build(method, path.as_bytes(), Some(6))?;
        let signed = self
            .origin
            .sign(method, &path)
            .map_err(|e| Error::explain(ErrorType::InternalError, e.to_string()))?;
        for (name, value) in signed {
            req.insert_header(name, value)?;
        }
        if let Some((start, end)) = obj.plan.range {
            req.insert_header("range", format!("bytes={start}-{end}"))?;
        }
        *upstream = req;
        ctx.s3_sent = Some(std::time::Instant::now());
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Target::Object(obj) = &mut ctx.target else {
            return Ok(());
        };
        let s3_status = upstream.status.as_u16();
        if let Some(sent) = ctx.s3_sent {
            self.metrics
                .s3_latency
                .with_label_values(&["object"])
                .observe(sent.elapsed().as_secs_f64());
        }
        let expected = if obj.plan.range.is_some() { 206 } else { 200 };
        let s3_length = upstream
            .headers
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if s3_status != expected || (!obj.head && s3_length != Some(obj.plan.body_len())) {
            // A missing or different object than the manifest promises is an origin failure.
            tracing::warn!(key = %obj.key, status = s3_status, ?s3_length, "unexpected S3 answer");
            self.metrics
                .s3_requests
                .with_label_values(&["object", "error"])
                .inc();
            let page = error_page(502, "The site is temporarily unavailable.");
            *upstream = html_response(502, page.len())?;
            obj.error_page = Some(page);
            return Ok(());
        }
        self.metrics
            .s3_requests
            .with_label_values(&["object", "ok"])
            .inc();
        *upstream = obj.plan.response()?;
        if obj.fill_guard.is_some() {
            obj.fill = Some(BytesMut::with_capacity(obj.plan.body_len() as usize));
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        let Target::Object(obj) = &mut ctx.target else {
            return Ok(None);
        };
        if let Some(page) = &obj.error_page {
            *body = end_of_stream.then(|| page.clone());
            return Ok(None);
        }
        if let (Some(fill), Some(chunk)) = (obj.fill.as_mut(), body.as_ref()) {
            fill.extend_from_slice(chunk);
        }
        if end_of_stream {
            if let Some(fill) = obj.fill.take() {
                // Only a complete body is cached.
                if fill.len() as u64 == obj.plan.body_len() {
                    self.objects.insert(obj.cache_key.clone(), fill.freeze());
                }
            }
            obj.fill_guard = None;
        }
        Ok(None)
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        // A client that goes away mid-response is not an error of ours.
        matches!(error.esource(), pingora_error::ErrorSource::Downstream)
            && matches!(
                error.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            )
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let bytes = session.body_bytes_sent() as u64;
        let control = matches!(ctx.target, Target::ControlPlane);
        self.metrics.count_request(status, ctx.cache);
        self.metrics
            .observe_latency(control, ctx.started.elapsed().as_secs_f64());
        self.metrics.bytes_sent.inc_by(bytes);
        if let (Some(traffic), Some(project)) = (&self.traffic, ctx.project()) {
            traffic.record(project, session.req_header().uri.path(), status, bytes);
        }
        if let (true, Some(log)) = (ctx.logged, &self.access_log) {
            let served = crate::access_log::Served {
                status,
                cache: ctx.cache,
                started: ctx.started,
                host: ctx.host.as_deref(),
                project: ctx.project(),
                deployment: ctx.deployment.as_ref().map(DeploymentId::as_str),
                client: crate::request_info::client(session, &self.trusted),
            };
            crate::access_log::log_request(log, session, served);
        }
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let downstream_gone = matches!(e.esource(), pingora_error::ErrorSource::Downstream);
        let (status, message) = match ctx.target {
            _ if downstream_gone => (0, ""),
            Target::Answered => (0, ""),
            Target::Object(_) | Target::ControlPlane => crate::respond::upstream_failure(e),
        };
        if matches!(ctx.target, Target::Object(_)) && !downstream_gone {
            self.metrics
                .s3_requests
                .with_label_values(&["object", "error"])
                .inc();
        }
        if status > 0 {
            tracing::warn!("upstream failure ({status}): {e}");
            let head = session.req_header().method == http::Method::HEAD;
            let _ = send_error(session, status, message, head).await;
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }
}
