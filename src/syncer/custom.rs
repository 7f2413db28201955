//! Custom resources synced by configuration (`--sync-custom-resource`, `--sync-volume-snapshots`)
//! and host kinds shown read-only (`--show-host-kind`, the admin's priority classes, snapshot
//! classes), on kube's dynamic API: the kinds are only known at run time.
//!
//! Per synced kind: the host must serve it (discovery; a cluster-scoped kind is refused for
//! good), vkube's Role must allow it in the host namespace, and the virtual cluster gets the
//! host's CRD when it has none (read with the cluster-read grant). Until all of that holds the
//! kind is retried every minute and the tenant's objects of it get a Warning Event saying why.
//! Then, as for the typed kinds: one watch per side into a store, a kube-runtime controller
//! over the virtual store, the host copy written by [`ensure`] (hash, create, ownership-checked
//! server-side apply), `HostNameConflict` for a foreign object of that name, status copied up,
//! and copies whose virtual object is gone collected. The Secrets and ConfigMaps the objects
//! refer to are synced as pods' references are (`referenced`).

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc::{UnboundedSender, unbounded};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
    Preconditions,
};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tokio::sync::{Notify, watch};

use super::apply::{Applied, hash_of, stale_keys};
use super::{Context, SyncError};
use crate::host::FIELD_MANAGER;
use crate::translate::custom::{self as tc, CustomKind, CustomReferences, HostKind};
use crate::translate::{self, DESIRED_HASH, HOST_MIRROR, MANAGED_BY, json_contains};

/// How often a kind that cannot be synced yet (no host CRD, no right, no virtual CRD) is tried
/// again.
const RETRY: Duration = Duration::from_secs(60);

/// The synced custom kinds, shared with the rest of the syncer (the garbage collector and the
/// Secret and ConfigMap controllers must know what custom objects refer to).
#[derive(Default)]
pub struct Registry {
    kinds: RwLock<Vec<Handle>>,
    /// Kinds whose first setup has not ended yet: until then the garbage collector leaves
    /// Secrets and ConfigMaps alone (a custom object may refer to them).
    pending: AtomicUsize,
    /// (group, resource) of the host kinds mirrored read-only: the admission policy covers them.
    mirrored: Mutex<BTreeSet<(String, String)>>,
}

#[derive(Clone)]
struct Handle {
    kind: Arc<CustomKind>,
    store: Store<DynamicObject>,
}

impl Registry {
    pub fn new(kinds: usize) -> Self {
        Registry {
            pending: AtomicUsize::new(kinds),
            ..Default::default()
        }
    }

    /// Whether every configured kind has been set up (or found unavailable) once.
    pub fn settled(&self) -> bool {
        self.pending.load(Ordering::SeqCst) == 0
    }

    fn settle(&self) {
        let _ = self
            .pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    /// What every synced custom object refers to, by virtual namespace.
    pub fn references(&self) -> Vec<(String, CustomReferences)> {
        let kinds = self.kinds.read().map(|k| k.clone()).unwrap_or_default();
        kinds
            .iter()
            .flat_map(|h| {
                h.store.state().into_iter().map(move |o| {
                    (
                        o.namespace().unwrap_or_default(),
                        tc::references(&o, &h.kind),
                    )
                })
            })
            .collect()
    }

    /// The (group, resource) pairs of the mirrored host kinds.
    pub fn mirrored(&self) -> Vec<(String, String)> {
        self.mirrored
            .lock()
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Where a custom object's references re-trigger the Secret and ConfigMap controllers.
#[derive(Clone)]
pub struct ReferenceRequeues {
    pub secrets: UnboundedSender<ObjectRef<Secret>>,
    pub config_maps: UnboundedSender<ObjectRef<ConfigMap>>,
}

fn gvk(group: &str, version: &str, kind: &str) -> GroupVersionKind {
    GroupVersionKind::gvk(group, version, kind)
}

/// Why a kind is not synced (yet).
enum Unavailable {
    /// Never will be with this configuration.
    Never(String),
    /// Retried later.
    NotYet(String),
}

/// Resolves a synced kind on both sides: (host resource, virtual resource, whether the virtual
/// kind has a status subresource).
async fn resolve(
    ctx: &Context,
    kind: &CustomKind,
) -> Result<(ApiResource, ApiResource, bool), Unavailable> {
    let g = gvk(&kind.group, &kind.version, &kind.kind);
    let what = format!("{} ({})", kind.kind, kind.api_version());
    let (host_ar, host_caps) = discovery::pinned_kind(&ctx.host, &g).await.map_err(|e| {
        Unavailable::NotYet(format!(
            "the host cluster does not serve {what} ({e}): its CRD must be installed on the host first"
        ))
    })?;
    if host_caps.scope != Scope::Namespaced {
        return Err(Unavailable::Never(format!(
            "{what} is cluster-scoped on the host: cluster-scoped kinds are never synced to the host"
        )));
    }
    if let Some(why) = namespace_access_denied(ctx, &host_ar).await {
        return Err(Unavailable::NotYet(format!(
            "vkube may not manage {}.{} in {}: {why}; add the kind to the Role of manifests/serve-rbac.yaml (or the chart's policy.customResources)",
            host_ar.plural,
            host_ar.group,
            ctx.tenant().host_namespace
        )));
    }
    let virt = match discovery::pinned_kind(&ctx.virt, &g).await {
        Ok(v) => v,
        Err(_) => {
            install_virtual_crd(ctx, &host_ar)
                .await
                .map_err(Unavailable::NotYet)?;
            discovery::pinned_kind(&ctx.virt, &g)
                .await
                .map_err(|e| Unavailable::NotYet(format!("{what} in the virtual cluster: {e}")))?
        }
    };
    let (virt_ar, virt_caps) = virt;
    if virt_caps.scope != Scope::Namespaced {
        return Err(Unavailable::Never(format!(
            "{what} is cluster-scoped in the virtual cluster: only namespaced kinds are synced"
        )));
    }
    let status = virt_caps
        .subresources
        .iter()
        .any(|(r, _)| r.plural == "status");
    Ok((host_ar, virt_ar, status))
}

/// Whether vkube's host identity may create and watch `ar` in its namespace (a refused watch
/// would retry for ever; this says why once).
async fn namespace_access_denied(ctx: &Context, ar: &ApiResource) -> Option<String> {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    for verb in ["watch", "create", "patch", "delete"] {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    group: Some(ar.group.clone()),
                    resource: Some(ar.plural.clone()),
                    namespace: Some(ctx.tenant().host_namespace.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        match Api::<SelfSubjectAccessReview>::all(ctx.host.clone())
            .create(&PostParams::default(), &review)
            .await
        {
            Ok(r) if r.status.as_ref().is_some_and(|s| s.allowed) => {}
            Ok(_) => return Some(format!("no right to {verb} them")),
            Err(e) => return Some(e.to_string()),
        }
    }
    None
}

/// Installs the host's CRD of `ar` in the virtual cluster (absent there): the same schema, so
/// what the virtual API accepts the host accepts. A conversion webhook is left out (it would be
/// a host Service the virtual API server cannot and must not reach). Needs `get` on
/// customresourcedefinitions (the cluster-read ClusterRole).
async fn install_virtual_crd(ctx: &Context, ar: &ApiResource) -> Result<(), String> {
    let name = format!("{}.{}", ar.plural, ar.group);
    let host_crd = Api::<CustomResourceDefinition>::all(ctx.host.clone())
        .get(&name)
        .await
        .map_err(|e| {
            format!(
                "the virtual cluster has no CRD {name} and vkube cannot read the host's ({e}): install the CRD in the virtual cluster, or bind the ClusterRole of {}",
                super::CLUSTER_READ_MANIFEST
            )
        })?;
    let mut spec = host_crd.spec;
    if spec
        .conversion
        .as_ref()
        .is_some_and(|c| c.strategy == "Webhook")
    {
        spec.conversion = None;
    }
    // Kubernetes refuses CRDs of its own groups (`*.k8s.io`: the CSI snapshot CRDs) without
    // the approval annotation; nothing else of the host's metadata is kept.
    let approval = host_crd
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.as_str() == "api-approved.kubernetes.io")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect::<std::collections::BTreeMap<_, _>>();
    let crd = CustomResourceDefinition {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            annotations: Some(approval).filter(|a| !a.is_empty()),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_string(),
                    "vkube".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        spec,
        status: None,
    };
    match Api::<CustomResourceDefinition>::all(ctx.virt.clone())
        .create(&PostParams::default(), &crd)
        .await
    {
        Ok(_) => tracing::info!(crd = %name, "installed the host's CRD in the virtual cluster"),
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => {
            return Err(format!(
                "installing the CRD {name} in the virtual cluster: {e}"
            ));
        }
    }
    // Served once established: a few hundred milliseconds.
    for _ in 0..60 {
        if discovery::pinned_kind(&ctx.virt, &gvk(&ar.group, &ar.version, &ar.kind))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!(
        "the CRD {name} was installed but is not served yet"
    ))
}

/// Tells the tenant why its objects of `kind` are not on the host (if the virtual cluster has
/// the kind at all).
async fn report_unavailable(ctx: &Context, kind: &CustomKind, why: &str) {
    let Ok((ar, _)) =
        discovery::pinned_kind(&ctx.virt, &gvk(&kind.group, &kind.version, &kind.kind)).await
    else {
        return;
    };
    let Ok(list) = Api::<DynamicObject>::all_with(ctx.virt.clone(), &ar)
        .list(&ListParams::default())
        .await
    else {
        return;
    };
    for o in list {
        ctx.event_on(
            &o.object_ref(&ar),
            EventType::Warning,
            "NotSyncedToHost",
            format!("{why}; not synced to the host"),
        )
        .await;
    }
}

/// Everything one synced kind's controller needs.
struct KindContext {
    ctx: Arc<Context>,
    kind: Arc<CustomKind>,
    host_ar: ApiResource,
    virt_ar: ApiResource,
    virt_status: bool,
    host_store: Store<DynamicObject>,
    virt_store: Store<DynamicObject>,
    /// The controller's name in the metrics: the admin's qualified kind.
    metrics_name: &'static str,
}

/// Runs the sync of one configured kind until the syncer stops.
pub async fn run_kind(ctx: Arc<Context>, kind: CustomKind, requeues: ReferenceRequeues) {
    let kind = Arc::new(kind);
    if ctx.wait_ready().await.is_err() {
        ctx.custom.settle();
        return;
    }
    let mut settled = false;
    let (host_ar, virt_ar, virt_status) = loop {
        match resolve(&ctx, &kind).await {
            Ok(r) => break r,
            Err(Unavailable::Never(why)) => {
                tracing::error!(kind = %kind.qualified(), "{why}; not synced");
                report_unavailable(&ctx, &kind, &why).await;
                ctx.custom.settle();
                return;
            }
            Err(Unavailable::NotYet(why)) => {
                tracing::warn!(kind = %kind.qualified(), "{why}; trying again in a minute");
                if !settled {
                    ctx.custom.settle();
                    settled = true;
                }
                report_unavailable(&ctx, &kind, &why).await;
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    let tenant = ctx.tenant().clone();
    let gc = Arc::new(Notify::new());
    let (main_tx, main_rx) = unbounded::<Result<DynamicObject, watcher::Error>>();
    let (requeue_tx, requeue_rx) = unbounded::<ObjectRef<DynamicObject>>();

    let virt_writer = Writer::<DynamicObject>::new(virt_ar.clone());
    let virt_store = virt_writer.as_reader();
    let (virt_ready_tx, mut virt_ready) = watch::channel(false);
    let virt_drive = {
        let api = Api::<DynamicObject>::all_with(ctx.virt.clone(), &virt_ar);
        let kind = kind.clone();
        let gc = gc.clone();
        // The Secrets and ConfigMaps a deleted object referred to may be collectable now.
        let shared_gc = ctx.gc_trigger.clone();
        watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            .modify(super::trim::<DynamicObject>)
            .reflect(virt_writer)
            .for_each(move |ev| {
                match &ev {
                    Ok(watcher::Event::InitDone) => {
                        let _ = virt_ready_tx.send(true);
                    }
                    Ok(watcher::Event::Delete(_)) => {
                        gc.notify_one();
                        shared_gc.notify_one();
                    }
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                        let _ = main_tx.unbounded_send(Ok(o.clone()));
                        let ns = o.namespace().unwrap_or_default();
                        let refs = tc::references(o, &kind);
                        for n in refs.secrets {
                            let _ = requeues
                                .secrets
                                .unbounded_send(ObjectRef::new(&n).within(&ns));
                        }
                        for n in refs.config_maps {
                            let _ = requeues
                                .config_maps
                                .unbounded_send(ObjectRef::new(&n).within(&ns));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "watch error; retrying with backoff"),
                }
                futures::future::ready(())
            })
    };
    let host_writer = Writer::<DynamicObject>::new(host_ar.clone());
    let host_store = host_writer.as_reader();
    let (host_ready_tx, mut host_ready) = watch::channel(false);
    let host_drive = {
        let api = Api::<DynamicObject>::namespaced_with(
            ctx.host.clone(),
            &tenant.host_namespace,
            &host_ar,
        );
        let owned = watcher::Config::default().labels(&format!("{MANAGED_BY}={}", tenant.name));
        let virt_ar = virt_ar.clone();
        let gc = gc.clone();
        watcher(api, owned)
            .default_backoff()
            .modify(super::trim::<DynamicObject>)
            .reflect(host_writer)
            .for_each(move |ev| {
                let obj = match &ev {
                    Ok(watcher::Event::InitDone) => {
                        let _ = host_ready_tx.send(true);
                        None
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        gc.notify_one();
                        Some(o)
                    }
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => Some(o),
                    Ok(_) => None,
                    Err(e) => {
                        tracing::warn!(error = %e, "watch error; retrying with backoff");
                        None
                    }
                };
                // A changed status flows up, a deleted copy is re-created.
                if let Some(o) = obj.and_then(|o| translate::origin(&o.metadata)) {
                    let _ = requeue_tx.unbounded_send(
                        ObjectRef::new_with(&o.name, virt_ar.clone()).within(&o.namespace),
                    );
                }
                futures::future::ready(())
            })
    };
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(virt_drive);
    tasks.spawn(host_drive);
    if virt_ready.wait_for(|r| *r).await.is_err() || host_ready.wait_for(|r| *r).await.is_err() {
        ctx.custom.settle();
        return;
    }
    if let Ok(mut kinds) = ctx.custom.kinds.write() {
        kinds.push(Handle {
            kind: kind.clone(),
            store: virt_store.clone(),
        });
    }
    if !settled {
        ctx.custom.settle();
    }
    tracing::info!(kind = %kind.qualified(), resource = %host_ar.plural, "syncing custom resources");
    let kctx = Arc::new(KindContext {
        ctx: ctx.clone(),
        kind: kind.clone(),
        host_ar,
        virt_ar: virt_ar.clone(),
        virt_status,
        host_store,
        virt_store: virt_store.clone(),
        // The kind comes from the admin's flags, never from the tenant.
        metrics_name: crate::metrics::labels::admin_kind(&kind.qualified()),
    });
    tasks.spawn(collect(kctx.clone(), gc));
    // Measured as the typed controllers are: queue depth, reconcile duration and errors.
    let queue = Arc::new(crate::metrics::Queue::new(kctx.metrics_name));
    let (q1, q2, q3) = (queue.clone(), queue.clone(), queue);
    let main_rx = main_rx.inspect(move |o| {
        if let Ok(o) = o {
            q1.add(&super::key_of(&o.metadata));
        }
    });
    let requeue_rx = requeue_rx.inspect(move |r| {
        q2.add(&format!(
            "{}/{}",
            r.namespace.as_deref().unwrap_or(""),
            r.name
        ))
    });
    let timed = move |obj: Arc<DynamicObject>, k: Arc<KindContext>| {
        q3.remove(&super::key_of(&obj.metadata));
        let name = k.metrics_name;
        crate::metrics::timed_reconcile(name, reconcile(obj, k))
    };
    Controller::for_stream_with(main_rx, virt_store, virt_ar)
        .reconcile_on(requeue_rx)
        .with_config(controller::Config::default().concurrency(ctx.config.concurrency))
        .run(timed, error_policy, kctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

fn error_policy(obj: Arc<DynamicObject>, error: &SyncError, k: Arc<KindContext>) -> Action {
    tracing::warn!(
        kind = %k.kind.qualified(),
        object = %format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any()),
        %error,
        error_kind = error.kind(),
        "sync failed; retrying"
    );
    Action::requeue(super::retry_after(error))
}

async fn reconcile(obj: Arc<DynamicObject>, k: Arc<KindContext>) -> Result<Action, SyncError> {
    let ctx = &k.ctx;
    if obj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let tenant = ctx.tenant();
    let ns = obj.namespace().unwrap_or_default();
    let host_name = tenant.subdomain_name(&ns, &obj.name_any());
    let reference = obj.object_ref(&k.virt_ar);
    let host_api =
        Api::<DynamicObject>::namespaced_with(ctx.host.clone(), &tenant.host_namespace, &k.host_ar);
    let cached = k
        .host_store
        .get(&ObjectRef::new_with(&host_name, k.host_ar.clone()).within(&tenant.host_namespace));
    let desired = match tc::to_host(&obj, &k.kind, tenant) {
        Ok(h) => h.object,
        Err(refused) => {
            let list: Vec<String> = refused.iter().map(|v| v.to_string()).collect();
            ctx.event_on(
                &reference,
                EventType::Warning,
                "HostPolicyViolation",
                format!("not synced to the host: {}", list.join("; ")),
            )
            .await;
            // A copy made before the object (or the policy) changed must not keep acting.
            if let Some(h) = cached.filter(|h| tenant.owns(&h.metadata)) {
                delete(&host_api, &h, &k.kind.kind).await;
            }
            return Ok(Action::await_change());
        }
    };
    match ensure(&host_api, &k.host_store, &k.host_ar, tenant, desired).await {
        Ok(Applied::Conflict) => {
            ctx.event_on(
                &reference,
                EventType::Warning,
                "HostNameConflict",
                format!(
                    "{} {host_name} already exists in host namespace {} and is not managed by this virtual cluster; not touching it",
                    k.kind.kind.to_lowercase(),
                    tenant.host_namespace
                ),
            )
            .await;
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
        Ok(Applied::Created) => crate::metrics::synced(k.metrics_name, true),
        Ok(Applied::Updated) => crate::metrics::synced(k.metrics_name, false),
        Ok(Applied::Unchanged) => {}
        Err(kube::Error::Api(s)) if s.code == 422 || s.code == 413 || s.code == 400 => {
            let virtual_name = format!("{ns}/{}", obj.name_any());
            ctx.event_on(
                &reference,
                EventType::Warning,
                "HostRejected",
                format!(
                    "the host refused the copy of {} {virtual_name}: {}",
                    k.kind.kind.to_lowercase(),
                    s.message.replace(&host_name, &virtual_name)
                ),
            )
            .await;
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
        Err(e) => return Err(SyncError::Host(e)),
    }
    // What the host's operator reports flows back up.
    if let Some(h) = cached
        && let Some(status) = tc::status_to_show(&h, &obj)
    {
        let vapi = Api::<DynamicObject>::namespaced_with(ctx.virt.clone(), &ns, &k.virt_ar);
        let mut shown = obj.as_ref().clone();
        shown.types = Some(kube::api::TypeMeta {
            api_version: k.virt_ar.api_version.clone(),
            kind: k.virt_ar.kind.clone(),
        });
        shown.data["status"] = status;
        let pp = PostParams::default();
        let written = if k.virt_status {
            vapi.replace_status(&obj.name_any(), &pp, &shown).await
        } else {
            vapi.replace(&obj.name_any(), &pp, &shown).await
        };
        match written {
            Ok(_) => {}
            // Changed or gone meanwhile: its own event brings it back here.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(SyncError::Virtual(e)),
        }
    }
    Ok(Action::await_change())
}

/// [`super::apply::ensure`] for dynamic objects: nothing when the cached copy carries the
/// desired hash, a plain create for a new one, server-side apply for a change, and never a
/// write to a same-named object that is not this tenant's.
async fn ensure(
    api: &Api<DynamicObject>,
    store: &Store<DynamicObject>,
    ar: &ApiResource,
    tenant: &translate::Tenant,
    mut desired: DynamicObject,
) -> Result<Applied, kube::Error> {
    let hash = translate::desired_hash(&desired);
    desired
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(DESIRED_HASH.into(), hash.clone());
    let name = desired.name_any();
    let cached = store.get(&ObjectRef::new_with(&name, ar.clone()).within(&tenant.host_namespace));
    if let Some(existing) = cached {
        if hash_of(existing.as_ref()) == Some(hash.as_str()) {
            return Ok(Applied::Unchanged);
        }
        apply(api, &name, &desired, tenant).await?;
        return Ok(Applied::Updated);
    }
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match api.create(&pp, &desired).await {
        Ok(_) => Ok(Applied::Created),
        Err(kube::Error::Api(s)) if s.code == 409 => match api.get_opt(&name).await? {
            Some(existing) if tenant.owns(&existing.metadata) => {
                if hash_of(&existing) != Some(hash.as_str()) {
                    apply(api, &name, &desired, tenant).await?;
                }
                Ok(Applied::Updated)
            }
            Some(_) => Ok(Applied::Conflict),
            None => Err(kube::Error::Api(s)),
        },
        Err(e) => Err(e),
    }
}

async fn apply(
    api: &Api<DynamicObject>,
    name: &str,
    desired: &DynamicObject,
    tenant: &translate::Tenant,
) -> Result<(), kube::Error> {
    let mut body = serde_json::to_value(desired).map_err(kube::Error::SerdeError)?;
    if let Some(meta) = body.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.remove("resourceVersion");
        meta.remove("uid");
        meta.remove("creationTimestamp");
    }
    let applied = api
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
    // Keys the create wrote and the translation now renames are not the apply's to remove.
    let stale = stale_keys(&applied.metadata, &desired.metadata, tenant);
    if !stale.is_empty() {
        let remove = |keys: &[String]| -> serde_json::Map<String, serde_json::Value> {
            keys.iter()
                .map(|k| (k.clone(), serde_json::Value::Null))
                .collect()
        };
        let patch = serde_json::json!({"metadata": {
            "labels": remove(&stale.labels),
            "annotations": remove(&stale.annotations),
        }});
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        api.patch(name, &pp, &Patch::Merge(&patch)).await?;
    }
    Ok(())
}

async fn delete(api: &Api<DynamicObject>, obj: &DynamicObject, what: &str) {
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: obj.metadata.uid.clone(),
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

/// Host copies (labelled as this tenant's) whose virtual object is gone are deleted: at start,
/// on every deletion either side sees, and periodically.
async fn collect(k: Arc<KindContext>, trigger: Arc<Notify>) {
    let tenant = k.ctx.tenant();
    let api = Api::<DynamicObject>::namespaced_with(
        k.ctx.host.clone(),
        &tenant.host_namespace,
        &k.host_ar,
    );
    loop {
        for h in k.host_store.state() {
            if !tenant.owns(&h.metadata) {
                continue;
            }
            let gone = translate::origin(&h.metadata).is_none_or(|o| {
                k.virt_store
                    .get(&ObjectRef::new_with(&o.name, k.virt_ar.clone()).within(&o.namespace))
                    .is_none()
            });
            if gone {
                delete(&api, &h, &k.kind.kind).await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(k.ctx.config.gc_interval) => {}
            _ = trigger.notified() => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Shows the host's objects of a cluster-scoped `kind` read-only in the virtual cluster (all,
/// or those `kind.names` lists), kept in step every `gc_interval`. Needs list on the kind
/// (the cluster-read ClusterRole); without it vkube says so once and shows nothing.
pub async fn run_mirror(ctx: Arc<Context>, kind: HostKind) {
    if ctx.wait_ready().await.is_err() {
        return;
    }
    let g = gvk(&kind.group, &kind.version, &kind.kind);
    let label = format!("{} ({})", kind.kind, kind.api_version());
    let (host_ar, virt_ar) = loop {
        let found = async {
            let (host_ar, caps) = discovery::pinned_kind(&ctx.host, &g)
                .await
                .map_err(|e| Unavailable::NotYet(format!("the host does not serve it ({e})")))?;
            if caps.scope != Scope::Cluster {
                return Err(Unavailable::Never(
                    "it is namespaced: only cluster-scoped host kinds are shown".into(),
                ));
            }
            if let Err(e) = Api::<DynamicObject>::all_with(ctx.host.clone(), &host_ar)
                .list_metadata(&ListParams::default().limit(1))
                .await
            {
                return Err(Unavailable::Never(format!(
                    "cannot read it on the host ({e}); bind the ClusterRole in {} to this identity and restart",
                    super::CLUSTER_READ_MANIFEST
                )));
            }
            let virt = match discovery::pinned_kind(&ctx.virt, &g).await {
                Ok(v) => v,
                Err(_) => {
                    install_virtual_crd(&ctx, &host_ar)
                        .await
                        .map_err(Unavailable::NotYet)?;
                    discovery::pinned_kind(&ctx.virt, &g)
                        .await
                        .map_err(|e| Unavailable::NotYet(e.to_string()))?
                }
            };
            Ok((host_ar, virt.0))
        }
        .await;
        match found {
            Ok(r) => break r,
            Err(Unavailable::Never(why)) => {
                tracing::warn!(kind = %label, "host objects not shown in the virtual cluster: {why}");
                return;
            }
            Err(Unavailable::NotYet(why)) => {
                tracing::warn!(kind = %label, "host objects not shown yet: {why}; trying again in a minute");
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    if let Ok(mut m) = ctx.custom.mirrored.lock() {
        m.insert((virt_ar.group.clone(), virt_ar.plural.clone()));
    }
    loop {
        if let Err(e) = mirror_pass(&ctx, &kind, &host_ar, &virt_ar).await {
            tracing::warn!(kind = %label, error = %e, "host mirrors: sync failed; retrying");
        }
        tokio::time::sleep(ctx.config.gc_interval.min(Duration::from_secs(15))).await;
    }
}

async fn mirror_pass(
    ctx: &Context,
    kind: &HostKind,
    host_ar: &ApiResource,
    virt_ar: &ApiResource,
) -> Result<(), SyncError> {
    super::storage::ensure_policy(ctx).await?;
    let host = Api::<DynamicObject>::all_with(ctx.host.clone(), host_ar)
        .list(&ListParams::default())
        .await
        .map_err(SyncError::Host)?;
    let wanted: Vec<DynamicObject> = host
        .into_iter()
        .filter(|h| {
            kind.names
                .as_ref()
                .is_none_or(|n| n.contains(&h.name_any()))
        })
        .map(|h| {
            let mut m = tc::mirror(&h);
            m.types = Some(kube::api::TypeMeta {
                api_version: virt_ar.api_version.clone(),
                kind: virt_ar.kind.clone(),
            });
            m
        })
        .collect();
    let api = Api::<DynamicObject>::all_with(ctx.mirror_writer.clone(), virt_ar);
    let have = api
        .list(&ListParams::default())
        .await
        .map_err(SyncError::Virtual)?;
    let is_mirror = |o: &DynamicObject| {
        o.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(HOST_MIRROR))
            .is_some_and(|v| v == "true")
    };
    for want in &wanted {
        let name = want.name_any();
        match have.items.iter().find(|h| h.name_any() == name) {
            Some(h) if !is_mirror(h) => {
                tracing::warn!(kind = %kind.kind, %name, "the virtual cluster has its own object of this name; the host's is not shown");
                continue;
            }
            Some(h) => {
                let have_json = serde_json::to_value(h)
                    .map_err(|e| SyncError::Virtual(kube::Error::SerdeError(e)))?;
                // List items may come without apiVersion and kind: compared without them.
                let mut want_json = serde_json::to_value(want)
                    .map_err(|e| SyncError::Virtual(kube::Error::SerdeError(e)))?;
                if let Some(o) = want_json.as_object_mut() {
                    o.remove("apiVersion");
                    o.remove("kind");
                }
                if json_contains(&have_json, &want_json) {
                    continue;
                }
            }
            None => {}
        }
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(want),
        )
        .await
        .map_err(SyncError::Virtual)?;
        tracing::info!(kind = %kind.kind, %name, "host mirror written");
    }
    let names: HashSet<String> = wanted.iter().map(|w| w.name_any()).collect();
    for h in have.items.iter().filter(|h| is_mirror(h)) {
        if !names.contains(&h.name_any()) {
            delete(&api, h, &kind.kind).await;
        }
    }
    Ok(())
}
