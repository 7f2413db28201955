//! The tenant admin's credentials as `vkube serve` keeps them. The handed-out admin certificate
//! is an ordinary user in group [`ADMIN_GROUP`]; its rights come from the ClusterRoleBinding
//! [`ADMIN_BINDING`] to `cluster-admin`, which vkube makes in the virtual API and puts back if
//! it is deleted or changed (RBAC decides, not `system:masters`, so the certificate can be
//! revoked). The certificate lives a month and is renewed while `vkube serve` runs; every
//! certificate issued before `--credentials-not-before` is refused by the proxy
//! (`proxy::auth::ClientCertPolicy`), and the admin certificate is re-issued after it.
//!
//! Certificates and keys are never logged.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::host::{HostError, HostStore};
use crate::pki::{ADMIN_GROUP, CertKey, Leaf, Pki, PkiSpec};

/// Name of the virtual ClusterRoleBinding that makes [`ADMIN_GROUP`] cluster-admin.
pub const ADMIN_BINDING: &str = ADMIN_GROUP;
const FIELD_MANAGER: &str = "vkube";
/// How far in the future an epoch may be (clocks of the machine that chose it and of this one
/// differ a little); anything later is a mistake that would lock everyone out until then.
pub const MAX_EPOCH_SKEW: time::Duration = time::Duration::minutes(5);
/// How often a running `vkube serve` checks whether the admin certificate is due for renewal.
pub const RENEW_CHECK_EVERY: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialsError {
    #[error("--credentials-not-before {0:?} is not an RFC 3339 time (e.g. 2026-01-31T12:00:00Z)")]
    Unparsable(String),
    #[error(
        "--credentials-not-before {given} is in the future (now: {now}): no certificate could be valid until then; use the current time"
    )]
    Future { given: String, now: String },
}

/// Parses a revocation epoch (RFC 3339), truncated to whole seconds; refuses one more than
/// [`MAX_EPOCH_SKEW`] after `now`.
pub fn parse_not_before(
    text: &str,
    now: OffsetDateTime,
) -> Result<OffsetDateTime, CredentialsError> {
    let ts: k8s_openapi::jiff::Timestamp = text
        .trim()
        .parse()
        .map_err(|_| CredentialsError::Unparsable(text.into()))?;
    let epoch = OffsetDateTime::from_unix_timestamp(ts.as_second())
        .map_err(|_| CredentialsError::Unparsable(text.into()))?;
    if epoch > now + MAX_EPOCH_SKEW {
        let show = |t: OffsetDateTime| {
            k8s_openapi::jiff::Timestamp::from_second(t.unix_timestamp())
                .map(|t| t.to_string())
                .unwrap_or_default()
        };
        return Err(CredentialsError::Future {
            given: show(epoch),
            now: show(now),
        });
    }
    Ok(epoch)
}

/// The virtual ClusterRoleBinding giving the admin group cluster-admin. Pure.
pub fn admin_binding() -> ClusterRoleBinding {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": ADMIN_BINDING, "labels": {"app.kubernetes.io/managed-by": "vkube"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": ADMIN_GROUP}],
    }))
    .unwrap_or_default()
}

fn is_intact(found: &ClusterRoleBinding) -> bool {
    let want = admin_binding();
    found.role_ref == want.role_ref && found.subjects == want.subjects
}

/// Makes (or repairs) the admin binding, with vkube's internal client of the virtual API.
pub async fn ensure_admin_binding(virt: &kube::Client) -> Result<(), kube::Error> {
    let api: Api<ClusterRoleBinding> = Api::all(virt.clone());
    let binding = admin_binding();
    match api.get_opt(ADMIN_BINDING).await? {
        Some(found) if is_intact(&found) => return Ok(()),
        // roleRef is immutable: a binding changed to another role is replaced.
        Some(found) if found.role_ref != binding.role_ref => {
            api.delete(ADMIN_BINDING, &Default::default()).await?;
        }
        _ => {}
    }
    api.patch(
        ADMIN_BINDING,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&binding),
    )
    .await?;
    Ok(())
}

/// Puts the admin binding back whenever it is deleted or changed (the tenant's admin is
/// cluster-admin and could lock everyone out by mistake), until `stop` flips.
pub async fn keep_admin_binding(virt: kube::Client, mut stop: watch::Receiver<bool>) {
    let api: Api<ClusterRoleBinding> = Api::all(virt.clone());
    let config = watcher::Config::default().fields(&format!("metadata.name={ADMIN_BINDING}"));
    let mut events = std::pin::pin!(watcher(api, config));
    loop {
        let event = tokio::select! {
            e = events.next() => e,
            _ = stop.changed() => return,
        };
        let repair = match event {
            None => return,
            Some(Ok(watcher::Event::Delete(_))) => true,
            Some(Ok(watcher::Event::Apply(b) | watcher::Event::InitApply(b))) => !is_intact(&b),
            Some(Ok(watcher::Event::InitDone)) => true,
            Some(Ok(watcher::Event::Init)) => false,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "watching the admin binding");
                tokio::time::sleep(Duration::from_secs(1)).await;
                false
            }
        };
        if repair && let Err(e) = ensure_admin_binding(&virt).await {
            tracing::warn!(error = %e, binding = ADMIN_BINDING, "cannot restore the admin binding");
        }
    }
}

/// Re-issues the admin certificate when it is due (see `pki::ADMIN_RENEW_BEFORE`) and hands the
/// new credentials to `publish`, every [`RENEW_CHECK_EVERY`] until `stop` flips. `published`
/// is the admin certificate already handed out.
pub async fn keep_admin_certificate<F, Fut>(
    store: HostStore,
    spec: PkiSpec,
    mut published: CertKey,
    mut publish: F,
    mut stop: watch::Receiver<bool>,
) where
    F: FnMut(Pki) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RENEW_CHECK_EVERY) => {}
            _ = stop.changed() => return,
        }
        let pki = match store.load_or_create_pki(&spec).await {
            Ok(pki) => pki,
            Err(e) => {
                log_renew_error(&e);
                continue;
            }
        };
        let admin = pki.leaf(Leaf::Admin).clone();
        if admin == published {
            continue;
        }
        match publish(pki).await {
            Ok(()) => {
                tracing::info!("renewed the admin certificate and republished the kubeconfig");
                published = admin;
            }
            Err(e) => {
                tracing::warn!(error = %e, "publishing the renewed kubeconfig failed; retrying later")
            }
        }
    }
}

fn log_renew_error(e: &HostError) {
    tracing::warn!(error = %e, "checking the admin certificate for renewal failed; retrying later");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_parse_as_rfc3339_to_whole_seconds() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let t = parse_not_before("2026-01-31T12:00:00.750Z", now).unwrap();
        assert_eq!(t.unix_timestamp(), 1_769_860_800);
        assert_eq!(t.nanosecond(), 0);
        assert_eq!(
            parse_not_before("2026-01-31T13:00:00+01:00", now).unwrap(),
            t
        );
        for bad in ["", "yesterday", "2026-01-31", "1769860800"] {
            assert_eq!(
                parse_not_before(bad, now),
                Err(CredentialsError::Unparsable(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn an_epoch_far_in_the_future_is_refused_a_little_skew_is_not() {
        let now = OffsetDateTime::from_unix_timestamp(1_769_860_800).unwrap();
        assert!(parse_not_before("2026-01-31T12:04:00Z", now).is_ok());
        let err = parse_not_before("2026-01-31T12:10:00Z", now).unwrap_err();
        assert!(err.to_string().contains("in the future"), "{err}");
    }

    #[test]
    fn the_admin_group_is_bound_to_cluster_admin_and_is_not_system_masters() {
        let b = admin_binding();
        assert_eq!(b.metadata.name.as_deref(), Some(ADMIN_BINDING));
        assert_eq!(b.role_ref.name, "cluster-admin");
        let subjects = b.subjects.clone().unwrap();
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0].kind, "Group");
        assert_eq!(subjects[0].name, ADMIN_GROUP);
        assert!(is_intact(&b));
        let mut other = b.clone();
        other.subjects.as_mut().unwrap()[0].name = "someone-else".into();
        assert!(!is_intact(&other));
    }
}
