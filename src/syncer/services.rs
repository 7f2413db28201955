//! Services: a host Service with the same ports and a selector confined to the tenant's pods of
//! the same virtual namespace. Types the admin's policy does not allow become ClusterIP, with a
//! Warning Event saying so. Load-balancer status flows back up.

use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Service;
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
    trigger: super::Trigger<Service>,
    requeue: super::Requeue<Service>,
) -> BoxFuture<'static, ()> {
    let reader = ctx.stores.virtual_services.clone();
    super::controller(ctx, reader, trigger, requeue, reconcile)
}

/// The virtual API server's own Service; it must lead to the tenant's API proxy, not be copied.
pub fn is_virtual_apiserver(svc: &Service) -> bool {
    svc.metadata.namespace.as_deref() == Some("default")
        && svc.metadata.name.as_deref() == Some("kubernetes")
}

async fn reconcile(vsvc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, SyncError> {
    ctx.wait_ready().await?;
    if is_virtual_apiserver(&vsvc) || vsvc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let tenant = ctx.tenant();
    let host = translate::service::to_host(&vsvc, tenant, ctx.config.service_policy);
    if let Some(from) = &host.downgraded_from {
        ctx.event(
            vsvc.as_ref(),
            EventType::Warning,
            "ServiceTypeNotAllowed",
            format!(
                "type {from} is not allowed by the platform's policy; the service is reachable inside the cluster as ClusterIP (use kubectl port-forward to reach it from outside)"
            ),
        )
        .await;
    }
    let host_name = host.service.name_any();
    let api: Api<Service> = ctx.host_api();
    if let (Applied::Conflict, _) =
        apply::ensure(&api, &ctx.stores.host_services, tenant, host.service)
            .await
            .map_err(SyncError::Host)?
    {
        return Ok(ctx.conflict(vsvc.as_ref(), &host_name).await);
    }
    // Load-balancer addresses are the host's to know.
    if let Some(h) = ctx
        .stores
        .host_services
        .get(&ObjectRef::new(&host_name).within(&tenant.host_namespace))
    {
        let host_lb = h.status.as_ref().and_then(|s| s.load_balancer.clone());
        let virt_lb = vsvc.status.as_ref().and_then(|s| s.load_balancer.clone());
        if host_lb.is_some() && host_lb != virt_lb {
            let patch = serde_json::json!({ "status": { "loadBalancer": host_lb } });
            let vapi: Api<Service> =
                Api::namespaced(ctx.virt.clone(), &vsvc.namespace().unwrap_or_default());
            vapi.patch_status(
                &vsvc.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(SyncError::Virtual)?;
        }
    }
    Ok(Action::await_change())
}

pub fn orphans(ctx: &Context) -> Vec<Arc<Service>> {
    super::orphans_of(&ctx.stores.host_services, &ctx.stores.virtual_services)
}
