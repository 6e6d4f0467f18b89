//! `gitdeploy`: the GitDeploy server and its command-line client.
//!
//! ```text
//! gitdeploy up                                   # everything on one machine, no cloud needed
//! gitdeploy deploy https://github.com/o/site --follow
//! curl -H 'Host: <id>.localhost' http://127.0.0.1:8080/
//! ```
//!
//! The recipe, as in Pingora's examples: options (`up`'s flags or `serve`'s file) → one Pingora
//! server → services (the public port with the sites proxy, the API on a private socket, the
//! metrics listener; the embedded S3, the build runner and the ready file as background
//! services) → `run`. `up.rs` assembles them; `serve.rs` only turns the file into options.

mod access_log;
mod build_task;
mod cache;
mod certified;
mod cli;
mod client_addr;
mod client_stream;
mod config;
mod control;
mod domain_certs;
mod draining;
mod embedded_s3;
mod hsts;
mod local_ca;
mod memory;
mod metrics;
mod origin;
mod platform;
mod prepared;
mod public;
mod ready;
mod request_info;
mod respond;
mod runner_service;
mod serve;
mod serving;
mod sites;
mod tls;
mod tls_routes;
mod traffic;
mod up;
mod upgrade;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "gitdeploy", version, about = "Git repository to live website")]
struct Cli {
    #[command(flatten)]
    api: cli::ApiOptions,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole platform on this machine: edge, API, embedded S3 and local builders.
    Up(Box<up::UpOptions>),
    /// Run in production from a configuration file: Redis, S3, ECS or local builders.
    Serve(serve::ServeOptions),
    /// Run only the embedded S3-compatible server (key from AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY), for several `up --s3-endpoint` processes sharing one store.
    S3Server(up::S3ServerOptions),
    #[command(flatten)]
    Client(cli::ClientCommand),
    /// Run one build job described by GITDEPLOY_* variables (used by the local runner).
    #[command(hide = true)]
    Builder,
    /// Run one build as an ECS task: the job from GITDEPLOY_JOB, state and logs in Redis.
    #[command(hide = true)]
    BuildTask,
}

fn main() {
    // A build's sandbox ends in this executable (the builder's `confine` step); it never returns.
    gitdeploy_builder::confine_if_asked();
    // rustls has two crypto providers compiled in (ring, aws-lc-rs through the AWS SDK): the
    // process picks one before any TLS client or server is made (Redis over TLS, the listener).
    pingora_core::tls::install_default_crypto_provider();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Up(opts) => server("up", || up::run(opts.into_platform()?)),
        Command::Serve(opts) => server("serve", || serve::run(opts)),
        Command::S3Server(opts) => server("s3-server", || up::run_s3_server(opts)),
        Command::Client(command) => cli::run(cli.api, command),
        Command::BuildTask => {
            // Its environment holds the Redis URL and the task's credential source: nothing of
            // the build may read it through /proc or ptrace.
            gitdeploy_builder::make_undumpable();
            init_tracing();
            build_task::run()
        }
        Command::Builder => match tokio::runtime::Runtime::new() {
            Ok(rt) => rt.block_on(gitdeploy_builder::run_from_env()),
            Err(e) => {
                eprintln!("cannot start the builder runtime: {e}");
                gitdeploy_builder::EXIT_INTERNAL
            }
        },
    };
    std::process::exit(code);
}

/// Runs a server subcommand: logging on, a failure said in one line, exit code 1.
fn server(name: &str, run: impl FnOnce() -> anyhow::Result<()>) -> i32 {
    init_tracing();
    match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("gitdeploy {name}: {e:#}");
            1
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
