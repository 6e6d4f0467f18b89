//! Per-project traffic at the edge: each site request with a project is counted into a
//! [`Tally`] under one short lock (no I/O, no allocation once a project and path are known), and
//! a task on the control runtime hands the counts to the shared [`TrafficStore`] every few
//! seconds. A flush the store refuses is kept for the next; the last one runs at shutdown.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gitdeploy_api::traffic::{bucket_of, Tally, TrafficStore};

/// The edge's counts since its last flush.
#[derive(Default)]
pub struct TrafficRecorder {
    tally: Mutex<Tally>,
}

impl TrafficRecorder {
    /// One request of `project`.
    pub fn record(&self, project: &str, path: &str, status: u16, bytes: u64) {
        self.tally
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(project, path, status, bytes);
    }

    /// Stores what was counted; what the store refuses waits for the next flush.
    pub async fn flush(&self, store: &dyn TrafficStore) {
        let tally = std::mem::take(&mut *self.tally.lock().unwrap_or_else(|e| e.into_inner()));
        if tally.is_empty() {
            return;
        }
        let deltas = tally.into_deltas(bucket_of(gitdeploy_api::now_unix_ms()));
        if let Err(e) = store.add(&deltas).await {
            tracing::warn!("cannot store traffic counts (kept for the next flush): {e}");
            let mut tally = self.tally.lock().unwrap_or_else(|e| e.into_inner());
            for delta in deltas {
                tally.absorb(delta);
            }
        }
    }

    /// Flushes every `every` on `rt` while the recorder lives.
    pub fn start(
        self: &Arc<Self>,
        store: Arc<dyn TrafficStore>,
        rt: &tokio::runtime::Runtime,
        every: Duration,
    ) {
        let recorder = Arc::downgrade(self);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(recorder) = recorder.upgrade() else {
                    return;
                };
                recorder.flush(store.as_ref()).await;
            }
        });
    }
}
