//! Pods: virtual → host (the translated pod), host → virtual (binding to a virtual node, status),
//! and deletion both ways. One reconcile handles both directions for one virtual pod; it is
//! triggered by changes on either side.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod, PodStatus};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;

use super::apply::{self, Applied};
use super::host_pod::HostPod;
use super::virtual_pod::VirtualPod;
use super::{Context, SyncError, nodes, tokens};
use crate::translate::origin;
use crate::translate::pod::{self as translate, PodContext};

/// Virtual → host: creates, updates and deletions. Triggered by virtual pods and by host pods
/// that disappear.
pub fn controller(
    ctx: Arc<Context>,
    trigger: super::Trigger<VirtualPod>,
    requeue: super::Requeue<VirtualPod>,
) -> BoxFuture<'static, ()> {
    let reader = ctx.stores.virtual_pods.clone();
    // Named here: a derived resource's kind is not a static string (see `super::controller`).
    super::controller_named("Pod", ctx, reader, trigger, requeue, reconcile)
}

/// Host → virtual: binding and status, triggered by host pod changes. Its own controller with
/// its own concurrency, so a burst of status updates never delays the creation of host pods.
pub fn status_controller(
    ctx: Arc<Context>,
    requeue: super::Requeue<VirtualPod>,
) -> BoxFuture<'static, ()> {
    let reader = ctx.stores.virtual_pods.clone();
    super::controller_named(
        "PodStatus",
        ctx,
        reader,
        futures::stream::pending(),
        requeue,
        reconcile_status,
    )
}

#[tracing::instrument(skip_all, fields(vcluster = %ctx.tenant().name, pod = %format!("{}/{}", vpod.namespace().unwrap_or_default(), vpod.name_any())))]
async fn reconcile_status(vpod: Arc<VirtualPod>, ctx: Arc<Context>) -> Result<Action, SyncError> {
    ctx.wait_ready().await?;
    // Reporting back waits while pods still wait for their host pod (bounded); then both
    // sides are read afresh, as they may have moved on meanwhile.
    ctx.backlog.drained_or(REPORT_HOLD).await;
    let tenant = ctx.tenant();
    let (ns, name) = (vpod.namespace().unwrap_or_default(), vpod.name_any());
    let Some(vpod) = ctx
        .stores
        .virtual_pods
        .get(&ObjectRef::new(&name).within(&ns))
    else {
        return Ok(Action::await_change());
    };
    if vpod.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let host_name = tenant.label_name(&ns, &name);
    let Some(h) = ctx
        .stores
        .host_pods
        .get(&ObjectRef::new(&host_name).within(&tenant.host_namespace))
    else {
        return Ok(Action::await_change());
    };
    if origin(&h.metadata).and_then(|o| o.uid) != vpod.metadata.uid {
        return Ok(Action::await_change());
    }
    let virt_api: Api<Pod> = Api::namespaced(ctx.virt.clone(), &ns);
    let seen = ctx.status_seen.take(&format!("{ns}/{name}"));
    sync_up(&vpod, &h, &ctx, &virt_api).await?;
    if let Some(waited) = seen {
        crate::metrics::get()
            .syncer
            .status_up
            .get_or_create(&crate::metrics::KindLabel { kind: "Pod" })
            .observe(waited.as_secs_f64());
    }
    Ok(Action::await_change())
}

/// The longest a binding or status write waits for pending host creates.
pub const REPORT_HOLD: Duration = Duration::from_secs(2);

/// A virtual pod whose host pod the syncer still has to create (as far as the pod shows).
pub fn awaits_host_pod(vpod: &VirtualPod) -> bool {
    vpod.metadata.deletion_timestamp.is_none() && !(vpod.node_name().is_some() && vpod.scheduled())
}

fn uid_precondition(uid: Option<String>) -> DeleteParams {
    DeleteParams {
        preconditions: Some(Preconditions {
            uid,
            resource_version: None,
        }),
        ..Default::default()
    }
}

fn ignore_not_found(r: Result<(), kube::Error>) -> Result<(), kube::Error> {
    match r {
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        other => other,
    }
}

async fn reconcile(vpod: Arc<VirtualPod>, ctx: Arc<Context>) -> Result<Action, SyncError> {
    let (ns, name) = (vpod.namespace().unwrap_or_default(), vpod.name_any());
    let queued = ctx.backlog.waited(&ns, &name);
    let started = std::time::Instant::now();
    let result = reconcile_pod(
        Arc::new(vpod.to_pod()),
        vpod.fields_beyond_types(),
        ctx.clone(),
    )
    .await;
    if let Some(q) = queued {
        // Where create latency goes: waiting for a worker, or the host's create call.
        tracing::debug!(
            pod = %format!("{ns}/{name}"),
            queued_ms = q.as_millis() as u64,
            reconcile_ms = started.elapsed().as_millis() as u64,
            "first reconcile"
        );
    }
    // Tried once, whatever came of it: the pod no longer holds back status reports.
    ctx.backlog.remove(&ns, &name);
    result
}

#[tracing::instrument(skip_all, fields(vcluster = %ctx.tenant().name, pod = %format!("{}/{}", vpod.namespace().unwrap_or_default(), vpod.name_any())))]
async fn reconcile_pod(
    vpod: Arc<Pod>,
    beyond_types: &[String],
    ctx: Arc<Context>,
) -> Result<Action, SyncError> {
    ctx.wait_ready().await?;
    let tenant = ctx.tenant();
    let ns = vpod.namespace().unwrap_or_default();
    let name = vpod.name_any();
    let host_name = tenant.label_name(&ns, &name);
    let host_api: Api<Pod> = ctx.host_api();
    let virt_api: Api<Pod> = Api::namespaced(ctx.virt.clone(), &ns);
    let hpod = ctx
        .stores
        .host_pods
        .get(&ObjectRef::new(&host_name).within(&tenant.host_namespace));

    // The host pod of an earlier virtual pod of the same name goes first.
    if let Some(h) = &hpod {
        let host_origin_uid = origin(&h.metadata).and_then(|o| o.uid);
        if host_origin_uid.is_some() && host_origin_uid != vpod.metadata.uid {
            if h.metadata.deletion_timestamp.is_none() {
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    ..uid_precondition(h.metadata.uid.clone())
                };
                ignore_not_found(host_api.delete(&host_name, &dp).await.map(|_| ()))
                    .map_err(SyncError::Host)?;
            }
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
    }

    if vpod.metadata.deletion_timestamp.is_some() {
        return delete(&vpod, hpod.as_deref(), &host_api, &virt_api).await;
    }

    let Some(h) = hpod else {
        if was_on_host(&vpod) {
            // Gone behind our back (deleted by hand, or its node vanished): the virtual pod goes
            // too, as it would on a real cluster, so its controller replaces it.
            ctx.event(
                vpod.as_ref(),
                EventType::Warning,
                "HostPodDeleted",
                format!("host pod {host_name} was deleted outside vkube; deleting this pod"),
            )
            .await;
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                ..uid_precondition(vpod.metadata.uid.clone())
            };
            ignore_not_found(virt_api.delete(&name, &dp).await.map(|_| ()))
                .map_err(SyncError::Virtual)?;
            return Ok(Action::await_change());
        }
        return create(&vpod, beyond_types, &ctx, &host_api).await;
    };

    // Keep the host pod current (labels, annotations, images: what a pod may change; the
    // desired hash covers only that part, see `translate::pod::updatable`).
    if let Ok(desired) = translate::to_host(&vpod, tenant, &pod_context(&ctx, &vpod)) {
        let update = translate::updatable(&desired.pod);
        match apply::ensure_parts(
            &host_api,
            &ctx.stores.host_pods,
            tenant,
            desired.pod,
            update,
        )
        .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 422 => {
                ctx.event(
                    vpod.as_ref(),
                    EventType::Warning,
                    "HostUpdateRejected",
                    format!("the host refused to update pod {host_name}: {}", s.message),
                )
                .await;
            }
            Err(e) => return Err(SyncError::Host(e)),
        }
    }
    let wanted = translate::wanted_tokens(&vpod);
    if !wanted.is_empty() {
        let renew = tokens::ensure(&ctx, &vpod, &h.metadata, &wanted).await?;
        return Ok(Action::requeue(renew));
    }
    Ok(Action::await_change())
}

fn pod_context(ctx: &Context, vpod: &Pod) -> PodContext {
    let host_name = ctx.tenant().label_name(
        vpod.metadata.namespace.as_deref().unwrap_or_default(),
        vpod.metadata.name.as_deref().unwrap_or_default(),
    );
    PodContext {
        token_secret: (!translate::wanted_tokens(vpod).is_empty())
            .then(|| tokens::secret_name(&host_name)),
        security: ctx.config.pod_security,
        api: ctx.config.api_endpoint.clone(),
        dns: ctx.config.cluster_dns.clone(),
        policy: ctx.config.pod_policy.clone(),
    }
}

/// The virtual pod was scheduled through us before (the binding marks it): its host pod existed.
fn was_on_host(vpod: &Pod) -> bool {
    vpod.spec.as_ref().is_some_and(|s| s.node_name.is_some())
        && super::virtual_pod::pod_scheduled(vpod.status.as_ref())
}

async fn create(
    vpod: &Pod,
    beyond_types: &[String],
    ctx: &Context,
    host_api: &Api<Pod>,
) -> Result<Action, SyncError> {
    let tenant = ctx.tenant();
    let beyond = crate::translate::security::fields_beyond_types(beyond_types);
    let translated = if beyond.is_empty() {
        translate::to_host(vpod, tenant, &pod_context(ctx, vpod))
    } else {
        Err(beyond)
    };
    let desired = match translated {
        Ok(d) => d,
        Err(violations) => {
            let list: Vec<String> = violations.iter().map(|v| v.to_string()).collect();
            ctx.event(
                vpod,
                EventType::Warning,
                "HostPolicyViolation",
                format!(
                    "not started on the host ({} pod security and the host's pod policy): {}",
                    match ctx.config.pod_security {
                        crate::translate::security::Level::Baseline => "baseline",
                        crate::translate::security::Level::Restricted => "restricted",
                    },
                    list.join("; ")
                ),
            )
            .await;
            return Ok(Action::await_change());
        }
    };
    let host_name = desired.pod.name_any();
    let update = translate::updatable(&desired.pod);
    let created =
        apply::ensure_parts(host_api, &ctx.stores.host_pods, tenant, desired.pod, update).await;
    if matches!(created, Ok((Applied::Created, _)))
        && let Some(waited) = ctx
            .backlog
            .waited(&vpod.namespace().unwrap_or_default(), &vpod.name_any())
    {
        crate::metrics::get()
            .syncer
            .create_to_host
            .get_or_create(&crate::metrics::KindLabel { kind: "Pod" })
            .observe(waited.as_secs_f64());
    }
    if matches!(created, Ok((Applied::Created, _))) && !desired.dropped.is_empty() {
        let list: Vec<String> = desired.dropped.iter().map(|v| v.to_string()).collect();
        ctx.event(
            vpod,
            EventType::Warning,
            "HostPolicyAdjusted",
            format!("started on the host without: {}", list.join("; ")),
        )
        .await;
    }
    match created {
        Ok((Applied::Conflict, _)) => Ok(ctx.conflict(vpod, &host_name).await),
        Ok((_, Some(created))) => {
            let wanted = translate::wanted_tokens(vpod);
            if wanted.is_empty() {
                Ok(Action::await_change())
            } else {
                Ok(Action::requeue(
                    tokens::ensure(ctx, vpod, &created.metadata, &wanted).await?,
                ))
            }
        }
        Ok(_) => Ok(Action::await_change()),
        Err(kube::Error::Api(s)) if s.code == 403 || s.code == 422 => {
            // The host refused it (quota, limits, pod security admission): tell the tenant.
            ctx.event(
                vpod,
                EventType::Warning,
                "HostRejected",
                format!("the host refused pod {host_name}: {}", s.message),
            )
            .await;
            Ok(Action::requeue(Duration::from_secs(30)))
        }
        Err(e) => Err(SyncError::Host(e)),
    }
}

async fn delete(
    vpod: &Pod,
    hpod: Option<&HostPod>,
    host_api: &Api<Pod>,
    virt_api: &Api<Pod>,
) -> Result<Action, SyncError> {
    match hpod {
        Some(h) => {
            if h.metadata.deletion_timestamp.is_none() {
                let dp = DeleteParams {
                    grace_period_seconds: vpod
                        .metadata
                        .deletion_grace_period_seconds
                        .map(|g| g.max(0) as u32),
                    ..uid_precondition(h.metadata.uid.clone())
                };
                ignore_not_found(host_api.delete(&h.name_any(), &dp).await.map(|_| ()))
                    .map_err(SyncError::Host)?;
            }
            // The host watch reports the deletion; the requeue is a safety net.
            let grace = vpod.metadata.deletion_grace_period_seconds.unwrap_or(30);
            Ok(Action::requeue(Duration::from_secs(
                grace.clamp(1, 60) as u64 + 5,
            )))
        }
        None => {
            // Nothing runs on the host any more: finish the deletion, as a kubelet would.
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                ..uid_precondition(vpod.metadata.uid.clone())
            };
            ignore_not_found(virt_api.delete(&vpod.name_any(), &dp).await.map(|_| ()))
                .map_err(SyncError::Virtual)?;
            Ok(Action::await_change())
        }
    }
}

/// The virtual node a pod running on host node `host_node` needs: that node, when the pod is
/// about to be bound to it or names it itself. A tenant's `nodeName` (pinned pods, and upstream's
/// e2e framework) skips the binding, and without this its node never appeared in the virtual
/// cluster. A `nodeName` the host did not schedule to gets no node: it shows nothing of the host.
fn virtual_node_needed<'a>(
    host_node: Option<&'a str>,
    virtual_node: Option<&str>,
) -> Option<&'a str> {
    match (host_node, virtual_node) {
        (Some(host), None) => Some(host),
        (Some(host), Some(named)) if host == named => Some(host),
        _ => None,
    }
}

/// Host → virtual: bind to the (virtual) node the host scheduled it on, then mirror status.
async fn sync_up(
    vpod: &VirtualPod,
    hpod: &HostPod,
    ctx: &Context,
    virt_api: &Api<Pod>,
) -> Result<(), SyncError> {
    let host_status = status_for_virtual(hpod.status());
    let host_node = hpod.node_name().map(str::to_string);
    let virtual_node = vpod.node_name().map(str::to_string);
    let uid = vpod.metadata.uid.clone().unwrap_or_default();
    let mut just_bound = virtual_node.is_none() && ctx.bindings.pending(&uid);
    if !just_bound
        && let Some(node) = virtual_node_needed(host_node.as_deref(), virtual_node.as_deref())
    {
        nodes::ensure_virtual_node(ctx, node, host_status.host_ip.as_deref()).await?;
    }
    if let (Some(node), None, false) = (&host_node, &virtual_node, just_bound) {
        let binding = Binding {
            metadata: ObjectMeta {
                name: vpod.metadata.name.clone(),
                namespace: vpod.metadata.namespace.clone(),
                uid: vpod.metadata.uid.clone(),
                ..Default::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.clone()),
                ..Default::default()
            },
        };
        let bound: Result<serde_json::Value, _> = virt_api
            .create_subresource(
                "binding",
                &vpod.name_any(),
                &PostParams::default(),
                &binding,
            )
            .await;
        match bound {
            Ok(_) => {}
            // Already bound (a concurrent reconcile) or gone: the next event sorts it out.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
            Err(e) => return Err(SyncError::Virtual(e)),
        }
        ctx.bindings.mark(&uid);
        just_bound = true;
    }
    // Everything the host's kubelet reports is true for the virtual pod (but the QoS class).
    let want = &host_status;
    let have = match (just_bound, vpod.status()) {
        (true, status) => Some(bound(status.unwrap_or_default())),
        (false, status) => status,
    };
    if status_differs(have.as_ref(), want) {
        let patch = serde_json::json!({ "status": status_patch(hpod.status_json()) });
        match virt_api
            .patch_status(
                &vpod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(SyncError::Virtual(e)),
        }
    }
    Ok(())
}

/// Pods (by uid) bound by the syncer whose binding the virtual watch has not reported yet: the
/// cache still shows them unbound, and binding again would only earn a conflict.
#[derive(Default)]
pub struct PendingBindings(std::sync::Mutex<std::collections::HashSet<String>>);

impl PendingBindings {
    pub fn mark(&self, uid: &str) {
        if let Ok(mut s) = self.0.lock() {
            s.insert(uid.to_string());
        }
    }

    pub fn pending(&self, uid: &str) -> bool {
        self.0.lock().is_ok_and(|s| s.contains(uid))
    }

    /// The watch shows the pod bound, or it is gone.
    pub fn forget(&self, uid: &str) {
        if let Ok(mut s) = self.0.lock() {
            s.remove(uid);
        }
    }
}

/// A pod's status as a binding leaves it: `PodScheduled` true, as the API server sets it.
fn bound(mut status: PodStatus) -> PodStatus {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    conditions.retain(|c| c.type_ != "PodScheduled");
    conditions.push(k8s_openapi::api::core::v1::PodCondition {
        type_: "PodScheduled".into(),
        status: "True".into(),
        ..Default::default()
    });
    status
}

/// The host pod's status as the virtual pod gets it. The QoS class stays the virtual API
/// server's own: it derives it from the virtual spec and refuses any change, and the host's can
/// differ (a LimitRange in the host namespace gives requests to containers that set none).
pub fn status_for_virtual(mut host: PodStatus) -> PodStatus {
    host.qos_class = None;
    host
}

/// The merge patch of the virtual pod's status: the host's status as the host wrote it, so
/// fields vkube's types do not know (a newer host) survive the trip up, less what
/// [`status_for_virtual`] leaves out. Nulls are dropped: in a merge patch they would delete.
/// Only a difference in known fields ([`status_differs`]) causes a write; unknown ones ride
/// along, so a virtual API server that drops them never causes a write loop.
pub fn status_patch(host: serde_json::Value) -> serde_json::Value {
    let serde_json::Value::Object(mut status) = host else {
        return serde_json::json!({});
    };
    status.remove("qosClass");
    status.retain(|_, v| !v.is_null());
    serde_json::Value::Object(status)
}

/// Whether any field the host reports differs from the virtual status. Condition timestamps
/// alone do not count: the binding sets `PodScheduled` in the virtual pod a moment after the
/// host's scheduler did, and rewriting the whole status for that difference costs a write per
/// pod. They are copied with the next real change.
pub fn status_differs(have: Option<&PodStatus>, want: &PodStatus) -> bool {
    let have = have
        .and_then(|s| serde_json::to_value(s).ok())
        .map(without_condition_times)
        .unwrap_or_default();
    let Ok(serde_json::Value::Object(want)) =
        serde_json::to_value(want).map(without_condition_times)
    else {
        return false;
    };
    want.iter().any(|(k, v)| have.get(k) != Some(v))
}

fn without_condition_times(mut status: serde_json::Value) -> serde_json::Value {
    if let Some(conditions) = status.get_mut("conditions").and_then(|c| c.as_array_mut()) {
        for c in conditions.iter_mut().filter_map(|c| c.as_object_mut()) {
            c.remove("lastTransitionTime");
            c.remove("lastProbeTime");
        }
    }
    status
}

/// Host pods whose virtual pod is gone (or never was), for the garbage collector.
pub fn orphans(ctx: &Context) -> Vec<Arc<HostPod>> {
    super::orphans_of(&ctx.stores.host_pods, &ctx.stores.virtual_pods)
        .into_iter()
        .filter(|h| h.metadata.deletion_timestamp.is_none())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodCondition;

    #[test]
    fn the_node_a_running_pod_needs_in_the_virtual_cluster() {
        // (host node, the virtual pod's nodeName, the virtual node that must exist)
        let cases = [
            (None, None, None),
            // Scheduled by the host, not yet bound in the virtual cluster: its node.
            (Some("kwok-node-0"), None, Some("kwok-node-0")),
            // The tenant named the node itself (nodeName) and the host put it there: its node too.
            (
                Some("kwok-node-0"),
                Some("kwok-node-0"),
                Some("kwok-node-0"),
            ),
            // Named but not (yet) scheduled on the host: nothing of the host to show.
            (None, Some("kwok-node-0"), None),
            // Named one node, runs on another (the virtual nodeName was changed): none shown.
            (Some("kwok-node-1"), Some("kwok-node-0"), None),
        ];
        for (host, named, want) in cases {
            assert_eq!(
                virtual_node_needed(host, named),
                want,
                "host {host:?}, nodeName {named:?}"
            );
        }
    }

    #[test]
    fn status_differs_only_on_host_reported_fields() {
        let host = PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some("10.244.0.5".into()),
            ..Default::default()
        };
        let mut virt = host.clone();
        virt.qos_class = Some("BestEffort".into());
        assert!(!status_differs(Some(&virt), &host));
        virt.phase = Some("Pending".into());
        assert!(status_differs(Some(&virt), &host));
        assert!(status_differs(None, &host));
    }

    #[test]
    fn condition_timestamps_alone_are_no_difference() {
        let at = |secs| {
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(secs).expect("valid"),
            ))
        };
        let scheduled = |secs, status: &str| PodCondition {
            type_: "PodScheduled".into(),
            status: status.into(),
            last_transition_time: at(secs),
            ..Default::default()
        };
        let host = PodStatus {
            phase: Some("Pending".into()),
            conditions: Some(vec![scheduled(100, "True")]),
            ..Default::default()
        };
        let mut virt = host.clone();
        virt.conditions = Some(vec![scheduled(101, "True")]);
        assert!(!status_differs(Some(&virt), &host));
        virt.conditions = Some(vec![scheduled(100, "False")]);
        assert!(status_differs(Some(&virt), &host));
        virt.conditions = None;
        assert!(status_differs(Some(&virt), &host));
    }

    #[test]
    fn the_status_patch_keeps_unknown_fields_and_leaves_out_the_qos_class() {
        let host = serde_json::json!({
            "phase": "Running", "podIP": "10.244.0.7", "qosClass": "Burstable",
            "futureField": {"x": 1}, "nominatedNodeName": null,
        });
        assert_eq!(
            status_patch(host),
            serde_json::json!({"phase": "Running", "podIP": "10.244.0.7", "futureField": {"x": 1}})
        );
        assert_eq!(status_patch(serde_json::json!(null)), serde_json::json!({}));
    }

    #[test]
    fn the_hosts_qos_class_never_reaches_the_virtual_pod() {
        let host = PodStatus {
            phase: Some("Running".into()),
            qos_class: Some("Burstable".into()),
            ..Default::default()
        };
        let want = status_for_virtual(host);
        assert_eq!(want.qos_class, None);
        assert_eq!(want.phase.as_deref(), Some("Running"));
        let virt = PodStatus {
            phase: Some("Running".into()),
            qos_class: Some("BestEffort".into()),
            ..Default::default()
        };
        assert!(!status_differs(Some(&virt), &want));
    }

    #[test]
    fn only_pods_scheduled_through_the_host_count_as_having_been_there() {
        let mut p = Pod::default();
        assert!(!was_on_host(&p));
        p.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            node_name: Some("n1".into()),
            ..Default::default()
        });
        // Pinned by the tenant, never scheduled: not "on the host" yet.
        assert!(!was_on_host(&p));
        p.status = Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert!(was_on_host(&p));
    }
}
