//! `vkube manager`: turns each VirtualCluster into its host namespace and control plane, keeps
//! its status true to what runs (the tenant API's /readyz, not the pod's phase), pauses and
//! resumes it, refuses what the admin's policy forbids and removes everything on delete.
//!
//! One replica reconciles at a time (a Lease, see [`lease`]). The object building is pure
//! ([`objects`], [`policy`]); this module only talks to the host API.

pub mod lease;
pub mod objects;
pub mod policy;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    LimitRange, Namespace, Pod, ResourceQuota, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, ValidationDirective};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::api::{Condition, FINALIZER, Phase, SecretRef, VirtualCluster, VirtualClusterStatus};
use crate::host::{KUBECONFIG_KEY, kubeconfig_secret_name};
use objects::{Kind, Namespaced};
use policy::{Policy, Refusal};

pub const FIELD_MANAGER: &str = "vkube-manager";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("host API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("{0}")]
    Policy(#[from] policy::PolicyError),
    #[error(transparent)]
    Lease(#[from] lease::LeaseError),
    #[error("the host namespace {0} is still being deleted")]
    CleanupPending(String),
    #[error("the object has no name")]
    NoName,
    #[error("a manifest built into vkube is broken (a bug): {0}")]
    Manifest(String),
}

impl Error {
    /// For logs and metrics: the variant, not the text.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "Kube",
            Error::Finalizer(_) => "Finalizer",
            Error::Policy(_) => "Policy",
            Error::Lease(_) => "Lease",
            Error::CleanupPending(_) => "CleanupPending",
            Error::NoName => "NoName",
            Error::Manifest(_) => "Manifest",
        }
    }
}

pub struct Context {
    pub client: kube::Client,
    pub policy: Policy,
    /// Every VirtualCluster, for the per-user count.
    pub store: Store<VirtualCluster>,
    /// How often a Ready cluster is probed again.
    pub resync: Duration,
}

pub struct ManagerOptions {
    pub policy: Policy,
    pub lease: Option<lease::LeaseConfig>,
}

/// Runs until `shutdown` resolves or leadership is lost.
pub async fn run(
    client: kube::Client,
    opts: ManagerOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let lost = match opts.lease {
        Some(config) => {
            let api: Api<k8s_openapi::api::coordination::v1::Lease> =
                Api::namespaced(client.clone(), &config.namespace);
            lease::acquire(&api, &config).await?;
            Some(tokio::spawn(lease::keep(api, config)))
        }
        None => None,
    };
    let vcs: Api<VirtualCluster> = Api::all(client.clone());
    if let Err(e) = vcs.list(&ListParams::default().limit(1)).await {
        return Err(Error::Kube(e));
    }
    let controller = Controller::new(vcs, watcher::Config::default());
    let ctx = Arc::new(Context {
        client,
        policy: opts.policy,
        store: controller.store(),
        resync: Duration::from_secs(30),
    });
    // Stop on the signal, or when the lease is lost (another replica may be reconciling).
    let lost_reason: Arc<std::sync::Mutex<Option<lease::LeaseError>>> = Default::default();
    let record = lost_reason.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        match lost {
            Some(task) => tokio::select! {
                _ = shutdown => {}
                r = task => {
                    if let (Ok(reason), Ok(mut slot)) = (r, record.lock()) {
                        *slot = Some(reason);
                    }
                }
            },
            None => shutdown.await,
        }
        let _ = stop_tx.send(());
    });
    // graceful_shutdown_on wants a Sync future: a oneshot receiver is one.
    let stop = async move {
        let _ = stop_rx.await;
    };
    controller
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "reconcile failed");
            }
        })
        .await;
    let reason = lost_reason.lock().ok().and_then(|mut r| r.take());
    match reason {
        Some(reason) => Err(Error::Lease(reason)),
        None => Ok(()),
    }
}

#[tracing::instrument(skip(vc, ctx), fields(vcluster = %vc.name_any()))]
async fn reconcile(vc: Arc<VirtualCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<VirtualCluster> = Api::all(ctx.client.clone());
    finalizer(&api, FINALIZER, vc, |event| async {
        match event {
            Finalizer::Apply(vc) => apply(&vc, &ctx).await,
            Finalizer::Cleanup(vc) => cleanup(&vc, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    })
}

fn error_policy(vc: Arc<VirtualCluster>, error: &Error, _ctx: Arc<Context>) -> Action {
    match error {
        Error::CleanupPending(_) => Action::requeue(Duration::from_secs(2)),
        e => {
            tracing::warn!(vcluster = %vc.name_any(), error = %e, kind = e.kind(), "reconcile failed");
            Action::requeue(Duration::from_secs(5))
        }
    }
}

/// How many accepted clusters of the same owner were created before this one.
fn earlier_of_owner<'a>(
    vc: &VirtualCluster,
    all: impl Iterator<Item = &'a VirtualCluster>,
) -> usize {
    let Some(owner) = objects::owner(vc) else {
        return 0;
    };
    let key = |v: &VirtualCluster| (v.metadata.creation_timestamp.clone(), v.name_any());
    all.filter(|o| objects::owner(o) == Some(owner))
        .filter(|o| o.metadata.deletion_timestamp.is_none())
        .filter(|o| o.status.as_ref().and_then(|s| s.phase) != Some(Phase::Refused))
        .filter(|o| key(o) < key(vc))
        .count()
}

async fn apply(vc: &VirtualCluster, ctx: &Context) -> Result<Action, Error> {
    let name = vc.metadata.name.clone().ok_or(Error::NoName)?;
    let ns = objects::host_namespace(&name);
    if objects::owner(vc).is_none() {
        set_status(
            ctx,
            vc,
            Phase::Refused,
            format!(
                "no {} annotation: create virtual clusters with `vkube create`",
                crate::api::OWNER_ANNOTATION
            ),
            Probe::None,
        )
        .await?;
        return Ok(Action::await_change());
    }
    let pp = PatchParams {
        field_validation: Some(ValidationDirective::Strict),
        ..PatchParams::apply(FIELD_MANAGER).force()
    };
    // The owner's grant comes first, even for a cluster that will be refused: the owner can
    // then read why and delete it.
    if let Some((role, binding)) = objects::owner_grants(vc) {
        let role_name = objects::owner_cluster_role(&name);
        Api::<ClusterRole>::all(ctx.client.clone())
            .patch(&role_name, &pp, &Patch::Apply(role))
            .await?;
        Api::<ClusterRoleBinding>::all(ctx.client.clone())
            .patch(&role_name, &pp, &Patch::Apply(binding))
            .await?;
    }
    let resolved = match policy::check(
        vc,
        &ctx.policy,
        earlier_of_owner(vc, ctx.store.state().iter().map(|a| a.as_ref())),
    ) {
        Ok(r) => r,
        Err(refusal @ Refusal(_)) => {
            tracing::info!(%refusal, "refused");
            set_status(ctx, vc, Phase::Refused, refusal.to_string(), Probe::None).await?;
            return Ok(Action::await_change());
        }
    };
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    namespaces
        .patch(
            &ns,
            &pp,
            &Patch::Apply(objects::namespace(vc, &ctx.policy, &resolved)),
        )
        .await?;
    for obj in objects::namespaced(vc, &ctx.policy, &resolved, None) {
        apply_namespaced(&ctx.client, &ns, &obj, &pp).await?;
    }
    let cluster_read = objects::syncer_cluster_read_binding_name(&name);
    let bindings = Api::<ClusterRoleBinding>::all(ctx.client.clone());
    if ctx.policy.syncer_cluster_read {
        let binding = objects::syncer_cluster_read_binding(&name).map_err(Error::Manifest)?;
        bindings
            .patch(&cluster_read, &pp, &Patch::Apply(binding))
            .await?;
    } else {
        // Turned off: the grant goes (the syncer notices at its next start).
        ignore_missing(
            bindings
                .delete(&cluster_read, &DeleteParams::background())
                .await
                .map(|_| ()),
        )?;
    }
    let svc = Api::<Service>::namespaced(ctx.client.clone(), &ns)
        .get(&objects::service_name(&name))
        .await?;
    let Some(cluster_ip) = svc.spec.and_then(|s| s.cluster_ip) else {
        return Ok(Action::requeue(Duration::from_secs(1)));
    };
    for obj in objects::namespaced(vc, &ctx.policy, &resolved, Some(&cluster_ip))
        .iter()
        .filter(|o| o.kind == Kind::StatefulSet)
    {
        apply_namespaced(&ctx.client, &ns, obj, &pp).await?;
    }
    let endpoint = format!("https://{cluster_ip}:{}", objects::API_PORT);
    let probe = Probe::Endpoint {
        endpoint,
        version: resolved.version.clone(),
    };
    if vc.spec.paused {
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        let left = pods.list(&ListParams::default()).await?.items;
        let control_plane_running = left.iter().any(is_control_plane);
        if !control_plane_running && !left.is_empty() {
            // The syncer is gone (it would recreate them): remove the tenant's pods. Their
            // virtual objects stay in the datastore and are synced again on resume.
            pods.delete_collection(&DeleteParams::default(), &ListParams::default())
                .await?;
        }
        if left.is_empty() {
            set_status(ctx, vc, Phase::Paused, "paused by the owner".into(), probe).await?;
            return Ok(Action::await_change());
        }
        set_status(
            ctx,
            vc,
            Phase::Paused,
            format!("pausing: {} host pods left", left.len()),
            probe,
        )
        .await?;
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let ready = probe_readyz(&ctx.client, &ns, &name).await;
    match ready {
        Ok(()) => {
            set_status(
                ctx,
                vc,
                Phase::Ready,
                "the tenant API answers /readyz".into(),
                probe,
            )
            .await?;
            Ok(Action::requeue(ctx.resync))
        }
        Err(why) => {
            set_status(ctx, vc, Phase::Starting, why, probe).await?;
            Ok(Action::requeue(Duration::from_secs(1)))
        }
    }
}

fn is_control_plane(pod: &Pod) -> bool {
    pod.labels()
        .get(objects::COMPONENT_LABEL)
        .map(String::as_str)
        == Some(objects::CONTROL_PLANE)
}

async fn apply_namespaced(
    client: &kube::Client,
    ns: &str,
    obj: &Namespaced,
    pp: &PatchParams,
) -> Result<(), kube::Error> {
    async fn put<K>(
        client: &kube::Client,
        ns: &str,
        obj: &Namespaced,
        pp: &PatchParams,
    ) -> Result<(), kube::Error>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        Api::<K>::namespaced(client.clone(), ns)
            .patch(&obj.name, pp, &Patch::Apply(&obj.body))
            .await
            .map(|_| ())
    }
    match obj.kind {
        Kind::ServiceAccount => put::<ServiceAccount>(client, ns, obj, pp).await,
        Kind::Role => put::<Role>(client, ns, obj, pp).await,
        Kind::RoleBinding => put::<RoleBinding>(client, ns, obj, pp).await,
        Kind::ResourceQuota => put::<ResourceQuota>(client, ns, obj, pp).await,
        Kind::LimitRange => put::<LimitRange>(client, ns, obj, pp).await,
        Kind::NetworkPolicy => put::<NetworkPolicy>(client, ns, obj, pp).await,
        Kind::Service => put::<Service>(client, ns, obj, pp).await,
        Kind::Ingress => put::<Ingress>(client, ns, obj, pp).await,
        Kind::StatefulSet => put::<StatefulSet>(client, ns, obj, pp).await,
    }
}

/// Asks the tenant API itself, with the kubeconfig `vkube serve` published: a Running pod is not
/// a working cluster.
async fn probe_readyz(client: &kube::Client, ns: &str, name: &str) -> Result<(), String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = secrets
        .get_opt(&kubeconfig_secret_name(name))
        .await
        .map_err(|e| format!("reading the kubeconfig Secret: {e}"))?
        .ok_or_else(|| "waiting for the control plane to publish its kubeconfig".to_string())?;
    let yaml = secret
        .data
        .and_then(|mut d| d.remove(KUBECONFIG_KEY))
        .and_then(|b| String::from_utf8(b.0).ok())
        .ok_or_else(|| "the kubeconfig Secret has no config key".to_string())?;
    let tenant = crate::kubeconfig::client_from_yaml(&yaml)
        .await
        .map_err(|e| format!("the published kubeconfig is unusable: {e}"))?;
    let req = http::Request::get("/readyz")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(5), tenant.request_text(req)).await {
        Ok(Ok(body)) if body.trim() == "ok" => Ok(()),
        Ok(Ok(body)) => Err(format!("the tenant API is not ready: {}", body.trim())),
        Ok(Err(e)) => Err(format!("the tenant API does not answer yet: {e}")),
        Err(_) => Err("the tenant API does not answer within 5 s".into()),
    }
}

enum Probe {
    None,
    Endpoint { endpoint: String, version: String },
}

async fn set_status(
    ctx: &Context,
    vc: &VirtualCluster,
    phase: Phase,
    message: String,
    probe: Probe,
) -> Result<(), Error> {
    let name = vc.metadata.name.clone().ok_or(Error::NoName)?;
    let old = vc.status.clone().unwrap_or_default();
    let generation = vc.metadata.generation;
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let mut status = VirtualClusterStatus {
        phase: Some(phase),
        message: Some(message.clone()),
        conditions: Vec::new(),
        observed_generation: generation,
        owner: objects::owner(vc).map(str::to_string),
        ..Default::default()
    };
    if let Probe::Endpoint { endpoint, version } = probe {
        let ns = objects::host_namespace(&name);
        status.endpoint = Some(endpoint);
        status.kubernetes_version = Some(version);
        status.host_namespace = Some(ns.clone());
        status.kubeconfig_secret = Some(SecretRef {
            namespace: ns,
            name: kubeconfig_secret_name(&name),
            key: KUBECONFIG_KEY.into(),
        });
    }
    let (ready, synced, sleeping) = match phase {
        Phase::Ready => ("True", "True", "False"),
        Phase::Paused => ("False", "False", "True"),
        _ => ("False", "Unknown", "False"),
    };
    let reason = phase.as_str();
    for (type_, value) in [("Ready", ready), ("Synced", synced), ("Sleeping", sleeping)] {
        status.conditions.push(condition(
            &old.conditions,
            type_,
            value,
            reason,
            &message,
            generation,
            &now,
        ));
    }
    if old.phase == status.phase
        && old.message == status.message
        && old.endpoint == status.endpoint
        && old.observed_generation == status.observed_generation
        && old.owner == status.owner
    {
        return Ok(());
    }
    let api: Api<VirtualCluster> = Api::all(ctx.client.clone());
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await?;
    Ok(())
}

/// A condition whose lastTransitionTime moves only when its status changes.
fn condition(
    old: &[Condition],
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &str,
) -> Condition {
    let since = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.to_string());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: since,
        observed_generation: generation,
    }
}

/// Removes the host namespace (with everything in it), waits until it is really gone, and only
/// then the owner's cluster-wide grants: while the grant lasts the owner still sees the cluster
/// (Deleting), so "deleted" in `vkube delete` means nothing is left on the host.
async fn cleanup(vc: &VirtualCluster, ctx: &Context) -> Result<Action, Error> {
    let name = vc.metadata.name.clone().ok_or(Error::NoName)?;
    let ns = objects::host_namespace(&name);
    let dp = DeleteParams::background();
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    if namespaces.get_opt(&ns).await?.is_some() {
        ignore_missing(namespaces.delete(&ns, &dp).await.map(|_| ()))?;
        set_status(
            ctx,
            vc,
            Phase::Deleting,
            format!("removing host namespace {ns}"),
            Probe::None,
        )
        .await?;
        return Err(Error::CleanupPending(ns));
    }
    ignore_missing(
        Api::<ClusterRoleBinding>::all(ctx.client.clone())
            .delete(&objects::syncer_cluster_read_binding_name(&name), &dp)
            .await
            .map(|_| ()),
    )?;
    let role = objects::owner_cluster_role(&name);
    ignore_missing(
        Api::<ClusterRoleBinding>::all(ctx.client.clone())
            .delete(&role, &dp)
            .await
            .map(|_| ()),
    )?;
    ignore_missing(
        Api::<ClusterRole>::all(ctx.client.clone())
            .delete(&role, &dp)
            .await
            .map(|_| ()),
    )?;
    tracing::info!(vcluster = %name, "deleted");
    Ok(Action::await_change())
}

fn ignore_missing(r: Result<(), kube::Error>) -> Result<(), kube::Error> {
    match r {
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn vc(name: &str, owner: &str, second: i64, phase: Option<Phase>) -> VirtualCluster {
        let mut vc = policy::tests::vc(name, Default::default());
        vc.metadata
            .annotations
            .get_or_insert_default()
            .insert(crate::api::OWNER_ANNOTATION.into(), owner.into());
        vc.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(second).unwrap(),
        ));
        vc.status = phase.map(|p| VirtualClusterStatus {
            phase: Some(p),
            ..Default::default()
        });
        vc
    }

    #[test]
    fn only_earlier_accepted_clusters_of_the_same_owner_count() {
        let all = [
            vc("a", "alice", 1, Some(Phase::Ready)),
            vc("b", "alice", 2, Some(Phase::Refused)),
            vc("c", "bob", 3, None),
            vc("d", "alice", 4, None),
            vc("e", "alice", 4, None),
        ];
        let count = |i: usize| earlier_of_owner(&all[i], all.iter());
        assert_eq!(count(0), 0);
        assert_eq!(count(2), 0);
        assert_eq!(count(3), 1);
        // Same second: the name breaks the tie, so exactly one of two racing creates wins.
        assert_eq!(count(4), 2);
    }

    #[test]
    fn a_condition_keeps_its_transition_time_while_unchanged() {
        let old = vec![condition(&[], "Ready", "True", "Ready", "", Some(1), "t1")];
        assert_eq!(
            condition(&old, "Ready", "True", "Ready", "", Some(2), "t2").last_transition_time,
            "t1"
        );
        assert_eq!(
            condition(&old, "Ready", "False", "Paused", "", Some(2), "t2").last_transition_time,
            "t2"
        );
    }
}
