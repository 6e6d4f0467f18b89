// The project page's traffic card: what every edge served for the project over the last hour
// and day (GET /api/projects/{name}/traffic), counted in 5-minute buckets. Uses app.js's h() and
// api(), which load after this file and before any page renders.
"use strict";

function formatBytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function trafficWindow(title, id, w) {
  const classes = ["2xx", "3xx", "4xx", "5xx"];
  const paths = w.top_paths.length
    ? h("table", { class: "paths", "aria-label": `Top paths, ${title.toLowerCase()}` },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Path"), h("th", { scope: "col" }, "Requests"))),
      h("tbody", {}, ...w.top_paths.map((p) =>
        h("tr", {}, h("td", { class: "path" }, p.path), h("td", { class: "num" }, p.requests)))))
    : h("p", { class: "empty" }, "No requests.");
  return h("section", { class: "traffic", id, "aria-label": title },
    h("h3", {}, title),
    h("dl", { class: "kv" },
      h("dt", {}, "Requests"), h("dd", { class: "requests" }, w.requests),
      h("dt", {}, "Sent"), h("dd", { class: "bytes" }, formatBytes(w.bytes)),
      h("dt", {}, "Status"), h("dd", { class: "statuses" },
        ...classes.map((c) => h("span", { class: `status s${c}`, "data-class": c }, `${c} ${w.status[c]}`)))),
    paths);
}

async function trafficCard(name) {
  const t = await api(`/api/projects/${encodeURIComponent(name)}/traffic`);
  return h("div", { class: "card traffic-card" },
    h("div", { class: "traffic-windows" },
      trafficWindow("Last hour", "traffic-hour", t.hour),
      trafficWindow("Last day", "traffic-day", t.day)),
    h("p", { class: "hint" },
      `Counted by every edge in ${t.bucket_secs / 60}-minute buckets; top paths are approximate for rare ones.`));
}
