//! Virtual nodes: a virtual Node for each host node that runs a pod of this tenant, created when
//! the first pod lands there and removed by the garbage collector when the last one leaves (or
//! the host node goes).
//!
//! `--node-sync real` (the default) mirrors the host node (`translate::node`) and keeps it
//! current from a watch on host Nodes; that needs the opt-in ClusterRole of
//! `manifests/serve-cluster-rbac.yaml`. `--node-sync pseudo`, or `real` without that grant,
//! shows pseudo-nodes: what the tenant's own pods reveal (name, address), nothing else.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;

use super::{Context, NodeSync, SyncError};
use crate::host::FIELD_MANAGER;
use crate::translate::node::{MIRRORED_LABELS, mirror, needs_update, updated};

pub use crate::translate::node::VIRTUAL_NODE_LABEL;

/// The pseudo-node for host node `name` (pure).
pub fn pseudo_node(name: &str, host_ip: Option<&str>, now: Time) -> Node {
    let mut addresses = vec![NodeAddress {
        type_: "Hostname".into(),
        address: name.into(),
    }];
    if let Some(ip) = host_ip {
        addresses.insert(
            0,
            NodeAddress {
                type_: "InternalIP".into(),
                address: ip.into(),
            },
        );
    }
    let capacity = BTreeMap::from([("pods".to_string(), Quantity("110".into()))]);
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([
                ("kubernetes.io/hostname".to_string(), name.to_string()),
                ("kubernetes.io/os".to_string(), "linux".to_string()),
                (VIRTUAL_NODE_LABEL.to_string(), "true".to_string()),
            ])),
            ..Default::default()
        },
        spec: None,
        status: Some(NodeStatus {
            addresses: Some(addresses),
            capacity: Some(capacity.clone()),
            allocatable: Some(capacity),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: Some("HostNodeRunsTenantPods".into()),
                message: Some("a host node running pods of this virtual cluster".into()),
                last_heartbeat_time: Some(now.clone()),
                last_transition_time: Some(now),
            }]),
            node_info: Some(NodeSystemInfo {
                architecture: "amd64".into(),
                operating_system: "linux".into(),
                kubelet_version: "vkube".into(),
                kube_proxy_version: "vkube".into(),
                container_runtime_version: "vkube://host".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// `have`, a mirrored virtual node, turned into a pseudo-node (pure): what an earlier run with
/// `--node-sync real` showed of the host goes; labels and annotations the tenant added stay.
pub fn hidden(have: &Node, now: Time) -> Node {
    let name = have.name_any();
    let host_ip = have
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
        .map(|a| a.address.clone());
    let pseudo = pseudo_node(&name, host_ip.as_deref(), now);
    let mirrored: Vec<&str> = have
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(MIRRORED_LABELS))
        .map(|k| k.split(',').collect())
        .unwrap_or_default();
    let mut out = have.clone();
    let labels = out.metadata.labels.get_or_insert_with(Default::default);
    labels.retain(|k, _| !mirrored.contains(&k.as_str()));
    labels.extend(pseudo.metadata.labels.unwrap_or_default());
    if let Some(a) = out.metadata.annotations.as_mut() {
        a.remove(MIRRORED_LABELS);
    }
    out.spec = None;
    out.status = pseudo.status;
    out
}

/// Pseudo mode: mirrors left by an earlier run in real mode become pseudo-nodes, so switching
/// to `pseudo` really hides the host. Runs once, after the caches are ready.
pub async fn hide_mirrors(ctx: Arc<Context>) {
    if ctx.wait_ready().await.is_err() {
        return;
    }
    let api: Api<Node> = Api::all(ctx.virt.clone());
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    for have in ctx.stores.virtual_nodes.state() {
        let mirrored = have
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(MIRRORED_LABELS));
        if !ours(&have) || !mirrored {
            continue;
        }
        let mut next = hidden(&have, Time(jiff_now()));
        let result = match api.replace(&have.name_any(), &pp, &next).await {
            Ok(written) => {
                next.metadata.resource_version = written.metadata.resource_version;
                api.replace_status(&have.name_any(), &pp, &next).await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(_) => {
                tracing::info!(node = %have.name_any(), "mirrored virtual node turned into a pseudo-node")
            }
            Err(e) => {
                tracing::warn!(node = %have.name_any(), error = %e, "could not hide a mirrored virtual node")
            }
        }
    }
}

/// Creates the virtual node for host node `name` when a tenant pod lands there: the host node's
/// mirror in real mode (once the watch has seen it), a pseudo-node otherwise; a pseudo-node in
/// real mode becomes a mirror with the host node's next change.
pub async fn ensure_virtual_node(
    ctx: &Context,
    name: &str,
    host_ip: Option<&str>,
) -> Result<(), SyncError> {
    if ctx
        .stores
        .virtual_nodes
        .get(&ObjectRef::new(name))
        .is_some()
    {
        return Ok(());
    }
    let api: Api<Node> = Api::all(ctx.virt.clone());
    let host_node = match ctx.config.node_sync {
        NodeSync::Real => ctx.stores.host_nodes.get(&ObjectRef::new(name)),
        NodeSync::Pseudo => None,
    };
    let node = match host_node {
        Some(h) => mirror(&h),
        None => pseudo_node(name, host_ip, Time(jiff_now())),
    };
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match api.create(&pp, &node).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(SyncError::Virtual(e)),
    }
}

fn jiff_now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

/// Real mode: keeps the virtual node of host node `host` current. Only nodes that already have
/// a virtual node are touched (they are created when a tenant pod lands), so the many host
/// nodes that run none of this tenant's pods cost a store lookup per change.
pub fn controller(
    ctx: Arc<Context>,
    trigger: super::Trigger<Node>,
    requeue: super::Requeue<Node>,
) -> BoxFuture<'static, ()> {
    let reader = ctx.stores.host_nodes.clone();
    super::controller(ctx, reader, trigger, requeue, reconcile)
}

async fn reconcile(host: Arc<Node>, ctx: Arc<Context>) -> Result<Action, SyncError> {
    ctx.wait_ready().await?;
    let Some(have) = ctx
        .stores
        .virtual_nodes
        .get(&ObjectRef::new(&host.name_any()))
    else {
        return Ok(Action::await_change());
    };
    if !ours(&have) {
        // A node the tenant made itself: never written.
        return Ok(Action::await_change());
    }
    let want = mirror(&host);
    if needs_update(&want, &have) {
        write(&ctx, &want, &have)
            .await
            .map_err(SyncError::Virtual)?;
    }
    // Heartbeat-only changes are held back; look again when the next refresh is due.
    Ok(Action::requeue(crate::translate::node::HEARTBEAT_REFRESH))
}

/// Metadata and spec, then status (a subresource: the main update ignores it), as updates of
/// the cached object: labels the host dropped go, a concurrent change is a conflict (retried).
async fn write(ctx: &Context, want: &Node, have: &Node) -> Result<(), kube::Error> {
    let api: Api<Node> = Api::all(ctx.virt.clone());
    let name = want.name_any();
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let mut next = updated(want, have);
    let written = api.replace(&name, &pp, &next).await?;
    next.metadata.resource_version = written.metadata.resource_version;
    api.replace_status(&name, &pp, &next).await?;
    tracing::debug!(node = %name, "virtual node updated from its host node");
    Ok(())
}

fn ours(node: &Node) -> bool {
    node.labels()
        .get(VIRTUAL_NODE_LABEL)
        .is_some_and(|v| v == "true")
}

/// Virtual nodes vkube created on which no virtual pod runs any more, or (real mode) whose
/// host node is gone.
pub fn unused(ctx: &Context) -> Vec<Arc<Node>> {
    let used: HashSet<String> = ctx
        .stores
        .virtual_pods
        .state()
        .iter()
        .filter_map(|p| p.node_name().map(str::to_string))
        .collect();
    ctx.stores
        .virtual_nodes
        .state()
        .into_iter()
        .filter(|n| ours(n))
        .filter(|n| {
            let name = n.name_any();
            let host_gone = ctx.config.node_sync == NodeSync::Real
                && ctx.stores.host_nodes.get(&ObjectRef::new(&name)).is_none();
            !used.contains(&name) || host_gone
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_nodes_show_only_what_pods_reveal() {
        let n = pseudo_node("kwok-node-1", Some("10.0.0.7"), Time(jiff_now()));
        assert_eq!(n.name_any(), "kwok-node-1");
        let status = n.status.unwrap();
        let addrs = status.addresses.unwrap();
        assert_eq!(addrs[0].type_, "InternalIP");
        assert_eq!(addrs[0].address, "10.0.0.7");
        let ready = &status.conditions.unwrap()[0];
        assert_eq!(
            (ready.type_.as_str(), ready.status.as_str()),
            ("Ready", "True")
        );
        assert_eq!(n.metadata.labels.unwrap()[VIRTUAL_NODE_LABEL], "true");
    }

    #[test]
    fn a_mirror_is_hidden_when_the_mode_turns_pseudo() {
        use k8s_openapi::api::core::v1::{NodeSpec, Taint};
        let host = Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                labels: Some(BTreeMap::from([("zone".to_string(), "z1".to_string())])),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(vec![Taint {
                    key: "dedicated".into(),
                    effect: "NoSchedule".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(vec![NodeAddress {
                    type_: "InternalIP".into(),
                    address: "10.0.0.9".into(),
                }]),
                ..Default::default()
            }),
        };
        let mut have = mirror(&host);
        have.metadata.resource_version = Some("7".into());
        have.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("team".into(), "a".into());
        let out = hidden(&have, Time(jiff_now()));
        let labels = out.metadata.labels.clone().unwrap();
        assert!(!labels.contains_key("zone"));
        assert_eq!(labels["team"], "a");
        assert_eq!(labels[VIRTUAL_NODE_LABEL], "true");
        assert_eq!(out.spec, None);
        assert_eq!(out.metadata.resource_version.as_deref(), Some("7"));
        let status = out.status.unwrap();
        assert_eq!(status.addresses.unwrap()[0].address, "10.0.0.9");
        assert_eq!(
            status.conditions.unwrap()[0].reason.as_deref(),
            Some("HostNodeRunsTenantPods")
        );
    }
}
