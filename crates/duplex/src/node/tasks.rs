//! The node's background tasks, owned so that shutdown can end them and
//! wait for every one.

use super::*;

/// The node's background tasks: each ends when `stop` is cancelled, and
/// [`Node::stop_tasks`] waits for all of them (no task outlives the node).
#[derive(Debug, Clone, Default)]
pub(crate) struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Tasks {
    /// Runs `task` until it ends or the node stops.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = task => {}
            }
        });
    }
}

impl Node {
    /// The node's background tasks, for the server's own (heartbeat, write
    /// batching lanes, reloads) to end and be awaited with them.
    pub(crate) fn tasks(&self) -> &Tasks {
        &self.inner.tasks
    }

    /// Ends every background task the node started and waits for them:
    /// the last step of shutdown, after the broker is closed.
    pub async fn stop_tasks(&self) {
        let tasks = &self.inner.tasks;
        tasks.stop.cancel();
        tasks.tracker.close();
        tasks.tracker.wait().await;
    }
}
