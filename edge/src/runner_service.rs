//! The local runner as a Pingora background service: it starts with the server and stops (killing
//! running builds) when the server shuts down.

use std::sync::Mutex;

use async_trait::async_trait;
use gitdeploy_api::{EcsRunner, LocalRunner};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

/// The build runner the server was configured with.
pub enum Runner {
    /// Builds as sandboxed child processes.
    Local(Box<LocalRunner>),
    /// Builds as ECS tasks.
    Ecs(Box<EcsRunner>),
}

/// Wraps the runner, which runs once.
pub struct RunnerService(Mutex<Option<Runner>>);

impl RunnerService {
    /// Wraps `runner`.
    pub fn new(runner: Runner) -> Self {
        RunnerService(Mutex::new(Some(runner)))
    }
}

#[async_trait]
impl BackgroundService for RunnerService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let Some(runner) = self.0.lock().ok().and_then(|mut r| r.take()) else {
            return;
        };
        let shutdown = crate::control::shutdown_requested(shutdown);
        match runner {
            Runner::Local(runner) => runner.run(shutdown).await,
            Runner::Ecs(runner) => runner.run(shutdown).await,
        }
    }
}
