//! Virtual nodes: a virtual Node for each host node that runs a pod of this tenant, created when
//! the first pod lands there and removed by the garbage collector when the last one leaves.
//! The syncer's host credentials are namespace-scoped, so it cannot read host Nodes: the
//! virtual node is a pseudo-node that shows what the tenant's own pods reveal (name, address)
//! and hides the rest of the host.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::reflector::ObjectRef;

use super::{Context, SyncError};

/// Label on virtual nodes that vkube created (and may delete).
pub const VIRTUAL_NODE_LABEL: &str = "vkube.dev/virtual-node";

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
    let node = pseudo_node(name, host_ip, Time(jiff_now()));
    match api.create(&PostParams::default(), &node).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(SyncError::Virtual(e)),
    }
}

fn jiff_now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

/// Virtual nodes vkube created on which no virtual pod runs any more.
pub fn unused(ctx: &Context) -> Vec<Arc<Node>> {
    let used: HashSet<String> = ctx
        .stores
        .virtual_pods
        .state()
        .iter()
        .filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
        .collect();
    ctx.stores
        .virtual_nodes
        .state()
        .into_iter()
        .filter(|n| {
            n.labels()
                .get(VIRTUAL_NODE_LABEL)
                .is_some_and(|v| v == "true")
        })
        .filter(|n| !used.contains(&n.name_any()))
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
}
