// GitDeploy dashboard: a client of the public API and nothing else. No framework, no build
// step; every piece of server text goes into the page as text, never as HTML.
"use strict";

const TOKEN_KEY = "gitdeploy.token";
const main = document.getElementById("main");

// ---------- small helpers ----------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

function token() { return localStorage.getItem(TOKEN_KEY) || ""; }

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error && body.error.code;
  }
}

async function api(path, options = {}) {
  const headers = { Accept: "application/json" };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  let body = null;
  try { body = await resp.json(); } catch (_) { /* not JSON */ }
  if (resp.status === 401) {
    signIn(location.hash);
    throw new ApiError(401, body);
  }
  if (!resp.ok) throw new ApiError(resp.status, body);
  return body;
}

function ago(ms) {
  if (!ms) return "";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

function duration(ms) {
  if (ms === undefined || ms === null) return "";
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  return `${Math.floor(s / 60)}m ${Math.round(s % 60)}s`;
}

function buildTime(d) {
  return d.started_unix_ms && d.finished_unix_ms ? duration(d.finished_unix_ms - d.started_unix_ms) : "";
}

function badge(status) { return h("span", { class: `badge ${status}` }, status); }

function shortCommit(c) { return c ? c.slice(0, 10) : ""; }

function showError(err) {
  if (err instanceof ApiError && err.status === 401) return;
  main.replaceChildren(h("div", { class: "banner bad", role: "alert" }, err.message));
}

function setTitle(text) {
  document.title = text ? `${text} · GitDeploy` : "GitDeploy";
}

// ---------- validation (mirrors the server's rules; the server has the last word) ----------

const REPO_SCHEMES = ["https:", "http:", "git:", "ssh:"];

function repoError(value) {
  const v = value.trim();
  if (!v) return "Enter the URL of a git repository.";
  if (v.startsWith("/")) return null; // a path on the server, if the server allows it
  if (/^[\w.-]+@[\w.-]+:[^/]/.test(v)) return null; // scp-like git@host:owner/repo
  let url;
  try { url = new URL(v); } catch (_) {
    return "That is not a URL. Use the repository's https:// clone URL.";
  }
  if (!REPO_SCHEMES.includes(url.protocol)) return `${url.protocol} URLs are not supported; use https://.`;
  if (!url.hostname) return "The URL needs a host.";
  if (url.pathname.length <= 1) return "The URL needs the repository's path, e.g. https://github.com/owner/repo.";
  return null;
}

function projectError(value) {
  const v = value.trim();
  if (!v) return null;
  if (!/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(v)) {
    return "Use 1-63 lowercase letters, digits and hyphens (not at the ends).";
  }
  return null;
}

function field(form, name, message) {
  const input = form.elements[name];
  const slot = form.querySelector(`[data-error-for="${name}"]`);
  if (input) input.setAttribute("aria-invalid", message ? "true" : "false");
  if (slot) slot.textContent = message || "";
  return !message;
}

// Lines of KEY=VALUE; blank lines and # comments skipped.
function parseEnv(text) {
  const env = {};
  for (const [i, raw] of text.split("\n").entries()) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const eq = line.indexOf("=");
    if (eq <= 0) throw new Error(`Line ${i + 1}: expected NAME=value`);
    env[line.slice(0, eq).trim()] = line.slice(eq + 1);
  }
  return env;
}

// ---------- ANSI colours (SGR only; every other escape sequence is dropped) ----------

function ansiSpans(text) {
  const out = [];
  let fg = null, bold = false;
  const parts = text.split(/\x1b\[([0-9;]*)([A-Za-z])/);
  for (let i = 0; i < parts.length; i++) {
    if (i % 3 === 0) {
      const chunk = parts[i].replace(/[\x00-\x08\x0b-\x1f\x7f]/g, "");
      if (!chunk) continue;
      if (fg === null && !bold) { out.push(chunk); continue; }
      const cls = [fg !== null ? `ansi-${fg}` : "", bold ? "ansi-bold" : ""].join(" ").trim();
      out.push(h("span", { class: cls }, chunk));
    } else if (i % 3 === 1 && parts[i + 1] === "m") {
      for (const code of (parts[i] || "0").split(";").map(Number)) {
        if (code === 0) { fg = null; bold = false; }
        else if (code === 1) bold = true;
        else if (code === 22) bold = false;
        else if (code >= 30 && code <= 37) fg = code;
        else if (code >= 90 && code <= 97) fg = code - 60;
        else if (code === 39) fg = null;
      }
    }
  }
  return out;
}

// ---------- views ----------

function signIn(returnTo) {
  setTitle("Sign in");
  const form = h("form", { class: "card", novalidate: true },
    h("h1", {}, "Sign in"),
    h("p", {}, "This GitDeploy API needs a token. Ask your operator, or use the one you passed to ",
      h("code", {}, "gitdeploy up --api-token"), "."),
    h("label", { for: "token" }, "API token"),
    h("input", { id: "token", name: "token", type: "password", autocomplete: "current-password", required: true }),
    h("p", { class: "field-error", "data-error-for": "token", role: "alert" }),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Sign in")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const value = form.elements.token.value.trim();
    if (!field(form, "token", value ? null : "Enter a token.")) return;
    const resp = await fetch("/api/deployments?limit=1", { headers: { Authorization: `Bearer ${value}` } });
    if (resp.status === 401) { field(form, "token", "That token was refused."); return; }
    localStorage.setItem(TOKEN_KEY, value);
    updateNav();
    if (!returnTo || returnTo === "#/signin" || returnTo === location.hash) route();
    else location.hash = returnTo;
  });
  main.replaceChildren(form);
  form.elements.token.focus();
}

// Where a deployment's files came from: its repository, or "local folder" (`deploy .` sends
// its source, built here; `deploy --prebuilt` its files as they are).
function sourceOf(d) {
  if (d.source !== "local folder") return d.repo;
  return d.archive ? "local folder (built here)" : "local folder";
}

function deploymentRow(d, extra) {
  return h("li", { class: "row" },
    badge(d.status),
    h("div", { class: "main" },
      h("a", { href: `#/deployments/${d.id}` }, d.id),
      " ", h("span", { class: "meta source" }, d.project ? `${d.project} · ` : "", sourceOf(d), d.ref ? ` @ ${d.ref}` : "")),
    h("span", { class: "meta" }, shortCommit(d.commit)),
    h("span", { class: "meta" }, buildTime(d)),
    h("span", { class: "meta", title: new Date(d.created_unix_ms).toISOString() }, ago(d.created_unix_ms)),
    extra);
}

async function home() {
  setTitle("");
  const form = h("form", { class: "card", novalidate: true, id: "deploy-form" },
    h("h1", {}, "Deploy a repository"),
    h("label", { for: "repo" }, "Git repository URL"),
    h("input", { id: "repo", name: "repo", type: "url", required: true, placeholder: "https://github.com/owner/site.git",
      autocomplete: "off", spellcheck: "false", "aria-describedby": "repo-error" }),
    h("p", { class: "field-error", id: "repo-error", "data-error-for": "repo", role: "alert" }),
    h("div", { class: "grid2" },
      h("div", {},
        h("label", { for: "project" }, "Project ", h("span", { class: "hint" }, "(optional: gives a stable URL)")),
        h("input", { id: "project", name: "project", type: "text", autocomplete: "off", spellcheck: "false",
          "aria-describedby": "project-error" }),
        h("p", { class: "field-error", id: "project-error", "data-error-for": "project", role: "alert" })),
      h("div", {},
        h("label", { for: "ref" }, "Branch, tag or commit ", h("span", { class: "hint" }, "(optional)")),
        h("input", { id: "ref", name: "ref", type: "text", autocomplete: "off", spellcheck: "false" }),
        h("p", { class: "field-error", "data-error-for": "ref", role: "alert" }))),
    h("details", {},
      h("summary", {}, "Advanced build settings"),
      h("div", { class: "grid2" },
        ...[["install_command", "Install command", "detected, e.g. npm ci"],
          ["build_command", "Build command", "detected, e.g. npm run build"],
          ["output_dir", "Output directory", "detected, e.g. dist"],
          ["root_dir", "Root directory", "repository root"]].map(([name, label, ph]) => h("div", {},
          h("label", { for: name }, label),
          h("input", { id: name, name, type: "text", placeholder: ph, autocomplete: "off", spellcheck: "false" })))),
      h("label", { for: "env" }, "Environment variables ", h("span", { class: "hint" }, "(NAME=value, one per line)")),
      h("textarea", { id: "env", name: "env", rows: 3, spellcheck: "false" }),
      h("p", { class: "field-error", "data-error-for": "env", role: "alert" }),
      h("label", { class: "check" }, h("input", { type: "checkbox", name: "spa" }), "Single-page app (unknown paths serve index.html)"),
      h("label", { class: "check" }, h("input", { type: "checkbox", name: "clean_urls" }), "Clean URLs (/about serves about.html)")),
    h("p", { class: "form-error", "data-error-for": "form", role: "alert" }),
    h("div", { class: "actions" }, h("button", { type: "submit", id: "deploy" }, "Deploy")));

  form.elements.repo.addEventListener("blur", () => {
    if (form.elements.repo.value) field(form, "repo", repoError(form.elements.repo.value));
  });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = form.elements;
    field(form, "form", null);
    const ok = [field(form, "repo", repoError(f.repo.value)), field(form, "project", projectError(f.project.value))];
    let env = {};
    try { env = parseEnv(f.env.value); field(form, "env", null); } catch (err) { ok.push(field(form, "env", err.message)); }
    if (ok.includes(false)) { form.querySelector("[aria-invalid=true]")?.focus(); return; }
    const body = { repo: f.repo.value.trim() };
    if (f.project.value.trim()) body.project = f.project.value.trim();
    if (f.ref.value.trim()) body.ref = f.ref.value.trim();
    const build = {};
    for (const name of ["install_command", "build_command", "output_dir", "root_dir"]) {
      if (f[name].value.trim()) build[name] = f[name].value.trim();
    }
    if (Object.keys(env).length) build.env = env;
    if (Object.keys(build).length) body.build = build;
    if (f.spa.checked || f.clean_urls.checked) body.serving = { spa: f.spa.checked, clean_urls: f.clean_urls.checked };
    f.deploy.disabled = true;
    try {
      const d = await api("/api/deployments", { method: "POST", body });
      location.hash = `#/deployments/${d.id}`;
    } catch (err) {
      const target = { invalid_repo: "repo", invalid_project: "project", invalid_ref: "ref" }[err.code] || "form";
      field(form, target, err.message);
      (target === "form" ? f.deploy : f[target]).focus();
    } finally {
      f.deploy.disabled = false;
    }
  });

  const list = h("ul", { class: "list card", "aria-label": "Recent deployments" }, h("li", { class: "empty" }, "Loading…"));
  main.replaceChildren(form, h("h2", {}, "Recent deployments"), list);
  form.elements.repo.focus();
  const { deployments } = await api("/api/deployments");
  list.replaceChildren(...(deployments.length ? deployments.map((d) => deploymentRow(d))
    : [h("li", { class: "empty" }, "No deployments yet.")]));
}

// The live log: replays from the start, follows, and on a dropped connection reconnects from
// the last sequence number it showed, so no line is shown twice or lost.
function logView(d, onFinal) {
  const pre = h("div", { class: "log", role: "log", "aria-live": "polite", "aria-label": "Build log", tabindex: "0", id: "log" });
  const jump = h("button", { type: "button", class: "jump secondary", hidden: true }, "Jump to latest ↓");
  const status = h("p", { class: "conn", "aria-live": "polite" }, "Connecting…");
  let next = 0, first = null, follow = true, pending = [], scheduled = false, done = false, ws = null, retry = 500;

  pre.addEventListener("scroll", () => {
    const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
    follow = atBottom;
    jump.hidden = atBottom;
  });
  jump.addEventListener("click", () => { follow = true; jump.hidden = true; pre.scrollTop = pre.scrollHeight; });

  function stamp(ts) {
    if (first === null) first = ts;
    const s = Math.max(0, ts - first) / 1000;
    return `${String(Math.floor(s / 60)).padStart(2, "0")}:${(s % 60).toFixed(1).padStart(4, "0")}`;
  }
  function flush() {
    scheduled = false;
    const frag = document.createDocumentFragment();
    for (const r of pending) {
      frag.append(h("div", { class: `l ${r.stream}${r.outcome ? " final" : ""}`, "data-seq": r.seq },
        h("span", { class: "ts" }, stamp(r.ts)), h("span", { class: "tx" }, ansiSpans(r.line))));
    }
    pending = [];
    pre.append(frag);
    if (follow) pre.scrollTop = pre.scrollHeight;
  }
  function add(r) {
    if (r.seq < next) return; // already shown (a replay after reconnecting)
    next = r.seq + 1;
    pending.push(r);
    if (!scheduled) { scheduled = true; requestAnimationFrame(flush); }
    if (r.outcome) { done = true; status.textContent = ""; onFinal(r.outcome); }
  }
  function connect() {
    if (done || !pre.isConnected && ws) return;
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const q = new URLSearchParams({ since: String(next), batch: "1" });
    if (token()) q.set("access_token", token());
    ws = new WebSocket(`${proto}//${location.host}/api/deployments/${d.id}/logs/ws?${q}`);
    ws.onopen = () => { status.textContent = done ? "" : "Live"; retry = 500; };
    // Batch mode: a frame carries the records that were ready together, one per line.
    ws.onmessage = (ev) => {
      for (const line of String(ev.data).split("\n")) {
        try { add(JSON.parse(line)); } catch (_) { /* ignore */ }
      }
    };
    ws.onclose = () => {
      if (done || !pre.isConnected) return;
      status.textContent = `Connection lost; reconnecting from line ${next}…`;
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 10000);
    };
  }
  connect();
  return { element: h("div", { class: "log-wrap" }, pre, jump), status, close: () => { done = true; ws && ws.close(); } };
}

async function deploymentPage(id) {
  const d = await api(`/api/deployments/${encodeURIComponent(id)}`);
  setTitle(d.id);
  const banner = h("div", { id: "outcome" });
  const info = h("dl", { class: "kv" },
    h("dt", {}, "Status"), h("dd", { id: "status" }, badge(d.status)),
    h("dt", {}, "Source"), h("dd", { id: "source" }, sourceOf(d), d.ref ? ` @ ${d.ref}` : ""),
    d.project && [h("dt", {}, "Project"), h("dd", {}, h("a", { href: `#/projects/${d.project}` }, d.project))],
    h("dt", {}, "Commit"), h("dd", { id: "commit" }, shortCommit(d.commit) || "—"),
    h("dt", {}, "Created"), h("dd", {}, new Date(d.created_unix_ms).toLocaleString()),
    h("dt", {}, "URL"), h("dd", {}, h("a", { href: d.url, target: "_blank", rel: "noopener" }, d.url)));
  const extras = deploymentExtras(d, banner);
  info.append(...extras.rows);
  const cancel = h("button", { type: "button", class: "danger", id: "cancel",
    hidden: !["queued", "building", "uploading"].includes(d.status) }, "Cancel build");
  cancel.addEventListener("click", async () => {
    if (!(await confirmDialog("Cancel this build?", `Deployment ${d.id} stops and is marked canceled.`, "Cancel build"))) return;
    try { await api(`/api/deployments/${d.id}/cancel`, { method: "POST" }); } catch (err) { alertBanner(banner, err.message); }
  });
  const log = logView(d, (outcome) => {
    cancel.hidden = true;
    document.getElementById("status")?.replaceChildren(badge(outcome.status));
    if (outcome.status === "ready") {
      banner.replaceChildren(h("div", { class: "banner ok", role: "status" },
        "Ready in ", duration(outcome.duration_ms), ` · ${outcome.files} ${outcome.files === 1 ? "file" : "files"} · `,
        h("a", { href: d.url, target: "_blank", rel: "noopener", id: "site-link" }, d.url)));
    } else {
      banner.replaceChildren(h("div", { class: outcome.status === "skipped" ? "banner" : "banner bad", role: "status" },
        outcome.status === "canceled" ? "Canceled" : outcome.status === "skipped" ? "Skipped" : "Build failed",
        outcome.status === "skipped" ? (outcome.skip_reason ? `: ${outcome.skip_reason}` : "")
          : outcome.error ? `: ${outcome.error}` : ""));
    }
    api(`/api/deployments/${d.id}`).then((now) => {
      const c = document.getElementById("commit");
      if (c) c.textContent = shortCommit(now.commit) || "—";
    }).catch(() => {});
  });
  main.replaceChildren(h("h1", {}, "Deployment ", h("code", {}, d.id)),
    h("div", { class: "card" }, info, h("div", { class: "actions" }, cancel, extras.pin)),
    banner, h("h2", {}, "Build log ", log.status), log.element);
  return log.close;
}

function alertBanner(slot, message) {
  slot.replaceChildren(h("div", { class: "banner bad", role: "alert" }, message));
}

function confirmDialog(title, text, okLabel) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true }));
}

async function projectsPage() {
  setTitle("Projects");
  const { projects } = await api("/api/projects");
  const list = h("ul", { class: "list card", "aria-label": "Projects" },
    ...(projects.length ? projects.map((p) => h("li", { class: "row" },
      h("div", { class: "main" }, h("a", { href: `#/projects/${p.name}` }, p.name), " ",
        h("span", { class: "meta" }, p.repo || "local folder")),
      p.production ? h("a", { href: p.url, target: "_blank", rel: "noopener" }, p.url) : h("span", { class: "meta" }, "no production deployment yet")))
      : [h("li", { class: "empty" }, "No projects yet. Deploy with a project name to create one.")]));
  main.replaceChildren(h("h1", {}, "Projects"), list);
}

async function projectPage(name) {
  const p = await api(`/api/projects/${encodeURIComponent(name)}`);
  setTitle(p.name);
  const notice = h("div", { "aria-live": "polite" });
  const act = async (title, text, label, path, body, method = "POST") => {
    if (!(await confirmDialog(title, text, label))) return;
    try {
      await api(path, { method, body });
      await projectPage(name);
      document.getElementById("notice")?.replaceChildren(h("div", { class: "banner ok", role: "status" }, `${label}: done.`));
    } catch (err) { alertBanner(notice, err.message); }
  };
  const rollback = h("button", { type: "button", class: "secondary", id: "rollback", disabled: !p.previous },
    "Roll back");
  rollback.addEventListener("click", () => act("Roll back production?",
    `${p.url} goes back to ${p.previous}. Nothing is rebuilt.`, "Roll back", `/api/projects/${p.name}/rollback`));
  const history = h("ul", { class: "list card", "aria-label": "Deployments" },
    ...(p.deployments.length ? p.deployments.map((d) => {
      const isProd = d.id === p.production;
      const finished = ["ready", "failed", "canceled", "skipped"].includes(d.status);
      const extra = isProd ? badge("production") : [
        d.status === "ready" && h("button", { type: "button", class: "secondary promote", "data-id": d.id,
          onclick: () => act("Promote to production?", `${p.url} will serve ${d.id}. Nothing is rebuilt.`,
            "Promote", `/api/projects/${p.name}/promote`, { deployment: d.id }) }, "Promote"),
        finished && h("button", { type: "button", class: "link delete", "data-id": d.id,
          "aria-label": `Delete deployment ${d.id}`,
          onclick: () => act("Delete this deployment?", `${d.id} and its files are removed for good.`,
            "Delete", `/api/deployments/${d.id}`, undefined, "DELETE") }, "Delete"),
      ];
      return deploymentRow(d, extra);
    }) : [h("li", { class: "empty" }, "No deployments yet.")]));
  main.replaceChildren(
    h("h1", {}, p.name),
    h("div", { id: "notice" }), notice,
    h("div", { class: "card" },
      h("dl", { class: "kv" },
        h("dt", {}, "Production"), h("dd", {}, p.production
          ? h("a", { href: p.url, target: "_blank", rel: "noopener", id: "production-url" }, p.url) : "not yet deployed"),
        h("dt", {}, "Serving"), h("dd", { id: "production-id" }, p.production || "—"),
        h("dt", {}, "Repository"), h("dd", {}, p.repo || "none: deployed from a local folder"),
        h("dt", {}, "Production branch"), h("dd", {}, p.production_branch || "default branch")),
      h("div", { class: "actions" }, rollback)),
    h("h2", {}, "Deployments"), history,
    h("h2", {}, "Previews"), previewsCard(p),
    h("h2", {}, "Traffic"), await trafficCard(p.name),
    h("h2", {}, "Custom domains"), await domainsCard(p),
    h("h2", {}, "Visitor protection"), protectionCard(p),
    h("h2", {}, "Notifications"), await notificationsCard(p),
    h("h2", {}, "GitHub"), githubCard(p),
    h("h2", {}, "Deploy hook"), deployHook(p),
    h("h2", {}, "Settings"), settingsForm(p));
}

// The project's custom domains: each with its status and what the last DNS check found.
async function domainsCard(p) {
  const domains = await api(`/api/projects/${encodeURIComponent(p.name)}/domains`);
  const notice = h("div", { "aria-live": "polite" });
  const refresh = async (message) => {
    await projectPage(p.name);
    document.getElementById("notice")?.replaceChildren(h("div", { class: "banner ok", role: "status" }, message));
  };
  const target = new URL(p.url).hostname;
  const list = h("ul", { class: "list", "aria-label": "Custom domains" },
    ...(domains.length ? domains.map((d) => h("li", { class: "row" },
      h("div", { class: "main" }, h("span", { class: "domain" }, d.domain), " ", badge(d.status),
        d.error && h("div", { class: "meta" }, d.error)),
      h("button", { type: "button", class: "link remove-domain", "aria-label": `Remove ${d.domain}`,
        onclick: async () => {
          if (!(await confirmDialog("Remove this domain?", `${d.domain} stops serving ${p.name}.`, "Remove"))) return;
          try {
            await api(`/api/projects/${encodeURIComponent(p.name)}/domains/${encodeURIComponent(d.domain)}`, { method: "DELETE" });
            await refresh(`${d.domain} removed.`);
          } catch (err) { alertBanner(notice, err.message); }
        } }, "Remove")))
      : [h("li", { class: "empty" }, "No custom domains.")]));
  const input = h("input", { id: "new-domain", type: "text", placeholder: "www.example.com", spellcheck: "false",
    autocomplete: "off" });
  const form = h("form", { class: "inline-form" },
    h("label", { for: "new-domain" }, "Add a domain ",
      h("span", { class: "hint" }, `(then point a CNAME record at ${target})`)),
    input,
    h("button", { type: "submit" }, "Add domain"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const d = await api(`/api/projects/${encodeURIComponent(p.name)}/domains`, { method: "POST", body: { domain: input.value } });
      await refresh(`${d.domain} added: point a CNAME record at ${target}.`);
    } catch (err) { alertBanner(notice, err.message); }
  });
  return h("div", { class: "card" }, notice, list, form);
}

// A secret URL that builds the production branch when anything POSTs to it (a CMS, a cron).
function deployHook(p) {
  const change = async (on) => {
    try {
      await api(`/api/projects/${p.name}`, { method: "PATCH", body: { deploy_hook: on } });
      await projectPage(p.name);
      document.getElementById("notice")?.replaceChildren(h("div", { class: "banner ok", role: "status" },
        on ? "Deploy hook created." : "Deploy hook revoked."));
    } catch (err) { alertBanner(document.getElementById("notice"), err.message); }
  };
  if (!p.deploy_hook_url) {
    return h("div", { class: "card" },
      h("p", {}, "A secret URL that builds the production branch when anything POSTs to it."),
      h("button", { type: "button", class: "secondary", onclick: () => change(true) }, "Create deploy hook"));
  }
  return h("div", { class: "card" },
    h("label", { for: "deploy-hook" }, "Deploy hook URL ", h("span", { class: "hint" }, "(keep it secret: POST to it to deploy)")),
    h("input", { id: "deploy-hook", type: "text", readonly: true, value: p.deploy_hook_url }),
    h("div", { class: "actions" },
      h("button", { type: "button", class: "danger", onclick: () => change(false) }, "Revoke deploy hook")));
}

function envRow(name, value, secret, stored) {
  const row = h("div", { class: "env-row" },
    h("input", { type: "text", name: "env-name", "aria-label": "Name", value: name, spellcheck: "false" }),
    h("input", { type: secret ? "password" : "text", name: "env-value", "aria-label": "Value", value,
      placeholder: stored ? "•••••• (unchanged)" : "", spellcheck: "false", autocomplete: "off" }),
    h("label", { class: "check" }, h("input", { type: "checkbox", name: "env-secret", checked: secret }), "secret"),
    h("button", { type: "button", class: "link", onclick: () => row.remove() }, "Remove"));
  if (stored) row.dataset.stored = name;
  return row;
}

function settingsForm(p) {
  const b = p.build || {};
  const rows = h("div", { id: "env-rows" },
    ...Object.entries(b.env || {}).map(([k, v]) => envRow(k, v, false, false)),
    ...Object.keys(b.secrets || {}).map((k) => envRow(k, "", true, true)));
  const form = h("form", { class: "card", novalidate: true, id: "settings" },
    h("div", { class: "grid2" },
      ...[["production_branch", "Production branch", p.production_branch || "", "default branch"],
        ["install_command", "Install command", b.install_command || "", "detected"],
        ["build_command", "Build command", b.build_command || "", "detected"],
        ["output_dir", "Output directory", b.output_dir || "", "detected"],
        ["root_dir", "Root directory", b.root_dir || "", "repository root"]].map(([n, label, value, ph]) => h("div", {},
        h("label", { for: `s-${n}` }, label),
        h("input", { id: `s-${n}`, name: n, type: "text", value, placeholder: ph, autocomplete: "off", spellcheck: "false" })))),
    h("label", {}, "Environment variables ", h("span", { class: "hint" }, "(secret values are write-only: leave blank to keep)")),
    rows,
    h("button", { type: "button", class: "secondary", onclick: () => rows.append(envRow("", "", false, false)) }, "Add variable"),
    h("p", { class: "form-error", "data-error-for": "form", role: "alert" }),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Save settings")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = form.elements;
    const build = { env: {}, secrets: {} };
    for (const n of ["install_command", "build_command", "output_dir", "root_dir"]) {
      if (f[n].value.trim()) build[n] = f[n].value.trim();
    }
    for (const row of rows.querySelectorAll(".env-row")) {
      const n = row.querySelector("[name=env-name]").value.trim();
      const v = row.querySelector("[name=env-value]").value;
      if (!n) continue;
      if (row.querySelector("[name=env-secret]").checked) {
        // A blank value keeps a stored secret; the server refuses a new blank one.
        build.secrets[n] = v;
      } else build.env[n] = v;
    }
    try {
      await api(`/api/projects/${p.name}`, { method: "PATCH", body: { production_branch: f.production_branch.value.trim(), build } });
      await projectPage(p.name);
      document.getElementById("notice")?.replaceChildren(h("div", { class: "banner ok", role: "status" }, "Settings saved."));
    } catch (err) { field(form, "form", err.message); }
  });
  return form;
}

// ---------- routing ----------

let closeCurrent = null;

async function route() {
  if (closeCurrent) { closeCurrent(); closeCurrent = null; }
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  try {
    if (parts[0] === "signin") signIn("#/");
    else if (parts[0] === "deployments" && parts[1]) closeCurrent = await deploymentPage(parts[1]);
    else if (parts[0] === "projects" && parts[1]) await projectPage(parts[1]);
    else if (parts[0] === "projects") await projectsPage();
    else if (parts[0] === "tokens") await tokensPage();
    else await home();
  } catch (err) { showError(err); }
  if (!main.contains(document.activeElement)) main.focus({ preventScroll: true });
}

function updateNav() {
  document.getElementById("signout").hidden = !token();
}

document.getElementById("signout").addEventListener("click", () => {
  localStorage.removeItem(TOKEN_KEY);
  updateNav();
  location.hash = "#/signin";
});
window.addEventListener("hashchange", route);
updateNav();
route();
