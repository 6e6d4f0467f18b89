//! `gitdeploy-builder`: runs one build job described by `GITDEPLOY_*` environment variables and
//! reports NDJSON events on stdout. Started by the local runner or as an ECS task.

#[tokio::main]
async fn main() {
    std::process::exit(gitdeploy_builder::run_from_env().await);
}
