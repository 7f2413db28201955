//! Virtual Services being re-created with the host's cluster IP (cluster IPs are immutable, so
//! the Service is deleted and created again). For those milliseconds the Service is absent from
//! the virtual API; the syncer's other loops must not take its host copy for an orphan, and the
//! proxy holds the tenant's requests for it so that nobody is told it does not exist.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

/// (namespace, name) of the virtual Services being re-created right now.
#[derive(Debug, Default)]
pub struct Recreations {
    marked: Mutex<HashSet<(String, String)>>,
    /// Woken whenever a mark is removed.
    finished: Notify,
}

impl Recreations {
    pub fn contains(&self, namespace: &str, name: &str) -> bool {
        self.marked
            .lock()
            .is_ok_and(|m| m.contains(&(namespace.to_string(), name.to_string())))
    }

    /// Marks `namespace/name` as being re-created until the returned guard is dropped.
    pub fn mark(&self, namespace: &str, name: &str) -> Mark<'_> {
        let key = (namespace.to_string(), name.to_string());
        if let Ok(mut m) = self.marked.lock() {
            m.insert(key.clone());
        }
        Mark { of: self, key }
    }

    /// Waits until `namespace/name` is no longer being re-created, at most `limit`. True when it
    /// is done (or never was), false when the wait ran out.
    pub async fn wait(&self, namespace: &str, name: &str, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // Registered before the check, so a removal between the two is not missed.
            let finished = self.finished.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            if !self.contains(namespace, name) {
                return true;
            }
            if tokio::time::timeout_at(deadline, finished).await.is_err() {
                return false;
            }
        }
    }
}

/// Removes its mark when dropped (also when the re-creation returns early or fails).
pub struct Mark<'a> {
    of: &'a Recreations,
    key: (String, String),
}

impl Drop for Mark<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.of.marked.lock() {
            m.remove(&self.key);
        }
        self.of.finished.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_waiter_is_released_when_the_mark_goes_and_not_before() {
        let r = Arc::new(Recreations::default());
        assert!(r.wait("ns", "svc", Duration::ZERO).await, "nothing marked");
        let mark = r.mark("ns", "svc");
        assert!(r.contains("ns", "svc"));
        assert!(!r.contains("ns", "other"));
        assert!(
            !r.wait("ns", "svc", Duration::from_millis(20)).await,
            "held while marked"
        );
        let waiter = {
            let r = r.clone();
            tokio::spawn(async move { r.wait("ns", "svc", Duration::from_secs(30)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(mark);
        let done = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert!(matches!(done, Ok(Ok(true))), "{done:?}");
        assert!(!r.contains("ns", "svc"));
    }
}
