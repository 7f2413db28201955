//! Activity accounting for sleep (`spec.sleepAfter`): when did someone last use this virtual
//! cluster's API? The proxy sees every request with the caller's identity, so it decides here;
//! `vkube serve` publishes the result (a Lease in its host namespace, see
//! [`crate::serve`]) and the manager reads it.
//!
//! What counts: a request of an authenticated caller (a user's client certificate, a bearer
//! token: the tenant's people and the tenant's own workloads, whose service-account tokens
//! come through here too), from its start until its response, stream or upgraded connection
//! (watch, logs -f, exec, port-forward) ends: a long `kubectl exec` keeps the cluster awake.
//! What does not: health probes (`/healthz`, `/livez`, `/readyz`: the kubelet's, the
//! manager's), callers refused before they are known (no credentials, a revoked certificate),
//! and vkube's own identities. vkube's syncer, DNS catalog, token reviews, storage mirrors and
//! the controller-manager talk to the virtual API server on loopback and never pass through
//! here; their identities are refused by name anyway, so vkube's own traffic can never keep a
//! cluster awake even if one of them someday did.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use k8s_openapi::jiff::Timestamp;

use super::identity::Identity;

/// The Lease in the host namespace whose `renewTime` is the cluster's last use and whose
/// `acquireTime` is when its most recent request started, as `vkube serve` publishes them (at
/// most every [`PUBLISH_EVERY`], only after new activity).
pub const LEASE: &str = "vkube-activity";
/// How often the last use is written at most: sleep is decided in minutes, and an idle
/// cluster costs no writes at all.
pub const PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Users and groups that are vkube's own components, never a tenant's use.
const OWN_USERS: &[&str] = &[
    crate::pki::INTERNAL_USER,
    crate::syncer::storage::MIRROR_WRITER,
    "system:kube-controller-manager",
];
const OWN_GROUPS: &[&str] = &[crate::pki::INTERNAL_GROUP];

/// Whether a request of this (authenticated) caller is use of the cluster. Pure.
pub fn counts(identity: &Identity) -> bool {
    !identity.user.is_empty()
        && identity.user != "system:anonymous"
        && !OWN_USERS.contains(&identity.user.as_str())
        && !identity
            .groups
            .iter()
            .any(|g| OWN_GROUPS.contains(&g.as_str()) || g == "system:unauthenticated")
}

/// The cluster's last use: the end of the last counted request, or now while one is running;
/// and when the most recent counted request started.
#[derive(Debug, Default)]
pub struct Activity {
    /// Unix milliseconds of the last start or end of a counted request; 0 = never.
    last_ms: AtomicI64,
    /// Unix milliseconds of the last start of a counted request; 0 = never.
    started_ms: AtomicI64,
    in_flight: AtomicUsize,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity::default())
    }

    /// A counted request starts; it is in progress until every clone of the guard is gone
    /// (the response body, the upgraded tunnel).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.stamp();
        self.started_ms
            .fetch_max(Timestamp::now().as_millisecond(), Ordering::SeqCst);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::new(Guard(self.clone())))
    }

    fn stamp(&self) {
        let now = Timestamp::now().as_millisecond();
        self.last_ms.fetch_max(now, Ordering::SeqCst);
    }

    /// The last use: now while a counted request is in progress.
    pub fn last(&self) -> Option<Timestamp> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return Some(Timestamp::now());
        }
        match self.last_ms.load(Ordering::SeqCst) {
            0 => None,
            ms => Timestamp::from_millisecond(ms).ok(),
        }
    }

    /// When the most recent counted request started (streams that end, e.g. cut by a shutdown,
    /// do not move it: it tells whether someone *asked* for something after a moment).
    pub fn last_start(&self) -> Option<Timestamp> {
        match self.started_ms.load(Ordering::SeqCst) {
            0 => None,
            ms => Timestamp::from_millisecond(ms).ok(),
        }
    }
}

struct Guard(Arc<Activity>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.stamp();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A counted request in progress; clones share it (the response body and an upgraded
/// tunnel each hold one).
#[derive(Clone)]
pub struct InFlight(#[allow(dead_code)] Arc<Guard>);

#[cfg(test)]
mod tests {
    use super::*;

    fn id(user: &str, groups: &[&str]) -> Identity {
        Identity {
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn people_and_the_tenants_workloads_count_vkube_and_anonymous_do_not() {
        for (who, counted) in [
            (id("kubernetes-admin", &["vkube:admins"]), true),
            (id("jane", &["developers"]), true),
            (
                id(
                    "system:serviceaccount:default:ci",
                    &["system:serviceaccounts", "system:authenticated"],
                ),
                true,
            ),
            (id("vkube:internal", &["system:masters"]), false),
            (id("someone", &["system:masters"]), false),
            (id("vkube:syncer", &[]), false),
            (id("system:kube-controller-manager", &[]), false),
            (Identity::anonymous(), false),
            (id("", &[]), false),
        ] {
            assert_eq!(counts(&who), counted, "{who:?}");
        }
    }

    #[test]
    fn a_request_is_activity_until_its_last_holder_lets_go() {
        let a = Activity::new();
        assert_eq!(a.last(), None);
        let span = a.begin();
        let started = a.last_start().unwrap();
        let tunnel = span.clone();
        drop(span);
        // The upgraded stream still runs: the cluster is in use now.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let during = a.last().unwrap();
        assert!(Timestamp::now().duration_since(during).as_millis() < 10);
        drop(tunnel);
        let ended = a.last().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(a.last(), Some(ended), "no request: the last use stays put");
        assert_eq!(
            a.last_start(),
            Some(started),
            "the end of a stream starts nothing"
        );
        assert!(ended > started);
        assert_eq!(a.in_flight.load(Ordering::SeqCst), 0);
    }
}
