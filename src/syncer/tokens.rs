//! Service-account tokens for synced pods. A pod of the virtual cluster must authenticate to the
//! virtual API as its virtual service account, so the syncer asks the virtual API for a bound
//! token (TokenRequest, bound to the virtual pod) and stores it in a host Secret that replaces
//! the projected token in the host pod. Tokens are renewed at 80% of their lifetime, as the
//! kubelet does. The Secret is owned by the host pod, so it goes with it.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::{Context, SyncError, apply};
use crate::translate::pod::{TOKEN_KEY, TokenRequestSpec as Wanted};

/// Label on token Secrets: they belong to a pod, not to a virtual Secret.
pub const TOKEN_LABEL: &str = "vkube.dev/service-account-token";
/// Annotation: when the token expires (Unix seconds) and when it was issued.
const EXPIRES: &str = "vkube.dev/token-expires";
const ISSUED: &str = "vkube.dev/token-issued";

/// Host Secret name for the token of host pod `host_pod`.
pub fn secret_name(host_pod: &str) -> String {
    format!("{host_pod}-sa-token")
}

fn now_unix() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_second()
}

/// Seconds until the stored token should be renewed; `None` if missing or unreadable.
fn renew_in(secret: &Secret) -> Option<i64> {
    let a = secret.metadata.annotations.as_ref()?;
    let issued: i64 = a.get(ISSUED)?.parse().ok()?;
    let expires: i64 = a.get(EXPIRES)?.parse().ok()?;
    let renew_at = issued + (expires - issued) * 8 / 10;
    Some(renew_at - now_unix())
}

/// Makes sure the host token Secret for `vpod` exists and is fresh. Returns when to check again.
pub async fn ensure(
    ctx: &Context,
    vpod: &Pod,
    host_pod: &kube::api::ObjectMeta,
    wanted: &Wanted,
) -> Result<Duration, SyncError> {
    let tenant = ctx.tenant();
    let host_pod_name = host_pod.name.clone().unwrap_or_default();
    let name = secret_name(&host_pod_name);
    let cached = ctx
        .stores
        .host_secrets
        .get(&ObjectRef::new(&name).within(&tenant.host_namespace));
    if let Some(secs) = cached.as_deref().and_then(renew_in)
        && secs > 0
    {
        return Ok(Duration::from_secs(secs as u64));
    }
    let ns = vpod.namespace().unwrap_or_default();
    let sas: Api<ServiceAccount> = Api::namespaced(ctx.virt.clone(), &ns);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: wanted.audience.iter().cloned().collect(),
            // The API server enforces at least 10 minutes.
            expiration_seconds: Some(wanted.expiration_seconds.max(600)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: vpod.metadata.name.clone(),
                uid: vpod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let issued = now_unix();
    let Some(status) = sas
        .create_token_request(&wanted.service_account, &PostParams::default(), &request)
        .await
        .map_err(SyncError::Virtual)?
        .status
    else {
        // An API server always fills the status; without it there is no token to store.
        return Ok(Duration::from_secs(5));
    };
    let expires = status.expiration_timestamp.0.as_second();
    let mut labels = tenant.ownership_labels(&ns);
    labels.insert(TOKEN_LABEL.into(), "true".into());
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(tenant.host_namespace.clone()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([
                (crate::translate::VIRTUAL_NAME.to_string(), vpod.name_any()),
                (
                    crate::translate::VIRTUAL_UID.to_string(),
                    vpod.metadata.uid.clone().unwrap_or_default(),
                ),
                (ISSUED.to_string(), issued.to_string()),
                (EXPIRES.to_string(), expires.to_string()),
            ])),
            owner_references: host_pod.uid.clone().map(|uid| {
                vec![OwnerReference {
                    api_version: Pod::api_version(&()).into(),
                    kind: Pod::kind(&()).into(),
                    name: host_pod_name.clone(),
                    uid,
                    ..Default::default()
                }]
            }),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            TOKEN_KEY.to_string(),
            ByteString(status.token.into_bytes()),
        )])),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    let api: Api<Secret> = ctx.host_api();
    apply::ensure(&api, &ctx.stores.host_secrets, tenant, secret)
        .await
        .map_err(SyncError::Host)?;
    let lifetime = (expires - issued).max(60);
    Ok(Duration::from_secs((lifetime * 8 / 10) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_at_eighty_percent_of_the_lifetime() {
        let now = now_unix();
        let mut s = Secret::default();
        assert_eq!(renew_in(&s), None);
        s.metadata.annotations = Some(BTreeMap::from([
            (ISSUED.to_string(), (now - 100).to_string()),
            (EXPIRES.to_string(), (now + 900).to_string()),
        ]));
        // Lifetime 1000 s, renew at 800 s after issue: 700 s from now.
        let left = renew_in(&s).unwrap();
        assert!((699..=700).contains(&left), "{left}");
        s.metadata.annotations = Some(BTreeMap::from([
            (ISSUED.to_string(), (now - 900).to_string()),
            (EXPIRES.to_string(), (now + 100).to_string()),
        ]));
        assert!(renew_in(&s).unwrap() < 0);
    }

    #[test]
    fn token_secret_names_cannot_collide_with_synced_secrets() {
        // Synced secrets end in "-x-<vcluster>" or a hash; token secrets in "-sa-token".
        assert_eq!(
            secret_name("web-x-default-x-alice"),
            "web-x-default-x-alice-sa-token"
        );
    }
}
