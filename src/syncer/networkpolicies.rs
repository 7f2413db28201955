//! NetworkPolicies, virtual → host, confined to the tenant (`translate::networkpolicy`), and the
//! default allowances that give the tenant's pods the default policy wherever none of the
//! tenant's own policies selects them. Clippings and refusals reach the tenant as Warning Events
//! on its policy, naming the field.
//!
//! Host copies are written per policy by a controller like every other kind; the allowances are
//! one set for the whole tenant, recomputed from the virtual policies whenever one changes and
//! every resync interval (a write happens only where the set differs from the host's).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use tokio::sync::Notify;

use super::apply::{self, Applied};
use super::{Context, SyncError};
use crate::translate::networkpolicy::{self as netpol, DEFAULT_ALLOWANCE, NamespaceLabels};

pub fn controller(
    ctx: Arc<Context>,
    trigger: super::Trigger<NetworkPolicy>,
    requeue: super::Requeue<NetworkPolicy>,
) -> BoxFuture<'static, ()> {
    let reader = ctx.stores.virtual_network_policies.clone();
    super::controller(ctx, reader, trigger, requeue, reconcile)
}

/// The virtual namespaces' labels, for namespaceSelector peers.
fn namespace_labels(ctx: &Context) -> NamespaceLabels {
    ctx.stores
        .virtual_namespaces
        .state()
        .iter()
        .map(|ns| (ns.name_any(), ns.labels().clone()))
        .collect()
}

async fn reconcile(vpol: Arc<NetworkPolicy>, ctx: Arc<Context>) -> Result<Action, SyncError> {
    ctx.wait_ready().await?;
    if vpol.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let tenant = ctx.tenant();
    let ns = vpol.namespace().unwrap_or_default();
    let host_name = tenant.subdomain_name(&ns, &vpol.name_any());
    let api: Api<NetworkPolicy> = ctx.host_api();
    let host = match netpol::to_host(&vpol, tenant, &namespace_labels(&ctx), &ctx.config.network) {
        Ok(h) => h,
        Err(note) => {
            ctx.event(
                vpol.as_ref(),
                EventType::Warning,
                "NetworkPolicyNotSynced",
                format!("{note}; the policy is not applied on the host"),
            )
            .await;
            // An older copy must not keep applying what the tenant has changed.
            let existing = ctx
                .stores
                .host_network_policies
                .get(&ObjectRef::new(&host_name).within(&tenant.host_namespace));
            if let Some(h) = existing.filter(|h| tenant.owns(h.meta())) {
                super::gc::delete(&api, h.as_ref(), "networkpolicy").await;
            }
            return Ok(Action::await_change());
        }
    };
    if !host.notes.is_empty() {
        let notes: Vec<String> = host.notes.iter().map(|n| n.to_string()).collect();
        ctx.event(
            vpol.as_ref(),
            EventType::Warning,
            "NetworkPolicyClipped",
            format!(
                "applied on the host without what the default tenant policy closes: {}",
                notes.join("; ")
            ),
        )
        .await;
    }
    if let (Applied::Conflict, _) =
        apply::ensure(&api, &ctx.stores.host_network_policies, tenant, host.policy)
            .await
            .map_err(SyncError::Host)?
    {
        return Ok(ctx.conflict(vpol.as_ref(), &host_name).await);
    }
    Ok(Action::await_change())
}

/// Host copies whose virtual policy is gone (the default allowances have none: they are
/// [`keep_allowances`]'s).
pub fn orphans(ctx: &Context) -> Vec<Arc<NetworkPolicy>> {
    super::orphans_of(
        &ctx.stores.host_network_policies,
        &ctx.stores.virtual_network_policies,
    )
    .into_iter()
    .filter(|p| !is_allowance(p))
    .collect()
}

fn is_allowance(p: &NetworkPolicy) -> bool {
    p.labels().contains_key(DEFAULT_ALLOWANCE)
}

/// Keeps the default allowances current until the syncer stops: after every change of a
/// virtual policy (`trigger`) and at every resync interval.
pub async fn keep_allowances(ctx: Arc<Context>, trigger: Arc<Notify>) {
    if ctx.wait_ready().await.is_err() {
        return;
    }
    let mut reported: HashSet<(String, netpol::Direction)> = HashSet::new();
    loop {
        let wait = match sync_allowances(&ctx, &mut reported).await {
            Ok(()) => ctx.config.gc_interval,
            Err(e) => {
                tracing::warn!(error = %e, error_kind = e.kind(), "network policy defaults: sync failed; retrying");
                super::retry_after(&e)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = trigger.notified() => {}
        }
    }
}

async fn sync_allowances(
    ctx: &Context,
    reported: &mut HashSet<(String, netpol::Direction)>,
) -> Result<(), SyncError> {
    let tenant = ctx.tenant();
    let virtual_policies: Vec<Arc<NetworkPolicy>> = ctx
        .stores
        .virtual_network_policies
        .state()
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let refs: Vec<&NetworkPolicy> = virtual_policies.iter().map(|p| p.as_ref()).collect();
    let desired = netpol::allowances(tenant, &ctx.config.network, &refs);
    report_too_complex(ctx, &virtual_policies, &desired.too_complex, reported).await;
    let api: Api<NetworkPolicy> = ctx.host_api();
    // Everything wanted is written before anything is removed, so a pod is never left with
    // neither its allowance nor its own policy (closed, not open, in between).
    let mut wanted = HashSet::new();
    for p in desired.policies {
        let name = p.name_any();
        wanted.insert(name.clone());
        if let (Applied::Conflict, _) =
            apply::ensure(&api, &ctx.stores.host_network_policies, tenant, p)
                .await
                .map_err(SyncError::Host)?
        {
            tracing::warn!(
                name,
                "a NetworkPolicy not managed by this virtual cluster has the name of a default allowance; its pods stay closed until it is renamed"
            );
        }
    }
    for h in ctx.stores.host_network_policies.state() {
        if is_allowance(&h) && tenant.owns(h.meta()) && !wanted.contains(&h.name_any()) {
            super::gc::delete(&api, h.as_ref(), "networkpolicy").await;
        }
    }
    Ok(())
}

/// Tells the tenant, once per namespace and direction, that its policies there are too many
/// to complement, so the pods none of them selects get nothing by default.
async fn report_too_complex(
    ctx: &Context,
    policies: &[Arc<NetworkPolicy>],
    too_complex: &[(String, netpol::Direction)],
    reported: &mut HashSet<(String, netpol::Direction)>,
) {
    let now: HashSet<(String, netpol::Direction)> = too_complex.iter().cloned().collect();
    let mut by_namespace: BTreeMap<&str, Vec<&Arc<NetworkPolicy>>> = BTreeMap::new();
    for p in policies {
        by_namespace
            .entry(p.metadata.namespace.as_deref().unwrap_or_default())
            .or_default()
            .push(p);
    }
    for (ns, dir) in now.difference(reported) {
        for p in by_namespace.get(ns.as_str()).into_iter().flatten() {
            ctx.event(
                p.as_ref(),
                EventType::Warning,
                "NetworkPolicyTooComplex",
                format!(
                    "spec.podSelector: the {} policies of namespace {ns} have too many distinct selectors (more than {} combinations) to give the pods none of them selects the default {} allowance; those pods get none: merge policies or select with fewer labels",
                    dir.as_str(),
                    netpol::MAX_DEFAULT_TERMS,
                    dir.as_str().to_lowercase()
                ),
            )
            .await;
        }
    }
    *reported = now;
}
