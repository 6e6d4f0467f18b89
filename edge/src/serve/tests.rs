use super::*;

const MINIMAL: &str = r#"
[server]
listen = "0.0.0.0:8080"
metrics_listen = "0.0.0.0:9464"
domain = "sites.example.com"
data_dir = "/var/lib/gitdeploy"
[api]
token_env = "GITDEPLOY_API_TOKEN"
[redis]
[s3]
bucket = "b"
region = "eu-west-1"
"#;

#[test]
fn the_shipped_samples_are_valid() {
    for sample in [
        "../deploy/gitdeploy.toml",
        "../deploy/compose/gitdeploy.toml",
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(sample);
        load(&path).unwrap_or_else(|e| panic!("{e:#}"));
    }
    Config::parse(MINIMAL).unwrap();
}

#[test]
fn bad_configs_name_their_problem() {
    let with = |from: &str, to: &str| MINIMAL.replacen(from, to, 1);
    let ecs = r#"[builds]
runner = "ecs"
[builds.ecs]
cluster = "c"
task_definition = "t"
subnets = ["s"]
security_groups = []
"#;
    for (config, problem) in [
        (with("sites.example.com", "bad host!"), "server.domain"),
        (
            with("token_env = \"GITDEPLOY_API_TOKEN\"", ""),
            "token_file or token_env",
        ),
        (
            with(
                "token_env = \"GITDEPLOY_API_TOKEN\"",
                "token_env = \"X\"\ntoken_file = \"/t\"",
            ),
            "not both",
        ),
        (
            with("[api]", "[api]\nrepo_schemes = [\"ftp\"]"),
            "unknown scheme",
        ),
        (
            with(
                "region = \"eu-west-1\"",
                "region = \"eu-west-1\"\ncredentials = \"magic\"",
            ),
            "s3.credentials",
        ),
        (
            with(
                "region = \"eu-west-1\"",
                "region = \"eu-west-1\"\nendpoint = \"minio:9000\"",
            ),
            "s3.endpoint",
        ),
        (format!("{MINIMAL}{ecs}"), "security_groups"),
        (
            format!("{MINIMAL}[builds]\nallow_networks = [\"169.254.0.0/16\"]\n"),
            "builds.allow_networks",
        ),
        (
            format!(
                "{MINIMAL}{}upload_role_arn = \"gitdeploy-upload\"\n",
                ecs.replace("[]", "[\"g\"]")
            ),
            "not a role ARN",
        ),
        (
            format!(
                "{MINIMAL}{}upload_role_arn = \"arn:aws:iam::1:role/u\"\n",
                ecs.replace("[]", "[\"g\"]")
                    .replace("runner = \"ecs\"", "runner = \"ecs\"\ntimeout_secs = 7200")
            ),
            "at most 3000",
        ),
        (
            format!("{MINIMAL}[builds]\nrunner = \"ecs\"\n"),
            "[builds.ecs]",
        ),
        (
            format!("{MINIMAL}[builds]\nrunner = \"k8s\"\n"),
            "builds.runner",
        ),
        (
            with("[redis]", "[redis]\nurl = \"redis://x\""),
            "unknown field",
        ),
        (
            with("listen = \"0.0.0.0:8080\"", "listen = \"nope\""),
            "listen",
        ),
        (
            with("[api]", "access_log = \"-\"\naccess_log_sample = 0\n[api]"),
            "server.access_log: access log sample rate",
        ),
        (
            with("[api]", "access_log_sample = 0.5\n[api]"),
            "needs an access log",
        ),
        (
            with(
                "[api]",
                "access_log_s3 = true\naccess_log_s3_interval_secs = 0\n[api]",
            ),
            "at least one second",
        ),
        (
            format!("{MINIMAL}[clients]\ntrusted_proxies = [\"10.0.0.0/40\"]\n"),
            "clients.trusted_proxies",
        ),
    ] {
        let err = Config::parse(&config)
            .err()
            .unwrap_or_else(|| panic!("accepted: {config}"));
        assert!(err.contains(problem), "{problem:?} not in {err:?}");
    }
}
