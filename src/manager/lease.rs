//! Leader election on a coordination.k8s.io Lease, so only one manager replica reconciles.
//! Writes use the Lease's resourceVersion: two candidates racing for an expired lease cannot
//! both win (the loser gets a 409 and tries again later).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("leader election lease {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("lost the leader election lease to {holder:?}: stopping so a new term starts clean")]
    Lost { holder: Option<String> },
}

pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
    pub renew_every: Duration,
}

/// Whether `me` may take or keep the lease at `now`. Pure.
pub fn may_hold(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> bool {
    let Some(spec) = spec else { return true };
    match spec.holder_identity.as_deref() {
        None | Some("") => true,
        Some(holder) if holder == me => true,
        Some(_) => {
            let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
                return true;
            };
            let secs = i64::from(spec.lease_duration_seconds.unwrap_or(15));
            match renewed
                .0
                .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(secs))
            {
                Ok(expiry) => now > expiry,
                Err(_) => false,
            }
        }
    }
}

fn spec_for(config: &LeaseConfig, previous: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
    let ours = previous.and_then(|p| p.holder_identity.as_deref()) == Some(&config.identity);
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(config.duration.as_secs() as i32),
        acquire_time: if ours {
            previous.and_then(|p| p.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if ours { transitions } else { transitions + 1 }),
        ..Default::default()
    }
}

/// One attempt to take or renew the lease. Ok(true): we hold it until now + duration.
pub async fn try_acquire(api: &Api<Lease>, config: &LeaseConfig) -> Result<bool, LeaseError> {
    let err = |source| LeaseError::Api {
        namespace: config.namespace.clone(),
        name: config.name.clone(),
        source,
    };
    let now = Timestamp::now();
    match api.get_opt(&config.name).await.map_err(err)? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(config.name.clone()),
                    namespace: Some(config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(spec_for(config, None, now)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(err(e)),
            }
        }
        Some(mut lease) => {
            if !may_hold(lease.spec.as_ref(), &config.identity, now) {
                return Ok(false);
            }
            lease.spec = Some(spec_for(config, lease.spec.as_ref(), now));
            // replace carries the resourceVersion we read: a concurrent writer makes this 409.
            match api
                .replace(&config.name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(err(e)),
            }
        }
    }
}

/// Waits until this process holds the lease.
pub async fn acquire(api: &Api<Lease>, config: &LeaseConfig) -> Result<(), LeaseError> {
    loop {
        if try_acquire(api, config).await? {
            tracing::info!(lease = %config.name, identity = %config.identity, "became leader");
            return Ok(());
        }
        tokio::time::sleep(config.renew_every).await;
    }
}

/// Renews the lease until it cannot: returns the reason leadership ended. A renewal that fails
/// for longer than the lease lasts means another replica may have taken over.
pub async fn keep(api: Api<Lease>, config: LeaseConfig) -> LeaseError {
    let mut last_ok = std::time::Instant::now();
    loop {
        tokio::time::sleep(config.renew_every).await;
        match try_acquire(&api, &config).await {
            Ok(true) => last_ok = std::time::Instant::now(),
            Ok(false) => {
                let holder = api
                    .get_opt(&config.name)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|l| l.spec?.holder_identity);
                return LeaseError::Lost { holder };
            }
            Err(e) if last_ok.elapsed() >= config.duration => return e,
            Err(e) => tracing::warn!(error = %e, "renewing the lease failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renewed)),
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_is_free_when_absent_ours_or_expired() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let recent = Timestamp::from_second(1_000_000 - 5).unwrap();
        let old = Timestamp::from_second(1_000_000 - 16).unwrap();
        assert!(may_hold(None, "a", now));
        assert!(may_hold(Some(&spec("a", recent)), "a", now));
        assert!(!may_hold(Some(&spec("b", recent)), "a", now));
        assert!(may_hold(Some(&spec("b", old)), "a", now));
        assert!(may_hold(Some(&spec("", recent)), "a", now));
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_does_not() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let config = LeaseConfig {
            namespace: "ns".into(),
            name: "l".into(),
            identity: "a".into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        };
        let mut theirs = spec("b", now);
        theirs.lease_transitions = Some(3);
        let taken = spec_for(&config, Some(&theirs), now);
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
        let renewed = spec_for(&config, Some(&taken), now);
        assert_eq!(renewed.lease_transitions, Some(4));
        assert_eq!(renewed.acquire_time, taken.acquire_time);
    }
}
