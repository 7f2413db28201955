//! `vkube manager`: turns each VirtualCluster into its host namespace and control plane, keeps
//! its status true to what runs (the tenant API's /readyz, not the pod's phase), pauses and
//! resumes it, refuses what the admin's policy forbids and removes everything on delete.
//!
//! One replica reconciles at a time (a Lease, see [`lease`]). The object building is pure
//! ([`objects`], [`policy`]); this module only talks to the host API.
//!
//! Nothing is adopted: the host namespace is created with a plain create and carries the
//! VirtualCluster's UID ([`objects::UID_LABEL`]); a namespace or object of the same name without
//! it is a conflict (phase Refused, nothing granted, nothing written), and cleanup deletes only
//! what carries this cluster's UID. The manager holds no rights inside tenant namespaces
//! cluster-wide: it binds the chart's ClusterRole `vkube-manager-tenant` into each namespace it
//! created, before anything else there.

pub mod lease;
pub mod objects;
pub mod policy;
pub mod usage;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::{
    LimitRange, Namespace, Pod, ResourceQuota, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::rbac::v1::Subject;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions,
    ValidationDirective,
};
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
    #[error("the object has no UID")]
    NoUid,
    #[error(
        "the manager's rights in {namespace} are not in effect yet ({message}); if this persists, the chart's ClusterRole vkube-manager-tenant or the manager's bind rights are missing"
    )]
    RightsPending { namespace: String, message: String },
    #[error("asking the host who the manager is (SelfSubjectReview): {0}")]
    Identity(String),
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
            Error::NoUid => "NoUid",
            Error::RightsPending { .. } => "RightsPending",
            Error::Identity(_) => "Identity",
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
    /// The manager itself, bound to `vkube-manager-tenant` in every tenant namespace.
    pub manager: Subject,
    /// The manager's own namespace (the chart's release namespace): no cluster may get it.
    pub own_namespace: Option<String>,
}

pub struct ManagerOptions {
    pub policy: Policy,
    pub lease: Option<lease::LeaseConfig>,
    /// The release namespace (POD_NAMESPACE); default: the namespace of the manager's
    /// ServiceAccount.
    pub own_namespace: Option<String>,
    /// How often every tenant's usage is sampled (`usage`).
    pub usage_every: Duration,
}

/// Who the host says the manager is (a ServiceAccount in the chart).
async fn whoami(client: &kube::Client) -> Result<String, Error> {
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(|e| Error::Identity(e.to_string()))?;
    review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| Error::Identity("the answer names no user".into()))
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
    let me = whoami(&client).await?;
    let manager = objects::subject_for_user(&me);
    let own_namespace = opts.own_namespace.or_else(|| manager.namespace.clone());
    tracing::info!(identity = %me, namespace = ?own_namespace, "reconciling as");
    let controller = Controller::new(vcs, watcher::Config::default());
    let ctx = Arc::new(Context {
        client,
        policy: opts.policy,
        store: controller.store(),
        resync: Duration::from_secs(30),
        manager,
        own_namespace,
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
    let metering = tokio::spawn(usage::run(ctx.clone(), opts.usage_every));
    controller
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "reconcile failed");
            }
        })
        .await;
    metering.abort();
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
        // RBAC takes a moment to see a new RoleBinding.
        Error::RightsPending { .. } => {
            tracing::warn!(vcluster = %vc.name_any(), error = %error, "retrying");
            Action::requeue(Duration::from_secs(1))
        }
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

/// Outcome of writing an object the manager keeps for one cluster.
enum Put {
    Done,
    /// An object of that name exists that was not made for this cluster: not touched.
    Conflict(String),
}

/// The cluster objects are made for.
#[derive(Clone, Copy)]
struct For<'a> {
    name: &'a str,
    uid: &'a str,
}

/// Creates `body` if absent (a plain create), or applies it (server-side, forced: the manager
/// owns these objects' fields) if it carries this cluster's UID, or an earlier cluster's of the
/// same name made by a vkube manager (its finalizer was bypassed; nothing else can make
/// objects named after this cluster), or is this cluster's from a manager that did not label
/// UIDs yet. Anything else is a conflict and stays as it is.
async fn put_owned<K>(
    api: &Api<K>,
    name: &str,
    body: &serde_json::Value,
    cluster: For<'_>,
    what: &str,
) -> Result<Put, kube::Error>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let Some(existing) = api.get_opt(name).await? else {
        let obj: K = serde_json::from_value(body.clone()).map_err(kube::Error::SerdeError)?;
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        // Created meanwhile by someone else (409): the error retries, and the next look
        // decides whose it is.
        return api.create(&pp, &obj).await.map(|_| Put::Done);
    };
    if !objects::is_ours(existing.labels(), cluster.uid)
        && !objects::is_legacy(existing.labels(), cluster.name)
    {
        match objects::made_for(existing.labels()) {
            Some(earlier) => {
                tracing::info!(
                    object = what,
                    earlier_uid = earlier,
                    "replacing what an earlier cluster of this name left"
                )
            }
            None => {
                return Ok(Put::Conflict(format!(
                    "{what} already exists and was not made for this virtual cluster (no {} label); \
                     the manager does not take over objects it did not create: choose another name",
                    objects::UID_LABEL
                )));
            }
        }
    }
    // A binding's roleRef cannot change: one that points elsewhere is replaced.
    if let Some(want) = body.get("roleRef") {
        let have = serde_json::to_value(&existing)
            .ok()
            .and_then(|v| v.get("roleRef").cloned());
        if have.as_ref() != Some(want) {
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: existing.meta().uid.clone(),
                    resource_version: None,
                }),
                ..DeleteParams::background()
            };
            ignore_missing(api.delete(name, &dp).await.map(|_| ()))?;
        }
    }
    api.patch(name, &apply_params(), &Patch::Apply(body))
        .await
        .map(|_| Put::Done)
}

fn apply_params() -> PatchParams {
    PatchParams {
        field_validation: Some(ValidationDirective::Strict),
        ..PatchParams::apply(FIELD_MANAGER).force()
    }
}

/// Where the host namespace of a cluster stands.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HostNamespace {
    /// Made for this cluster: carry on.
    Ours,
    /// Not usable yet, but will be (it is going away); the text says what is awaited.
    Wait(String),
    /// Someone else's: the cluster is refused, nothing is touched.
    Foreign(String),
}

/// Classifies an existing namespace of the cluster's name. Pure.
pub(crate) fn classify_namespace(found: &Namespace, vc_uid: &str) -> HostNamespace {
    let name = found.name_any();
    let terminating = found.metadata.deletion_timestamp.is_some();
    if objects::is_ours(found.labels(), vc_uid) {
        return if terminating {
            HostNamespace::Wait(format!(
                "host namespace {name} is being deleted; it is re-created once it is gone"
            ))
        } else {
            HostNamespace::Ours
        };
    }
    match objects::made_for(found.labels()) {
        Some(earlier) => HostNamespace::Wait(format!(
            "waiting for host namespace {name} of an earlier virtual cluster of this name (uid {earlier}) to be deleted"
        )),
        None => HostNamespace::Foreign(format!(
            "host namespace {name} already exists and was not created for this virtual cluster \
             (it has no {} label: for instance the namespace vkube is installed in, or a cluster \
             started with `vkube serve`); nothing was done to it: choose another name",
            objects::UID_LABEL
        )),
    }
}

/// Creates the host namespace with a plain create (never adopting one), or tells where an
/// existing one stands.
async fn ensure_namespace(
    ctx: &Context,
    vc: &VirtualCluster,
    body: serde_json::Value,
) -> Result<HostNamespace, Error> {
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    let name = body["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    match api.get_opt(&name).await? {
        Some(found) => {
            let state = classify_namespace(&found, objects::uid(vc));
            if state == HostNamespace::Ours {
                // Labels may change with the policy (pod security); ownership is checked above
                // and by the chart's admission policy.
                api.patch(&name, &apply_params(), &Patch::Apply(&body))
                    .await?;
            }
            Ok(state)
        }
        None => {
            let ns: Namespace = serde_json::from_value(body)
                .map_err(|e| Error::Kube(kube::Error::SerdeError(e)))?;
            let pp = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            match api.create(&pp, &ns).await {
                Ok(_) => Ok(HostNamespace::Ours),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(HostNamespace::Wait(format!(
                    "host namespace {name} was created by someone else at the same moment"
                ))),
                Err(e) => Err(e.into()),
            }
        }
    }
}

async fn refuse(ctx: &Context, vc: &VirtualCluster, why: String) -> Result<Action, Error> {
    tracing::info!(reason = %why, "refused");
    set_status(ctx, vc, Phase::Refused, why, Probe::None).await?;
    Ok(Action::await_change())
}

async fn apply(vc: &VirtualCluster, ctx: &Context) -> Result<Action, Error> {
    let name = vc.metadata.name.clone().ok_or(Error::NoName)?;
    let uid = vc.metadata.uid.clone().ok_or(Error::NoUid)?;
    let me = For {
        name: &name,
        uid: &uid,
    };
    let ns = objects::host_namespace(&name);
    if objects::owner(vc).is_none() {
        return refuse(
            ctx,
            vc,
            format!(
                "no {} annotation: create virtual clusters with `vkube create`",
                crate::api::OWNER_ANNOTATION
            ),
        )
        .await;
    }
    // The owner's grant on their own VirtualCluster comes first, even for a cluster that will
    // be refused: the owner can then read why and delete it. It reaches nothing but that object.
    if let Some((role, binding)) = objects::owner_grants(vc) {
        let role_name = objects::owner_cluster_role(&name);
        for put in [
            put_owned(
                &Api::<ClusterRole>::all(ctx.client.clone()),
                &role_name,
                &role,
                me,
                &format!("ClusterRole {role_name}"),
            )
            .await?,
            put_owned(
                &Api::<ClusterRoleBinding>::all(ctx.client.clone()),
                &role_name,
                &binding,
                me,
                &format!("ClusterRoleBinding {role_name}"),
            )
            .await?,
        ] {
            if let Put::Conflict(why) = put {
                return refuse(ctx, vc, why).await;
            }
        }
    }
    let facts = policy::Facts {
        earlier_of_owner: earlier_of_owner(vc, ctx.store.state().iter().map(|a| a.as_ref())),
        own_namespace: ctx.own_namespace.as_deref(),
        now: time::OffsetDateTime::now_utc(),
    };
    let resolved = match policy::check(vc, &ctx.policy, &facts) {
        Ok(r) => r,
        Err(refusal @ Refusal(_)) => return refuse(ctx, vc, refusal.to_string()).await,
    };
    match ensure_namespace(ctx, vc, objects::namespace(vc, &ctx.policy, &resolved)).await? {
        HostNamespace::Ours => {}
        HostNamespace::Wait(why) => {
            set_status(ctx, vc, Phase::Provisioning, why, Probe::None).await?;
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        HostNamespace::Foreign(why) => return refuse(ctx, vc, why).await,
    }
    // The manager's own binding comes first: RBAC lets it grant the owner (and apply the rest)
    // only with the rights it holds in this namespace.
    for obj in objects::namespaced(vc, &ctx.policy, &resolved, None, &ctx.manager) {
        match apply_namespaced(&ctx.client, &ns, &obj, me).await {
            Ok(Put::Done) => {}
            Ok(Put::Conflict(why)) => return refuse(ctx, vc, why).await,
            // RBAC sees the manager's new binding a moment after it is made; an admission
            // policy's refusal is no such moment and goes the usual way.
            Err(kube::Error::Api(s)) if s.code == 403 && !s.message.contains("denied request") => {
                return Err(Error::RightsPending {
                    namespace: ns,
                    message: s.message.clone(),
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
    let cluster_read = objects::syncer_cluster_read_binding_name(&name);
    let bindings = Api::<ClusterRoleBinding>::all(ctx.client.clone());
    if ctx.policy.syncer_cluster_read {
        let binding = objects::syncer_cluster_read_binding(vc).map_err(Error::Manifest)?;
        let what = format!("ClusterRoleBinding {cluster_read}");
        if let Put::Conflict(why) = put_owned(&bindings, &cluster_read, &binding, me, &what).await?
        {
            return refuse(ctx, vc, why).await;
        }
    } else {
        // Turned off: the grant goes (the syncer notices at its next start).
        delete_if_ours(&bindings, &cluster_read, me).await?;
    }
    let svc = Api::<Service>::namespaced(ctx.client.clone(), &ns)
        .get(&objects::service_name(&name))
        .await?;
    let Some(cluster_ip) = svc.spec.and_then(|s| s.cluster_ip) else {
        return Ok(Action::requeue(Duration::from_secs(1)));
    };
    for obj in objects::namespaced(vc, &ctx.policy, &resolved, Some(&cluster_ip), &ctx.manager)
        .iter()
        .filter(|o| o.kind == Kind::StatefulSet)
    {
        if let Put::Conflict(why) = apply_namespaced(&ctx.client, &ns, obj, me).await? {
            return refuse(ctx, vc, why).await;
        }
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
    cluster: For<'_>,
) -> Result<Put, kube::Error> {
    async fn put<K>(
        client: &kube::Client,
        ns: &str,
        obj: &Namespaced,
        cluster: For<'_>,
    ) -> Result<Put, kube::Error>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let what = format!("{:?} {}/{}", obj.kind, ns, obj.name);
        put_owned(
            &Api::<K>::namespaced(client.clone(), ns),
            &obj.name,
            &obj.body,
            cluster,
            &what,
        )
        .await
    }
    match obj.kind {
        Kind::ServiceAccount => put::<ServiceAccount>(client, ns, obj, cluster).await,
        Kind::Role => put::<Role>(client, ns, obj, cluster).await,
        Kind::RoleBinding => put::<RoleBinding>(client, ns, obj, cluster).await,
        Kind::ResourceQuota => put::<ResourceQuota>(client, ns, obj, cluster).await,
        Kind::LimitRange => put::<LimitRange>(client, ns, obj, cluster).await,
        Kind::NetworkPolicy => put::<NetworkPolicy>(client, ns, obj, cluster).await,
        Kind::Service => put::<Service>(client, ns, obj, cluster).await,
        Kind::Ingress => put::<Ingress>(client, ns, obj, cluster).await,
        Kind::StatefulSet => put::<StatefulSet>(client, ns, obj, cluster).await,
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

/// Deletes a cluster-scoped object only if it carries this cluster's UID (and is still the
/// same object: a precondition on its own UID).
async fn delete_if_ours<K>(api: &Api<K>, name: &str, cluster: For<'_>) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Some(found) = api.get_opt(name).await? else {
        return Ok(());
    };
    if !objects::is_ours(found.labels(), cluster.uid)
        && !objects::is_legacy(found.labels(), cluster.name)
    {
        tracing::info!(object = name, "not this cluster's: left alone");
        return Ok(());
    }
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: found.meta().uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    ignore_missing(api.delete(name, &dp).await.map(|_| ()))
}

/// Removes the host namespace (with everything in it) if it is this cluster's, waits until it
/// is really gone, and only then the owner's cluster-wide grants: while the grant lasts the
/// owner still sees the cluster (Deleting), so "deleted" in `vkube delete` means nothing is left
/// on the host. A namespace or grant of the same name that is not this cluster's is never
/// touched.
async fn cleanup(vc: &VirtualCluster, ctx: &Context) -> Result<Action, Error> {
    let name = vc.metadata.name.clone().ok_or(Error::NoName)?;
    let uid = vc.metadata.uid.clone().ok_or(Error::NoUid)?;
    let me = For {
        name: &name,
        uid: &uid,
    };
    let ns = objects::host_namespace(&name);
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    if let Some(found) = namespaces.get_opt(&ns).await?
        && objects::is_ours(found.labels(), &uid)
    {
        if found.metadata.deletion_timestamp.is_none() {
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: found.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..DeleteParams::background()
            };
            ignore_missing(namespaces.delete(&ns, &dp).await.map(|_| ()))?;
        }
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
    let bindings = Api::<ClusterRoleBinding>::all(ctx.client.clone());
    delete_if_ours(
        &bindings,
        &objects::syncer_cluster_read_binding_name(&name),
        me,
    )
    .await?;
    let role = objects::owner_cluster_role(&name);
    delete_if_ours(&bindings, &role, me).await?;
    delete_if_ours(&Api::<ClusterRole>::all(ctx.client.clone()), &role, me).await?;
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

    fn ns(labels: &[(&str, &str)], terminating: bool) -> Namespace {
        let mut ns = Namespace::default();
        ns.metadata.name = Some("vkube-alice".into());
        ns.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        if terminating {
            ns.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        }
        ns
    }

    /// A namespace is used only if it carries this cluster's UID; one of an earlier cluster of
    /// the same name is waited for; anything else (the release namespace, a plain `vkube serve`
    /// tenant's, anyone's) refuses the cluster.
    #[test]
    fn only_a_namespace_made_for_this_cluster_is_used() {
        let ours = [
            (objects::UID_LABEL, "uid-1"),
            ("app.kubernetes.io/managed-by", objects::MANAGED_BY),
        ];
        assert_eq!(
            classify_namespace(&ns(&ours, false), "uid-1"),
            HostNamespace::Ours
        );
        assert!(matches!(
            classify_namespace(&ns(&ours, true), "uid-1"),
            HostNamespace::Wait(_)
        ));
        // Re-created with the same name while the old namespace is still there.
        let HostNamespace::Wait(why) = classify_namespace(&ns(&ours, true), "uid-2") else {
            panic!("an earlier cluster's namespace must be waited for");
        };
        assert!(why.contains("earlier virtual cluster"), "{why}");
        for foreign in [
            vec![],
            vec![
                ("app.kubernetes.io/managed-by", "vkube"),
                ("vkube.dev/virtual-cluster", "alice"),
            ],
            vec![
                (objects::UID_LABEL, "uid-2"),
                ("app.kubernetes.io/managed-by", "someone"),
            ],
        ] {
            for terminating in [false, true] {
                let HostNamespace::Foreign(why) =
                    classify_namespace(&ns(&foreign, terminating), "uid-1")
                else {
                    panic!("{foreign:?} is not the manager's");
                };
                assert!(why.contains("choose another name"), "{why}");
            }
        }
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
