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
pub mod sleep;
pub mod usage;
pub mod waker;
pub mod watchdog;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    LimitRange, Namespace, Pod, ResourceQuota, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
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
    #[error(transparent)]
    Listen(#[from] crate::metrics::server::BindError),
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
            Error::Listen(_) => "Listen",
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
    /// Holds requests for sleeping clusters and wakes them; `None`: sleeping clusters refuse
    /// connections until `vkube wake`.
    pub waker: Option<Arc<waker::Waker>>,
    /// Events on VirtualClusters (sleep, wake, pause, resume).
    pub recorder: Option<kube::runtime::events::Recorder>,
}

/// Where the waker listens: the manager pod's IP (what the sleeping clusters' Services get as
/// their endpoint) and the ports it may use, one per sleeping cluster.
#[derive(Debug, Clone)]
pub struct WakerOptions {
    pub address: std::net::IpAddr,
    pub ports: std::ops::RangeInclusive<u16>,
}

pub struct ManagerOptions {
    pub policy: Policy,
    pub lease: Option<lease::LeaseConfig>,
    /// The release namespace (POD_NAMESPACE); default: the namespace of the manager's
    /// ServiceAccount.
    pub own_namespace: Option<String>,
    pub waker: Option<WakerOptions>,
    /// This replica's name for Events (POD_NAME).
    pub instance: Option<String>,
    /// Where `/metrics` is served (plain HTTP); `None`: nowhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where `/healthz` and `/readyz` are served; `None`: nowhere.
    pub health_listen: Option<std::net::SocketAddr>,
    /// How long the controller may show no progress before `/healthz` fails.
    pub stuck_after: Duration,
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
    let metrics = &crate::metrics::get().manager;
    let watchdog = Arc::new(watchdog::Watchdog::new(opts.stuck_after));
    let cache_synced = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Served from the start: a standby replica waiting for the lease is alive and ready (a
    // rollout needs the new pod ready while the old one still leads).
    let (admin_stop, admin_stopped) = tokio::sync::watch::channel(false);
    let healthz: crate::metrics::server::Check = {
        let watchdog = watchdog.clone();
        Arc::new(move || watchdog.check())
    };
    let readyz: crate::metrics::server::Check = {
        let (watchdog, synced) = (watchdog.clone(), cache_synced.clone());
        Arc::new(move || {
            watchdog.check()?;
            let leading = crate::metrics::get().manager.leader.get() == 1;
            if leading && !synced.load(std::sync::atomic::Ordering::SeqCst) {
                return Err("listing the VirtualClusters (initial sync)".into());
            }
            Ok(())
        })
    };
    for (addr, metrics) in [
        (opts.health_listen, None),
        (
            opts.metrics_listen,
            Some(crate::metrics::Component::Manager),
        ),
    ] {
        if let Some(addr) = addr {
            let listener = crate::metrics::server::bind(addr).await?;
            tracing::info!(listen = ?listener.local_addr().ok(), metrics = metrics.is_some(), "admin endpoints serving");
            tokio::spawn(crate::metrics::server::serve(
                listener,
                crate::metrics::server::Endpoints {
                    metrics,
                    healthz: healthz.clone(),
                    readyz: readyz.clone(),
                },
                admin_stopped.clone(),
            ));
        }
    }
    let lost = match opts.lease {
        Some(config) => {
            let api: Api<k8s_openapi::api::coordination::v1::Lease> =
                Api::namespaced(client.clone(), &config.namespace);
            lease::acquire(&api, &config).await?;
            Some(tokio::spawn(lease::keep(api, config)))
        }
        None => None,
    };
    metrics.leader.set(1);
    let vcs: Api<VirtualCluster> = Api::all(client.clone());
    if let Err(e) = vcs.list(&ListParams::default().limit(1)).await {
        return Err(Error::Kube(e));
    }
    let me = whoami(&client).await?;
    let manager = objects::subject_for_user(&me);
    let own_namespace = opts.own_namespace.or_else(|| manager.namespace.clone());
    tracing::info!(identity = %me, namespace = ?own_namespace, "reconciling as");
    let mut controller = Controller::new(vcs, watcher::Config::default());
    let waker = match opts.waker {
        Some(w) => {
            let (waker, wakes) = waker::Waker::new(w.address, w.ports.clone());
            tracing::info!(address = %w.address, ports = ?w.ports, "waker ready: sleeping clusters wake on their first request");
            // A request waiting (or a control plane that just answered) is reconciled now.
            let wakes = futures::stream::unfold(wakes, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|name| (kube::runtime::reflector::ObjectRef::new(&name), rx))
            });
            controller = controller.reconcile_on(wakes);
            Some(waker)
        }
        None => {
            tracing::warn!(
                "no waker address (POD_IP): sleeping clusters refuse connections until `vkube wake`"
            );
            None
        }
    };
    let recorder = kube::runtime::events::Recorder::new(
        client.clone(),
        kube::runtime::events::Reporter {
            controller: FIELD_MANAGER.into(),
            instance: opts.instance.clone(),
        },
    );
    let ctx = Arc::new(Context {
        client,
        policy: opts.policy,
        store: controller.store(),
        resync: Duration::from_secs(30),
        manager,
        own_namespace,
        waker,
        recorder: Some(recorder),
    });
    // Every phase is exported (0 until the cache fills) from the first scrape on, not only
    // after the first reconcile or watchdog tick: /readyz answers from the start.
    count_phases(&ctx.store);
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
    let (heartbeat, heartbeats) = futures::channel::mpsc::unbounded();
    let ticker = tokio::spawn(watch_progress(ctx.clone(), watchdog.clone(), heartbeat));
    watchdog.running();
    let timed = {
        let watchdog = watchdog.clone();
        move |vc: Arc<VirtualCluster>, ctx: Arc<Context>| {
            let watchdog = watchdog.clone();
            async move {
                let id = watchdog.reconcile_started();
                let started = std::time::Instant::now();
                let result = reconcile(vc, ctx.clone()).await;
                watchdog.reconcile_ended(id);
                record_reconcile(&result, started.elapsed(), &ctx.store);
                result
            }
        }
    };
    let seen = watchdog.clone();
    let metering = tokio::spawn(usage::run(ctx.clone(), opts.usage_every));
    controller
        .reconcile_on(heartbeats)
        .graceful_shutdown_on(stop)
        .run(timed, error_policy, ctx)
        .for_each(|res| {
            let name = match &res {
                Ok((r, _)) => Some(r.name.as_str()),
                Err(kube::runtime::controller::Error::ObjectNotFound(r)) => Some(r.name.as_str()),
                Err(_) => None,
            };
            if name == Some(watchdog::HEARTBEAT) {
                // The controller runs requests only once its cache holds the initial list.
                cache_synced.store(true, std::sync::atomic::Ordering::SeqCst);
                seen.heartbeat_back();
            } else if let Err(e) = &res {
                tracing::debug!(error = %e, "reconcile failed");
            }
            async {}
        })
        .await;
    ticker.abort();
    metrics.leader.set(0);
    let _ = admin_stop.send(true);
    metering.abort();
    // Another replica meters from now on: this one's figures would go stale.
    metrics.tenant_usage.retain(&Default::default());
    let reason = lost_reason.lock().ok().and_then(|mut r| r.take());
    match reason {
        Some(reason) => Err(Error::Lease(reason)),
        None => Ok(()),
    }
}

/// The watchdog's ticks (see [`watchdog`]): a heartbeat through the controller's queue, a fresh
/// list compared with the controller's cache, and the phase counts.
async fn watch_progress(
    ctx: Arc<Context>,
    watchdog: Arc<watchdog::Watchdog>,
    heartbeat: futures::channel::mpsc::UnboundedSender<
        kube::runtime::reflector::ObjectRef<VirtualCluster>,
    >,
) {
    let tick = (watchdog.stuck_after / 4).max(Duration::from_secs(1));
    let api: Api<VirtualCluster> = Api::all(ctx.client.clone());
    loop {
        if watchdog.heartbeat_sent() {
            let _ = heartbeat.unbounded_send(kube::runtime::reflector::ObjectRef::new(
                watchdog::HEARTBEAT,
            ));
        }
        let listed = tokio::time::timeout(tick, api.list_metadata(&ListParams::default())).await;
        match &listed {
            Ok(Err(e)) => tracing::warn!(error = %e, "watchdog: listing VirtualClusters failed"),
            Err(_) => tracing::warn!("watchdog: listing VirtualClusters timed out"),
            Ok(Ok(_)) => {}
        }
        if let Ok(Ok(list)) = listed {
            let versions = |m: &kube::api::ObjectMeta| {
                Some((
                    m.uid.clone()?,
                    m.resource_version.clone().unwrap_or_default(),
                ))
            };
            let listed = list
                .items
                .iter()
                .filter_map(|o| versions(&o.metadata))
                .collect();
            let cached = ctx
                .store
                .state()
                .iter()
                .filter_map(|o| versions(&o.metadata))
                .collect();
            watchdog.compared(watchdog::differences(&listed, &cached));
        }
        count_phases(&ctx.store);
        crate::metrics::get()
            .manager
            .watchdog_age
            .set(watchdog.age());
        tokio::time::sleep(tick).await;
    }
}

/// Records one reconcile in the metrics: duration by result, the error's variant.
fn record_reconcile(result: &Result<Action, Error>, took: Duration, store: &Store<VirtualCluster>) {
    let m = &crate::metrics::get().manager;
    let outcome = if result.is_ok() { "ok" } else { "error" };
    m.reconcile_duration
        .get_or_create(&crate::metrics::ResultLabel { result: outcome })
        .observe(took.as_secs_f64());
    if let Err(e) = result {
        m.reconcile_errors
            .get_or_create(&crate::metrics::ReasonLabel { reason: e.kind() })
            .inc();
    }
    count_phases(store);
}

/// VirtualClusters by phase (`None`: no status yet). Never by name.
fn count_phases(store: &Store<VirtualCluster>) {
    let m = &crate::metrics::get().manager;
    let mut counts: std::collections::HashMap<&'static str, i64> = [
        Phase::Provisioning,
        Phase::Starting,
        Phase::Ready,
        Phase::Paused,
        Phase::Refused,
        Phase::Failed,
        Phase::Deleting,
    ]
    .into_iter()
    .map(|p| (p.as_str(), 0))
    .chain([("None", 0)])
    .collect();
    for vc in store.state() {
        let phase = vc
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .map(|p| p.as_str())
            .unwrap_or("None");
        *counts.entry(phase).or_default() += 1;
    }
    for (phase, n) in counts {
        m.virtual_clusters
            .get_or_create(&crate::metrics::PhaseLabel { phase })
            .set(n);
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
    set_status(ctx, vc, Phase::Refused, why, Probe::None, None).await?;
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
    // Sleep or wake, decided before anything is applied, and recorded before it is acted on
    // (the Sleeping condition's transition time is when): a restarted manager carries on.
    let recorded = recorded_sleep(vc);
    let activity = last_activity(&ctx.client, &ns).await;
    let updated: VirtualCluster;
    let mut vc = vc;
    let decision = sleep::decide(&sleep::Facts {
        now: k8s_openapi::jiff::Timestamp::now(),
        paused: vc.spec.paused,
        sleep_after: resolved.sleep_after,
        recorded,
        last_activity: activity.map(|a| a.0),
        last_request: activity.and_then(|a| a.1),
        sleep_requested: resolved.sleep_requested.is_some()
            && resolved.sleep_requested
                != vc
                    .status
                    .as_ref()
                    .and_then(|s| s.observed_sleep_request.clone()),
        wake_requested: resolved.wake_requested.is_some()
            && resolved.wake_requested
                != vc
                    .status
                    .as_ref()
                    .and_then(|s| s.observed_wake_request.clone()),
        waiting: ctx.waker.as_ref().map_or(0, |w| w.waiting(&name)),
    });
    let want = decision.want;
    if decision.cause != sleep::Cause::Unchanged {
        announce(ctx, vc, &decision, &resolved).await;
    }
    if sleep::condition_of(want) != recorded_condition(recorded) {
        let (phase, message) = match want {
            sleep::Want::Awake => (Phase::Starting, wake_message(decision.cause)),
            sleep::Want::Asleep(reason) => (
                Phase::Sleeping,
                format!("falling asleep ({})", sleep_reason_text(reason, &resolved)),
            ),
            sleep::Want::Paused => (Phase::Paused, "pausing".to_string()),
        };
        let written = set_status(ctx, vc, phase, message, Probe::None, Some(want)).await?;
        // What follows compares with what was just recorded (the transition time stays).
        updated = VirtualCluster {
            status: Some(written),
            ..vc.clone()
        };
        vc = &updated;
        if want == sleep::Want::Awake && matches!(recorded, sleep::Recorded::Asleep { .. }) {
            // A request may be waiting: start the control plane before anything else.
            wake_now(ctx, vc, &ns, me).await?;
        }
    }
    match ensure_namespace(ctx, vc, objects::namespace(vc, &ctx.policy, &resolved)).await? {
        HostNamespace::Ours => {}
        HostNamespace::Wait(why) => {
            set_status(ctx, vc, Phase::Provisioning, why, Probe::None, None).await?;
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
    let at = objects::ControlPlaneAt {
        cluster_ip: &cluster_ip,
        running: want == sleep::Want::Awake,
    };
    for obj in objects::namespaced(vc, &ctx.policy, &resolved, Some(at), &ctx.manager)
        .iter()
        .filter(|o| o.kind == Kind::StatefulSet)
    {
        if let Put::Conflict(why) = apply_namespaced(&ctx.client, &ns, obj, me).await? {
            return refuse(ctx, vc, why).await;
        }
    }
    let endpoint = format!("https://{cluster_ip}:{}", objects::API_PORT);
    let probe = || Probe::Endpoint {
        endpoint: endpoint.clone(),
        version: resolved.version.clone(),
    };
    match want {
        sleep::Want::Paused => {
            // No request ends a pause: nothing may reach the waker.
            disarm_waker(ctx, &ns, &name, me, None).await?;
            return wind_down(
                ctx,
                vc,
                &ns,
                want,
                "paused by the owner",
                "pausing",
                probe(),
            )
            .await;
        }
        sleep::Want::Asleep(reason) => {
            arm_waker(ctx, vc, &ns, me).await?;
            let done = format!(
                "{ASLEEP} ({}); the first request to its API wakes it",
                sleep_reason_text(reason, &resolved)
            );
            return wind_down(ctx, vc, &ns, want, &done, "falling asleep", probe()).await;
        }
        sleep::Want::Awake => {}
    }
    let recheck = decision.recheck.map_or(ctx.resync, |r| {
        r.min(ctx.resync) + Duration::from_millis(500)
    });
    match probe_control_plane(&ctx.client, &ns, &name, &cluster_ip).await {
        Ok(target) => {
            // Awake: whatever the waker holds goes through, then the Service loses the waker,
            // but only once the pod is a ready endpoint of the Service itself (its readiness
            // probe, then kube-proxy): sooner, the Service has no ready endpoint for a moment
            // and clients are refused. Meanwhile the waker splices new connections too.
            let pod = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
                .get_opt(&objects::control_plane_pod(&name))
                .await?;
            let serves = pod
                .as_ref()
                .is_some_and(|p| serves_its_service(p, k8s_openapi::jiff::Timestamp::now()));
            if serves {
                disarm_waker(ctx, &ns, &name, me, Some(target)).await?;
            } else {
                if let Some(waker) = &ctx.waker {
                    waker.release(&name, target);
                }
                // Not Ready yet: Ready promises that the user's endpoint (the Service) answers,
                // and until the pod is its ready endpoint a client is refused there.
                set_status(
                    ctx,
                    vc,
                    Phase::Starting,
                    "the tenant API answers /readyz; waiting for its Service to lead to it".into(),
                    probe(),
                    Some(want),
                )
                .await?;
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
            let was = vc.status.as_ref().and_then(|s| s.phase);
            set_status(
                ctx,
                vc,
                Phase::Ready,
                "the tenant API answers /readyz".into(),
                probe(),
                Some(want),
            )
            .await?;
            if was != Some(Phase::Ready) {
                announce_ready(ctx, vc).await;
            }
            Ok(Action::requeue(recheck))
        }
        Err(why) => {
            // Waking from sleep (its Service still has the waker): hold what arrives, also
            // after a manager restart, and splice it the moment the control plane answers.
            let message = match resume_waker(ctx, vc, &ns, &cluster_ip, me).await? {
                Some(waiting) => format!("waking: {waiting} requests waiting ({why})"),
                None => why,
            };
            set_status(ctx, vc, Phase::Starting, message, probe(), Some(want)).await?;
            Ok(Action::requeue(Duration::from_secs(1)))
        }
    }
}

/// The start of the message of a cluster that has finished falling asleep (`vkube sleep`
/// waits for it).
pub const ASLEEP: &str = "asleep";

fn sleep_reason_text(reason: sleep::Reason, resolved: &policy::Resolved) -> String {
    match reason {
        sleep::Reason::Idle => format!(
            "no API request for {}",
            resolved
                .sleep_after
                .map(sleep::format_duration)
                .unwrap_or_else(|| "its sleepAfter".into())
        ),
        sleep::Reason::Manual => "asked with vkube sleep".into(),
    }
}

fn wake_message(cause: sleep::Cause) -> String {
    match cause {
        sleep::Cause::Request => "waking: a request to its API is waiting".into(),
        sleep::Cause::WakeRequested => "waking: asked with vkube wake".into(),
        sleep::Cause::LateActivity => {
            "waking: a request reached it while it was falling asleep".into()
        }
        sleep::Cause::Resumed => "resuming".into(),
        _ => "starting".into(),
    }
}

/// The `Sleeping` condition as this manager recorded it; a cluster without one (new, or from
/// an older manager) counts as awake from now on.
fn recorded_sleep(vc: &VirtualCluster) -> sleep::Recorded {
    vc.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == SLEEPING))
        .and_then(|c| sleep::recorded(&c.status, &c.reason, &c.last_transition_time))
        .unwrap_or(sleep::Recorded::Awake {
            since: k8s_openapi::jiff::Timestamp::now(),
        })
}

fn recorded_condition(r: sleep::Recorded) -> (&'static str, &'static str) {
    sleep::condition_of(match r {
        sleep::Recorded::Awake { .. } => sleep::Want::Awake,
        sleep::Recorded::Asleep { reason, .. } => sleep::Want::Asleep(reason),
        sleep::Recorded::Paused { .. } => sleep::Want::Paused,
    })
}

/// The last use of the cluster's API and the start of its latest request, as its
/// `vkube serve` published them (the Lease [`crate::proxy::activity::LEASE`]); `None` when it
/// never did or cannot be read.
async fn last_activity(
    client: &kube::Client,
    ns: &str,
) -> Option<(
    k8s_openapi::jiff::Timestamp,
    Option<k8s_openapi::jiff::Timestamp>,
)> {
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    match api.get_opt(crate::proxy::activity::LEASE).await {
        Ok(lease) => {
            let spec = lease?.spec?;
            Some((spec.renew_time?.0, spec.acquire_time.map(|t| t.0)))
        }
        Err(e) => {
            tracing::warn!(namespace = ns, error = %e, "reading the activity Lease (the chart's ClusterRole vkube-manager-tenant grants leases get)");
            None
        }
    }
}

/// Starts the control plane at once (a request is waiting), before the rest of the objects
/// are applied again; the full apply that follows says the same.
async fn wake_now(
    ctx: &Context,
    vc: &VirtualCluster,
    ns: &str,
    cluster: For<'_>,
) -> Result<(), Error> {
    let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), ns);
    if let Some(sts) = api.get_opt(objects::SYNCER_NAME).await?
        && objects::is_ours(sts.labels(), cluster.uid)
        && sts.spec.as_ref().and_then(|s| s.replicas) != Some(1)
    {
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        api.patch(
            objects::SYNCER_NAME,
            &params,
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await?;
    }
    if let (Some(waker), Some(endpoint)) = (
        &ctx.waker,
        vc.status.as_ref().and_then(|s| s.endpoint.clone()),
    ) && let Some(cluster_ip) = endpoint_host(&endpoint)
    {
        watch_ready(ctx, waker, ns, cluster.name, &cluster_ip);
    }
    Ok(())
}

fn endpoint_host(endpoint: &str) -> Option<String> {
    let uri: http::Uri = endpoint.parse().ok()?;
    Some(
        uri.host()?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    )
}

fn watch_ready(ctx: &Context, waker: &Arc<waker::Waker>, ns: &str, name: &str, cluster_ip: &str) {
    let (client, ns, name2, ip) = (
        ctx.client.clone(),
        ns.to_string(),
        name.to_string(),
        cluster_ip.to_string(),
    );
    waker.watch_ready(name, move || {
        let (client, ns, name, ip) = (client.clone(), ns.clone(), name2.clone(), ip.clone());
        async move { probe_control_plane(&client, &ns, &name, &ip).await }
    });
}

/// Asleep: the waker listens for the cluster and its API Service has the waker's endpoint
/// (re-pointed at this manager after a restart, on the port the slice already names).
async fn arm_waker(
    ctx: &Context,
    vc: &VirtualCluster,
    ns: &str,
    cluster: For<'_>,
) -> Result<(), Error> {
    let Some(waker) = &ctx.waker else {
        return Ok(());
    };
    let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), ns);
    let existing = slices
        .get_opt(objects::WAKER_SLICE)
        .await?
        .filter(|s| objects::is_ours(s.labels(), cluster.uid));
    let preferred = existing
        .as_ref()
        .and_then(objects::waker_slice_target)
        .map(|(_, port)| port);
    let port = match waker.listen(cluster.name, preferred).await {
        Ok(p) => p,
        Err(e) => {
            // Asleep without a waker: requests are refused until `vkube wake`.
            tracing::warn!(vcluster = cluster.name, error = %e, "no waker for this cluster");
            return Ok(());
        }
    };
    if existing.as_ref().and_then(objects::waker_slice_target) == Some((waker.address(), port)) {
        return Ok(());
    }
    let body = objects::waker_slice(vc, waker.address(), port);
    let what = format!("EndpointSlice {ns}/{}", objects::WAKER_SLICE);
    if let Put::Conflict(why) =
        put_owned(&slices, objects::WAKER_SLICE, &body, cluster, &what).await?
    {
        tracing::warn!(vcluster = cluster.name, reason = %why, "the waker's EndpointSlice");
    }
    Ok(())
}

/// While starting after a sleep (the waker's slice is still there): keep the waker listening
/// and the slice pointing at this manager (it may have restarted mid-wake), watch the control
/// plane come up. Returns how many requests wait, or `None` when this is no wake.
async fn resume_waker(
    ctx: &Context,
    vc: &VirtualCluster,
    ns: &str,
    cluster_ip: &str,
    cluster: For<'_>,
) -> Result<Option<usize>, Error> {
    let Some(waker) = &ctx.waker else {
        return Ok(None);
    };
    let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), ns);
    let Some(slice) = slices
        .get_opt(objects::WAKER_SLICE)
        .await?
        .filter(|s| objects::is_ours(s.labels(), cluster.uid))
    else {
        return Ok(None);
    };
    let target = objects::waker_slice_target(&slice);
    if waker.port(cluster.name).is_none() || target.map(|(ip, _)| ip) != Some(waker.address()) {
        arm_waker(ctx, vc, ns, cluster).await?;
    }
    watch_ready(ctx, waker, ns, cluster.name, cluster_ip);
    Ok(Some(waker.waiting(cluster.name)))
}

/// Awake (`target`: where the control plane answers) or paused: held connections go through
/// (or are closed, when paused), the waker's endpoint leaves the Service, and the listener
/// closes (after a moment, while kube-proxy catches up, when awake).
async fn disarm_waker(
    ctx: &Context,
    ns: &str,
    name: &str,
    cluster: For<'_>,
    target: Option<std::net::SocketAddr>,
) -> Result<(), Error> {
    if let Some(waker) = &ctx.waker {
        match target {
            Some(t) => {
                waker.release(name, t);
                waker.close_after(name, waker::LINGER);
            }
            None => waker.close(name),
        }
    }
    let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), ns);
    delete_if_ours(&slices, objects::WAKER_SLICE, cluster).await?;
    Ok(())
}

/// Asleep or paused: once the control plane pod is gone, the tenant's host pods are removed
/// (the syncer would otherwise have recreated them); their virtual objects stay in the
/// datastore and are synced again on wake or resume.
async fn wind_down(
    ctx: &Context,
    vc: &VirtualCluster,
    ns: &str,
    want: sleep::Want,
    done: &str,
    going: &str,
    probe: Probe,
) -> Result<Action, Error> {
    let phase = match want {
        sleep::Want::Paused => Phase::Paused,
        _ => Phase::Sleeping,
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let left = pods.list(&ListParams::default()).await?.items;
    let control_plane_running = left.iter().any(is_control_plane);
    if !control_plane_running && !left.is_empty() {
        pods.delete_collection(&DeleteParams::default(), &ListParams::default())
            .await?;
    }
    if left.is_empty() {
        set_status(ctx, vc, phase, done.to_string(), probe, Some(want)).await?;
        // Nothing changes by itself now: a request, the owner or the admin ends it, and each
        // of those triggers a reconcile. A slow resync catches what was missed.
        return Ok(match want {
            sleep::Want::Paused => Action::await_change(),
            _ => Action::requeue(Duration::from_secs(300)),
        });
    }
    let message = if control_plane_running {
        format!("{going}: stopping the control plane")
    } else {
        format!("{going}: {} host pods left", left.len())
    };
    set_status(ctx, vc, phase, message, probe, Some(want)).await?;
    Ok(Action::requeue(Duration::from_secs(1)))
}

/// How long the control plane pod must have been Ready before the Service is left to it alone:
/// the endpoint controllers and kube-proxy follow its Ready condition a moment later.
const ENDPOINT_SETTLE: Duration = Duration::from_secs(2);

/// Whether the control plane pod is a ready endpoint of its Service by now: its Ready condition
/// (the kubelet's readiness probe) has been true for [`ENDPOINT_SETTLE`]. Pure.
fn serves_its_service(pod: &Pod, now: k8s_openapi::jiff::Timestamp) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .filter(|c| c.status == "True")
        .and_then(|c| c.last_transition_time.as_ref())
        .is_some_and(|t| {
            now.duration_since(t.0)
                >= k8s_openapi::jiff::SignedDuration::try_from(ENDPOINT_SETTLE).unwrap_or_default()
        })
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
/// a working cluster. It asks the control plane pod directly (verifying the serving certificate
/// for the Service's `cluster_ip`), never through the Service: while a cluster sleeps or wakes
/// the Service also leads to the waker, and the manager's own probe must never wake a cluster.
/// Returns where the control plane answers (for the waker's splice). A pod on its way out
/// (deleted, e.g. still stopping from a sleep) is not ready, however it answers.
pub async fn probe_control_plane(
    client: &kube::Client,
    ns: &str,
    name: &str,
    cluster_ip: &str,
) -> Result<std::net::SocketAddr, String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = pods
        .get_opt(&objects::control_plane_pod(name))
        .await
        .map_err(|e| format!("reading the control plane pod: {e}"))?
        .ok_or_else(|| "waiting for the control plane pod".to_string())?;
    if pod.metadata.deletion_timestamp.is_some() {
        return Err("the previous control plane pod is still stopping".into());
    }
    let ip: std::net::IpAddr = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| "waiting for the control plane pod to start".to_string())?;
    let target = std::net::SocketAddr::new(ip, objects::LISTEN_PORT as u16);
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
    let tenant = pod_client(&yaml, target, cluster_ip)
        .await
        .map_err(|e| format!("the published kubeconfig is unusable: {e}"))?;
    let req = http::Request::get("/readyz")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(5), tenant.request_text(req)).await {
        Ok(Ok(body)) if body.trim() == "ok" => Ok(target),
        Ok(Ok(body)) => Err(format!("the tenant API is not ready: {}", body.trim())),
        Ok(Err(e)) => Err(format!("the tenant API does not answer yet: {e}")),
        Err(_) => Err("the tenant API does not answer within 5 s".into()),
    }
}

/// A client of the published kubeconfig that connects to `target` (the pod) and verifies the
/// certificate for `server_name` (the Service's IP, which it carries).
async fn pod_client(
    yaml: &str,
    target: std::net::SocketAddr,
    server_name: &str,
) -> Result<kube::Client, crate::kubeconfig::KubeconfigError> {
    let kc = kube::config::Kubeconfig::from_yaml(yaml)?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    config.cluster_url =
        format!("https://{target}")
            .parse()
            .map_err(|e: http::uri::InvalidUri| {
                crate::kubeconfig::KubeconfigError::Render(e.to_string())
            })?;
    config.tls_server_name = Some(server_name.to_string());
    Ok(kube::Client::try_from(config)?)
}

enum Probe {
    None,
    Endpoint { endpoint: String, version: String },
}

/// The `Sleeping` condition's type.
pub const SLEEPING: &str = "Sleeping";

/// Writes the status (and returns it as the object now has it). `sleeping`: what the
/// `Sleeping` condition records now (its transition time moves when its status or reason
/// changes: that is when the cluster fell asleep or woke), decided with the owner's current
/// sleep and wake requests, which are therefore recorded as acted on; `None` keeps what is
/// recorded.
async fn set_status(
    ctx: &Context,
    vc: &VirtualCluster,
    phase: Phase,
    message: String,
    probe: Probe,
    sleeping: Option<sleep::Want>,
) -> Result<VirtualClusterStatus, Error> {
    let name = vc.metadata.name.clone().ok_or(Error::NoName)?;
    let old = vc.status.clone().unwrap_or_default();
    let generation = vc.metadata.generation;
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let request = |annotation: &str| {
        vc.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(annotation).cloned())
    };
    let (observed_sleep_request, observed_wake_request) = match sleeping {
        Some(_) => (
            request(crate::api::SLEEP_REQUESTED_ANNOTATION),
            request(crate::api::WAKE_REQUESTED_ANNOTATION),
        ),
        None => (
            old.observed_sleep_request.clone(),
            old.observed_wake_request.clone(),
        ),
    };
    let mut status = VirtualClusterStatus {
        phase: Some(phase),
        message: Some(message.clone()),
        conditions: Vec::new(),
        observed_generation: generation,
        owner: objects::owner(vc).map(str::to_string),
        observed_sleep_request,
        observed_wake_request,
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
    let (ready, synced) = match phase {
        Phase::Ready => ("True", "True"),
        Phase::Paused | Phase::Sleeping => ("False", "False"),
        _ => ("False", "Unknown"),
    };
    let reason = phase.as_str();
    for (type_, value) in [("Ready", ready), ("Synced", synced)] {
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
    let recorded = old
        .conditions
        .iter()
        .find(|c| c.type_ == SLEEPING)
        .filter(|c| sleep::recorded(&c.status, &c.reason, &c.last_transition_time).is_some());
    let (value, why) = match (sleeping, recorded) {
        (Some(want), _) => sleep::condition_of(want),
        (None, Some(c)) => (
            if c.status == "True" { "True" } else { "False" },
            match c.reason.as_str() {
                sleep::PAUSED => sleep::PAUSED,
                r => sleep::Reason::parse(r).map_or(sleep::AWAKE, sleep::Reason::as_str),
            },
        ),
        (None, None) => sleep::condition_of(sleep::Want::Awake),
    };
    let since = old
        .conditions
        .iter()
        .find(|c| c.type_ == SLEEPING && c.status == value && c.reason == why)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    status.conditions.push(Condition {
        type_: SLEEPING.into(),
        status: value.into(),
        reason: why.into(),
        message: match value {
            "True" => message.clone(),
            _ => String::new(),
        },
        last_transition_time: since,
        observed_generation: generation,
    });
    if old.phase == status.phase
        && old.message == status.message
        && old.endpoint == status.endpoint
        && old.observed_generation == status.observed_generation
        && old.owner == status.owner
        && old.conditions == status.conditions
        && old.observed_sleep_request == status.observed_sleep_request
        && old.observed_wake_request == status.observed_wake_request
    {
        return Ok(old);
    }
    let api: Api<VirtualCluster> = Api::all(ctx.client.clone());
    let written = api
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
    Ok(written.status.unwrap_or(status))
}

/// An Event on the VirtualCluster (in namespace `default`, where Kubernetes keeps the events of
/// cluster-scoped objects) when it falls asleep, wakes, is paused or resumed. Best effort.
async fn announce(
    ctx: &Context,
    vc: &VirtualCluster,
    decision: &sleep::Decision,
    resolved: &policy::Resolved,
) {
    use sleep::{Cause, Want};
    let (reason, note) = match (decision.want, decision.cause) {
        (Want::Asleep(r), _) => (
            "Sleeping",
            format!(
                "falling asleep ({}): the control plane stops and its host pods are removed, all state kept; the first request to its API wakes it",
                sleep_reason_text(r, resolved)
            ),
        ),
        (Want::Paused, _) => (
            "Paused",
            "paused by the owner: no request wakes it; `vkube resume` does".into(),
        ),
        (Want::Awake, Cause::Resumed) => ("Resumed", "resumed by the owner".into()),
        (Want::Awake, cause) => ("Waking", wake_message(cause)),
    };
    publish_event(ctx, vc, reason, note).await;
}

async fn announce_ready(ctx: &Context, vc: &VirtualCluster) {
    let since = vc
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == SLEEPING))
        .filter(|c| c.status == "False")
        .and_then(|c| {
            c.last_transition_time
                .parse::<k8s_openapi::jiff::Timestamp>()
                .ok()
        });
    let note = match since {
        Some(t) => format!(
            "the tenant API answers /readyz, {:.1} s after it was started",
            k8s_openapi::jiff::Timestamp::now()
                .duration_since(t)
                .as_secs_f64()
        ),
        None => "the tenant API answers /readyz".to_string(),
    };
    publish_event(ctx, vc, "Ready", note).await;
}

async fn publish_event(ctx: &Context, vc: &VirtualCluster, reason: &str, note: String) {
    let Some(recorder) = &ctx.recorder else {
        return;
    };
    let event = kube::runtime::events::Event {
        type_: kube::runtime::events::EventType::Normal,
        reason: reason.into(),
        note: Some(note),
        action: reason.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &vc.object_ref(&())).await {
        tracing::debug!(error = %e, reason, "publishing an Event failed");
    }
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
            None,
        )
        .await?;
        if let Some(waker) = &ctx.waker {
            waker.close(&name);
        }
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

    /// The waker leaves the Service only once the pod has been Ready for a moment (the
    /// endpoint controllers and kube-proxy follow): an API that answers the manager's direct
    /// probe is not yet an endpoint of the Service.
    #[test]
    fn the_service_is_left_to_the_pod_once_it_has_been_ready_a_moment() {
        use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
        let now: k8s_openapi::jiff::Timestamp = "2026-12-01T08:00:10Z".parse().unwrap();
        let pod = |status: &str, at: &str, deleted: bool| Pod {
            metadata: kube::api::ObjectMeta {
                deletion_timestamp: deleted.then_some(Time(now)),
                ..Default::default()
            },
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: status.into(),
                    last_transition_time: Some(Time(at.parse().unwrap())),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        for (what, p, serves) in [
            (
                "ready for 10 s",
                pod("True", "2026-12-01T08:00:00Z", false),
                true,
            ),
            (
                "ready for 2 s",
                pod("True", "2026-12-01T08:00:08Z", false),
                true,
            ),
            (
                "ready a second ago",
                pod("True", "2026-12-01T08:00:09Z", false),
                false,
            ),
            (
                "not ready",
                pod("False", "2026-12-01T08:00:00Z", false),
                false,
            ),
            (
                "ready but stopping",
                pod("True", "2026-12-01T08:00:00Z", true),
                false,
            ),
            ("no conditions yet", Pod::default(), false),
        ] {
            assert_eq!(serves_its_service(&p, now), serves, "{what}");
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
