// The team workflow in the dashboard: a project's branch and pull request previews, its visitor
// protection, notification webhooks (with their delivery history) and GitHub connection, and
// the platform's named API tokens and audit log. Uses app.js's h(), api(), badge(), ago(),
// alertBanner() and projectPage(), which load before any page renders. Every server text goes
// into the page as text.
"use strict";

function noticeOk(message) {
  document.getElementById("notice")?.replaceChildren(h("div", { class: "banner ok", role: "status" }, message));
}

// Shown once: a secret the server will not show again, in a field that selects on focus.
function secretOnce(id, label, value) {
  const input = h("input", { id, type: "text", readonly: true, value, spellcheck: "false",
    onfocus: (e) => e.target.select() });
  return h("div", { class: "banner ok secret-once", role: "status" },
    h("label", { for: id }, label, " ", h("span", { class: "hint" }, "(shown once: copy it now)")), input);
}

// ---------- project: previews ----------

function previewsCard(p) {
  const previews = p.previews || [];
  return h("div", { class: "card" },
    h("ul", { class: "list", "aria-label": "Previews" },
      ...(previews.length ? previews.map((a) => h("li", { class: "row" },
        h("span", { class: "badge preview" }, a.pull_request !== undefined ? `PR #${a.pull_request}` : "branch"),
        h("div", { class: "main" },
          h("a", { href: a.url, target: "_blank", rel: "noopener", class: "preview-url" }, a.url),
          " ", h("span", { class: "meta" }, a.branch !== undefined ? a.branch : "")),
        a.deployment
          ? h("a", { href: `#/deployments/${a.deployment}`, class: "meta" }, a.deployment)
          : h("span", { class: "meta" }, "building")))
        : [h("li", { class: "empty" },
          "No previews yet: every pushed branch and pull request gets a stable URL here.")])));
}

// ---------- project: visitor protection ----------

function protectionCard(p) {
  const pr = p.protection;
  const notice = h("div", { "aria-live": "polite" });
  const state = !pr ? "Off: every host of the project is public."
    : `${pr.scope === "all" ? "Every host" : "Previews (deployment and branch URLs)"} ask for ${pr.password ? "a password" : "the bypass token"}` +
      `${pr.bypass_token ? "; a bypass token is set" : ""}.`;
  const scope = h("select", { id: "protection-scope", name: "scope" },
    h("option", { value: "previews", selected: !pr || pr.scope === "previews" }, "Previews only"),
    h("option", { value: "all", selected: pr?.scope === "all" }, "Everything, production too"));
  const password = h("input", { id: "protection-password", name: "password", type: "password",
    autocomplete: "new-password", placeholder: pr?.password ? "•••••• (unchanged)" : "" });
  const bypass = h("input", { type: "checkbox", name: "bypass", id: "protection-bypass" });
  const form = h("form", { class: "stack", novalidate: true, id: "protection" },
    h("p", { id: "protection-state" }, state),
    h("div", { class: "grid2" },
      h("div", {}, h("label", { for: "protection-scope" }, "Protect"), scope),
      h("div", {}, h("label", { for: "protection-password" }, "Visitor password ",
        h("span", { class: "hint" }, "(8+ characters; a new one signs everyone out)")), password)),
    h("label", { class: "check" }, bypass, "Make a new bypass token (for CI: header x-gitdeploy-bypass)"),
    h("p", { class: "form-error", "data-error-for": "form", role: "alert" }),
    h("div", { class: "actions" },
      h("button", { type: "submit" }, pr ? "Save protection" : "Protect"),
      pr && h("button", { type: "button", class: "danger", id: "protection-off", onclick: async () => {
        try {
          await api(`/api/projects/${p.name}`, { method: "PATCH", body: { protection: null } });
          await projectPage(p.name);
          noticeOk("Protection turned off.");
        } catch (err) { alertBanner(notice, err.message); }
      } }, "Turn off")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = { scope: scope.value };
    if (password.value) body.password = password.value;
    if (bypass.checked) body.bypass_token = true;
    try {
      const saved = await api(`/api/projects/${p.name}`, { method: "PATCH", body: { protection: body } });
      await projectPage(p.name);
      noticeOk("Protection saved.");
      const token = saved.protection?.bypass_token_value;
      if (token) document.getElementById("protection-secret")?.replaceChildren(secretOnce("bypass-token", "Bypass token", token));
    } catch (err) { field(form, "form", err.message); }
  });
  return h("div", { class: "card" }, notice, h("div", { id: "protection-secret" }), form);
}

// ---------- project: notifications and GitHub ----------

const EVENTS = ["queued", "ready", "failed", "canceled", "promoted", "rolled_back"];

async function notificationsCard(p) {
  const base = `/api/projects/${encodeURIComponent(p.name)}`;
  const [{ notifications }, { deliveries }] = await Promise.all([
    api(`${base}/notifications`), api(`${base}/deliveries?limit=20`)]);
  const notice = h("div", { "aria-live": "polite" });
  const list = h("ul", { class: "list", "aria-label": "Notification webhooks" },
    ...(notifications.length ? notifications.map((n) => h("li", { class: "row" },
      h("div", { class: "main" }, h("span", { class: "target-url" }, n.url), " ",
        h("span", { class: "meta" }, `${n.format} · ${n.events.join(", ")}`)),
      h("button", { type: "button", class: "link remove-notification", "aria-label": `Remove ${n.url}`,
        onclick: async () => {
          if (!(await confirmDialog("Remove this webhook?", `${n.url} hears of nothing more.`, "Remove"))) return;
          try {
            await api(`${base}/notifications/${n.id}`, { method: "DELETE" });
            await projectPage(p.name);
            noticeOk("Webhook removed.");
          } catch (err) { alertBanner(notice, err.message); }
        } }, "Remove")))
      : [h("li", { class: "empty" }, "No webhooks.")]));
  const url = h("input", { id: "notify-url", type: "url", placeholder: "https://hooks.slack.com/services/…",
    spellcheck: "false", autocomplete: "off" });
  const format = h("select", { id: "notify-format" },
    h("option", { value: "json" }, "JSON (signed)"), h("option", { value: "slack" }, "Slack message"));
  const boxes = EVENTS.map((ev) => h("label", { class: "check" },
    h("input", { type: "checkbox", name: "notify-event", value: ev, checked: true }), ev.replace("_", " ")));
  const form = h("form", { class: "stack", novalidate: true, id: "notify-form" },
    h("div", { class: "grid2" },
      h("div", {}, h("label", { for: "notify-url" }, "Webhook URL"), url),
      h("div", {}, h("label", { for: "notify-format" }, "Body"), format)),
    h("fieldset", { class: "events" }, h("legend", {}, "Events"), ...boxes),
    h("p", { class: "form-error", "data-error-for": "form", role: "alert" }),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Add webhook")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const events = [...form.querySelectorAll("[name=notify-event]:checked")].map((c) => c.value);
    try {
      const made = await api(`${base}/notifications`, { method: "POST",
        body: { url: url.value.trim(), format: format.value, events } });
      await projectPage(p.name);
      noticeOk("Webhook added.");
      document.getElementById("notify-secret")?.replaceChildren(
        secretOnce("notify-secret-value", "Signing secret (X-GitDeploy-Signature-256)", made.secret));
    } catch (err) { field(form, "form", err.message); }
  });
  const history = deliveries.length
    ? h("table", { class: "deliveries", "aria-label": "Deliveries" },
      h("thead", {}, h("tr", {}, ...["When", "Event", "To", "Attempt", "Answer", "Outcome"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, ...deliveries.map((d) => h("tr", {},
        h("td", {}, ago(d.time_unix_ms)), h("td", {}, d.event), h("td", { class: "target" }, d.url),
        h("td", { class: "num" }, d.attempt), h("td", {}, d.status ? String(d.status) : (d.error || "")),
        h("td", {}, h("span", { class: `badge ${d.outcome}` }, d.outcome))))))
    : h("p", { class: "empty" }, "Nothing delivered yet.");
  return h("div", { class: "card" }, notice, h("div", { id: "notify-secret" }), list, form,
    h("h3", {}, "Deliveries"), history);
}

function githubCard(p) {
  const notice = h("div", { "aria-live": "polite" });
  const token = h("input", { id: "github-token", type: "password", autocomplete: "off", spellcheck: "false",
    placeholder: p.github ? "•••••• (connected)" : "github_pat_…" });
  const repository = h("input", { id: "github-repository", type: "text", spellcheck: "false", autocomplete: "off",
    value: p.github?.repository || "", placeholder: "owner/name" });
  const form = h("form", { class: "stack", novalidate: true, id: "github-form" },
    h("p", { id: "github-state" }, p.github
      ? `Connected to ${p.github.repository}: commit statuses and one comment per pull request.`
      : "Not connected. A token with commit statuses and pull requests write access lets GitDeploy report every build on GitHub."),
    h("div", { class: "grid2" },
      h("div", {}, h("label", { for: "github-token" }, "GitHub token"), token),
      h("div", {}, h("label", { for: "github-repository" }, "Repository ", h("span", { class: "hint" }, "(owner/name)")), repository)),
    h("p", { class: "form-error", "data-error-for": "form", role: "alert" }),
    h("div", { class: "actions" },
      h("button", { type: "submit" }, p.github ? "Replace token" : "Connect GitHub"),
      p.github && h("button", { type: "button", class: "danger", onclick: async () => {
        try {
          await api(`/api/projects/${p.name}`, { method: "PATCH", body: { github: null } });
          await projectPage(p.name);
          noticeOk("GitHub disconnected.");
        } catch (err) { alertBanner(notice, err.message); }
      } }, "Disconnect")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = { token: token.value.trim() };
    if (repository.value.trim()) body.repository = repository.value.trim();
    try {
      await api(`/api/projects/${p.name}`, { method: "PATCH", body: { github: body } });
      await projectPage(p.name);
      noticeOk("GitHub connected.");
    } catch (err) { field(form, "form", err.message); }
  });
  return h("div", { class: "card" }, notice, form);
}

// ---------- deployment: alias and pin ----------

function deploymentExtras(d, banner) {
  const pin = h("button", { type: "button", class: "secondary", id: "pin" }, d.pinned ? "Unpin" : "Pin");
  pin.addEventListener("click", async () => {
    try {
      const now = await api(`/api/deployments/${d.id}/pin`, { method: d.pinned ? "DELETE" : "POST" });
      d.pinned = now.pinned;
      pin.textContent = d.pinned ? "Unpin" : "Pin";
      document.getElementById("pinned")?.replaceChildren(d.pinned ? "yes: kept whatever retention says" : "no");
    } catch (err) { alertBanner(banner, err.message); }
  });
  const rows = [];
  if (d.alias) {
    rows.push(h("dt", {}, d.alias.pull_request !== undefined ? `PR #${d.alias.pull_request}` : "Branch URL"),
      h("dd", {}, h("a", { href: d.alias.url, target: "_blank", rel: "noopener", id: "alias-url" }, d.alias.url)));
  }
  if (d.project) rows.push(h("dt", {}, "Pinned"), h("dd", { id: "pinned" }, d.pinned ? "yes: kept whatever retention says" : "no"));
  return { rows, pin: d.project ? pin : null };
}

// ---------- tokens and the audit log ----------

async function tokensPage() {
  setTitle("Tokens");
  const [{ tokens }, { entries }] = await Promise.all([api("/api/tokens"), api("/api/audit?limit=50")]);
  const notice = h("div", { id: "notice", "aria-live": "polite" });
  const list = h("ul", { class: "list card", "aria-label": "Tokens" },
    ...(tokens.length ? tokens.map((t) => h("li", { class: "row" },
      h("div", { class: "main" }, h("span", { class: "token-name" }, t.name), " ",
        h("span", { class: "meta" }, `${t.id} · ${t.scopes.join(", ")}${t.project ? ` · ${t.project} only` : ""}`)),
      h("span", { class: "meta" }, ago(t.created_unix_ms)),
      h("button", { type: "button", class: "link revoke", "aria-label": `Revoke ${t.name}`, onclick: async () => {
        if (!(await confirmDialog("Revoke this token?", `${t.name} stops working at once, everywhere.`, "Revoke"))) return;
        try {
          await api(`/api/tokens/${t.id}`, { method: "DELETE" });
          await tokensPage();
          noticeOk(`${t.name} revoked.`);
        } catch (err) { alertBanner(notice, err.message); }
      } }, "Revoke")))
      : [h("li", { class: "empty" }, "No named tokens.")]));
  const name = h("input", { id: "token-name", type: "text", autocomplete: "off", spellcheck: "false", placeholder: "ci" });
  const scope = h("select", { id: "token-scope" },
    h("option", { value: "read" }, "read: every GET"),
    h("option", { value: "deploy" }, "deploy: deploy, cancel, promote, and read"),
    h("option", { value: "admin" }, "admin: everything"));
  const project = h("input", { id: "token-project", type: "text", autocomplete: "off", spellcheck: "false",
    placeholder: "every project" });
  const form = h("form", { class: "card stack", novalidate: true, id: "token-form" },
    h("h2", {}, "New token"),
    h("div", { class: "grid2" },
      h("div", {}, h("label", { for: "token-name" }, "Name"), name),
      h("div", {}, h("label", { for: "token-scope" }, "Scope"), scope)),
    h("label", { for: "token-project" }, "Project ", h("span", { class: "hint" }, "(optional: the one project it reaches)")),
    project,
    h("p", { class: "form-error", "data-error-for": "form", role: "alert" }),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Create token")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = { name: name.value.trim(), scopes: [scope.value] };
    if (project.value.trim()) body.project = project.value.trim();
    try {
      const made = await api("/api/tokens", { method: "POST", body });
      await tokensPage();
      document.getElementById("token-secret")?.replaceChildren(secretOnce("new-token", `Token ${made.name}`, made.token));
    } catch (err) { field(form, "form", err.message); }
  });
  const audit = h("table", { class: "audit card", "aria-label": "Audit log" },
    h("thead", {}, h("tr", {}, ...["When", "Who", "What", "Answer"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, ...entries.map((a) => h("tr", {},
      h("td", { title: new Date(a.time_unix_ms).toISOString() }, ago(a.time_unix_ms)),
      h("td", {}, a.actor), h("td", { class: "what" }, `${a.method} ${a.path}`), h("td", { class: "num" }, String(a.status))))));
  main.replaceChildren(h("h1", {}, "API tokens"), notice, h("div", { id: "token-secret" }), list, form,
    h("h2", {}, "Audit log"), entries.length ? audit : h("p", { class: "empty card" }, "No changes yet."));
}
