//! The build queue between the API and a runner: bounded, a place reserved before the
//! deployment is recorded (so a full queue records nothing), a cancel switch per job, and the
//! runner's instance id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use gitdeploy_core::{BuildJob, DeploymentId};
use tokio::sync::{mpsc, watch};

use crate::metrics::ApiMetrics;

/// Hands jobs to the runner. Cheap to clone.
#[derive(Clone)]
pub struct JobQueue {
    /// This runner's instance id, recorded on the deployments it holds.
    instance: Arc<str>,
    tx: mpsc::UnboundedSender<(BuildJob, watch::Receiver<bool>)>,
    /// Cancel switches of queued and running jobs.
    cancels: Arc<std::sync::Mutex<HashMap<DeploymentId, watch::Sender<bool>>>>,
    waiting: Arc<AtomicUsize>,
    capacity: usize,
    metrics: ApiMetrics,
}

/// A place in the build queue.
pub struct Reservation {
    queue: Option<JobQueue>,
}

impl Reservation {
    /// Queues the job in the reserved place.
    pub fn submit(mut self, job: BuildJob) -> Result<(), SubmitError> {
        let Some(queue) = self.queue.take() else {
            return Err(SubmitError::Stopped);
        };
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let id = job.deployment.clone();
        queue
            .cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), cancel_tx);
        if queue.tx.send((job, cancel_rx)).is_err() {
            queue
                .cancels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            queue.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::Stopped);
        }
        queue.metrics.queue_depth.inc();
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(queue) = self.queue.take() {
            queue.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Why a job was not queued.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The queue holds its maximum of waiting builds.
    #[error("the build queue is full ({0} builds waiting); try again later")]
    Full(usize),
    /// The runner is gone.
    #[error("the build runner has stopped")]
    Stopped,
}

/// Jobs as a runner receives them, with their cancel switch.
pub(crate) type JobReceiver = mpsc::UnboundedReceiver<(BuildJob, watch::Receiver<bool>)>;

/// A new runner instance id: unique per process start.
pub(crate) fn new_instance_id() -> String {
    format!("{}-{}", std::process::id(), DeploymentId::random().as_str())
}

impl JobQueue {
    /// A queue of at most `capacity` waiting jobs, and the receiving end for its runner.
    /// The metrics its jobs count in.
    pub(crate) fn metrics(&self) -> &ApiMetrics {
        &self.metrics
    }

    pub(crate) fn new(capacity: usize, metrics: ApiMetrics) -> (Self, JobReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = JobQueue {
            instance: new_instance_id().into(),
            tx,
            waiting: Arc::default(),
            cancels: Arc::default(),
            capacity,
            metrics,
        };
        (queue, rx)
    }

    /// The id of the runner behind this queue (unique per process start).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Takes a place in the queue, unless it is full. Take the place before recording the
    /// deployment, then [`Reservation::submit`] the job; a reservation dropped unused frees it.
    pub fn reserve(&self) -> Result<Reservation, SubmitError> {
        let waiting = self.waiting.fetch_add(1, Ordering::SeqCst);
        if waiting >= self.capacity {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::Full(waiting));
        }
        Ok(Reservation {
            queue: Some(self.clone()),
        })
    }

    /// Queues a job whatever the queue holds (jobs recovered at start-up).
    pub(crate) fn force(&self, job: BuildJob) -> Result<(), SubmitError> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        Reservation {
            queue: Some(self.clone()),
        }
        .submit(job)
    }

    /// Cancels a queued or running build; `false` when no such build is waiting or running.
    pub fn cancel(&self, id: &DeploymentId) -> bool {
        match self
            .cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            Some(switch) => {
                let _ = switch.send(true);
                true
            }
            None => false,
        }
    }

    pub(crate) fn done(&self, id: &DeploymentId) {
        self.cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    pub(crate) fn taken(&self) {
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        self.metrics.queue_depth.dec();
    }
}
