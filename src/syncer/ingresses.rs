//! Ingresses, virtual → host, with hosts confined to the tenant's suffix and backends and
//! Secrets translated (`translate::ingress`); the Secrets themselves are synced as referenced
//! objects (see `referenced`). A refused Ingress is not published (and a copy published before
//! is removed), with a Warning Event naming each refused field. What the host's ingress
//! controller publishes (load-balancer addresses) flows back up.

use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::apply::{self, Applied};
use super::{Context, SyncError};
use crate::translate::{self, ingress::HostIngress};

pub fn controller(
    ctx: Arc<Context>,
    trigger: super::Trigger<Ingress>,
    requeue: super::Requeue<Ingress>,
) -> BoxFuture<'static, ()> {
    let reader = ctx.stores.virtual_ingresses.clone();
    super::controller(ctx, reader, trigger, requeue, reconcile)
}

async fn reconcile(ving: Arc<Ingress>, ctx: Arc<Context>) -> Result<Action, SyncError> {
    ctx.wait_ready().await?;
    if ving.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let tenant = ctx.tenant();
    let ns = ving.namespace().unwrap_or_default();
    let host_name = tenant.subdomain_name(&ns, &ving.name_any());
    let api: Api<Ingress> = ctx.host_api();
    let host = match translate::ingress::to_host(&ving, tenant, &ctx.config.ingress_policy) {
        Ok(h) => h,
        Err(refusal) => {
            ctx.event(
                ving.as_ref(),
                EventType::Warning,
                "IngressNotAllowed",
                format!("{refusal}; the ingress is not published on the host"),
            )
            .await;
            // A copy made before the Ingress or the policy changed must not keep routing.
            let existing = ctx
                .stores
                .host_ingresses
                .get(&ObjectRef::new(&host_name).within(&tenant.host_namespace));
            if let Some(h) = existing.filter(|h| tenant.owns(h.meta())) {
                super::gc::delete(&api, h.as_ref(), "ingress").await;
            }
            return Ok(Action::await_change());
        }
    };
    report_dropped(&ctx, &ving, &host).await;
    match apply::ensure(&api, &ctx.stores.host_ingresses, tenant, host.ingress).await {
        Ok((Applied::Conflict, _)) => return Ok(ctx.conflict(ving.as_ref(), &host_name).await),
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 422 || s.code == 413 => {
            return Ok(ctx
                .host_rejected(ving.as_ref(), &host_name, &s.message)
                .await);
        }
        Err(e) => return Err(SyncError::Host(e)),
    }
    // Load-balancer addresses are the host ingress controller's to know.
    if let Some(h) = ctx
        .stores
        .host_ingresses
        .get(&ObjectRef::new(&host_name).within(&tenant.host_namespace))
    {
        let host_lb = h.status.as_ref().and_then(|s| s.load_balancer.clone());
        let virt_lb = ving.status.as_ref().and_then(|s| s.load_balancer.clone());
        if host_lb.is_some() && host_lb != virt_lb {
            let patch = serde_json::json!({ "status": { "loadBalancer": host_lb } });
            let vapi: Api<Ingress> = Api::namespaced(ctx.virt.clone(), &ns);
            vapi.patch_status(
                &ving.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(SyncError::Virtual)?;
        }
    }
    Ok(Action::await_change())
}

/// Tells the tenant what of its Ingress the host does not get.
async fn report_dropped(ctx: &Context, ving: &Ingress, host: &HostIngress) {
    if !host.dropped_annotations.is_empty() {
        let dropped: Vec<String> = host
            .dropped_annotations
            .iter()
            .map(|(key, why)| format!("{key} ({why})"))
            .collect();
        ctx.event(
            ving,
            EventType::Warning,
            "IngressAnnotationDropped",
            format!(
                "not copied to the host, remove them: {}",
                dropped.join("; ")
            ),
        )
        .await;
    }
    if host.dropped_resource_backends > 0 {
        ctx.event(
            ving,
            EventType::Warning,
            "IngressBackendNotSupported",
            format!(
                "{} resource backend(s) left out on the host: only service backends are synced",
                host.dropped_resource_backends
            ),
        )
        .await;
    }
}

pub fn orphans(ctx: &Context) -> Vec<Arc<Ingress>> {
    super::orphans_of(&ctx.stores.host_ingresses, &ctx.stores.virtual_ingresses)
}
