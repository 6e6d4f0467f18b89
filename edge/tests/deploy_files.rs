//! `deploy/` is what an operator follows to run GitDeploy on AWS; these checks keep it true:
//! JSON parses and carries what ECS needs, IAM stays least-privilege, Prometheus files pass
//! promtool, Dockerfiles pass hadolint, every sample configuration passes
//! `gitdeploy serve --check-config`, and the Compose file points at files that exist.

mod common;

use std::process::Command;

use common::deploy::{deploy_dir, run, test_tool};
use serde_json::Value;

fn json(rel: &str) -> Value {
    let path = deploy_dir().join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{rel} is not JSON: {e}"))
}

#[test]
fn every_json_file_parses() {
    for dir in ["ecs", "iam"] {
        for entry in std::fs::read_dir(deploy_dir().join(dir)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(name.ends_with(".json"), "{dir}/{name}");
            json(&format!("{dir}/{name}"));
        }
    }
}

#[test]
fn task_definitions_carry_what_ecs_and_gitdeploy_need() {
    for (file, container) in [
        ("ecs/builder-task-definition.json", "builder"),
        ("ecs/edge-task-definition.json", "edge"),
    ] {
        let td = json(file);
        assert_eq!(td["networkMode"], "awsvpc", "{file}");
        assert!(td["executionRoleArn"].is_string());
        // A build task holds no role of its own: it publishes with its build's upload session.
        assert_eq!(
            td["taskRoleArn"].is_string(),
            container == "edge",
            "{file}: taskRoleArn"
        );
        let containers = td["containerDefinitions"].as_array().unwrap();
        assert_eq!(containers.len(), 1, "{file}");
        let c = &containers[0];
        assert_eq!(c["name"], container, "{file}");
        assert!(
            c["memory"].as_u64().is_some_and(|m| m > 0),
            "{file}: memory"
        );
        assert_eq!(c["logConfiguration"]["logDriver"], "awslogs", "{file}");
        // Secrets come from SSM, never as plain environment values.
        for env in c["environment"].as_array().into_iter().flatten() {
            let name = env["name"].as_str().unwrap();
            assert!(
                !name.contains("REDIS_URL") && !name.contains("TOKEN") && !name.contains("SECRET"),
                "{file}: {name} belongs in secrets"
            );
        }
        assert!(c["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "GITDEPLOY_REDIS_URL"));
    }
    let edge = json("ecs/edge-task-definition.json");
    let health = &edge["containerDefinitions"][0]["healthCheck"]["command"];
    assert_eq!(health[0], "CMD");
    assert_eq!(health[2], "health");
    // The builder's container name is the one the sample configuration overrides.
    let config = std::fs::read_to_string(deploy_dir().join("gitdeploy.toml")).unwrap();
    assert!(config.contains("container = \"builder\""));
    assert!(config.contains("task_definition = \"gitdeploy-builder\""));
    assert_eq!(
        json("ecs/builder-task-definition.json")["family"],
        "gitdeploy-builder"
    );
    assert_eq!(
        json("ecs/edge-service.json")["taskDefinition"],
        "gitdeploy-edge"
    );
}

fn statements(file: &str) -> Vec<Value> {
    json(file)["Statement"].as_array().unwrap().clone()
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().map(|s| s.as_str().unwrap().to_owned()).collect(),
        _ => panic!("not a string or list: {v}"),
    }
}

#[test]
fn iam_policies_are_least_privilege() {
    for file in [
        "iam/upload-role-policy.json",
        "iam/edge-task-policy.json",
        "iam/execution-role-policy.json",
    ] {
        for st in statements(file) {
            assert_eq!(st["Effect"], "Allow", "{file}");
            for action in strings(&st["Action"]) {
                assert!(!action.contains('*'), "{file}: wildcard action {action}");
            }
            for resource in strings(&st["Resource"]) {
                // Only ECR's login token has no resource to name.
                assert!(
                    resource != "*" || strings(&st["Action"]) == ["ecr:GetAuthorizationToken"],
                    "{file}: {st}"
                );
            }
        }
    }
    // Builds stage uploads, see which blobs are stored, and read and write build caches,
    // nothing else: no blob or manifest is written by a build (each session narrows this to
    // one deployment and its cache scope: gitdeploy_api::task_access::s3_session_policy).
    let upload = statements("iam/upload-role-policy.json");
    for st in &upload {
        let mut actions = strings(&st["Action"]);
        actions.sort();
        for r in strings(&st["Resource"]) {
            if r.ends_with("/build-cache/*") {
                assert_eq!(actions, ["s3:GetObject", "s3:PutObject"], "{st}");
            } else if r.ends_with("/blobs/*") {
                assert_eq!(actions, ["s3:GetObject"], "builds may only read {r}");
            } else if r == "arn:aws:s3:::example-gitdeploy-sites" {
                // Listing only the markers of running garbage collections.
                assert_eq!(actions, ["s3:ListBucket"], "{st}");
                assert_eq!(
                    st["Condition"]["StringLike"]["s3:prefix"],
                    serde_json::json!(["gc/running/*"]),
                    "{st}"
                );
            } else {
                assert!(r.ends_with("/uploads/*"), "builds may write {r}");
                assert_eq!(actions, ["s3:AbortMultipartUpload", "s3:PutObject"], "{st}");
            }
        }
    }
    // Only the edge may assume the upload role.
    let trust = statements("iam/upload-role-trust-policy.json");
    assert_eq!(trust.len(), 1);
    assert_eq!(
        trust[0]["Principal"]["AWS"],
        "arn:aws:iam::123456789012:role/gitdeploy-edge"
    );
    assert_eq!(trust[0]["Action"], "sts:AssumeRole");
    // The edge reads, runs/watches/stops tasks, assumes the upload role and passes only the
    // builder's execution role.
    let edge = statements("iam/edge-task-policy.json");
    let edge_actions: Vec<String> = edge.iter().flat_map(|s| strings(&s["Action"])).collect();
    for needed in [
        "s3:GetObject",
        "ecs:RunTask",
        "ecs:DescribeTasks",
        "ecs:StopTask",
        "ecs:ListTasks",
        "iam:PassRole",
        "sts:AssumeRole",
    ] {
        assert!(
            edge_actions.iter().any(|a| a == needed),
            "edge lacks {needed}"
        );
    }
    let granted = |action: &str| -> Vec<String> {
        edge.iter()
            .filter(|s| strings(&s["Action"]).iter().any(|a| a == action))
            .flat_map(|s| strings(&s["Resource"]))
            .collect()
    };
    let bucket = |keys: &[&str]| -> Vec<String> {
        keys.iter()
            .map(|k| format!("arn:aws:s3:::example-gitdeploy-sites/{k}/*"))
            .collect()
    };
    // It deletes a deployment's own objects (the DELETE API) and its staging area, blobs no
    // deployment names (garbage collection) and its collections' markers; never a build cache
    // or an access log.
    assert_eq!(
        granted("s3:DeleteObject"),
        bucket(&["sites", "manifests", "logs", "uploads", "blobs", "gc"])
    );
    // It writes the blobs and manifests of uploads it checked, build-log archives, access
    // logs and its collections' markers.
    assert_eq!(
        granted("s3:PutObject"),
        bucket(&["blobs", "manifests", "gc", "logs", "access-logs"])
    );
    let pass = edge
        .iter()
        .find(|s| strings(&s["Action"]) == ["iam:PassRole"])
        .unwrap();
    assert_eq!(
        pass["Condition"]["StringEquals"]["iam:PassedToService"],
        "ecs-tasks.amazonaws.com"
    );
}

#[test]
fn prometheus_files_pass_promtool() {
    run(
        "promtool",
        &["check", "config", "prometheus/prometheus.yml"],
    );
    // Compose's Prometheus, laid out as its container sees it: alerts.yml beside it.
    let etc = tempfile::tempdir().unwrap();
    std::fs::copy(
        deploy_dir().join("compose/prometheus.yml"),
        etc.path().join("prometheus.yml"),
    )
    .unwrap();
    std::fs::copy(
        deploy_dir().join("prometheus/alerts.yml"),
        etc.path().join("alerts.yml"),
    )
    .unwrap();
    let compose = etc.path().join("prometheus.yml");
    run("promtool", &["check", "config", compose.to_str().unwrap()]);
    let rules = run("promtool", &["check", "rules", "prometheus/alerts.yml"]);
    assert!(rules.contains("SUCCESS: 9 rules found"), "{rules}");
}

#[test]
fn dockerfiles_pass_hadolint() {
    run(
        &test_tool("hadolint"),
        &[
            "--failure-threshold",
            "info",
            "builder.Dockerfile",
            "edge.Dockerfile",
        ],
    );
}

#[test]
fn every_sample_configuration_passes_check_config() {
    for sample in ["gitdeploy.toml", "compose/gitdeploy.toml"] {
        let out = Command::new(env!("CARGO_BIN_EXE_gitdeploy"))
            .args(["serve", "--check-config", "--config"])
            .arg(deploy_dir().join(sample))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(": OK"),
            "{sample}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A bad file is refused with the key at fault, and nothing starts.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(deploy_dir().join("gitdeploy.toml"))
        .unwrap()
        .replace("runner = \"ecs\"", "runner = \"kubernetes\"");
    std::fs::write(&bad, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gitdeploy"))
        .args(["serve", "--check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("builds.runner"), "{err}");
    // The commented [tls] and [acme] sections are valid as documented; a misspelt key is not.
    let sample = std::fs::read_to_string(deploy_dir().join("gitdeploy.toml")).unwrap();
    let uncommented: String = sample
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if [
                    "[tls]",
                    "[acme]",
                    "listen =",
                    "cert =",
                    "key =",
                    "directory =",
                    "ca_file =",
                    "email =",
                ]
                .iter()
                .any(|k| rest.starts_with(k)) =>
            {
                rest.to_owned()
            }
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        uncommented.contains("\n[acme]\ndirectory = "),
        "{uncommented}"
    );
    for (text, ok) in [
        (uncommented.clone(), true),
        (uncommented.replace("\nemail =", "\nmail ="), false),
    ] {
        std::fs::write(&bad, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_gitdeploy"))
            .args(["serve", "--check-config", "--config"])
            .arg(&bad)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), ok, "{err}");
        if !ok {
            assert!(err.contains("mail"), "{err}");
        }
    }
}

#[test]
fn compose_file_refers_to_files_that_exist() {
    let script = "import yaml, sys\n\
                  c = yaml.safe_load(open('compose.yaml'))\n\
                  want = {'redis', 's3', 'edge', 'prometheus', 'grafana'}\n\
                  assert set(c['services']) == want, c['services'].keys()\n\
                  print(c['services']['s3']['build']['dockerfile'])\n\
                  for s in c['services'].values():\n\
                  \x20   for v in s.get('volumes', []):\n\
                  \x20       print(v.split(':')[0])\n";
    let out = run(&test_tool("python3"), &["-c", script]);
    let mut lines = out.lines();
    let dockerfile = lines.next().unwrap();
    assert!(
        deploy_dir().join("..").join(dockerfile).is_file(),
        "{dockerfile}"
    );
    let mounted: Vec<&str> = lines.filter(|l| l.starts_with("./")).collect();
    for source in &mounted {
        assert!(deploy_dir().join(source).exists(), "{source}");
    }
    // Prometheus gets the shipped alert rules; Grafana its provisioning and the dashboard.
    for source in [
        "./prometheus/alerts.yml",
        "./grafana/provisioning",
        "./grafana/dashboards",
    ] {
        assert!(mounted.contains(&source), "{source} is not mounted");
    }
}
