//! Virtual nodes mirrored from host nodes (`--node-sync real`): what a tenant's `kubectl get
//! nodes -o wide` and `describe node` need, and nothing that reveals other tenants (images
//! pulled, volumes attached) or that only the host's components use (annotations, managed fields).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ObjectMeta;

/// Label on virtual nodes that vkube created (and may delete); user-made nodes never carry it.
pub const VIRTUAL_NODE_LABEL: &str = "vkube.dev/virtual-node";

/// Annotation on a mirrored virtual node: the label keys copied from the host, so a label the
/// host drops is removed while labels the tenant added stay.
pub const MIRRORED_LABELS: &str = "vkube.dev/mirrored-labels";

/// A heartbeat-only change is written at most this often: idle host nodes renew their
/// conditions' heartbeat times continually, and copying each one would be a write storm.
pub const HEARTBEAT_REFRESH: std::time::Duration = std::time::Duration::from_secs(300);

/// Keeps only what [`mirror`] reads, before a host node is cached: images (often 10–50 KiB per
/// node), attached volumes, annotations and managed fields are the bulk of a Node object.
pub fn trim_host_node(node: &mut Node) {
    let meta = &mut node.metadata;
    meta.managed_fields = None;
    meta.annotations = None;
    meta.owner_references = None;
    if let Some(status) = node.status.as_mut() {
        status.images = None;
        status.volumes_attached = None;
        status.volumes_in_use = None;
        status.config = None;
    }
}

/// The virtual node for host node `host` (pure). Labels are the host's except vkube's own
/// prefix (a host label must not forge the ownership label), plus the ownership label.
pub fn mirror(host: &Node) -> Node {
    let mut labels = super::unreserved_labels(&host.metadata);
    let mirrored = labels.keys().cloned().collect::<Vec<_>>().join(",");
    labels.insert(VIRTUAL_NODE_LABEL.into(), "true".into());
    let spec = host.spec.as_ref().map(|s| NodeSpec {
        // Taints and cordoning matter to the tenant's DaemonSets and tolerations; provider IDs
        // and config sources are the host's business.
        taints: s.taints.clone(),
        unschedulable: s.unschedulable,
        pod_cidr: s.pod_cidr.clone(),
        pod_cidrs: s.pod_cidrs.clone(),
        ..Default::default()
    });
    let status = host.status.as_ref().map(|s| NodeStatus {
        addresses: s.addresses.clone(),
        capacity: s.capacity.clone(),
        allocatable: s.allocatable.clone(),
        conditions: s.conditions.clone(),
        node_info: s.node_info.clone(),
        daemon_endpoints: s.daemon_endpoints.clone(),
        phase: s.phase.clone(),
        runtime_handlers: s.runtime_handlers.clone(),
        features: s.features.clone(),
        ..Default::default()
    });
    Node {
        metadata: ObjectMeta {
            name: host.metadata.name.clone(),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(MIRRORED_LABELS.to_string(), mirrored)])),
            ..Default::default()
        },
        spec,
        status,
    }
}

fn mirrored_keys(node: &Node) -> Vec<&str> {
    node.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(MIRRORED_LABELS))
        .map(|k| k.split(',').filter(|k| !k.is_empty()).collect())
        .unwrap_or_default()
}

/// The whole virtual node to write back (an update of `have`, keeping its resourceVersion, so a
/// concurrent change is a conflict, not lost): labels copied earlier and gone from the host are
/// removed, the tenant's own labels and annotations stay; spec and status are the mirror's.
pub fn updated(want: &Node, have: &Node) -> Node {
    let mut out = have.clone();
    let labels = out.metadata.labels.get_or_insert_with(Default::default);
    for k in mirrored_keys(have) {
        labels.remove(k);
    }
    labels.extend(want.metadata.labels.clone().unwrap_or_default());
    out.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .extend(want.metadata.annotations.clone().unwrap_or_default());
    out.spec = want.spec.clone();
    out.status = want.status.clone();
    out
}

/// `node` with every condition's heartbeat time removed: what decides whether a write is due.
fn without_heartbeats(node: &Node) -> Node {
    let mut n = node.clone();
    if let Some(cs) = n.status.as_mut().and_then(|s| s.conditions.as_mut()) {
        for c in cs {
            c.last_heartbeat_time = None;
        }
    }
    n
}

fn newest_heartbeat(node: &Node) -> Option<&Time> {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| {
            cs.iter()
                .filter_map(|c| c.last_heartbeat_time.as_ref())
                .max()
        })
}

/// Whether the virtual node `have` must be rewritten to show `want` (a [`mirror`]): when a
/// label, taint, address, capacity or condition differs, or when only heartbeats moved and the
/// shown ones are older than [`HEARTBEAT_REFRESH`]. Labels the tenant added are left alone.
pub fn needs_update(want: &Node, have: &Node) -> bool {
    let (w, h) = (without_heartbeats(want), without_heartbeats(have));
    let labels_differ = w
        .metadata
        .labels
        .iter()
        .flatten()
        .any(|(k, v)| h.metadata.labels.as_ref().and_then(|l| l.get(k)) != Some(v));
    let keys_differ = mirrored_keys(&w) != mirrored_keys(&h);
    let spec_differs = w.spec.clone().unwrap_or_default() != h.spec.clone().unwrap_or_default();
    if labels_differ || keys_differ || spec_differs || w.status != h.status {
        return true;
    }
    match (newest_heartbeat(want), newest_heartbeat(have)) {
        (Some(w), Some(h)) => {
            let refresh = k8s_openapi::jiff::SignedDuration::from_secs(
                HEARTBEAT_REFRESH.as_secs().try_into().unwrap_or(i64::MAX),
            );
            w.0.duration_since(h.0) >= refresh
        }
        (Some(_), None) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        AttachedVolume, ContainerImage, NodeAddress, NodeCondition, NodeDaemonEndpoints,
        NodeSystemInfo, Taint,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(1_800_000_000 + secs).unwrap())
    }

    fn host(heartbeat: i64) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("kwok-node-0".into()),
                labels: Some(BTreeMap::from([
                    ("kubernetes.io/hostname".into(), "kwok-node-0".into()),
                    ("topology.kubernetes.io/zone".into(), "z1".into()),
                    (VIRTUAL_NODE_LABEL.into(), "false".into()),
                    ("vkube.dev/managed-by".into(), "mallory".into()),
                ])),
                annotations: Some(BTreeMap::from([(
                    "kwok.x-k8s.io/node".into(),
                    "fake".into(),
                )])),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                provider_id: Some("aws:///i-123".into()),
                taints: Some(vec![Taint {
                    key: "dedicated".into(),
                    value: Some("db".into()),
                    effect: "NoSchedule".into(),
                    time_added: None,
                }]),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(vec![NodeAddress {
                    type_: "InternalIP".into(),
                    address: "10.0.0.7".into(),
                }]),
                capacity: Some(BTreeMap::from([("cpu".into(), Quantity("32".into()))])),
                allocatable: Some(BTreeMap::from([("cpu".into(), Quantity("31".into()))])),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    last_heartbeat_time: Some(at(heartbeat)),
                    last_transition_time: Some(at(0)),
                    ..Default::default()
                }]),
                node_info: Some(NodeSystemInfo {
                    kubelet_version: "v1.35.4".into(),
                    ..Default::default()
                }),
                daemon_endpoints: Some(NodeDaemonEndpoints::default()),
                images: Some(vec![ContainerImage {
                    names: Some(vec!["registry.example/other-tenant/secret-app:1".into()]),
                    size_bytes: Some(1),
                }]),
                volumes_attached: Some(vec![AttachedVolume {
                    name: "kubernetes.io/csi/other-tenants-volume".into(),
                    device_path: String::new(),
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn the_mirror_shows_the_host_node_but_not_other_tenants() {
        let v = mirror(&host(0));
        let labels = v.metadata.labels.clone().unwrap();
        assert_eq!(labels["topology.kubernetes.io/zone"], "z1");
        assert_eq!(
            labels[VIRTUAL_NODE_LABEL], "true",
            "ownership cannot be forged"
        );
        assert!(!labels.contains_key("vkube.dev/managed-by"));
        assert_eq!(
            v.metadata.annotations.clone().unwrap()[MIRRORED_LABELS],
            "kubernetes.io/hostname,topology.kubernetes.io/zone"
        );
        let spec = v.spec.clone().unwrap();
        assert_eq!(spec.taints.unwrap()[0].key, "dedicated");
        assert_eq!(spec.provider_id, None);
        let status = v.status.unwrap();
        assert_eq!(status.addresses.unwrap()[0].address, "10.0.0.7");
        assert_eq!(status.capacity.unwrap()["cpu"].0, "32");
        assert_eq!(status.allocatable.unwrap()["cpu"].0, "31");
        assert_eq!(status.node_info.unwrap().kubelet_version, "v1.35.4");
        assert!(status.daemon_endpoints.is_some());
        assert_eq!(status.images, None);
        assert_eq!(status.volumes_attached, None);
    }

    #[test]
    fn trimming_keeps_everything_the_mirror_reads() {
        let mut h = host(0);
        trim_host_node(&mut h);
        assert_eq!(h.status.as_ref().unwrap().images, None);
        assert_eq!(mirror(&h), mirror(&host(0)));
    }

    #[test]
    fn heartbeats_alone_are_written_only_every_few_minutes() {
        let shown = mirror(&host(0));
        assert!(!needs_update(&mirror(&host(40)), &shown));
        let refresh = HEARTBEAT_REFRESH.as_secs() as i64;
        assert!(needs_update(&mirror(&host(refresh)), &shown));
        assert!(!needs_update(&shown, &shown));
        // An older heartbeat (a stale cache) never counts as due.
        assert!(!needs_update(&shown, &mirror(&host(refresh))));
    }

    #[test]
    fn real_changes_are_written_at_once() {
        let shown = mirror(&host(0));
        let mut h = host(1);
        h.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("disk".into(), "ssd".into());
        assert!(needs_update(&mirror(&h), &shown));
        let mut h = host(1);
        h.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "False".into();
        assert!(needs_update(&mirror(&h), &shown));
        // A label the tenant added to the virtual node is not a reason to write.
        let mut tenant_labelled = shown.clone();
        tenant_labelled
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("team".into(), "a".into());
        assert!(!needs_update(&mirror(&host(1)), &tenant_labelled));
    }

    #[test]
    fn a_label_the_host_drops_goes_and_the_tenants_own_stay() {
        let mut have = mirror(&host(0));
        have.metadata.resource_version = Some("42".into());
        let labels = have.metadata.labels.as_mut().unwrap();
        labels.insert("team".into(), "a".into());
        let mut h = host(1);
        h.metadata
            .labels
            .as_mut()
            .unwrap()
            .remove("topology.kubernetes.io/zone");
        let want = mirror(&h);
        assert!(needs_update(&want, &have));
        let out = updated(&want, &have);
        let labels = out.metadata.labels.clone().unwrap();
        assert!(!labels.contains_key("topology.kubernetes.io/zone"));
        assert_eq!(labels["team"], "a");
        assert_eq!(labels[VIRTUAL_NODE_LABEL], "true");
        assert_eq!(out.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(out.status, want.status);
        assert!(!needs_update(&want, &out));
    }
}
