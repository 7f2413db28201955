//! The syncer: copies what must really run from the virtual cluster into the tenant's host
//! namespace, and the truth (status, nodes) back up.
//!
//! One reflector per kind and side feeds shared in-memory stores; controllers (kube-runtime)
//! read those stores instead of the API servers, so the hot path never GETs and writes only
//! when the translated object differs from what the host already has (a hash annotation
//! records what was written). Host objects are found by label `vkube.dev/managed-by=<vc>`;
//! everything else in the host namespace is invisible to, and never touched by, the syncer.

pub mod addresses;
pub mod apply;
pub mod backlog;
pub mod configmaps;
pub mod custom;
pub mod endpoints;
pub mod endpointslices;
pub mod events;
pub mod gc;
pub mod host_pod;
pub mod ingresses;
pub mod networkpolicies;
pub mod nodes;
pub mod pdbs;
pub mod pods;
pub mod pvcs;
pub mod recreations;
pub mod referenced;
pub mod secrets;
pub mod services;
pub mod storage;
pub mod tokens;
pub mod virtual_pod;

use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use futures::{StreamExt, future::BoxFuture};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Secret, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tokio::sync::{Notify, watch};

use crate::translate::endpoints::{Cidr, EndpointPolicy};
use crate::translate::ingress::IngressPolicy;
use crate::translate::security::Level;
use crate::translate::service::ServicePolicy;
use crate::translate::{MANAGED_BY, Tenant};
use virtual_pod::VirtualPod;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("virtual API: {0}")]
    Virtual(#[source] kube::Error),
    #[error("host API: {0}")]
    Host(#[source] kube::Error),
    #[error("the syncer stopped before its caches were ready")]
    NotReady,
}

impl SyncError {
    /// Short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SyncError::Virtual(_) => "virtual_api",
            SyncError::Host(_) => "host_api",
            SyncError::NotReady => "not_ready",
        }
    }
}

/// What virtual nodes show (`--node-sync`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NodeSync {
    /// Mirrors of the host nodes that run the tenant's pods (needs the cluster-read grant).
    #[default]
    Real,
    /// Pseudo-nodes that hide the host: name, address and Ready only.
    Pseudo,
}

impl std::str::FromStr for NodeSync {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "real" => Ok(NodeSync::Real),
            "pseudo" => Ok(NodeSync::Pseudo),
            other => Err(format!("unknown node sync mode {other:?}: real or pseudo")),
        }
    }
}

/// Whether host StorageClasses and PersistentVolumes are shown (`--storage-sync`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StorageSync {
    /// Those the tenant's claims use, read-only (needs the cluster-read grant).
    #[default]
    Used,
    Off,
}

impl std::str::FromStr for StorageSync {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "used" => Ok(StorageSync::Used),
            "off" => Ok(StorageSync::Off),
            other => Err(format!("unknown storage sync mode {other:?}: used or off")),
        }
    }
}

/// The opt-in ClusterRole that lets the syncer read host nodes, classes and volumes.
pub const CLUSTER_READ_MANIFEST: &str = "manifests/serve-cluster-rbac.yaml";

#[derive(Debug, Clone)]
pub struct SyncerConfig {
    pub tenant: Tenant,
    /// Reconciles in flight per kind: bounded concurrency instead of a client-side rate limit.
    pub concurrency: u16,
    pub sync_all_config_maps: bool,
    pub sync_all_secrets: bool,
    pub service_policy: ServicePolicy,
    /// The virtual apiserver's service IP ranges; virtual Services show the host's cluster IPs
    /// only when these contain them. Empty: not known, assumed to.
    pub virtual_service_ranges: Vec<Cidr>,
    /// Private ranges tenants may point hand-written endpoints at.
    pub endpoint_policy: EndpointPolicy,
    pub ingress_policy: IngressPolicy,
    pub pod_security: Level,
    /// What tenants' pods may use on the host: volume types, CSI drivers, placement.
    pub pod_policy: Arc<crate::translate::pod::PodPolicy>,
    /// Where pods reach the virtual API (see `host::HostStore::api_service`).
    pub api_endpoint: Option<crate::translate::pod::ApiEndpoint>,
    /// vkube's DNS for the tenant's pods (see `dns`).
    pub cluster_dns: Option<crate::translate::pod::ClusterDns>,
    /// How often the garbage collector sweeps even without a trigger.
    pub gc_interval: Duration,
    /// Asked for; [`run`] falls back to pseudo-nodes without the cluster-read grant.
    pub node_sync: NodeSync,
    /// Asked for; [`run`] turns it off without the cluster-read grant.
    pub storage_sync: StorageSync,
    /// Where tenant pods reach their control plane and which ranges are closed to them: the
    /// default allowances and the clipping of the tenant's NetworkPolicies.
    pub network: crate::translate::networkpolicy::TenantNetwork,
    /// Where the stores are published once complete (read by the API server's egress guard).
    pub shared_stores: addresses::SharedStores,
    /// Virtual pods waiting for their host pod; shared with the proxy, which paces pod creates
    /// by it (`backlog::PodCreatePace`).
    pub pod_backlog: Arc<backlog::Backlog>,
    /// Virtual Services being re-created; shared with the proxy, which holds the tenant's
    /// requests for them meanwhile.
    pub service_recreations: Arc<recreations::Recreations>,
    /// Namespaced custom kinds synced down (`--sync-custom-resource`).
    pub custom_kinds: Vec<crate::translate::custom::CustomKind>,
    /// Cluster-scoped host kinds shown read-only (`--show-host-kind`).
    pub host_kinds: Vec<crate::translate::custom::HostKind>,
    /// VolumeSnapshots synced, their classes shown, and claims restored from them
    /// (`--sync-volume-snapshots`).
    pub volume_snapshots: bool,
}

impl SyncerConfig {
    pub fn new(tenant: Tenant) -> Self {
        SyncerConfig {
            tenant,
            concurrency: 32,
            sync_all_config_maps: false,
            sync_all_secrets: false,
            service_policy: ServicePolicy::default(),
            virtual_service_ranges: Vec::new(),
            endpoint_policy: EndpointPolicy::default(),
            ingress_policy: IngressPolicy::default(),
            pod_security: Level::Baseline,
            pod_policy: Arc::default(),
            api_endpoint: None,
            cluster_dns: None,
            gc_interval: Duration::from_secs(30),
            node_sync: NodeSync::default(),
            storage_sync: StorageSync::default(),
            network: Default::default(),
            shared_stores: addresses::SharedStores::default(),
            pod_backlog: Arc::default(),
            service_recreations: Arc::default(),
            custom_kinds: Vec::new(),
            host_kinds: Vec::new(),
            volume_snapshots: false,
        }
    }

    /// Every custom kind synced down: the configured ones and, with volume snapshots on, the
    /// VolumeSnapshot.
    pub fn synced_custom_kinds(&self) -> Vec<crate::translate::custom::CustomKind> {
        let mut kinds = self.custom_kinds.clone();
        if self.volume_snapshots {
            kinds.push(crate::translate::custom::CustomKind::volume_snapshot());
        }
        kinds
    }

    /// Every host kind shown read-only: the configured ones, the priority classes tenants may
    /// use, and with volume snapshots on their classes.
    pub fn mirrored_host_kinds(&self) -> Vec<crate::translate::custom::HostKind> {
        use crate::translate::custom::HostKind;
        let mut kinds = self.host_kinds.clone();
        let placement = &self.pod_policy.placement;
        if !placement.priority_classes.is_empty() {
            let mut names = placement.priority_classes.clone();
            names.extend(placement.default_priority_class.clone());
            kinds.push(HostKind::priority_classes(names));
        }
        if self.volume_snapshots {
            kinds.push(HostKind::volume_snapshot_classes());
        }
        kinds
    }
}

/// The in-memory view of both sides.
#[derive(Clone)]
pub struct Stores {
    pub virtual_pods: Store<virtual_pod::VirtualPod>,
    pub host_pods: Store<host_pod::HostPod>,
    pub virtual_config_maps: Store<ConfigMap>,
    pub host_config_maps: Store<ConfigMap>,
    pub virtual_secrets: Store<Secret>,
    pub host_secrets: Store<Secret>,
    pub virtual_services: Store<Service>,
    pub host_services: Store<Service>,
    pub virtual_nodes: Store<Node>,
    pub virtual_claims: Store<PersistentVolumeClaim>,
    pub host_claims: Store<PersistentVolumeClaim>,
    pub virtual_endpoints: Store<Endpoints>,
    pub host_endpoints: Store<Endpoints>,
    pub virtual_ingresses: Store<Ingress>,
    pub host_ingresses: Store<Ingress>,
    pub virtual_slices: Store<EndpointSlice>,
    pub host_slices: Store<EndpointSlice>,
    /// Host nodes, trimmed (real node sync only; empty otherwise).
    pub host_nodes: Store<Node>,
    /// Host classes and volumes (storage sync only; empty otherwise). Volumes not claimed from
    /// the tenant's namespace are cached as their names alone.
    pub host_classes: Store<StorageClass>,
    pub host_volumes: Store<PersistentVolume>,
    /// The virtual mirrors' side, and vkube's admission policy that keeps them read-only.
    pub virtual_classes: Store<StorageClass>,
    pub virtual_volumes: Store<PersistentVolume>,
    pub virtual_policies: Store<ValidatingAdmissionPolicy>,
    pub virtual_policy_bindings: Store<ValidatingAdmissionPolicyBinding>,
    pub virtual_network_policies: Store<NetworkPolicy>,
    /// This tenant's host NetworkPolicies: copies of virtual ones and the default allowances.
    pub host_network_policies: Store<NetworkPolicy>,
    /// Virtual namespaces (their labels decide what a namespaceSelector peer selects).
    pub virtual_namespaces: Store<Namespace>,
    pub virtual_budgets: Store<PodDisruptionBudget>,
    pub host_budgets: Store<PodDisruptionBudget>,
}

/// Shared by every controller.
pub struct Context {
    pub virt: kube::Client,
    /// The virtual API as vkube's own identity ([`storage::MIRROR_WRITER`]): the only one the
    /// admission policy lets change the read-only mirrors.
    pub mirror_writer: kube::Client,
    pub host: kube::Client,
    pub config: SyncerConfig,
    pub stores: Stores,
    pub recorder: Recorder,
    ready: watch::Receiver<bool>,
    /// Wakes the garbage collector early (a deletion was seen).
    pub gc_trigger: Arc<Notify>,
    /// Virtual Services (namespace, name) being re-created with the host's cluster IP: briefly
    /// absent from the virtual API, but their host copies are not orphans.
    pub recreating: Arc<recreations::Recreations>,
    /// Virtual pods the syncer has not tried to create on the host yet.
    pub backlog: Arc<backlog::Backlog>,
    pub bindings: Arc<pods::PendingBindings>,
    /// The custom kinds synced by configuration, once set up.
    pub custom: custom::Registry,
    /// Host pod changes not yet reported up (for the status-up latency).
    pub status_seen: Arc<crate::metrics::FirstSeen>,
}

impl Context {
    /// Whether the virtual Service `namespace/name` is being re-created right now.
    pub fn is_recreating(&self, namespace: &str, name: &str) -> bool {
        self.recreating.contains(namespace, name)
    }

    pub fn tenant(&self) -> &Tenant {
        &self.config.tenant
    }

    pub fn host_api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.host.clone(), &self.config.tenant.host_namespace)
    }

    /// Reconcilers start only once every store holds a complete list: acting on a partial host
    /// view would re-create (or worse, report as deleted) objects that exist.
    pub async fn wait_ready(&self) -> Result<(), SyncError> {
        let mut ready = self.ready.clone();
        ready
            .wait_for(|r| *r)
            .await
            .map(|_| ())
            .map_err(|_| SyncError::NotReady)
    }

    /// Reports that the host name for `obj` is taken by an object this tenant does not own, and
    /// says when to look again. The foreign object is never touched.
    pub async fn conflict<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        host_name: &str,
    ) -> Action {
        self.event(
            obj,
            EventType::Warning,
            "HostNameConflict",
            format!(
                "{} {host_name} already exists in host namespace {} and is not managed by this virtual cluster; not touching it",
                K::kind(&()).to_lowercase(),
                self.config.tenant.host_namespace
            ),
        )
        .await;
        Action::requeue(Duration::from_secs(60))
    }

    /// Reports that the host refused to store the copy of `obj` (invalid there, too large), and
    /// says when to look again: the object changing triggers a reconcile anyway.
    pub async fn host_rejected<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        host_name: &str,
        message: &str,
    ) -> Action {
        let virtual_name = format!(
            "{}/{}",
            obj.meta().namespace.as_deref().unwrap_or_default(),
            obj.meta().name.as_deref().unwrap_or_default()
        );
        self.event(
            obj,
            EventType::Warning,
            "HostRejected",
            format!(
                "the host refused the copy of {} {virtual_name}: {}",
                K::kind(&()).to_lowercase(),
                message.replace(host_name, &virtual_name)
            ),
        )
        .await;
        Action::requeue(Duration::from_secs(60))
    }

    /// A Kubernetes Event on a virtual object (deduplicated into a series by the recorder).
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        self.event_on(&obj.object_ref(&()), type_, reason, note)
            .await
    }

    /// [`Context::event`] for an object known by reference (dynamic kinds).
    pub async fn event_on(
        &self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(fit_note(note)),
            action: "Sync".into(),
            secondary: None,
        };
        match self.recorder.publish(&ev, reference).await {
            Ok(()) => {}
            // The object's namespace is going away: nobody will read the event.
            Err(e) if namespace_gone(&e) => {
                tracing::debug!(error = %e, object = ?reference.name, "event not recorded")
            }
            Err(e) => {
                tracing::warn!(error = %e, object = ?reference.name, "could not record event")
            }
        }
    }
}

/// The API server refused a write because the namespace is being deleted, or is gone.
fn namespace_gone(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => {
            (s.code == 403 && s.message.contains("because it is being terminated"))
                || (s.code == 404 && s.message.contains("namespaces"))
        }
        _ => false,
    }
}

/// The API server refuses an Event whose note passes 1 KiB, and the tenant would hear nothing:
/// a long note (many refused fields, a long host message) is cut instead.
const NOTE_MAX: usize = 1024;

fn fit_note(mut note: String) -> String {
    if note.len() > NOTE_MAX {
        let mut end = NOTE_MAX - "...".len();
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str("...");
    }
    note
}

/// Removes fields the syncer never reads before an object is cached: a large share of an
/// object's bytes (managedFields alone are often half).
pub(crate) fn trim<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

pub(crate) type Driver = BoxFuture<'static, ()>;

/// What a watched, cached and reconciled Kubernetes kind must be.
pub trait Watched:
    Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// Called with every event a watch delivers, after the store has applied it. Hooks turn events
/// into triggers; they are plain channel sends, so a slow controller never stalls a watch.
pub(crate) type Hook<K> = Box<dyn Fn(&watcher::Event<K>) + Send + Sync>;

/// Objects a watch reported as new or changed (including the initial list).
fn applied<K>(ev: &watcher::Event<K>) -> Option<&K> {
    match ev {
        watcher::Event::Apply(o) | watcher::Event::InitApply(o) => Some(o),
        _ => None,
    }
}

/// Feeds a controller's main trigger with every applied virtual object; deletions wake the
/// garbage collector.
fn main_trigger<K>(tx: UnboundedSender<Result<K, watcher::Error>>, gc: Arc<Notify>) -> Hook<K>
where
    K: Clone + Send + Sync + 'static,
{
    Box::new(move |ev| match ev {
        watcher::Event::Delete(_) => gc.notify_one(),
        _ => {
            if let Some(o) = applied(ev) {
                let _ = tx.unbounded_send(Ok(o.clone()));
            }
        }
    })
}

/// Any change to a host object re-triggers its virtual owner (found by its origin labels): a
/// changed status flows up, a deleted copy is re-created, a terminating virtual pod finishes.
fn owner_trigger<K, V>(tx: UnboundedSender<ObjectRef<V>>, gc: Arc<Notify>) -> Hook<K>
where
    K: Resource,
    V: Resource<DynamicType = ()> + 'static,
{
    Box::new(move |ev| {
        let obj = match ev {
            watcher::Event::Delete(o) => {
                gc.notify_one();
                o
            }
            watcher::Event::Apply(o) | watcher::Event::InitApply(o) => o,
            _ => return,
        };
        if let Some(o) = crate::translate::origin(obj.meta()) {
            let _ = tx.unbounded_send(ObjectRef::new(&o.name).within(&o.namespace));
        }
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    Applied,
    Deleted,
}

/// Like [`owner_trigger`], for one kind of change only.
fn owner_trigger_on<K, V>(tx: UnboundedSender<ObjectRef<V>>, gc: Arc<Notify>, on: Change) -> Hook<K>
where
    K: Resource + 'static,
    V: Resource<DynamicType = ()> + 'static,
{
    let all = owner_trigger(tx, gc);
    Box::new(move |ev| {
        let change = match ev {
            watcher::Event::Delete(_) => Change::Deleted,
            watcher::Event::Apply(_) | watcher::Event::InitApply(_) => Change::Applied,
            _ => return,
        };
        if change == on {
            all(ev);
        }
    })
}

/// A reflector store, the future that drives its watch, and a readiness flag set once the
/// first complete list is in the store.
pub(crate) fn watched_store<K>(
    api: Api<K>,
    wc: watcher::Config,
    hooks: Vec<Hook<K>>,
) -> (Store<K>, watch::Receiver<bool>, Driver)
where
    K: Watched,
{
    watched_store_with(api, wc, hooks, trim::<K>)
}

/// [`watched_store`] with a custom trim applied to each object before it is cached.
fn watched_store_with<K, T>(
    api: Api<K>,
    wc: watcher::Config,
    hooks: Vec<Hook<K>>,
    trim: T,
) -> (Store<K>, watch::Receiver<bool>, Driver)
where
    K: Watched,
    T: FnMut(&mut K) + Send + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let (ready_tx, ready_rx) = watch::channel(false);
    let drive = Box::pin(async move {
        watcher(api, wc)
            .default_backoff()
            .modify(trim)
            .reflect(writer)
            .for_each(|ev| {
                match &ev {
                    Ok(ev) => {
                        if matches!(ev, watcher::Event::InitDone) {
                            let _ = ready_tx.send(true);
                        }
                        for hook in &hooks {
                            hook(ev);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "watch error; retrying with backoff"),
                }
                futures::future::ready(())
            })
            .await
    });
    (store, ready_rx, drive)
}

/// Wakes `notify` on every change a watch delivers (for loops that recompute a whole set).
fn notify_on_change<K>(notify: Arc<Notify>) -> Hook<K> {
    Box::new(move |ev| {
        if matches!(
            ev,
            watcher::Event::Apply(_) | watcher::Event::InitApply(_) | watcher::Event::Delete(_)
        ) {
            notify.notify_one();
        }
    })
}

/// Why the host credentials cannot list and watch `K` cluster-wide, if they cannot: a real list
/// of one object (it also finds an unreachable API), and an access review for watch (a watch
/// that is refused would keep the caches from ever becoming ready).
async fn cluster_read_denied<K>(host: &kube::Client) -> Option<String>
where
    K: Resource<Scope = k8s_openapi::ClusterResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    if let Err(e) = Api::<K>::all(host.clone())
        .list_metadata(&ListParams::default().limit(1))
        .await
    {
        return Some(e.to_string());
    }
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some("watch".into()),
                group: Some(K::group(&()).into_owned()),
                resource: Some(K::plural(&()).into_owned()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    match Api::<SelfSubjectAccessReview>::all(host.clone())
        .create(&Default::default(), &review)
        .await
    {
        Ok(r) if r.status.as_ref().is_some_and(|s| s.allowed) => None,
        Ok(_) => Some(format!("{} may be listed but not watched", K::plural(&()))),
        Err(e) => Some(e.to_string()),
    }
}

/// The node and storage modes this run can honour: both need the opt-in cluster-read grant;
/// without it the syncer says so once and carries on with pseudo-nodes and without storage
/// mirrors (claims keep working), rather than failing or retrying forbidden watches forever.
async fn effective_modes(host: &kube::Client, config: &mut SyncerConfig) {
    if config.node_sync == NodeSync::Real
        && let Some(e) = cluster_read_denied::<Node>(host).await
    {
        tracing::warn!(
            error = %e,
            "--node-sync real: cannot read host nodes; showing pseudo-nodes instead. To mirror host nodes, bind the ClusterRole in {CLUSTER_READ_MANIFEST} to this identity and restart"
        );
        config.node_sync = NodeSync::Pseudo;
    }
    if config.storage_sync == StorageSync::Used {
        let denied = match cluster_read_denied::<StorageClass>(host).await {
            Some(e) => Some(e),
            None => cluster_read_denied::<PersistentVolume>(host).await,
        };
        if let Some(e) = denied {
            tracing::warn!(
                error = %e,
                "--storage-sync used: cannot read host storage classes and volumes; they are not shown in the virtual cluster (claims still work). To show them, bind the ClusterRole in {CLUSTER_READ_MANIFEST} to this identity and restart"
            );
            config.storage_sync = StorageSync::Off;
        }
    }
    tracing::info!(node_sync = ?config.node_sync, storage_sync = ?config.storage_sync, "cluster-scoped views");
}

/// Main trigger of a controller, as the stream `Controller::for_stream` takes.
pub type Trigger<K> = UnboundedReceiver<Result<K, watcher::Error>>;

/// Runs every controller until `shutdown` resolves.
pub async fn run(
    virt: kube::Client,
    mirror_writer: kube::Client,
    host: kube::Client,
    mut config: SyncerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), SyncError> {
    effective_modes(&host, &mut config).await;
    let real_nodes = config.node_sync == NodeSync::Real;
    let storage_on = config.storage_sync == StorageSync::Used;
    let storage_trigger = Arc::new(Notify::new());
    let host_ns = config.tenant.host_namespace.clone();
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY}={}", config.tenant.name));
    let all = watcher::Config::default().any_semantic();
    let gc = Arc::new(Notify::new());

    let (pod_main, pod_main_rx) = unbounded::<Result<VirtualPod, watcher::Error>>();
    let (pod_requeue, pod_requeue_rx) = unbounded::<ObjectRef<VirtualPod>>();
    let (pod_status, pod_status_rx) = unbounded::<ObjectRef<VirtualPod>>();
    let (cm_main, cm_main_rx) = unbounded::<Result<ConfigMap, watcher::Error>>();
    let (cm_requeue, cm_requeue_rx) = unbounded::<ObjectRef<ConfigMap>>();
    let (secret_main, secret_main_rx) = unbounded::<Result<Secret, watcher::Error>>();
    let (secret_requeue, secret_requeue_rx) = unbounded::<ObjectRef<Secret>>();
    let (svc_main, svc_main_rx) = unbounded::<Result<Service, watcher::Error>>();
    let (svc_requeue, svc_requeue_rx) = unbounded::<ObjectRef<Service>>();
    let (pvc_main, pvc_main_rx) = unbounded::<Result<PersistentVolumeClaim, watcher::Error>>();
    let (pvc_requeue, pvc_requeue_rx) = unbounded::<ObjectRef<PersistentVolumeClaim>>();
    let (ep_main, ep_main_rx) = unbounded::<Result<Endpoints, watcher::Error>>();
    let (ep_requeue, ep_requeue_rx) = unbounded::<ObjectRef<Endpoints>>();
    let (ing_main, ing_main_rx) = unbounded::<Result<Ingress, watcher::Error>>();
    let (ing_requeue, ing_requeue_rx) = unbounded::<ObjectRef<Ingress>>();
    let (slice_main, slice_main_rx) = unbounded::<Result<EndpointSlice, watcher::Error>>();
    let (slice_requeue, slice_requeue_rx) = unbounded::<ObjectRef<EndpointSlice>>();
    let (np_main, np_main_rx) = unbounded::<Result<NetworkPolicy, watcher::Error>>();
    let (np_requeue, np_requeue_rx) = unbounded::<ObjectRef<NetworkPolicy>>();
    let allowances_trigger = Arc::new(Notify::new());
    let (pdb_main, pdb_main_rx) = unbounded::<Result<PodDisruptionBudget, watcher::Error>>();
    let (pdb_requeue, pdb_requeue_rx) = unbounded::<ObjectRef<PodDisruptionBudget>>();
    let custom_kinds = config.synced_custom_kinds();
    let host_kinds = config.mirrored_host_kinds();
    let reference_requeues = custom::ReferenceRequeues {
        secrets: secret_requeue.clone(),
        config_maps: cm_requeue.clone(),
    };

    // A pod's references re-trigger the configmaps and secrets it uses.
    // New virtual pods join the backlog the moment the watch reports them; bound ones leave
    // the pending bindings.
    let pod_backlog = config.pod_backlog.clone();
    let service_recreations = config.service_recreations.clone();
    let bindings = Arc::new(pods::PendingBindings::default());
    let waiting_pods: Hook<VirtualPod> = {
        let backlog = pod_backlog.clone();
        let bindings = bindings.clone();
        Box::new(move |ev| {
            let uid = |p: &VirtualPod| p.metadata.uid.clone().unwrap_or_default();
            let ns_name = |p: &VirtualPod| {
                (
                    p.metadata.namespace.clone().unwrap_or_default(),
                    p.metadata.name.clone().unwrap_or_default(),
                )
            };
            match ev {
                watcher::Event::Delete(p) => {
                    let (ns, name) = ns_name(p);
                    backlog.remove(&ns, &name);
                    bindings.forget(&uid(p));
                }
                watcher::Event::Apply(p) | watcher::Event::InitApply(p)
                    if p.node_name().is_some() =>
                {
                    bindings.forget(&uid(p));
                }
                watcher::Event::Apply(p) | watcher::Event::InitApply(p)
                    if pods::awaits_host_pod(p) =>
                {
                    let (ns, name) = ns_name(p);
                    backlog.add(&ns, &name);
                }
                _ => {}
            }
        })
    };
    let references: Hook<VirtualPod> = {
        let (cm_requeue, secret_requeue) = (cm_requeue.clone(), secret_requeue.clone());
        Box::new(move |ev| {
            if let Some(p) = applied(ev) {
                let ns = p.metadata.namespace.clone().unwrap_or_default();
                let refs = p.references();
                for n in &refs.config_maps {
                    let _ = cm_requeue.unbounded_send(ObjectRef::new(n).within(&ns));
                }
                for n in &refs.secrets {
                    let _ = secret_requeue.unbounded_send(ObjectRef::new(n).within(&ns));
                }
            }
        })
    };

    let (virtual_pods, r1, d1) = watched_store(
        Api::<VirtualPod>::all(virt.clone()),
        all.clone(),
        vec![waiting_pods, main_trigger(pod_main, gc.clone()), references],
    );
    // Status-up latency starts when the host watch reports a change of the host pod.
    let status_seen = Arc::new(crate::metrics::FirstSeen::default());
    let status_clock: Hook<host_pod::HostPod> = {
        let seen = status_seen.clone();
        Box::new(move |ev| match ev {
            // Bounded by the live host pods: a deleted one is forgotten.
            watcher::Event::Delete(h) => {
                if let Some(o) = crate::translate::origin(h.meta()) {
                    seen.take(&format!("{}/{}", o.namespace, o.name));
                }
            }
            _ => {
                if let Some(o) = applied(ev).and_then(|h| crate::translate::origin(h.meta())) {
                    seen.seen(format!("{}/{}", o.namespace, o.name));
                }
            }
        })
    };
    let (host_pods, r2, d2) = watched_store(
        Api::<host_pod::HostPod>::namespaced(host.clone(), &host_ns),
        owned.clone(),
        vec![
            owner_trigger_on(pod_requeue, gc.clone(), Change::Deleted),
            status_clock,
            owner_trigger_on(pod_status, gc.clone(), Change::Applied),
        ],
    );
    // An Ingress re-triggers the Secrets it uses (TLS, controller annotations).
    let tls_references: Hook<Ingress> = {
        let secret_requeue = secret_requeue.clone();
        Box::new(move |ev| {
            if let Some(i) = applied(ev) {
                let ns = i.metadata.namespace.clone().unwrap_or_default();
                for n in crate::translate::ingress::referenced_secrets(i) {
                    let _ = secret_requeue.unbounded_send(ObjectRef::new(&n).within(&ns));
                }
            }
        })
    };
    // Only hand-written endpoints are synced: the watches leave out those the virtual
    // controllers derive (the bulk, one per Service, listing every pod), so they cost no memory.
    let (virtual_slices, r16, d16) = watched_store(
        Api::<EndpointSlice>::all(virt.clone()),
        all.clone()
            .labels(crate::translate::endpointslice::NOT_DERIVED),
        vec![main_trigger(slice_main, gc.clone())],
    );
    // On the host too: slices the host derives carry the tenant's labels (copied from the
    // Service or Endpoints) but are the host's; only those vkube wrote are cached.
    let (host_slices, r17, d17) = watched_store(
        Api::<EndpointSlice>::namespaced(host.clone(), &host_ns),
        watcher::Config::default().labels(&format!(
            "{MANAGED_BY}={},{}={}",
            config.tenant.name,
            crate::translate::endpointslice::MANAGED_BY,
            crate::translate::endpointslice::MANAGED_BY_VKUBE
        )),
        vec![owner_trigger(slice_requeue.clone(), gc.clone())],
    );
    // A Service gaining or losing its selector decides whether its hand-written Endpoints and
    // EndpointSlices are synced.
    let service_endpoints: Hook<Service> = {
        let ep_requeue = ep_requeue.clone();
        let slices = virtual_slices.clone();
        Box::new(move |ev| {
            // Only selector-less Services have synced endpoints; one that gained a selector
            // leaves its host copies to the garbage collector.
            if let Some(s) = applied(ev).filter(|s| crate::translate::endpoints::synced_for(s)) {
                let (ns, name) = (s.namespace().unwrap_or_default(), s.name_any());
                let _ = ep_requeue.unbounded_send(ObjectRef::new(&name).within(&ns));
                for slice in slices.state() {
                    if slice.metadata.namespace.as_deref() == Some(ns.as_str())
                        && crate::translate::endpointslice::handwritten_for(&slice)
                            == Some(name.as_str())
                    {
                        let _ = slice_requeue
                            .unbounded_send(ObjectRef::new(&slice.name_any()).within(&ns));
                    }
                }
            }
        })
    };

    let (virtual_config_maps, r3, d3) = watched_store(
        Api::<ConfigMap>::all(virt.clone()),
        all.clone(),
        vec![main_trigger(cm_main, gc.clone())],
    );
    let (host_config_maps, r4, d4) = watched_store(
        Api::<ConfigMap>::namespaced(host.clone(), &host_ns),
        owned.clone(),
        vec![owner_trigger(cm_requeue, gc.clone())],
    );
    let (virtual_secrets, r5, d5) = watched_store(
        Api::<Secret>::all(virt.clone()),
        all.clone(),
        vec![main_trigger(secret_main, gc.clone())],
    );
    let (host_secrets, r6, d6) = watched_store(
        Api::<Secret>::namespaced(host.clone(), &host_ns),
        owned.clone(),
        vec![owner_trigger(secret_requeue, gc.clone())],
    );
    let (virtual_services, r7, d7) = watched_store(
        Api::<Service>::all(virt.clone()),
        all.clone(),
        vec![main_trigger(svc_main, gc.clone()), service_endpoints],
    );
    let (host_services, r8, d8) = watched_store(
        Api::<Service>::namespaced(host.clone(), &host_ns),
        owned.clone(),
        vec![owner_trigger(svc_requeue, gc.clone())],
    );
    // A virtual node created (as a pseudo-node before the host node was cached, say) or edited
    // re-triggers the mirror of its host node; at start this catches up every mirror.
    let (node_requeue, node_requeue_rx) = unbounded::<ObjectRef<Node>>();
    let mirror_again: Hook<Node> = Box::new(move |ev| {
        if let Some(n) = applied(ev) {
            let _ = node_requeue.unbounded_send(ObjectRef::new(&n.name_any()));
        }
    });
    let (virtual_nodes, r9, d9) = watched_store(
        Api::<Node>::all(virt.clone()),
        all.clone(),
        vec![mirror_again],
    );
    let (virtual_claims, r10, d10) = watched_store(
        Api::<PersistentVolumeClaim>::all(virt.clone()),
        all.clone(),
        vec![
            main_trigger(pvc_main, gc.clone()),
            notify_on_change(storage_trigger.clone()),
        ],
    );
    let (host_claims, r11, d11) = watched_store(
        Api::<PersistentVolumeClaim>::namespaced(host.clone(), &host_ns),
        owned.clone(),
        vec![
            owner_trigger(pvc_requeue, gc.clone()),
            notify_on_change(storage_trigger.clone()),
        ],
    );

    // Cluster-scoped views of the host, each driven only when its mode is on (an undriven
    // store stays empty and costs nothing).
    let (node_main, node_main_rx) = unbounded::<Result<Node, watcher::Error>>();
    let (host_nodes, r18, d18) = watched_store_with(
        Api::<Node>::all(host.clone()),
        all.clone(),
        vec![main_trigger(node_main, gc.clone())],
        crate::translate::node::trim_host_node,
    );
    let (host_classes, r19, d19) = watched_store(
        Api::<StorageClass>::all(host.clone()),
        all.clone(),
        vec![notify_on_change(storage_trigger.clone())],
    );
    let volume_ns = host_ns.clone();
    let ours_changed = storage_trigger.clone();
    let (host_volumes, r20, d20) = watched_store_with(
        Api::<PersistentVolume>::all(host.clone()),
        all.clone(),
        vec![Box::new(move |ev: &watcher::Event<PersistentVolume>| {
            // Trimmed already: only volumes claimed from our namespace keep a spec.
            let ours = match ev {
                watcher::Event::Apply(v)
                | watcher::Event::InitApply(v)
                | watcher::Event::Delete(v) => v.spec.is_some(),
                _ => false,
            };
            if ours {
                ours_changed.notify_one();
            }
        })],
        move |v: &mut PersistentVolume| {
            crate::translate::pv::trim_host_volume(v, &volume_ns);
        },
    );
    let (virtual_classes, r21, d21) = watched_store(
        Api::<StorageClass>::all(virt.clone()),
        all.clone(),
        vec![notify_on_change(storage_trigger.clone())],
    );
    let (virtual_volumes, r22, d22) = watched_store(
        Api::<PersistentVolume>::all(virt.clone()),
        all.clone(),
        vec![notify_on_change(storage_trigger.clone())],
    );
    let vkube_made = watcher::Config::default().labels(storage::POLICY_SELECTOR);
    let (virtual_policies, r23, d23) = watched_store(
        Api::<ValidatingAdmissionPolicy>::all(virt.clone()),
        vkube_made.clone(),
        vec![notify_on_change(storage_trigger.clone())],
    );
    let (virtual_policy_bindings, r24, d24) = watched_store(
        Api::<ValidatingAdmissionPolicyBinding>::all(virt.clone()),
        vkube_made,
        vec![notify_on_change(storage_trigger.clone())],
    );

    let (virtual_endpoints, r12, d12) = watched_store(
        Api::<Endpoints>::all(virt.clone()),
        all.clone().labels(crate::translate::endpoints::NOT_DERIVED),
        vec![main_trigger(ep_main, gc.clone())],
    );
    let (host_endpoints, r13, d13) = watched_store(
        Api::<Endpoints>::namespaced(host.clone(), &host_ns),
        watcher::Config::default().labels(&format!(
            "{MANAGED_BY}={},{}",
            config.tenant.name,
            crate::translate::endpoints::NOT_DERIVED
        )),
        vec![owner_trigger(ep_requeue, gc.clone())],
    );
    let (virtual_ingresses, r14, d14) = watched_store(
        Api::<Ingress>::all(virt.clone()),
        all.clone(),
        vec![main_trigger(ing_main, gc.clone()), tls_references],
    );
    let (host_ingresses, r15, d15) = watched_store(
        Api::<Ingress>::namespaced(host.clone(), &host_ns),
        owned.clone(),
        vec![owner_trigger(ing_requeue, gc.clone())],
    );

    let (virtual_network_policies, r25, d25) = watched_store(
        Api::<NetworkPolicy>::all(virt.clone()),
        all.clone(),
        vec![
            main_trigger(np_main, gc.clone()),
            notify_on_change(allowances_trigger.clone()),
        ],
    );
    let (host_network_policies, r26, d26) = watched_store(
        Api::<NetworkPolicy>::namespaced(host.clone(), &host_ns),
        owned.clone(),
        vec![
            owner_trigger(np_requeue.clone(), gc.clone()),
            // A default allowance changed or deleted on the host is put back.
            notify_on_change(allowances_trigger.clone()),
        ],
    );
    // A namespace's labels decide what namespaceSelector peers select: policies using them are
    // translated again.
    let labels_changed: Hook<Namespace> = {
        let policies = virtual_network_policies.clone();
        Box::new(move |ev| {
            if !matches!(ev, watcher::Event::Apply(_) | watcher::Event::Delete(_)) {
                return;
            }
            for p in policies.state() {
                if crate::translate::networkpolicy::uses_namespace_labels(&p) {
                    let _ = np_requeue.unbounded_send(
                        ObjectRef::new(&p.name_any()).within(&p.namespace().unwrap_or_default()),
                    );
                }
            }
        })
    };
    let (virtual_namespaces, r27, d27) = watched_store(
        Api::<Namespace>::all(virt.clone()),
        all.clone(),
        vec![labels_changed],
    );

    let (virtual_budgets, r28, d28) = watched_store(
        Api::<PodDisruptionBudget>::all(virt.clone()),
        all.clone(),
        vec![main_trigger(pdb_main, gc.clone())],
    );
    let (host_budgets, r29, d29) = watched_store(
        Api::<PodDisruptionBudget>::namespaced(host.clone(), &host_ns),
        owned.clone(),
        vec![owner_trigger(pdb_requeue, gc.clone())],
    );

    let stores = Stores {
        virtual_pods,
        host_pods,
        virtual_config_maps,
        host_config_maps,
        virtual_secrets,
        host_secrets,
        virtual_services,
        host_services,
        virtual_nodes,
        virtual_claims,
        host_claims,
        virtual_endpoints,
        host_endpoints,
        virtual_ingresses,
        host_ingresses,
        virtual_slices,
        host_slices,
        host_nodes,
        host_classes,
        host_volumes,
        virtual_classes,
        virtual_volumes,
        virtual_policies,
        virtual_policy_bindings,
        virtual_network_policies,
        host_network_policies,
        virtual_namespaces,
        virtual_budgets,
        host_budgets,
    };
    let (ready_tx, ready) = watch::channel(false);
    let recorder = Recorder::new(
        virt.clone(),
        Reporter {
            controller: "vkube-syncer".into(),
            instance: Some(config.tenant.name.clone()),
        },
    );
    let ctx = Arc::new(Context {
        virt,
        mirror_writer,
        host,
        config,
        stores: stores.clone(),
        recorder,
        ready,
        gc_trigger: gc.clone(),
        recreating: service_recreations,
        backlog: pod_backlog,
        bindings,
        custom: custom::Registry::new(custom_kinds.len()),
        status_seen,
    });

    let mut tasks = tokio::task::JoinSet::new();
    let mut drivers = vec![
        d1, d2, d3, d4, d5, d6, d7, d8, d9, d10, d11, d12, d13, d14, d15, d16, d17, d25, d26, d27,
        d28, d29,
    ];
    let mut readies = vec![
        r1, r2, r3, r4, r5, r6, r7, r8, r9, r10, r11, r12, r13, r14, r15, r16, r17, r25, r26, r27,
        r28, r29,
    ];
    if real_nodes {
        drivers.push(d18);
        readies.push(r18);
        tasks.spawn(nodes::controller(
            ctx.clone(),
            node_main_rx,
            node_requeue_rx,
        ));
    } else {
        tasks.spawn(nodes::hide_mirrors(ctx.clone()));
    }
    if storage_on {
        drivers.extend([d19, d20, d21, d22]);
        readies.extend([r19, r20, r21, r22]);
        tasks.spawn(storage::run(ctx.clone(), storage_trigger.clone()));
    } else {
        tasks.spawn(storage::remove_all(ctx.clone()));
    }
    // The read-only policy guards every kind of mirror.
    if storage_on || !host_kinds.is_empty() {
        drivers.extend([d23, d24]);
        readies.extend([r23, r24]);
    }
    for kind in custom_kinds {
        tasks.spawn(custom::run_kind(
            ctx.clone(),
            kind,
            reference_requeues.clone(),
        ));
    }
    for kind in host_kinds {
        tasks.spawn(custom::run_mirror(ctx.clone(), kind));
    }
    tasks.spawn(pdbs::controller(ctx.clone(), pdb_main_rx, pdb_requeue_rx));
    for d in drivers {
        tasks.spawn(d);
    }
    tasks.spawn(pods::controller(ctx.clone(), pod_main_rx, pod_requeue_rx));
    tasks.spawn(pods::status_controller(ctx.clone(), pod_status_rx));
    tasks.spawn(pvcs::controller(ctx.clone(), pvc_main_rx, pvc_requeue_rx));
    tasks.spawn(referenced::controller::<ConfigMap>(
        ctx.clone(),
        cm_main_rx,
        cm_requeue_rx,
    ));
    tasks.spawn(referenced::controller::<Secret>(
        ctx.clone(),
        secret_main_rx,
        secret_requeue_rx,
    ));
    tasks.spawn(services::controller(
        ctx.clone(),
        svc_main_rx,
        svc_requeue_rx,
    ));
    tasks.spawn(endpoints::controller(
        ctx.clone(),
        ep_main_rx,
        ep_requeue_rx,
    ));
    tasks.spawn(endpointslices::controller(
        ctx.clone(),
        slice_main_rx,
        slice_requeue_rx,
    ));
    tasks.spawn(ingresses::controller(
        ctx.clone(),
        ing_main_rx,
        ing_requeue_rx,
    ));
    tasks.spawn(networkpolicies::controller(
        ctx.clone(),
        np_main_rx,
        np_requeue_rx,
    ));
    tasks.spawn(networkpolicies::keep_allowances(
        ctx.clone(),
        allowances_trigger,
    ));

    let readiness = {
        let stores = stores.clone();
        let shared = ctx.config.shared_stores.clone();
        async move {
            let started = std::time::Instant::now();
            for mut r in readies {
                if r.wait_for(|ready| *ready).await.is_err() {
                    return;
                }
            }
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                virtual_pods = stores.virtual_pods.len(),
                host_pods = stores.host_pods.len(),
                "syncer caches ready"
            );
            let _ = ready_tx.send(true);
            crate::metrics::get().syncer.caches_synced.set(1);
            shared.publish(stores);
            // Keep the sender alive: dropping it would fail every later wait.
            std::future::pending::<()>().await;
        }
    };
    tasks.spawn(readiness);
    tasks.spawn(gc::run(ctx.clone()));
    tasks.spawn(events::forwarder(ctx.clone()));

    shutdown.await;
    tasks.shutdown().await;
    Ok(())
}

/// Virtual objects to reconcile because something related changed.
pub type Requeue<K> = UnboundedReceiver<ObjectRef<K>>;

/// A kube-runtime Controller over the virtual store `reader`: triggered by `trigger` (virtual
/// changes) and `requeue` (related host changes), bounded by the configured concurrency, with
/// the shared error policy.
pub fn controller<K, T, F, Fut>(
    ctx: Arc<Context>,
    reader: Store<K>,
    trigger: T,
    requeue: Requeue<K>,
    reconcile: F,
) -> Driver
where
    K: Watched,
    T: futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    F: FnMut(Arc<K>, Arc<Context>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Action, SyncError>> + Send + 'static,
{
    let name: &'static str = match K::kind(&()) {
        std::borrow::Cow::Borrowed(k) => k,
        std::borrow::Cow::Owned(_) => "other",
    };
    controller_named(name, ctx, reader, trigger, requeue, reconcile)
}

/// [`controller`] under its own name in the metrics (two controllers of one kind).
pub fn controller_named<K, T, F, Fut>(
    name: &'static str,
    ctx: Arc<Context>,
    reader: Store<K>,
    trigger: T,
    requeue: Requeue<K>,
    mut reconcile: F,
) -> Driver
where
    K: Watched,
    T: futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    F: FnMut(Arc<K>, Arc<Context>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Action, SyncError>> + Send + 'static,
{
    let concurrency = ctx.config.concurrency;
    let queue = Arc::new(crate::metrics::Queue::new(name));
    let (q1, q2, q3) = (queue.clone(), queue.clone(), queue);
    let trigger = trigger.inspect(move |o| {
        if let Ok(o) = o {
            q1.add(&key_of(o.meta()));
        }
    });
    let requeue = requeue.inspect(move |r| {
        q2.add(&format!(
            "{}/{}",
            r.namespace.as_deref().unwrap_or(""),
            r.name
        ))
    });
    let timed = move |obj: Arc<K>, ctx: Arc<Context>| {
        q3.remove(&key_of(obj.meta()));
        let run = reconcile(obj, ctx);
        crate::metrics::timed_reconcile(name, run)
    };
    Box::pin(
        Controller::for_stream(trigger, reader)
            .reconcile_on(requeue)
            .with_config(controller::Config::default().concurrency(concurrency))
            .run(timed, error_policy::<K>, ctx)
            .for_each(|_| futures::future::ready(())),
    )
}

fn key_of(meta: &kube::api::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or("")
    )
}

/// Logs the failure and retries with a delay that depends on the error.
fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    error: &SyncError,
    _ctx: Arc<Context>,
) -> Action {
    tracing::warn!(
        kind = %K::kind(&()),
        object = %format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any()),
        %error,
        error_kind = error.kind(),
        "sync failed; retrying"
    );
    Action::requeue(retry_after(error))
}

/// Host copies (labelled as this tenant's) whose virtual object no longer exists.
pub fn orphans_of<K, V>(host: &Store<K>, virt: &Store<V>) -> Vec<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
    V: Resource<DynamicType = ()> + Clone + 'static,
{
    host.state()
        .into_iter()
        .filter(|h| match crate::translate::origin(h.meta()) {
            Some(o) => virt
                .get(&ObjectRef::new(&o.name).within(&o.namespace))
                .is_none(),
            None => true,
        })
        .collect()
}

/// How long to wait before retrying an object whose reconcile failed.
pub fn retry_after(error: &SyncError) -> Duration {
    match error {
        SyncError::Host(kube::Error::Api(s)) | SyncError::Virtual(kube::Error::Api(s))
            if s.code == 409 =>
        {
            Duration::from_millis(500)
        }
        _ => Duration::from_secs(5),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_event_notes_are_cut_to_what_the_api_server_takes() {
        assert_eq!(fit_note("short".into()), "short");
        let exact = "a".repeat(NOTE_MAX);
        assert_eq!(fit_note(exact.clone()), exact);
        // Two bytes a character: the cut lands on a character boundary.
        let cut = fit_note("é".repeat(NOTE_MAX));
        assert!(cut.len() <= NOTE_MAX, "{}", cut.len());
        assert!(cut.ends_with("...") && cut.starts_with("éé"));
    }

    #[test]
    fn events_into_a_namespace_being_deleted_are_not_warned_about() {
        let api = |code: u16, reason: &str, message: &str| {
            kube::Error::Api(
                kube::core::Status::failure(message, reason)
                    .with_code(code)
                    .boxed(),
            )
        };
        // What kube-apiserver's NamespaceLifecycle admission answers, word for word.
        assert!(namespace_gone(&api(
            403,
            "Forbidden",
            "events.events.k8s.io \"web.1\" is forbidden: unable to create new content in namespace shop because it is being terminated",
        )));
        assert!(namespace_gone(&api(
            404,
            "NotFound",
            "namespaces \"shop\" not found"
        )));
        // Any other refusal is worth a warning.
        assert!(!namespace_gone(&api(
            403,
            "Forbidden",
            "events.events.k8s.io is forbidden: User \"x\" cannot create resource"
        )));
        assert!(!namespace_gone(&api(
            404,
            "NotFound",
            "the server could not find the requested resource"
        )));
    }
}
