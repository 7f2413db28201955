//! Host pods as the syncer caches them. It reads a host pod only for whom it stands for (vkube's
//! labels and annotations), where it runs and what it reports; the rest of a `Pod` (its spec
//! alone is 1.5 KB inline before any container) is never deserialized, and the status is kept as
//! the compact JSON it is copied up as. At 5,000 pods this is about half the syncer's memory.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::api::ObjectMeta;
use serde::{Deserialize, Deserializer};

// vkube's own labels and annotations (ownership, origin, desired hash) carry this prefix.
use crate::translate::{RESERVED_PREFIX, is_renamed_key};

#[derive(kube::Resource, Clone, Debug, Deserialize)]
#[resource(inherit = Pod)]
pub struct HostPod {
    #[serde(deserialize_with = "own_metadata")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: HostPodSpec,
    #[serde(default)]
    status: CompactStatus,
}

/// The status as the compact JSON it is copied up as, and the pod's IPs (read on their own when
/// endpoints are checked against the tenant's pods).
#[derive(Clone, Debug, Default)]
struct CompactStatus {
    json: Option<Box<str>>,
    pod_ips: Box<[String]>,
}

impl<'de> Deserialize<'de> for CompactStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Kept as the host wrote it: a host newer than vkube's types reports fields they do not
        // know, and those reach the virtual pod too (see `HostPod::status_json`).
        let Some(raw) = Option::<serde_json::Value>::deserialize(d)? else {
            return Ok(CompactStatus::default());
        };
        let status = PodStatus::deserialize(&raw).map_err(serde::de::Error::custom)?;
        let json = raw.to_string();
        let mut pod_ips: Vec<String> = status
            .pod_ips
            .into_iter()
            .flatten()
            .map(|i| i.ip)
            .chain(status.pod_ip)
            .collect();
        pod_ips.sort();
        pod_ips.dedup();
        Ok(CompactStatus {
            json: Some(json.into_boxed_str()),
            pod_ips: pod_ips.into_boxed_slice(),
        })
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostPodSpec {
    pub node_name: Option<String>,
}

impl HostPod {
    /// What the host reports about the pod (empty before the API server set any).
    pub fn status(&self) -> PodStatus {
        self.status
            .json
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default()
    }

    /// The status exactly as the host reported it, fields unknown to vkube's types included
    /// (an empty object before the API server set any).
    pub fn status_json(&self) -> serde_json::Value {
        self.status
            .json
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_else(|| serde_json::json!({}))
    }

    pub fn pod_ips(&self) -> &[String] {
        &self.status.pod_ips
    }

    pub fn node_name(&self) -> Option<&str> {
        self.spec.node_name.as_deref()
    }
}

/// Metadata without managed fields, and only vkube's own labels and annotations: the tenant's
/// copies (renamed ones included) are on the virtual pod already.
fn own_metadata<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let mut meta = ObjectMeta::deserialize(d)?;
    meta.managed_fields = None;
    let own = |m: &mut Option<BTreeMap<String, String>>| {
        if let Some(map) = m.as_mut() {
            map.retain(|k, _| k.starts_with(RESERVED_PREFIX) && !is_renamed_key(k));
        }
    };
    own(&mut meta.labels);
    own(&mut meta.annotations);
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::ResourceExt;

    const WATCHED: &str = r#"{
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "web-x-shop-x-alice", "namespace": "vkube-alice", "uid": "h-1",
            "labels": {"app": "web", "vkube.dev/managed-by": "alice", "vkube.dev/namespace": "shop",
                       "vkube.dev/l-0123456789abcdef0123456789abcdef": "frontend"},
            "annotations": {"vkube.dev/name": "web", "vkube.dev/uid": "v-1", "team": "pay"},
            "managedFields": [{"manager": "vkube", "operation": "Apply"}]
        },
        "spec": {"nodeName": "node-1", "containers": [{"name": "main", "image": "nginx"}]},
        "status": {"phase": "Running", "podIP": "10.244.0.7",
                   "podIPs": [{"ip": "10.244.0.7"}], "qosClass": "BestEffort"}
    }"#;

    #[test]
    fn only_what_the_syncer_reads_is_kept() {
        let p: HostPod = serde_json::from_str(WATCHED).expect("a pod");
        assert_eq!(p.name_any(), "web-x-shop-x-alice");
        assert_eq!(p.node_name(), Some("node-1"));
        assert!(p.metadata.managed_fields.is_none());
        let labels = p.labels();
        assert_eq!(labels.len(), 2, "{labels:?}");
        assert_eq!(labels["vkube.dev/managed-by"], "alice");
        assert!(!p.annotations().contains_key("team"));
        // Whom it stands for is still known.
        let o = crate::translate::origin(&p.metadata).expect("an origin");
        assert_eq!((o.namespace.as_str(), o.name.as_str()), ("shop", "web"));
        assert_eq!(o.uid.as_deref(), Some("v-1"));
        let s = p.status();
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(s.pod_ip.as_deref(), Some("10.244.0.7"));
        assert_eq!(s.qos_class.as_deref(), Some("BestEffort"));
        assert_eq!(p.pod_ips(), ["10.244.0.7".to_string()]);
    }

    #[test]
    fn status_fields_unknown_to_vkube_are_kept() {
        let newer = WATCHED.replace(
            r#""qosClass": "BestEffort"}"#,
            r#""qosClass": "BestEffort", "futureField": {"x": 1}}"#,
        );
        let p: HostPod = serde_json::from_str(&newer).expect("a pod");
        assert_eq!(p.status_json()["futureField"], serde_json::json!({"x": 1}));
        assert_eq!(p.status().phase.as_deref(), Some("Running"));
        assert_eq!(p.pod_ips(), ["10.244.0.7".to_string()]);
    }

    #[test]
    fn a_new_pod_without_status_or_node_reads_as_empty() {
        let p: HostPod =
            serde_json::from_str(r#"{"metadata": {"name": "x"}, "spec": {"containers": []}}"#)
                .expect("a pod");
        assert_eq!(p.node_name(), None);
        assert_eq!(p.status(), PodStatus::default());
        assert!(p.pod_ips().is_empty());
    }
}
