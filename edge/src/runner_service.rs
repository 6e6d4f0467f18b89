//! The local runner as a Pingora background service: it starts with the server and stops (killing
//! running builds) when the server shuts down.

use std::sync::Mutex;

use async_trait::async_trait;
use gitdeploy_api::LocalRunner;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

/// Wraps a [`LocalRunner`], which runs once.
pub struct RunnerService(Mutex<Option<LocalRunner>>);

impl RunnerService {
    /// Wraps `runner`.
    pub fn new(runner: LocalRunner) -> Self {
        RunnerService(Mutex::new(Some(runner)))
    }
}

#[async_trait]
impl BackgroundService for RunnerService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let Some(runner) = self.0.lock().ok().and_then(|mut r| r.take()) else {
            return;
        };
        runner
            .run(crate::control::shutdown_requested(shutdown))
            .await;
    }
}
