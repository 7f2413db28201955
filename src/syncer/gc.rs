//! Garbage collection: host objects labelled as this tenant's whose virtual owner is gone (or,
//! for configmaps and secrets, no longer referenced) are deleted; virtual nodes no tenant pod
//! uses any more are removed. Runs once the caches are ready (catching up after a restart),
//! whenever a deletion is seen, and periodically. Only objects carrying this tenant's label are
//! ever considered: other tenants' and unmanaged objects in the namespace are never touched.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Node, PersistentVolumeClaim, Secret, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, Preconditions};
use kube::{Resource, ResourceExt};

use super::{
    Context, endpoints, endpointslices, ingresses, networkpolicies, nodes, pdbs, pods, pvcs,
    referenced, services,
};
use crate::translate;

pub async fn run(ctx: Arc<Context>) {
    if ctx.wait_ready().await.is_err() {
        return;
    }
    loop {
        sweep(&ctx).await;
        tokio::select! {
            _ = tokio::time::sleep(ctx.config.gc_interval) => {}
            _ = ctx.gc_trigger.notified() => {
                // Let a burst of deletions settle into one sweep.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

pub async fn delete<K>(api: &Api<K>, obj: &K, what: &str)
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: obj.meta().uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&obj.name_any(), &dp).await {
        Ok(_) => tracing::info!(kind = what, name = %obj.name_any(), "garbage-collected"),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(e) => {
            tracing::warn!(kind = what, name = %obj.name_any(), error = %e, "garbage collection failed")
        }
    }
}

pub async fn sweep(ctx: &Context) {
    let host_pods: Api<super::host_pod::HostPod> = ctx.host_api();
    for p in pods::orphans(ctx) {
        delete(&host_pods, p.as_ref(), "pod").await;
    }
    let mut referenced_cms = HashSet::new();
    let mut referenced_secrets = HashSet::new();
    for p in ctx.stores.virtual_pods.state() {
        let ns = p.namespace().unwrap_or_default();
        let refs = p.references();
        referenced_cms.extend(refs.config_maps.iter().map(|n| (ns.clone(), n.clone())));
        referenced_secrets.extend(refs.secrets.iter().map(|n| (ns.clone(), n.clone())));
    }
    for i in ctx.stores.virtual_ingresses.state() {
        let ns = i.namespace().unwrap_or_default();
        referenced_secrets.extend(
            translate::ingress::referenced_secrets(&i)
                .into_iter()
                .map(|n| (ns.clone(), n)),
        );
    }
    for (ns, refs) in ctx.custom.references() {
        referenced_cms.extend(refs.config_maps.into_iter().map(|n| (ns.clone(), n)));
        referenced_secrets.extend(refs.secrets.into_iter().map(|n| (ns.clone(), n)));
    }
    // Until every custom kind's objects are known, their references are not.
    if ctx.custom.settled() {
        let host_cms: Api<ConfigMap> = ctx.host_api();
        for cm in referenced::orphans::<ConfigMap>(ctx, &referenced_cms) {
            delete(&host_cms, cm.as_ref(), "configmap").await;
        }
        let host_secrets: Api<Secret> = ctx.host_api();
        for s in referenced::orphans::<Secret>(ctx, &referenced_secrets) {
            delete(&host_secrets, s.as_ref(), "secret").await;
        }
    }
    let host_budgets: Api<PodDisruptionBudget> = ctx.host_api();
    for b in pdbs::orphans(ctx) {
        delete(&host_budgets, b.as_ref(), "poddisruptionbudget").await;
    }
    services::restore(ctx).await;
    let host_services: Api<Service> = ctx.host_api();
    for s in services::orphans(ctx) {
        delete(&host_services, s.as_ref(), "service").await;
    }
    let host_endpoints: Api<Endpoints> = ctx.host_api();
    for e in endpoints::orphans(ctx) {
        delete(&host_endpoints, e.as_ref(), "endpoints").await;
    }
    let host_slices: Api<EndpointSlice> = ctx.host_api();
    for e in endpointslices::orphans(ctx) {
        delete(&host_slices, e.as_ref(), "endpointslice").await;
    }
    let host_ingresses: Api<Ingress> = ctx.host_api();
    for i in ingresses::orphans(ctx) {
        delete(&host_ingresses, i.as_ref(), "ingress").await;
    }
    let host_policies: Api<NetworkPolicy> = ctx.host_api();
    for p in networkpolicies::orphans(ctx) {
        delete(&host_policies, p.as_ref(), "networkpolicy").await;
    }
    let host_claims: Api<PersistentVolumeClaim> = ctx.host_api();
    for c in pvcs::orphans(ctx) {
        delete(&host_claims, c.as_ref(), "persistentvolumeclaim").await;
    }
    let virtual_nodes: Api<Node> = Api::all(ctx.virt.clone());
    for n in nodes::unused(ctx) {
        delete(&virtual_nodes, n.as_ref(), "virtual node").await;
    }
}
