//! Services: a host Service with the same ports and a selector confined to the tenant's pods of
//! the same virtual namespace. Types the admin's policy does not allow become ClusterIP, with a
//! Warning Event saying so. Load-balancer status flows back up.
//!
//! The virtual Service shows the cluster IP that really routes, the host's. The host copy first
//! asks for the IP the virtual apiserver allocated (its service range contains the host's);
//! when the host cannot give it, the virtual Service is re-created with the host's IP (cluster
//! IPs are immutable), keeping its metadata and spec, and its hand-written Endpoints.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Endpoints, Service};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

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

/// The Service that routes the virtual metrics API to vkube itself (`crate::metrics_api`): it
/// leads nowhere on the host, so it is not copied there.
pub fn is_metrics_api(svc: &Service) -> bool {
    svc.metadata.namespace.as_deref() == Some(crate::metrics_api::SERVICE_NAMESPACE)
        && svc.metadata.name.as_deref() == Some(crate::metrics_api::SERVICE_NAME)
}

async fn reconcile(vsvc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, SyncError> {
    ctx.wait_ready().await?;
    if vsvc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if is_virtual_apiserver(&vsvc) {
        return show_api_service(&ctx, &vsvc).await;
    }
    if is_metrics_api(&vsvc) {
        return Ok(Action::await_change());
    }
    let tenant = ctx.tenant();
    let mut host = match translate::service::to_host(&vsvc, tenant, ctx.config.service_policy) {
        Ok(h) => h,
        Err(refusal) => return not_synced(&ctx, &vsvc, refusal).await,
    };
    if !host.dropped.is_empty() {
        let dropped: Vec<String> = host
            .dropped
            .iter()
            .map(|(field, why)| format!("{field} ({why})"))
            .collect();
        ctx.event(
            vsvc.as_ref(),
            EventType::Warning,
            "ServiceFieldNotAllowed",
            format!(
                "not copied to the host, remove them: {}",
                dropped.join("; ")
            ),
        )
        .await;
    }
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
    let store = &ctx.stores.host_services;
    let cached = store.get(&ObjectRef::new(&host_name).within(&tenant.host_namespace));
    let asks_for_virtual_ip = cached.is_none();
    match &cached {
        Some(h) => translate::service::pin_cluster_ips(&mut host.service, h),
        None => translate::service::pin_cluster_ips(&mut host.service, &vsvc),
    }
    let api: Api<Service> = ctx.host_api();
    let mut unpinned = host.service.clone();
    let applied = match apply::ensure(&api, store, tenant, host.service).await {
        Err(kube::Error::Api(s)) if s.code == 422 && asks_for_virtual_ip => {
            // The virtual IP is taken on the host or outside its range: the host picks one, and
            // the virtual Service is re-created with it below.
            if let Some(spec) = unpinned.spec.as_mut() {
                spec.cluster_ip = None;
                spec.cluster_ips = None;
            }
            apply::ensure(&api, store, tenant, unpinned).await
        }
        other => other,
    };
    let (result, written) = match applied {
        Ok(a) => a,
        Err(kube::Error::Api(s)) if s.code == 422 || s.code == 413 => {
            return Ok(ctx
                .host_rejected(vsvc.as_ref(), &host_name, &s.message)
                .await);
        }
        Err(e) => return Err(SyncError::Host(e)),
    };
    if result == Applied::Conflict {
        return Ok(ctx.conflict(vsvc.as_ref(), &host_name).await);
    }
    let Some(h) = written.map(Arc::new).or(cached) else {
        // Unchanged but not cached yet: the host watch re-triggers us.
        return Ok(Action::await_change());
    };
    // Load-balancer addresses are the host's to know.
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
    if let Some(again) = translate::service::with_host_cluster_ips(&vsvc, &h) {
        let ranges = &ctx.config.virtual_service_ranges;
        if !ranges.is_empty() && !translate::service::representable(&h, ranges) {
            ctx.event(
                vsvc.as_ref(),
                EventType::Warning,
                "ClusterIPNotShown",
                "the host's cluster IP of this service is outside the virtual cluster's service range (vkube serve --service-cidr); the IP shown does not route, use the service's DNS name".into(),
            )
            .await;
            return Ok(Action::await_change());
        }
        return recreate(&ctx, &vsvc, again).await;
    }
    Ok(Action::await_change())
}

/// A Service the policy keeps off the host: the tenant is told, and a copy made before (when
/// the Service had another type, or the policy allowed it) is removed.
async fn not_synced(
    ctx: &Context,
    vsvc: &Service,
    refusal: translate::service::ServiceRefusal,
) -> Result<Action, SyncError> {
    ctx.event(
        vsvc,
        EventType::Warning,
        "ServiceNotAllowed",
        refusal.to_string(),
    )
    .await;
    if let Some(h) = host_copy_of(ctx, vsvc) {
        let api: Api<Service> = ctx.host_api();
        super::gc::delete(&api, h.as_ref(), "service").await;
    }
    Ok(Action::await_change())
}

/// The virtual `default/kubernetes` Service is not copied: it shows the ClusterIP of the host
/// Service in front of vkube's proxy (where pods' `KUBERNETES_SERVICE_HOST` and
/// `kubernetes.default.svc` lead), re-created like any other Service whose IP differs.
async fn show_api_service(ctx: &Context, vsvc: &Service) -> Result<Action, SyncError> {
    let Some(api) = &ctx.config.api_endpoint else {
        return Ok(Action::await_change());
    };
    let host_view = Service {
        spec: Some(k8s_openapi::api::core::v1::ServiceSpec {
            cluster_ip: Some(api.host.clone()),
            cluster_ips: Some(vec![api.host.clone()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let Some(again) = translate::service::with_host_cluster_ips(vsvc, &host_view) else {
        return Ok(Action::await_change());
    };
    let ranges = &ctx.config.virtual_service_ranges;
    if !ranges.is_empty() && !translate::service::representable(&host_view, ranges) {
        return Ok(Action::await_change());
    }
    recreate(ctx, vsvc, again).await
}

fn cluster_ips(svc: &Service) -> Vec<String> {
    let spec = svc.spec.clone().unwrap_or_default();
    spec.cluster_ips
        .unwrap_or_default()
        .into_iter()
        .chain(spec.cluster_ip)
        .collect()
}

/// Replaces the virtual Service `old` by `new`, which differs only in the cluster IPs (they are
/// immutable). The host copy is kept meanwhile: the garbage collector skips it while the virtual
/// Service is briefly absent.
async fn recreate(ctx: &Context, old: &Service, new: Service) -> Result<Action, SyncError> {
    let ns = old.namespace().unwrap_or_default();
    let name = old.name_any();
    if !old.finalizers().is_empty() {
        // Deleting would leave it terminating; showing the wrong IP is the lesser harm.
        return Ok(Action::await_change());
    }
    let wanted = cluster_ips(&new);
    let taken = ctx.stores.virtual_services.state().into_iter().any(|s| {
        s.metadata.uid != old.metadata.uid && cluster_ips(&s).iter().any(|ip| wanted.contains(ip))
    });
    if taken {
        // Another virtual Service holds the IP; it moves to its own host IP soon.
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let handwritten = translate::endpoints::synced_for(old);
    if handwritten && let Some(wait) = settle_time(old) {
        // Its Endpoints usually arrive right after it (same manifest): let them, so that the
        // copy taken below has them.
        return Ok(Action::requeue(wait));
    }
    let vapi: Api<Service> = Api::namespaced(ctx.virt.clone(), &ns);
    let eps: Api<Endpoints> = Api::namespaced(ctx.virt.clone(), &ns);
    // The endpoints controller deletes the Endpoints of a deleted Service, hand-written or not.
    let saved = if handwritten {
        eps.get_opt(&name).await.map_err(SyncError::Virtual)?
    } else {
        None
    };
    let _mark = ctx.recreating.mark(&ns, &name);
    // Written down on the host copy first: if vkube dies between the delete and the create
    // below, the next start re-creates the Service from it (see `restore`).
    let host_copy = host_copy_of(ctx, old);
    if let Some(h) = &host_copy {
        let journal = Journal {
            service: new.clone(),
            endpoints: saved.as_ref().map(fresh_endpoints),
        };
        match write_journal(ctx, h, Some(&journal)).await {
            Ok(()) => {}
            Err(kube::Error::Api(s)) if s.code == 422 => {
                // Too large to note down (annotations are limited to 256 KiB): not re-created.
                tracing::warn!(service = %format!("{ns}/{name}"), error = %s.message, "cannot journal the re-creation; keeping the virtual cluster IP");
                return Ok(Action::await_change());
            }
            Err(e) => return Err(SyncError::Host(e)),
        }
    }
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: old.metadata.uid.clone(),
            resource_version: old.metadata.resource_version.clone(),
        }),
        ..Default::default()
    };
    match vapi.delete(&name, &dp).await {
        Ok(_) => {}
        // Changed or gone meanwhile: the next reconcile sees the new state.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
            return Ok(Action::requeue(Duration::from_millis(500)));
        }
        Err(e) => return Err(SyncError::Virtual(e)),
    }
    let Some(created) = create_again(&vapi, &ns, &name, new).await else {
        // Someone re-created it first (kubectl apply); it is reconciled again.
        return Ok(Action::requeue(Duration::from_millis(500)));
    };
    ctx.event(
        &created,
        EventType::Normal,
        "ClusterIPFromHost",
        format!(
            "re-created with the host's cluster IP {} (was {}), the address that routes",
            wanted.first().cloned().unwrap_or_default(),
            cluster_ips(old).first().cloned().unwrap_or_default()
        ),
    )
    .await;
    if let Some(h) = &host_copy
        && let Err(e) = write_journal(ctx, h, None).await
    {
        // Harmless: the garbage collector clears it once it sees the Service exists.
        tracing::warn!(service = %format!("{ns}/{name}"), error = %e, "could not clear the re-creation journal");
    }
    if let Some(saved) = saved {
        guard_endpoints(ctx, &eps, saved).await;
    }
    // Until the store has the new Service, the garbage collector would take the host copy for
    // an orphan: keep the mark until then.
    let key = ObjectRef::new(&name).within(&ns);
    for _ in 0..100 {
        if ctx
            .stores
            .virtual_services
            .get(&key)
            .map(|s| s.metadata.uid.clone())
            == Some(created.metadata.uid.clone())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Action::await_change())
}

/// Endpoints as they can be created again: name, labels, annotations and subsets.
fn fresh_endpoints(eps: &Endpoints) -> Endpoints {
    Endpoints {
        metadata: ObjectMeta {
            name: eps.metadata.name.clone(),
            namespace: eps.metadata.namespace.clone(),
            labels: eps.metadata.labels.clone(),
            annotations: eps.metadata.annotations.clone(),
            ..Default::default()
        },
        subsets: eps.subsets.clone(),
    }
}

/// Annotation on a host Service while its virtual Service is re-created: the virtual Service
/// (and its hand-written Endpoints) as they are to be created again.
pub const RECREATE_JOURNAL: &str = "vkube.dev/recreating";

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Journal {
    pub service: Service,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Endpoints>,
}

/// The journal a host Service carries, if any (pure).
pub fn journal_of(host: &Service) -> Option<Journal> {
    let text = host.annotations().get(RECREATE_JOURNAL)?;
    serde_json::from_str(text).ok()
}

fn host_copy_of(ctx: &Context, vsvc: &Service) -> Option<Arc<Service>> {
    let tenant = ctx.tenant();
    let host_name = tenant.label_name(
        vsvc.metadata.namespace.as_deref().unwrap_or_default(),
        &vsvc.name_any(),
    );
    ctx.stores
        .host_services
        .get(&ObjectRef::new(&host_name).within(&tenant.host_namespace))
        .filter(|h| tenant.owns(h.meta()))
}

async fn write_journal(
    ctx: &Context,
    host: &Service,
    journal: Option<&Journal>,
) -> Result<(), kube::Error> {
    let value = match journal {
        Some(j) => {
            serde_json::Value::String(serde_json::to_string(j).map_err(kube::Error::SerdeError)?)
        }
        None => serde_json::Value::Null,
    };
    let patch = serde_json::json!({ "metadata": { "annotations": { RECREATE_JOURNAL: value } } });
    let api: Api<Service> = ctx.host_api();
    api.patch(
        &host.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
}

/// Host Services whose virtual Service was being re-created when a previous run stopped: the
/// virtual Service is created again from the journal (or, if it exists, the journal is
/// cleared). Run by the garbage collector before it looks for orphans.
pub async fn restore(ctx: &Context) {
    for h in ctx.stores.host_services.state() {
        let Some(journal) = journal_of(&h) else {
            continue;
        };
        let Some(o) = translate::origin(h.meta()) else {
            continue;
        };
        if ctx.is_recreating(&o.namespace, &o.name) {
            continue;
        }
        let key = ObjectRef::<Service>::new(&o.name).within(&o.namespace);
        if ctx.stores.virtual_services.get(&key).is_none() {
            let vapi: Api<Service> = Api::namespaced(ctx.virt.clone(), &o.namespace);
            let created = create_again(&vapi, &o.namespace, &o.name, journal.service).await;
            if created.is_some() {
                tracing::info!(service = %key, "re-created a virtual service an earlier run had deleted to re-create");
            }
            if let Some(eps) = journal.endpoints {
                let api: Api<Endpoints> = Api::namespaced(ctx.virt.clone(), &o.namespace);
                match api.create(&PostParams::default(), &eps).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => {
                        tracing::warn!(endpoints = %key, error = %e, "putting hand-written endpoints back failed")
                    }
                }
            }
            // The journal goes only once the store has the Service: until then it is what keeps
            // the host copy from looking like an orphan.
            let mut seen = false;
            for _ in 0..100 {
                if ctx.stores.virtual_services.get(&key).is_some() {
                    seen = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if !seen && created.is_some() {
                // The store lags: the next sweep clears it.
                continue;
            }
        }
        if let Err(e) = write_journal(ctx, &h, None).await {
            tracing::warn!(service = %key, error = %e, "could not clear the re-creation journal");
        }
    }
}

/// Creates the deleted virtual Service again; it must not be lost, so transient failures are
/// retried, and if its new IP was taken meanwhile it is created without one. `None` when
/// someone else created it first, or its namespace is gone or being deleted.
async fn create_again(
    vapi: &Api<Service>,
    ns: &str,
    name: &str,
    mut svc: Service,
) -> Option<Service> {
    let pp = PostParams::default();
    let mut attempt: u32 = 0;
    loop {
        match vapi.create(&pp, &svc).await {
            Ok(c) => return Some(c),
            Err(kube::Error::Api(s)) if s.code == 409 => return None,
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 403 => {
                tracing::info!(service = %format!("{ns}/{name}"), reason = %s.message, "not re-created: its namespace is gone");
                return None;
            }
            Err(kube::Error::Api(s))
                if s.code == 422 && svc.spec.as_ref().is_some_and(|s| s.cluster_ip.is_some()) =>
            {
                tracing::warn!(service = %format!("{ns}/{name}"), error = %s.message, "the host's cluster IP was taken meanwhile; re-creating the service without it");
                if let Some(spec) = svc.spec.as_mut() {
                    spec.cluster_ip = None;
                    spec.cluster_ips = None;
                }
            }
            Err(e) => {
                attempt += 1;
                tracing::warn!(service = %format!("{ns}/{name}"), error = %e, attempt, "re-creating the service failed; retrying");
                tokio::time::sleep(Duration::from_millis(200) * attempt.min(25)).await;
            }
        }
    }
}

/// How long a selector-less Service is left alone after its creation before it is re-created.
const SETTLE: Duration = Duration::from_secs(3);

/// The rest of [`SETTLE`] for `svc`, if any.
fn settle_time(svc: &Service) -> Option<Duration> {
    let created = svc.metadata.creation_timestamp.as_ref()?.0;
    let age = k8s_openapi::jiff::Timestamp::now().duration_since(created);
    let age = Duration::try_from(age).unwrap_or_default();
    SETTLE.checked_sub(age).filter(|d| !d.is_zero())
}

/// How long hand-written Endpoints are watched over after their Service was re-created.
const ENDPOINTS_GUARD: Duration = Duration::from_secs(10);

/// Keeps hand-written Endpoints through the re-creation of their Service. The endpoints
/// controller deletes the Endpoints of a deleted Service whenever its queue gets to it, which
/// may be after the new Service exists; so for a while, a deleted copy is put back in its
/// latest known form (edits made meanwhile are kept). That controller deletes once per deleted
/// Service, so the guard ends with its first put-back: a later delete is the tenant's own.
async fn guard_endpoints(ctx: &Context, eps: &Api<Endpoints>, mut latest: Endpoints) {
    let key = ObjectRef::new(&latest.name_any()).within(&latest.namespace().unwrap_or_default());
    let until = tokio::time::Instant::now() + ENDPOINTS_GUARD;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(current) = ctx.stores.virtual_endpoints.get(&key) {
            latest = current.as_ref().clone();
            continue;
        }
        let again = fresh_endpoints(&latest);
        match eps.create(&PostParams::default(), &again).await {
            Ok(_) => {
                tracing::info!(endpoints = %key, "hand-written endpoints put back");
                return;
            }
            // The store lags behind the API: it is there.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            // Tried again on the next round.
            Err(e) => {
                tracing::warn!(endpoints = %key, error = %e, "putting hand-written endpoints back failed")
            }
        }
    }
}

pub fn orphans(ctx: &Context) -> Vec<Arc<Service>> {
    super::orphans_of(&ctx.stores.host_services, &ctx.stores.virtual_services)
        .into_iter()
        .filter(|h| {
            translate::origin(h.meta()).is_none_or(|o| !ctx.is_recreating(&o.namespace, &o.name))
                && journal_of(h).is_none()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_survives_the_round_trip_through_an_annotation() {
        let svc = Service {
            metadata: ObjectMeta {
                name: Some("db".into()),
                namespace: Some("shop".into()),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::core::v1::ServiceSpec {
                cluster_ip: Some("10.96.7.7".into()),
                ..Default::default()
            }),
            status: None,
        };
        let journal = Journal {
            service: svc,
            endpoints: None,
        };
        let mut host = Service::default();
        host.metadata.annotations = Some(
            [(
                RECREATE_JOURNAL.to_string(),
                serde_json::to_string(&journal).expect("serialisable"),
            )]
            .into(),
        );
        assert_eq!(journal_of(&host), Some(journal));
        // Garbage (a tenant cannot write host annotations, but a person can) is no journal.
        host.metadata.annotations = Some([(RECREATE_JOURNAL.to_string(), "{".to_string())].into());
        assert_eq!(journal_of(&host), None);
        assert_eq!(journal_of(&Service::default()), None);
    }
}
