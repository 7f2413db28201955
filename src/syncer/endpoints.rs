//! Endpoints of selector-less Services, virtual → host (see `translate::endpoints` for why plain
//! Endpoints and which addresses are refused). Endpoints of Services with a selector are not
//! touched: the host computes its own from the host pods, and the virtual controller-manager
//! computes the virtual ones from the virtual pods, whose IPs are the host pods' IPs.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Endpoints;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::apply::{self, Applied};
use super::{Context, SyncError, services};
use crate::translate::endpoints::Refusal;
use crate::translate::{self, VIRTUAL_NAME};

pub fn controller(
    ctx: Arc<Context>,
    trigger: super::Trigger<Endpoints>,
    requeue: super::Requeue<Endpoints>,
) -> BoxFuture<'static, ()> {
    let reader = ctx.stores.virtual_endpoints.clone();
    super::controller(ctx, reader, trigger, requeue, reconcile)
}

/// Whether the virtual Service `namespace/name` exists and its endpoints are the tenant's own.
pub(crate) fn synced(ctx: &Context, namespace: &str, name: &str) -> bool {
    ctx.stores
        .virtual_services
        .get(&ObjectRef::new(name).within(namespace))
        .is_some_and(|s| {
            !services::is_virtual_apiserver(&s) && translate::endpoints::synced_for(&s)
        })
}

/// IPs of this tenant's host pods: endpoints may always lead to them.
pub(crate) fn own_pod_ips(ctx: &Context) -> HashSet<String> {
    ctx.stores
        .host_pods
        .state()
        .iter()
        .flat_map(|p| p.pod_ips().to_vec())
        .collect()
}

/// The Event note listing refused addresses.
pub(crate) fn refusal_note(refused: &[(String, Refusal)]) -> String {
    let list: Vec<String> = refused
        .iter()
        .map(|(ip, why)| format!("{ip} ({why})"))
        .collect();
    format!(
        "not copied to the host: {}; point endpoints at addresses outside the cluster networks or at this cluster's pods",
        list.join(", ")
    )
}

async fn reconcile(vep: Arc<Endpoints>, ctx: Arc<Context>) -> Result<Action, SyncError> {
    ctx.wait_ready().await?;
    let ns = vep.namespace().unwrap_or_default();
    if vep.metadata.deletion_timestamp.is_some() || !synced(&ctx, &ns, &vep.name_any()) {
        // Not (or no longer) ours to copy: the garbage collector removes a stale host copy.
        return Ok(Action::await_change());
    }
    let tenant = ctx.tenant();
    let host = translate::endpoints::to_host(
        &vep,
        tenant,
        &ctx.config.endpoint_policy,
        &own_pod_ips(&ctx),
    );
    if !host.refused.is_empty() {
        ctx.event(
            vep.as_ref(),
            EventType::Warning,
            "EndpointAddressRefused",
            refusal_note(&host.refused),
        )
        .await;
    }
    let host_name = host.endpoints.name_any();
    let api: Api<Endpoints> = ctx.host_api();
    if let (Applied::Conflict, _) =
        apply::ensure(&api, &ctx.stores.host_endpoints, tenant, host.endpoints)
            .await
            .map_err(SyncError::Host)?
    {
        return Ok(ctx.conflict(vep.as_ref(), &host_name).await);
    }
    if host.uses_pod_ips {
        // Pod IPs are reused: once the pod is gone the address must be judged again.
        return Ok(Action::requeue(Duration::from_secs(30)));
    }
    Ok(Action::await_change())
}

/// Host copies written by vkube whose virtual Endpoints or selector-less Service is gone.
/// Host Endpoints of Services with a selector carry the Service's labels (the host's endpoints
/// controller copies them); the watch leaves them out, and they lack our origin annotation:
/// they are the host's, never ours.
pub fn orphans(ctx: &Context) -> Vec<Arc<Endpoints>> {
    ctx.stores
        .host_endpoints
        .state()
        .into_iter()
        .filter(|h| h.annotations().contains_key(VIRTUAL_NAME))
        .filter(|h| match translate::origin(h.meta()) {
            Some(o) => {
                !ctx.is_recreating(&o.namespace, &o.name)
                    && (ctx
                        .stores
                        .virtual_endpoints
                        .get(&ObjectRef::new(&o.name).within(&o.namespace))
                        .is_none()
                        || !synced(ctx, &o.namespace, &o.name))
            }
            None => false,
        })
        .collect()
}
