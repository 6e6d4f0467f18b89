//! The CloudFormation template (`deploy/cloudformation/gitdeploy.yaml`): cfn-lint finds nothing,
//! checkov finds nothing that is not suppressed with its reason in place, the IAM policies are
//! the least-privilege ones in `deploy/iam/` statement for statement, and the configuration the
//! edge task renders passes `gitdeploy serve --check-config`.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::deploy::{deploy_dir, run, test_tool as tool};

use serde_json::Value;

const TEMPLATE: &str = "cloudformation/gitdeploy.yaml";

/// The template as JSON, short-form intrinsics (`!Sub`) in their long form (`Fn::Sub`).
fn template() -> Value {
    let script = "import json, sys, yaml\n\
                  def tag(loader, suffix, node):\n\
                  \x20   if isinstance(node, yaml.ScalarNode): v = loader.construct_scalar(node)\n\
                  \x20   elif isinstance(node, yaml.SequenceNode): v = loader.construct_sequence(node, deep=True)\n\
                  \x20   else: v = loader.construct_mapping(node, deep=True)\n\
                  \x20   return {suffix if suffix == 'Ref' else 'Fn::' + suffix: v}\n\
                  yaml.SafeLoader.add_multi_constructor('!', tag)\n\
                  print(json.dumps(yaml.safe_load(open(sys.argv[1]))))\n";
    serde_json::from_str(&run(&tool("python3"), &["-c", script, TEMPLATE])).unwrap()
}

#[test]
fn cfn_lint_finds_nothing() {
    run(&tool("cfn-lint"), &[TEMPLATE]);
}

#[test]
fn checkov_finds_nothing_unexplained() {
    let out = run(
        &tool("checkov"),
        &[
            "--file",
            TEMPLATE,
            "--framework",
            "cloudformation",
            "--skip-download",
            "--compact",
        ],
    );
    assert!(out.contains("Failed checks: 0"), "{out}");
    // Every suppression says why, where it is.
    let template = template();
    let mut skipped = 0;
    for (name, resource) in template["Resources"].as_object().unwrap() {
        for skip in resource["Metadata"]["checkov"]["skip"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let comment = skip["comment"].as_str().unwrap_or("");
            assert!(comment.len() >= 40, "{name}: {skip} has no real reason");
            skipped += 1;
        }
    }
    assert!(
        out.contains(&format!("Skipped checks: {skipped}")),
        "every suppression in the template is one checkov applied (none is stale): {out}"
    );
}

/// `Sid → (actions, condition keys)` of a policy document.
fn statements(doc: &Value) -> BTreeMap<String, (Vec<String>, Vec<String>)> {
    let strings = |v: &Value| -> Vec<String> {
        match v {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) => a.iter().map(|s| s.as_str().unwrap().to_owned()).collect(),
            _ => panic!("not a string or list: {v}"),
        }
    };
    doc["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let mut conditions: Vec<String> = s["Condition"]
                .as_object()
                .into_iter()
                .flat_map(|c| {
                    c.iter().flat_map(|(op, kv)| {
                        kv.as_object()
                            .unwrap()
                            .keys()
                            .map(move |k| format!("{op}:{k}"))
                    })
                })
                .collect();
            conditions.sort();
            (
                s["Sid"].as_str().unwrap().to_owned(),
                (strings(&s["Action"]), conditions),
            )
        })
        .collect()
}

fn json_file(path: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(deploy_dir().join(path)).unwrap()).unwrap()
}

#[test]
fn the_roles_have_the_least_privilege_policies_of_deploy_iam() {
    let template = template();
    let resources = &template["Resources"];
    assert_eq!(
        statements(&resources["EdgePolicy"]["Properties"]["PolicyDocument"]),
        statements(&json_file("iam/edge-task-policy.json")),
        "the edge role"
    );
    let upload = &resources["UploadRole"]["Properties"];
    assert_eq!(
        statements(&upload["Policies"][0]["PolicyDocument"]),
        statements(&json_file("iam/upload-role-policy.json")),
        "the upload role"
    );
    // Only the edge role may assume the upload role; build tasks have no role at all.
    assert_eq!(
        upload["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]["AWS"],
        serde_json::json!({"Fn::GetAtt": "EdgeRole.Arn"})
    );
    let builder = &resources["BuilderTaskDefinition"]["Properties"];
    assert!(builder.get("TaskRoleArn").is_none(), "{builder}");
    // The bucket is private and TLS-only.
    let bucket = &resources["SitesBucket"]["Properties"];
    let block = &bucket["PublicAccessBlockConfiguration"];
    for key in [
        "BlockPublicAcls",
        "BlockPublicPolicy",
        "IgnorePublicAcls",
        "RestrictPublicBuckets",
    ] {
        assert_eq!(block[key], true, "{key}");
    }
    let deny = &resources["SitesBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"][0];
    assert_eq!(deny["Effect"], "Deny");
    assert_eq!(deny["Condition"]["Bool"]["aws:SecureTransport"], "false");
}

#[test]
fn the_edges_configuration_passes_check_config() {
    let template = template();
    let edge =
        &template["Resources"]["EdgeTaskDefinition"]["Properties"]["ContainerDefinitions"][0];
    let env = edge["Environment"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["Name"] == "GITDEPLOY_CONFIG_TOML")
        .expect("the edge gets its configuration in GITDEPLOY_CONFIG_TOML");
    let sub = &env["Value"]["Fn::Sub"];
    let text = sub[0].as_str().unwrap();
    assert!(sub[1]["Subnets"].is_object(), "{sub}");
    // What CloudFormation substitutes, with example values; a name missing here fails.
    let values: BTreeMap<&str, &str> = [
        ("Domain", "sites.example.com"),
        ("SitesBucket", "gitdeploy-sitesbucket-1a2b3c"),
        ("AWS::Region", "eu-west-1"),
        ("VpcCidr", "10.0.0.0/16"),
        ("BuildConcurrency", "10"),
        ("BuildTimeoutSecs", "3000"),
        ("Cluster", "gitdeploy"),
        (
            "BuilderTaskDefinition",
            "arn:aws:ecs:eu-west-1:123456789012:task-definition/gitdeploy-builder:1",
        ),
        ("Subnets", "subnet-0a\", \"subnet-0b"),
        ("BuilderSecurityGroup", "sg-0123"),
        (
            "UploadRole.Arn",
            "arn:aws:iam::123456789012:role/gitdeploy-UploadRole-1",
        ),
    ]
    .into();
    let mut rendered = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let end = rest[start..].find('}').unwrap() + start;
        let name = &rest[start + 2..end];
        let value = values
            .get(name)
            .unwrap_or_else(|| panic!("no example value for ${{{name}}}"));
        rendered.push_str(&rest[..start]);
        rendered.push_str(value);
        rest = &rest[end + 1..];
    }
    rendered.push_str(rest);
    let out = Command::new(env!("CARGO_BIN_EXE_gitdeploy"))
        .args(["serve", "--check-config"])
        .env_remove("GITDEPLOY_CONFIG")
        .env("GITDEPLOY_CONFIG_TOML", &rendered)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("GITDEPLOY_CONFIG_TOML: OK"),
        "{rendered}\n{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The secrets the configuration names come from Secrets Manager.
    let secrets: Vec<&str> = edge["Secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Name"].as_str().unwrap())
        .collect();
    assert_eq!(secrets, ["GITDEPLOY_REDIS_URL", "GITDEPLOY_API_TOKEN"]);
    // And a file and the variable at once is refused.
    let out = Command::new(env!("CARGO_BIN_EXE_gitdeploy"))
        .args(["serve", "--check-config", "--config", "gitdeploy.toml"])
        .env("GITDEPLOY_CONFIG_TOML", &rendered)
        .current_dir(deploy_dir())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("keep one"), "{said}");
}
