//! PersistentVolumeClaims: every virtual claim gets a host claim (the tenant asked for storage;
//! with WaitForFirstConsumer the host binds it when a pod uses it); binding and capacity flow
//! back to the virtual claim's status.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;

use super::apply::{self, Applied};
use super::{Context, SyncError};
use crate::translate::{self};

pub fn controller(
    ctx: Arc<Context>,
    trigger: super::Trigger<PersistentVolumeClaim>,
    requeue: super::Requeue<PersistentVolumeClaim>,
) -> BoxFuture<'static, ()> {
    let reader = ctx.stores.virtual_claims.clone();
    super::controller(ctx, reader, trigger, requeue, reconcile)
}

async fn reconcile(
    vclaim: Arc<PersistentVolumeClaim>,
    ctx: Arc<Context>,
) -> Result<Action, SyncError> {
    ctx.wait_ready().await?;
    if vclaim.metadata.deletion_timestamp.is_some() {
        // The virtual pvc-protection finalizer holds it while pods use it; the garbage collector
        // removes the host claim once the virtual one is gone.
        return Ok(Action::await_change());
    }
    let tenant = ctx.tenant();
    let translated =
        match translate::pvc::to_host_with(&vclaim, tenant, ctx.config.volume_snapshots) {
            Ok(t) => t,
            Err(refused) => {
                // Nothing reaches the host; an earlier copy (made before the refusal existed) is
                // left to the tenant to delete, as the claim may hold data.
                let list: Vec<String> = refused.iter().map(|v| v.to_string()).collect();
                ctx.event(
                    vclaim.as_ref(),
                    EventType::Warning,
                    "HostPolicyViolation",
                    format!("not created on the host: {}", list.join("; ")),
                )
                .await;
                return Ok(Action::await_change());
            }
        };
    let desired = translated.claim;
    let host_name = desired.name_any();
    let api: Api<PersistentVolumeClaim> = ctx.host_api();
    match apply::ensure(&api, &ctx.stores.host_claims, tenant, desired).await {
        Ok((Applied::Conflict, _)) => {
            return Ok(ctx.conflict(vclaim.as_ref(), &host_name).await);
        }
        Ok((Applied::Created, _)) if !translated.dropped.is_empty() => {
            let list: Vec<String> = translated.dropped.iter().map(|v| v.to_string()).collect();
            ctx.event(
                vclaim.as_ref(),
                EventType::Warning,
                "HostPolicyAdjusted",
                format!("created on the host without: {}", list.join("; ")),
            )
            .await;
        }
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 403 || s.code == 422 => {
            // Quota, limits or an immutable field: the tenant should know.
            ctx.event(
                vclaim.as_ref(),
                EventType::Warning,
                "HostRejected",
                format!("the host refused claim {host_name}: {}", s.message),
            )
            .await;
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
        Err(e) => return Err(SyncError::Host(e)),
    }
    // Binding, capacity and conditions are the host's truth.
    if let Some(h) = ctx
        .stores
        .host_claims
        .get(&ObjectRef::new(&host_name).within(&tenant.host_namespace))
        && let Some(status) = h.status.clone()
    {
        let want = serde_json::to_value(&status).unwrap_or_default();
        let have =
            serde_json::to_value(vclaim.status.clone().unwrap_or_default()).unwrap_or_default();
        let differs = want
            .as_object()
            .is_some_and(|w| w.iter().any(|(k, v)| have.get(k) != Some(v)));
        if differs {
            let vapi: Api<PersistentVolumeClaim> =
                Api::namespaced(ctx.virt.clone(), &vclaim.namespace().unwrap_or_default());
            let patch = serde_json::json!({ "status": status });
            vapi.patch_status(
                &vclaim.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(SyncError::Virtual)?;
        }
    }
    Ok(Action::await_change())
}

pub fn orphans(ctx: &Context) -> Vec<Arc<PersistentVolumeClaim>> {
    super::orphans_of(&ctx.stores.host_claims, &ctx.stores.virtual_claims)
}
