//! Whether the manager's controller is making progress, for `/healthz`: a wedged manager (a
//! watch that went silent on a half-open connection, a reconcile hung on an API call, a
//! controller loop that stopped) must look unhealthy to the kubelet, not idle.
//!
//! Every tick the watchdog (1) sends a heartbeat through the controller's own queue (a request
//! for an object that does not exist, which the controller answers without calling the
//! reconciler) and expects it back, (2) lists the VirtualClusters from the host API and expects
//! the controller's cache, fed by its watch, to hold each at the same resourceVersion, and
//! (3) looks for a reconcile running too long. Anything that stays wrong for `stuck_after`
//! fails `/healthz`. [`judge`] is the pure verdict.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The name the heartbeat asks the controller about. A VirtualCluster cannot have it (not a
/// valid host namespace suffix); if one did, the heartbeat would merely reconcile it.
pub const HEARTBEAT: &str = "vkube.watchdog.heartbeat";

/// What the watchdog knows at one moment. Instants are `now`-relative ages in [`judge`].
#[derive(Debug, Default)]
pub struct State {
    /// Reconciles running, by id, with their start.
    pub in_flight: HashMap<u64, Instant>,
    next_id: u64,
    /// A heartbeat sent and not yet back.
    pub heartbeat_pending: Option<Instant>,
    /// The last list from the host API that could be compared with the cache.
    pub last_list: Option<Instant>,
    /// Objects whose cached copy differs from the listed one, since when (by uid).
    pub lagging: HashMap<String, Instant>,
    /// When the controller started running (before that, there is nothing to judge).
    pub running_since: Option<Instant>,
}

/// `Ok` while the controller makes progress; otherwise what is stuck. Pure.
pub fn judge(state: &State, now: Instant, stuck_after: Duration) -> Result<(), String> {
    let Some(running) = state.running_since else {
        return Ok(());
    };
    let old = |t: &Instant| now.saturating_duration_since(*t) > stuck_after;
    if let Some(t) = state.heartbeat_pending.as_ref().filter(|t| old(t)) {
        return Err(format!(
            "the controller has not taken a queued request for {}s",
            now.saturating_duration_since(*t).as_secs()
        ));
    }
    if let Some(t) = state.in_flight.values().filter(|t| old(t)).min() {
        return Err(format!(
            "a reconcile has been running for {}s",
            now.saturating_duration_since(*t).as_secs()
        ));
    }
    if let Some(t) = state.lagging.values().filter(|t| old(t)).min() {
        return Err(format!(
            "the controller's watch has not delivered a change listed {}s ago",
            now.saturating_duration_since(*t).as_secs()
        ));
    }
    let listed = state.last_list.unwrap_or(running);
    if old(&listed) {
        return Err(format!(
            "the host API has not answered a list of VirtualClusters for {}s",
            now.saturating_duration_since(listed).as_secs()
        ));
    }
    Ok(())
}

/// Which listed objects the cache does not hold as listed: `listed` and `cached` map uid to
/// resourceVersion. Cached objects missing from the list count too (a deletion not seen). Pure.
pub fn differences(
    listed: &HashMap<String, String>,
    cached: &HashMap<String, String>,
) -> Vec<String> {
    let mut out: Vec<String> = listed
        .iter()
        .filter(|(uid, rv)| cached.get(*uid) != Some(*rv))
        .map(|(uid, _)| uid.clone())
        .collect();
    out.extend(
        cached
            .keys()
            .filter(|uid| !listed.contains_key(*uid))
            .cloned(),
    );
    out.sort();
    out
}

pub struct Watchdog {
    pub stuck_after: Duration,
    state: Mutex<State>,
}

impl Watchdog {
    pub fn new(stuck_after: Duration) -> Watchdog {
        Watchdog {
            stuck_after,
            state: Mutex::new(State::default()),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> Option<T> {
        self.state.lock().ok().map(|mut s| f(&mut s))
    }

    pub fn running(&self) {
        self.with(|s| s.running_since = Some(Instant::now()));
    }

    pub fn reconcile_started(&self) -> u64 {
        self.with(|s| {
            s.next_id += 1;
            s.in_flight.insert(s.next_id, Instant::now());
            s.next_id
        })
        .unwrap_or(0)
    }

    pub fn reconcile_ended(&self, id: u64) {
        self.with(|s| s.in_flight.remove(&id));
    }

    /// Returns whether a heartbeat should be sent (none is pending).
    pub fn heartbeat_sent(&self) -> bool {
        self.with(|s| {
            if s.heartbeat_pending.is_some() {
                return false;
            }
            s.heartbeat_pending = Some(Instant::now());
            true
        })
        .unwrap_or(false)
    }

    pub fn heartbeat_back(&self) {
        self.with(|s| s.heartbeat_pending = None);
    }

    /// Records a comparison of a fresh list with the cache.
    pub fn compared(&self, differing: Vec<String>) {
        let now = Instant::now();
        self.with(|s| {
            s.last_list = Some(now);
            s.lagging.retain(|uid, _| differing.contains(uid));
            for uid in differing {
                s.lagging.entry(uid).or_insert(now);
            }
        });
    }

    pub fn check(&self) -> Result<(), String> {
        self.with(|s| judge(s, Instant::now(), self.stuck_after))
            .unwrap_or_else(|| Err("the watchdog's state is poisoned".into()))
    }

    /// Seconds since the oldest thing still waiting started (0 when nothing waits).
    pub fn age(&self) -> f64 {
        let now = Instant::now();
        self.with(|s| {
            let waiting = s
                .heartbeat_pending
                .iter()
                .chain(s.in_flight.values())
                .chain(s.lagging.values())
                .map(|t| now.saturating_duration_since(*t))
                .max()
                .unwrap_or_default();
            let since_list = s
                .last_list
                .or(s.running_since)
                .map(|t| now.saturating_duration_since(t))
                .unwrap_or_default();
            waiting.max(since_list).as_secs_f64()
        })
        .unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STUCK: Duration = Duration::from_secs(60);

    fn running(now: Instant) -> State {
        State {
            running_since: Some(now - Duration::from_secs(1000)),
            last_list: Some(now - Duration::from_secs(5)),
            ..Default::default()
        }
    }

    #[test]
    fn progress_within_the_limit_is_healthy() {
        let now = Instant::now();
        let mut s = running(now);
        s.heartbeat_pending = Some(now - Duration::from_secs(59));
        s.in_flight.insert(1, now - Duration::from_secs(30));
        s.lagging.insert("u".into(), now - Duration::from_secs(10));
        assert_eq!(judge(&s, now, STUCK), Ok(()));
        // Not running yet (a standby replica waiting for the lease): nothing to judge.
        assert_eq!(judge(&State::default(), now, STUCK), Ok(()));
    }

    #[test]
    fn each_way_of_being_stuck_fails() {
        let now = Instant::now();
        let long = now - Duration::from_secs(61);
        type Make = Box<dyn Fn(&mut State)>;
        let cases: Vec<(&str, Make)> = vec![
            (
                "queued request",
                Box::new(move |s| s.heartbeat_pending = Some(long)),
            ),
            (
                "reconcile",
                Box::new(move |s| {
                    s.in_flight.insert(7, long);
                }),
            ),
            (
                "watch",
                Box::new(move |s| {
                    s.lagging.insert("uid".into(), long);
                }),
            ),
            ("list", Box::new(move |s| s.last_list = Some(long))),
            ("list", Box::new(move |s| s.last_list = None)),
        ];
        for (what, stuck) in cases {
            let mut s = running(now);
            stuck(&mut s);
            let verdict = judge(&s, now, STUCK);
            assert!(
                verdict.as_ref().is_err_and(|e| e.contains(what)),
                "{what}: {verdict:?}"
            );
        }
    }

    #[test]
    fn the_cache_differs_where_versions_or_objects_differ() {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<HashMap<_, _>>()
        };
        let listed = map(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let cached = map(&[("a", "1"), ("b", "1"), ("d", "9")]);
        assert_eq!(differences(&listed, &cached), vec!["b", "c", "d"]);
        assert!(differences(&listed, &listed).is_empty());
    }

    #[test]
    fn a_difference_keeps_its_first_time_and_goes_when_resolved() {
        let w = Watchdog::new(STUCK);
        w.running();
        w.compared(vec!["a".into()]);
        let first = w.state.lock().unwrap().lagging["a"];
        w.compared(vec!["a".into(), "b".into()]);
        assert_eq!(w.state.lock().unwrap().lagging["a"], first);
        w.compared(vec![]);
        assert!(w.state.lock().unwrap().lagging.is_empty());
        assert!(w.heartbeat_sent());
        assert!(!w.heartbeat_sent(), "one heartbeat at a time");
        w.heartbeat_back();
        assert!(w.heartbeat_sent());
        assert_eq!(w.check(), Ok(()));
    }
}
