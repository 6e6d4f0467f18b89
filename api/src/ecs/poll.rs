//! Watching build tasks: one batched `DescribeTasks` per interval for every watched task,
//! backing off on errors, and how a stopped task ended in ECS's words.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use super::{ecs_error, TaskEnd, Watched};

/// How a stopped task ended: its stop reason (or code) and its container's exit code.
pub(super) fn task_end(task: aws_sdk_ecs::types::Task) -> TaskEnd {
    let exit_code = task
        .containers
        .unwrap_or_default()
        .into_iter()
        .find_map(|c| c.exit_code);
    let reason = task
        .stopped_reason
        .filter(|r| !r.is_empty())
        .or(task.stop_code.map(|c| c.as_str().to_owned()))
        .unwrap_or_else(|| "stopped".into());
    TaskEnd { reason, exit_code }
}

/// Describes every watched task, 100 per call, and reports the ones that stopped. Errors
/// (throttling included) double the interval, up to a minute.
pub(super) async fn poll_tasks(
    client: aws_sdk_ecs::Client,
    cluster: String,
    watched: Arc<Mutex<HashMap<String, Watched>>>,
    interval: Duration,
) {
    let mut wait = interval;
    loop {
        tokio::time::sleep(wait).await;
        let arns: Vec<String> = watched.lock().await.keys().cloned().collect();
        let mut failed = false;
        for chunk in arns.chunks(100) {
            let described = client
                .describe_tasks()
                .cluster(&cluster)
                .set_tasks(Some(chunk.to_vec()))
                .send()
                .await;
            let described = match described {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!("DescribeTasks failed: {}", ecs_error(e));
                    failed = true;
                    break;
                }
            };
            let mut ended = Vec::new();
            for task in described.tasks.unwrap_or_default() {
                if task.last_status.as_deref() != Some("STOPPED") {
                    continue;
                }
                let Some(arn) = task.task_arn.clone() else {
                    continue;
                };
                ended.push((arn, task_end(task)));
            }
            // Tasks ECS no longer knows are over too.
            for f in described.failures.unwrap_or_default() {
                if f.reason.as_deref() == Some("MISSING") {
                    if let Some(arn) = f.arn {
                        ended.push((
                            arn,
                            TaskEnd {
                                reason: "ECS no longer knows the task".into(),
                                exit_code: None,
                            },
                        ));
                    }
                }
            }
            let mut watched = watched.lock().await;
            for (arn, end) in ended {
                if let Some(w) = watched.remove(&arn) {
                    tracing::info!(id = %w.deployment, %arn, "build task stopped: {}", end.reason);
                    let _ = w.ended.send(end);
                }
            }
        }
        wait = if failed {
            (wait * 2).min(Duration::from_secs(60))
        } else {
            interval
        };
    }
}
