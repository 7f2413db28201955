//! Virtual pods waiting for their host pod. While any wait, writes that only report back to the
//! virtual cluster (bindings, status, copied events) hold off for a bounded time: on a busy
//! machine every such write costs the API servers CPU that the creates of waiting pods need, and
//! a pod that does not exist on the host yet is the one thing a tenant cannot work around.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The set of (namespace, name) of virtual pods whose host pod is not created yet.
#[derive(Default)]
pub struct Backlog {
    waiting: Mutex<HashMap<(String, String), Instant>>,
    drained: Notify,
}

impl Backlog {
    pub fn add(&self, namespace: &str, name: &str) {
        if let Ok(mut w) = self.waiting.lock() {
            w.entry((namespace.to_string(), name.to_string()))
                .or_insert_with(Instant::now);
        }
    }

    /// How long the pod has waited so far.
    pub fn waited(&self, namespace: &str, name: &str) -> Option<Duration> {
        let w = self.waiting.lock().ok()?;
        w.get(&(namespace.to_string(), name.to_string()))
            .map(|t| t.elapsed())
    }

    /// The pod no longer waits: created, refused, deleted, or not to be created at all.
    pub fn remove(&self, namespace: &str, name: &str) {
        let now_empty = self.waiting.lock().is_ok_and(|mut w| {
            w.remove(&(namespace.to_string(), name.to_string()))
                .is_some()
                && w.is_empty()
        });
        if now_empty {
            self.drained.notify_waiters();
        }
    }

    pub fn len(&self) -> usize {
        self.waiting.lock().map(|w| w.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns once nothing waits, or after `at_most`: status must still flow during a long
    /// burst, only later.
    pub async fn drained_or(&self, at_most: Duration) {
        let deadline = Instant::now() + at_most;
        loop {
            let notified = self.drained.notified();
            if self.is_empty() {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn waiters_go_on_when_the_last_pod_is_created() {
        let b = Arc::new(Backlog::default());
        b.add("ns", "a");
        b.add("ns", "b");
        b.add("ns", "a");
        assert_eq!(b.len(), 2);
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.drained_or(Duration::from_secs(30)).await })
        };
        b.remove("ns", "a");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        b.remove("ns", "b");
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter goes on once the backlog is empty")
            .expect("no panic");
    }

    #[tokio::test]
    async fn waiters_give_up_after_the_bound() {
        let b = Backlog::default();
        b.add("ns", "a");
        let t0 = Instant::now();
        b.drained_or(Duration::from_millis(100)).await;
        assert!(t0.elapsed() >= Duration::from_millis(100));
        // Nothing waits: no delay.
        b.remove("ns", "a");
        let t1 = Instant::now();
        b.drained_or(Duration::from_secs(30)).await;
        assert!(t1.elapsed() < Duration::from_secs(1));
    }
}
