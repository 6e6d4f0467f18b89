//! The Grafana dashboard (`deploy/grafana/dashboards/gitdeploy.json`, #20). Grafana cannot run
//! here, so the checks are the ones that keep a dashboard from going blank: its JSON has the
//! structure Grafana's provisioning loads (unique panel ids, a grid without overlaps, every
//! query on the `datasource` variable), every panel's PromQL parses (`promtool check rules` on a
//! rules file made of them), every metric a query names is exported by a running edge, and every
//! metric the edge exports is on the dashboard.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::process::Command;

use common::{Gitdeploy, TestCa};
use serde_json::Value;

fn dashboard() -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/dashboards/gitdeploy.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every query of the dashboard: (panel title, refId, expression), the variable's included.
fn queries(dash: &Value) -> Vec<(String, String, String)> {
    let mut all = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            all.push((
                panel["title"].as_str().unwrap().to_owned(),
                target["refId"].as_str().unwrap().to_owned(),
                target["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    for var in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["query"]["query"].as_str() {
            // `label_values(metric, label)` is Grafana's, not PromQL: its metric is checked.
            let metric = q
                .strip_prefix("label_values(")
                .and_then(|r| r.split(',').next())
                .unwrap_or_else(|| panic!("variable query {q}"));
            all.push(("variable".into(), "var".into(), metric.trim().to_owned()));
        }
    }
    all
}

/// A query with Grafana's variables replaced by what they stand for at query time.
fn as_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__range", "1h")
        .replace("$instance", ".*")
}

/// The metric names an expression reads (ours and the process collector's).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &expr[i..];
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if boundary && (rest.starts_with("gitdeploy_") || rest.starts_with("process_")) {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.insert(rest[..len].to_owned());
            i += len;
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_are_found_in_expressions() {
    for (expr, want) in [
        ("sum(rate(gitdeploy_a_total{x=\"y\"}[5m]))", vec!["gitdeploy_a_total"]),
        (
            "histogram_quantile(0.5, sum by (le) (rate(gitdeploy_b_bucket[5m]))) / process_open_fds",
            vec!["gitdeploy_b_bucket", "process_open_fds"],
        ),
        ("my_gitdeploy_thing", vec![]),
    ] {
        let got: Vec<String> = metric_names(expr).into_iter().collect();
        assert_eq!(got, want, "{expr}");
    }
}

#[test]
fn the_dashboard_has_the_structure_grafana_provisions() {
    let dash = dashboard();
    assert_eq!(dash["uid"], "gitdeploy");
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 36);
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "instance"]);

    let mut ids = HashSet::new();
    let mut cells = HashSet::new();
    let mut panels = 0;
    for panel in dash["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "{title}: id");
        let g = &panel["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| g[k].as_u64().unwrap());
        assert!(w > 0 && h > 0 && x + w <= 24, "{title}: {g}");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "{title} overlaps another panel");
            }
        }
        if panel["type"] == "row" {
            continue;
        }
        panels += 1;
        assert!(
            ["timeseries", "stat", "gauge", "table"].contains(&panel["type"].as_str().unwrap()),
            "{title}"
        );
        assert!(
            !panel["description"].as_str().unwrap().is_empty(),
            "{title}"
        );
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}");
        let refs: HashSet<&str> = targets
            .iter()
            .map(|t| t["refId"].as_str().unwrap())
            .collect();
        assert_eq!(refs.len(), targets.len(), "{title}: refIds");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            let expr = t["expr"].as_str().unwrap();
            assert!(
                expr.contains("$instance"),
                "{title}: {expr} ignores the edge picker"
            );
        }
    }
    assert!(panels >= 20, "{panels} panels");
}

#[test]
fn every_panel_query_parses_in_promtool() {
    let all = queries(&dashboard());
    // One recording rule per query: `promtool check rules` parses each expression.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, _, expr)) in all.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&as_promql(expr)).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(&file, &rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool (scripts/prereqs --test installs it)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}\n{rules}");
    assert!(
        text.contains(&format!("SUCCESS: {} rules found", all.len())),
        "{text}"
    );
}

/// The metric families a scrape exports, by name, with their type.
fn families(scrape: &str) -> BTreeMap<String, String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
        .collect()
}

/// The family a sample name belongs to (`x_bucket` of the histogram `x`).
fn family_of<'a>(name: &'a str, families: &BTreeMap<String, String>) -> Option<&'a str> {
    if families.contains_key(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        name.strip_suffix(suffix)
            .filter(|base| families.get(*base).map(String::as_str) == Some("histogram"))
    })
}

#[tokio::test]
async fn every_metric_on_the_dashboard_is_exported_and_every_exported_one_is_shown() {
    // A TLS listener with certificate files and an access log, so the certificate and
    // access-log metrics exist too.
    let ca = TestCa::new();
    let (cert, key) = ca.issue("site", &["DNS:sites.test", "DNS:*.sites.test"], "0x2001");
    let data = tempfile::tempdir().unwrap();
    let tls_listen = format!("127.0.0.1:{}", common::free_port());
    let gd = Gitdeploy::start_with(
        data.path(),
        &[
            "--domain",
            "sites.test",
            "--tls-listen",
            &tls_listen,
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--access-log",
            "-",
        ],
    )
    .await;
    let exported = families(&gd.scrape().await);
    let mut shown = BTreeSet::new();
    for (panel, r, expr) in queries(&dashboard()) {
        for name in metric_names(&expr) {
            let family = family_of(&name, &exported)
                .unwrap_or_else(|| panic!("{panel} ({r}) reads {name}, which no edge exports"));
            shown.insert(family.to_owned());
        }
    }
    let unshown: Vec<&String> = exported
        .keys()
        .filter(|f| f.starts_with("gitdeploy_") && !shown.contains(*f))
        .collect();
    assert!(unshown.is_empty(), "exported but on no panel: {unshown:?}");
    // The process collector's metrics are there for the memory and CPU panels.
    for f in ["process_resident_memory_bytes", "process_cpu_seconds_total"] {
        assert!(shown.contains(f), "{f}");
    }
}
