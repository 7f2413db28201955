//! Sleep and wake: whether a virtual cluster should run, from what is recorded about it. Pure:
//! no I/O, no clock (the time is a fact like the others), so every race is a table row.
//!
//! A cluster *sleeps* when nobody has used its API for `spec.sleepAfter` (reason `Idle`) or its
//! owner asked with `vkube sleep` (reason `Manual`): like a pause, its control plane is scaled
//! to zero and its host pods are removed with all state kept, but the first request to its API
//! wakes it again (the manager's waker holds that connection meanwhile). *Paused* is a sleep no
//! request ends. What is recorded, so that a restarted manager carries on where the last one
//! stopped: the `Sleeping` condition (status and reason, and since when, in its transition
//! time), the owner's requests (annotations) with the last of each the manager acted on (in
//! the status: a request is new when its value differs, so no clocks are compared), and the
//! last activity `vkube serve` published (a Lease in the host namespace).

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// The shortest `sleepAfter`: a cluster takes seconds to fall asleep and to wake.
pub const MIN_SLEEP_AFTER: Duration = Duration::from_secs(60);

/// The `Sleeping` condition's reasons. `True`: one of [`Reason`] or `Paused`; `False`: `Awake`.
pub const AWAKE: &str = "Awake";
pub const PAUSED: &str = "Paused";

/// Why a cluster sleeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No API request for `sleepAfter`.
    Idle,
    /// `vkube sleep` (the annotation [`crate::api::SLEEP_REQUESTED_ANNOTATION`]).
    Manual,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Idle => "Idle",
            Reason::Manual => "Manual",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        match s {
            "Idle" => Some(Reason::Idle),
            "Manual" => Some(Reason::Manual),
            _ => None,
        }
    }
}

/// What the manager recorded last (the `Sleeping` condition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Running (or starting) since then: created, resumed or woken.
    Awake { since: Timestamp },
    /// Asleep (or falling asleep) since then.
    Asleep { reason: Reason, since: Timestamp },
    /// Paused since then.
    Paused { since: Timestamp },
}

/// Everything the decision depends on.
#[derive(Debug, Clone)]
pub struct Facts {
    pub now: Timestamp,
    pub paused: bool,
    /// Resolved `sleepAfter` (the admin's default applied); `None`: never idle.
    pub sleep_after: Option<Duration>,
    pub recorded: Recorded,
    /// The last use of the API through the proxy (the end of the last request, or when
    /// `vkube serve` last saw one running), as `vkube serve` published it.
    pub last_activity: Option<Timestamp>,
    /// When the most recent request started, as published.
    pub last_request: Option<Timestamp>,
    /// `vkube sleep`, `vkube wake`: the owner asked since the manager last decided.
    pub sleep_requested: bool,
    pub wake_requested: bool,
    /// Connections the waker holds for this cluster (requests waiting for it).
    pub waiting: usize,
}

/// What should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Awake,
    Asleep(Reason),
    Paused,
}

/// Why the cluster wakes (or stays awake); for the Event and the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Nothing changes.
    Unchanged,
    /// A connection reached the waker.
    Request,
    /// `vkube wake`.
    WakeRequested,
    /// A request reached the control plane after the sleep was decided (while it fell asleep).
    LateActivity,
    /// `spec.paused` was turned off.
    Resumed,
    /// Going to sleep (see the reason).
    FallAsleep,
    /// `spec.paused` was turned on.
    Paused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub want: Want,
    pub cause: Cause,
    /// When to look again even if nothing changes (the idle deadline).
    pub recheck: Option<Duration>,
}

impl Decision {
    fn stay(want: Want) -> Decision {
        Decision {
            want,
            cause: Cause::Unchanged,
            recheck: None,
        }
    }
}

/// Later than `t`? `None` is never later.
fn after(x: Option<Timestamp>, t: Timestamp) -> bool {
    x.is_some_and(|x| x > t)
}

/// The decision. Order matters and is the point of this function:
/// - paused wins over everything, and a request never ends it;
/// - asleep: a waiting connection, `vkube wake`, or (for an idle sleep) a request that started
///   later than the moment the sleep was decided (it reached the control plane while it fell
///   asleep) wakes it;
/// - awake: a new `vkube sleep` puts it to sleep, unless a request is waiting; otherwise it
///   sleeps once `sleepAfter` has passed since the last use (the later of the wake and the
///   last activity). vkube's own traffic is not activity (the proxy does not count it), so it
///   never keeps a cluster awake.
pub fn decide(f: &Facts) -> Decision {
    // A clock that runs ahead on the control plane's node must not postpone sleep forever.
    let activity = f.last_activity.map(|a| a.min(f.now));
    if f.paused {
        return Decision {
            want: Want::Paused,
            cause: match f.recorded {
                Recorded::Paused { .. } => Cause::Unchanged,
                _ => Cause::Paused,
            },
            recheck: None,
        };
    }
    let since = match f.recorded {
        Recorded::Paused { .. } => {
            return Decision {
                want: Want::Awake,
                cause: Cause::Resumed,
                recheck: f.sleep_after,
            };
        }
        Recorded::Asleep { reason, since } => {
            let cause = if f.waiting > 0 {
                Cause::Request
            } else if f.wake_requested {
                Cause::WakeRequested
            } else if reason == Reason::Idle && after(f.last_request, since) {
                // The sleep was decided on news up to 30 s old: someone was using it. (A
                // manual sleep stands: requests of the tenant's own pods in its last seconds
                // must not undo what the owner asked; new connections reach the waker.)
                Cause::LateActivity
            } else {
                return Decision::stay(Want::Asleep(reason));
            };
            return Decision {
                want: Want::Awake,
                cause,
                recheck: f.sleep_after,
            };
        }
        Recorded::Awake { since } => since,
    };
    if f.waiting > 0 {
        return Decision {
            want: Want::Awake,
            cause: Cause::Unchanged,
            recheck: f.sleep_after,
        };
    }
    if f.sleep_requested {
        return Decision {
            want: Want::Asleep(Reason::Manual),
            cause: Cause::FallAsleep,
            recheck: None,
        };
    }
    let Some(sleep_after) = f.sleep_after else {
        return Decision::stay(Want::Awake);
    };
    let last_use = activity.map_or(since, |a| a.max(since));
    let idle = f.now.duration_since(last_use);
    let limit = SignedDuration::try_from(sleep_after).unwrap_or(SignedDuration::MAX);
    if idle >= limit {
        Decision {
            want: Want::Asleep(Reason::Idle),
            cause: Cause::FallAsleep,
            recheck: None,
        }
    } else {
        let left = (limit - idle).unsigned_abs();
        Decision {
            want: Want::Awake,
            cause: Cause::Unchanged,
            recheck: Some(left),
        }
    }
}

/// Reads the `Sleeping` condition (status, reason, transition time) as this manager writes it.
/// `None` for what it did not write (no condition, or one an older manager wrote: it then
/// counts as awake from the first time this one sees it).
pub fn recorded(status: &str, reason: &str, since: &str) -> Option<Recorded> {
    let since: Timestamp = since.parse().ok()?;
    match (status, reason) {
        ("False", AWAKE) => Some(Recorded::Awake { since }),
        ("True", PAUSED) => Some(Recorded::Paused { since }),
        ("True", r) => Reason::parse(r).map(|reason| Recorded::Asleep { reason, since }),
        _ => None,
    }
}

/// What `Want` records in the `Sleeping` condition: status and reason.
pub fn condition_of(want: Want) -> (&'static str, &'static str) {
    match want {
        Want::Awake => ("False", AWAKE),
        Want::Asleep(r) => ("True", r.as_str()),
        Want::Paused => ("True", PAUSED),
    }
}

/// A duration as Kubernetes and Go write them: `90s`, `30m`, `2h`, `1h30m` (hours, minutes and
/// seconds; whole numbers). The CRD's pattern and the admission policy accept the same.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration (e.g. 30m, 2h, 1h30m)");
    if text.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit: u64 = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        number.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if !number.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// The same pattern as a regular expression (CRD schema, admission policy).
pub const DURATION_PATTERN: &str = "^([0-9]+[hms])+$";

/// `90s` → "1m30s": for messages.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(second: i64) -> Timestamp {
        Timestamp::from_second(1_769_860_800 + second).unwrap()
    }

    fn facts(now: i64, recorded: Recorded) -> Facts {
        Facts {
            now: t(now),
            paused: false,
            sleep_after: Some(Duration::from_secs(600)),
            recorded,
            last_activity: None,
            last_request: None,
            sleep_requested: false,
            wake_requested: false,
            waiting: 0,
        }
    }

    fn awake(since: i64) -> Recorded {
        Recorded::Awake { since: t(since) }
    }

    fn asleep(reason: Reason, since: i64) -> Recorded {
        Recorded::Asleep {
            reason,
            since: t(since),
        }
    }

    /// Every race the issue names, and the ordinary cases, as rows.
    #[test]
    fn sleep_and_wake_decisions() {
        struct Row {
            what: &'static str,
            facts: Facts,
            want: Want,
            cause: Cause,
        }
        let mut rows = vec![];
        let mut row = |what, facts, want, cause| {
            rows.push(Row {
                what,
                facts,
                want,
                cause,
            })
        };
        row(
            "awake and used a minute ago: stays awake",
            Facts {
                last_activity: Some(t(540)),
                ..facts(600, awake(0))
            },
            Want::Awake,
            Cause::Unchanged,
        );
        row(
            "idle for sleepAfter since the wake: falls asleep",
            facts(600, awake(0)),
            Want::Asleep(Reason::Idle),
            Cause::FallAsleep,
        );
        row(
            "idle for sleepAfter since the last request: falls asleep",
            Facts {
                last_activity: Some(t(100)),
                ..facts(700, awake(0))
            },
            Want::Asleep(Reason::Idle),
            Cause::FallAsleep,
        );
        row(
            "no sleepAfter: never idle",
            Facts {
                sleep_after: None,
                ..facts(100_000, awake(0))
            },
            Want::Awake,
            Cause::Unchanged,
        );
        row(
            "woken a moment ago after a long sleep: the old activity does not count against it",
            Facts {
                last_activity: Some(t(-100_000)),
                ..facts(60, awake(0))
            },
            Want::Awake,
            Cause::Unchanged,
        );
        row(
            "a published activity from the future (clock skew) counts as now, not later",
            Facts {
                last_activity: Some(t(10_000)),
                ..facts(700, awake(0))
            },
            Want::Awake,
            Cause::Unchanged,
        );
        row(
            "vkube sleep, even the same second it woke: falls asleep at once",
            Facts {
                sleep_requested: true,
                last_activity: Some(t(0)),
                ..facts(0, awake(0))
            },
            Want::Asleep(Reason::Manual),
            Cause::FallAsleep,
        );
        row(
            "vkube sleep while a request is held: the request wins",
            Facts {
                sleep_requested: true,
                waiting: 1,
                ..facts(31, awake(0))
            },
            Want::Awake,
            Cause::Unchanged,
        );
        row(
            "vkube sleep while it falls asleep: nothing more to do",
            Facts {
                sleep_requested: true,
                ..facts(601, asleep(Reason::Idle, 600))
            },
            Want::Asleep(Reason::Idle),
            Cause::Unchanged,
        );
        row(
            "vkube wake on an awake cluster: nothing to do",
            Facts {
                wake_requested: true,
                ..facts(30, awake(0))
            },
            Want::Awake,
            Cause::Unchanged,
        );
        row(
            "asleep and nothing happens: stays asleep",
            facts(100_000, asleep(Reason::Idle, 600)),
            Want::Asleep(Reason::Idle),
            Cause::Unchanged,
        );
        row(
            "a request reaches the waker: wakes",
            Facts {
                waiting: 1,
                ..facts(700, asleep(Reason::Idle, 600))
            },
            Want::Awake,
            Cause::Request,
        );
        row(
            "two requests at once: one wake",
            Facts {
                waiting: 2,
                ..facts(700, asleep(Reason::Manual, 600))
            },
            Want::Awake,
            Cause::Request,
        );
        row(
            "a request while falling asleep (held by the waker): wakes",
            Facts {
                waiting: 1,
                ..facts(601, asleep(Reason::Idle, 600))
            },
            Want::Awake,
            Cause::Request,
        );
        row(
            "a request that reached the control plane after the sleep was decided: wakes",
            Facts {
                last_activity: Some(t(602)),
                last_request: Some(t(601)),
                ..facts(605, asleep(Reason::Idle, 600))
            },
            Want::Awake,
            Cause::LateActivity,
        );
        row(
            "the request published late but from before the decision: stays asleep",
            Facts {
                last_activity: Some(t(599)),
                last_request: Some(t(598)),
                ..facts(605, asleep(Reason::Idle, 600))
            },
            Want::Asleep(Reason::Idle),
            Cause::Unchanged,
        );
        row(
            "streams cut by the shutdown end after the decision, but started before: stays asleep",
            Facts {
                last_activity: Some(t(603)),
                last_request: Some(t(100)),
                ..facts(605, asleep(Reason::Idle, 600))
            },
            Want::Asleep(Reason::Idle),
            Cause::Unchanged,
        );
        row(
            "vkube sleep: a late request of the tenant's own pods does not undo it",
            Facts {
                last_activity: Some(t(603)),
                last_request: Some(t(602)),
                ..facts(605, asleep(Reason::Manual, 600))
            },
            Want::Asleep(Reason::Manual),
            Cause::Unchanged,
        );
        row(
            "vkube wake: wakes",
            Facts {
                wake_requested: true,
                ..facts(701, asleep(Reason::Manual, 600))
            },
            Want::Awake,
            Cause::WakeRequested,
        );
        row(
            "a manager restarted mid-wake: awake is recorded, the wake goes on",
            facts(605, awake(600)),
            Want::Awake,
            Cause::Unchanged,
        );
        row(
            "a manager restarted mid-sleep: asleep is recorded, the sleep goes on",
            facts(605, asleep(Reason::Idle, 600)),
            Want::Asleep(Reason::Idle),
            Cause::Unchanged,
        );
        row(
            "paused: a request never wakes it",
            Facts {
                paused: true,
                waiting: 3,
                wake_requested: true,
                last_activity: Some(t(700)),
                ..facts(701, Recorded::Paused { since: t(600) })
            },
            Want::Paused,
            Cause::Unchanged,
        );
        row(
            "paused while asleep",
            Facts {
                paused: true,
                ..facts(701, asleep(Reason::Idle, 600))
            },
            Want::Paused,
            Cause::Paused,
        );
        row(
            "resumed: awake, whatever else",
            Facts {
                sleep_requested: true,
                ..facts(701, Recorded::Paused { since: t(600) })
            },
            Want::Awake,
            Cause::Resumed,
        );
        for r in rows {
            let d = decide(&r.facts);
            assert_eq!((d.want, d.cause), (r.want, r.cause), "{}", r.what);
        }
    }

    #[test]
    fn an_awake_cluster_is_looked_at_again_at_its_idle_deadline() {
        let d = decide(&Facts {
            last_activity: Some(t(100)),
            ..facts(400, awake(0))
        });
        assert_eq!(d.recheck, Some(Duration::from_secs(300)));
        let d = decide(&Facts {
            sleep_after: None,
            ..facts(400, awake(0))
        });
        assert_eq!(d.recheck, None);
    }

    #[test]
    fn the_condition_round_trips_and_foreign_reasons_are_not_ours() {
        for want in [
            Want::Awake,
            Want::Asleep(Reason::Idle),
            Want::Asleep(Reason::Manual),
            Want::Paused,
        ] {
            let (status, reason) = condition_of(want);
            let r = recorded(status, reason, "2026-01-31T12:00:00Z").unwrap();
            let back = match r {
                Recorded::Awake { .. } => Want::Awake,
                Recorded::Asleep { reason, .. } => Want::Asleep(reason),
                Recorded::Paused { .. } => Want::Paused,
            };
            assert_eq!(back, want);
        }
        // An older manager's condition (reason = phase) is not a record of this one.
        assert_eq!(recorded("False", "Ready", "2026-01-31T12:00:00Z"), None);
        assert_eq!(recorded("False", AWAKE, "yesterday"), None);
    }

    #[test]
    fn durations_are_hours_minutes_and_seconds() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2h0m5s"), Ok(Duration::from_secs(7205)));
        for bad in [
            "",
            "30",
            "m",
            "1d",
            "1.5h",
            "-1h",
            " 1h",
            "1h ",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(0)), "0s");
    }
}
