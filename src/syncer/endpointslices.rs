//! Hand-written EndpointSlices of selector-less Services, virtual → host (see
//! `translate::endpointslice`). Slices the virtual controllers derive are never copied.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::apply::{self, Applied};
use super::{Context, SyncError, endpoints};
use crate::translate::endpointslice::{MANAGED_BY, MANAGED_BY_VKUBE, handwritten_for, to_host};
use crate::translate::{self, VIRTUAL_NAME};

pub fn controller(
    ctx: Arc<Context>,
    trigger: super::Trigger<EndpointSlice>,
    requeue: super::Requeue<EndpointSlice>,
) -> BoxFuture<'static, ()> {
    let reader = ctx.stores.virtual_slices.clone();
    super::controller(ctx, reader, trigger, requeue, reconcile)
}

/// The selector-less Service a virtual slice is synced for, if any.
fn synced_service<'a>(ctx: &Context, slice: &'a EndpointSlice) -> Option<&'a str> {
    let ns = slice.metadata.namespace.as_deref().unwrap_or_default();
    handwritten_for(slice).filter(|svc| endpoints::synced(ctx, ns, svc))
}

async fn reconcile(vslice: Arc<EndpointSlice>, ctx: Arc<Context>) -> Result<Action, SyncError> {
    ctx.wait_ready().await?;
    if vslice.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(service) = synced_service(&ctx, &vslice) else {
        // The garbage collector removes a stale host copy.
        return Ok(Action::await_change());
    };
    let tenant = ctx.tenant();
    let host = to_host(
        &vslice,
        service,
        tenant,
        &ctx.config.endpoint_policy,
        &endpoints::own_pod_ips(&ctx),
    );
    if !host.refused.is_empty() {
        ctx.event(
            vslice.as_ref(),
            EventType::Warning,
            "EndpointAddressRefused",
            endpoints::refusal_note(&host.refused),
        )
        .await;
    }
    let host_name = host.slice.name_any();
    let api: Api<EndpointSlice> = ctx.host_api();
    if let (Applied::Conflict, _) = apply::ensure(&api, &ctx.stores.host_slices, tenant, host.slice)
        .await
        .map_err(SyncError::Host)?
    {
        return Ok(ctx.conflict(vslice.as_ref(), &host_name).await);
    }
    if host.uses_pod_ips {
        return Ok(Action::requeue(Duration::from_secs(30)));
    }
    Ok(Action::await_change())
}

/// Host slices written by vkube whose virtual slice is gone or no longer synced. Slices the
/// host's controllers made for the tenant's Services carry the tenant's labels (copied from
/// the Service or the Endpoints), but not our managed-by value: they are never touched.
pub fn orphans(ctx: &Context) -> Vec<Arc<EndpointSlice>> {
    ctx.stores
        .host_slices
        .state()
        .into_iter()
        .filter(|h| {
            h.labels().get(MANAGED_BY).map(String::as_str) == Some(MANAGED_BY_VKUBE)
                && h.annotations().contains_key(VIRTUAL_NAME)
        })
        .filter(|h| match translate::origin(h.meta()) {
            Some(o) => {
                let virt = ctx
                    .stores
                    .virtual_slices
                    .get(&ObjectRef::new(&o.name).within(&o.namespace));
                let service = virt.as_deref().and_then(handwritten_for);
                !service.is_some_and(|s| ctx.is_recreating(&o.namespace, s))
                    && virt
                        .as_deref()
                        .and_then(|v| synced_service(ctx, v))
                        .is_none()
            }
            None => false,
        })
        .collect()
}
