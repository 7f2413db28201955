//! Service-account tokens for synced pods. A pod of the virtual cluster must authenticate to the
//! virtual API as its virtual service account, so the syncer asks the virtual API for bound
//! tokens (TokenRequest, bound to the virtual pod) and stores them in a host Secret that
//! replaces the projected tokens in the host pod: one token per distinct audience and lifetime
//! among the pod's projections, each requested with its own audience and stored under its own
//! key. A token for a third party's audience is therefore never one the virtual API accepts (its
//! authenticator accepts only tokens naming one of its `--api-audiences`). Tokens are renewed at
//! 80% of the shortest lifetime, as the kubelet does. The Secret is owned by the host pod, so it
//! goes with it.

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

/// Seconds until the stored tokens should be renewed; `None` if missing, unreadable, or
/// lacking a wanted key (a Secret written before per-projection tokens).
fn renew_in(secret: &Secret, wanted: &[Wanted]) -> Option<i64> {
    let data = secret.data.as_ref()?;
    if !wanted.iter().all(|w| data.contains_key(&w.key)) {
        return None;
    }
    let a = secret.metadata.annotations.as_ref()?;
    let issued: i64 = a.get(ISSUED)?.parse().ok()?;
    let expires: i64 = a.get(EXPIRES)?.parse().ok()?;
    let renew_at = issued + (expires - issued) * 8 / 10;
    Some(renew_at - now_unix())
}

/// Makes sure the host token Secret for `vpod` exists, holds every wanted token and is fresh.
/// Returns when to check again.
pub async fn ensure(
    ctx: &Context,
    vpod: &Pod,
    host_pod: &kube::api::ObjectMeta,
    wanted: &[Wanted],
) -> Result<Duration, SyncError> {
    let tenant = ctx.tenant();
    let host_pod_name = host_pod.name.clone().unwrap_or_default();
    let name = secret_name(&host_pod_name);
    let cached = ctx
        .stores
        .host_secrets
        .get(&ObjectRef::new(&name).within(&tenant.host_namespace));
    if let Some(secs) = cached.as_deref().and_then(|s| renew_in(s, wanted))
        && secs > 0
    {
        return Ok(Duration::from_secs(secs as u64));
    }
    let ns = vpod.namespace().unwrap_or_default();
    let sas: Api<ServiceAccount> = Api::namespaced(ctx.virt.clone(), &ns);
    let issued = now_unix();
    let mut data = BTreeMap::new();
    let mut expires = i64::MAX;
    for w in wanted {
        let request = TokenRequest {
            spec: TokenRequestSpec {
                // Empty: the virtual API's own audience.
                audiences: w.audience.iter().cloned().collect(),
                // The API server enforces at least 10 minutes.
                expiration_seconds: Some(w.expiration_seconds.max(600)),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: vpod.metadata.name.clone(),
                    uid: vpod.metadata.uid.clone(),
                }),
            },
            ..Default::default()
        };
        let Some(status) = sas
            .create_token_request(&w.service_account, &PostParams::default(), &request)
            .await
            .map_err(SyncError::Virtual)?
            .status
        else {
            // An API server always fills the status; without it there is no token to store.
            return Ok(Duration::from_secs(5));
        };
        expires = expires.min(status.expiration_timestamp.0.as_second());
        data.insert(w.key.clone(), ByteString(status.token.into_bytes()));
    }
    // A host pod created before per-projection keys mounts its first projection's token as
    // `token`; it keeps getting one, as then (that pod's spec cannot change).
    if !data.contains_key(TOKEN_KEY)
        && let Some(first) = wanted.first()
        && cached
            .as_deref()
            .and_then(|s| s.data.as_ref())
            .is_some_and(|d| d.contains_key(TOKEN_KEY))
        && let Some(token) = data.get(&first.key).cloned()
    {
        data.insert(TOKEN_KEY.to_string(), token);
    }
    if data.is_empty() {
        return Ok(Duration::from_secs(3600));
    }
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
        data: Some(data),
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
        let wanted = [Wanted {
            service_account: "default".into(),
            audience: None,
            expiration_seconds: 3607,
            key: TOKEN_KEY.into(),
        }];
        let mut s = Secret::default();
        assert_eq!(renew_in(&s, &wanted), None);
        s.data = Some(BTreeMap::from([(
            TOKEN_KEY.to_string(),
            ByteString(vec![1]),
        )]));
        s.metadata.annotations = Some(BTreeMap::from([
            (ISSUED.to_string(), (now - 100).to_string()),
            (EXPIRES.to_string(), (now + 900).to_string()),
        ]));
        // Lifetime 1000 s, renew at 800 s after issue: 700 s from now.
        let left = renew_in(&s, &wanted).unwrap();
        assert!((699..=700).contains(&left), "{left}");
        s.metadata.annotations = Some(BTreeMap::from([
            (ISSUED.to_string(), (now - 900).to_string()),
            (EXPIRES.to_string(), (now + 100).to_string()),
        ]));
        assert!(renew_in(&s, &wanted).unwrap() < 0);
        // A token the Secret does not hold yet (another audience) is due now.
        let mut more = wanted.to_vec();
        more.push(Wanted {
            audience: Some("vault".into()),
            key: "token-0123456789abcdef".into(),
            ..wanted[0].clone()
        });
        s.metadata.annotations = Some(BTreeMap::from([
            (ISSUED.to_string(), (now - 100).to_string()),
            (EXPIRES.to_string(), (now + 900).to_string()),
        ]));
        assert!(renew_in(&s, &wanted).is_some());
        assert_eq!(renew_in(&s, &more), None);
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
