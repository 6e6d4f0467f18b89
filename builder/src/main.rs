//! `gitdeploy-builder`: runs one build job described by `GITDEPLOY_*` environment variables and
//! reports NDJSON events on stdout. Started by the local runner or as an ECS task.

fn main() {
    // The sandbox's last wrapper is this executable (see `confine`); it never returns.
    gitdeploy_builder::confine_if_asked();
    let code = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(gitdeploy_builder::run_from_env()),
        Err(e) => {
            eprintln!("cannot start the builder runtime: {e}");
            gitdeploy_builder::EXIT_INTERNAL
        }
    };
    std::process::exit(code);
}
