//! Virtual pods as the syncer caches them. A `Pod` costs about 12 KB in memory for a one-container
//! pod with its service-account volume (k8s-openapi's `Volume` alone is 3.2 KB inline, a
//! `Container` 2.1 KB), while its spec is 1.2 KB as JSON and its status 0.7 KB. Both are read
//! when a pod is reconciled, not while it sits in the cache, so they are kept as JSON and parsed
//! on use; what is read across the whole cache or on every watch event (the node a pod is bound
//! to, whether it was scheduled, the objects it references) is kept apart. Measured at 5,000
//! pods (`hack/bench-sync.sh 5000`): peak RSS of `vkube serve` 119 MiB with `Pod`s cached,
//! 99 MiB with this (docs/performance.md).

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};
use kube::api::ObjectMeta;
use serde::Deserialize;

use crate::translate::pod::{self as translate, References};

#[derive(kube::Resource, Clone, Debug, Deserialize)]
#[resource(inherit = Pod)]
#[serde(from = "WirePod")]
pub struct VirtualPod {
    pub metadata: ObjectMeta,
    spec: CompactSpec,
    status: CompactStatus,
}

#[derive(Clone, Debug, Default)]
struct CompactSpec {
    json: Option<Box<str>>,
    node_name: Option<String>,
    references: References,
    /// Fields the API server sent that vkube's types do not know (`spec.schedulingGroup` from a
    /// newer virtual API server): parsing drops them, so they are noted on the way in.
    beyond_types: Box<[String]>,
}

#[derive(Clone, Debug, Default)]
struct CompactStatus {
    json: Option<Box<str>>,
    scheduled: bool,
}

/// A pod as the API server sends it.
#[derive(Deserialize)]
struct WirePod {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default, deserialize_with = "spec_noting_unknown")]
    spec: WireSpec,
    status: Option<PodStatus>,
}

#[derive(Default)]
struct WireSpec {
    spec: Option<PodSpec>,
    beyond_types: Vec<String>,
}

/// Parses the spec, noting the path of every field the types ignore.
fn spec_noting_unknown<'de, D: serde::Deserializer<'de>>(d: D) -> Result<WireSpec, D::Error> {
    let mut beyond_types = Vec::new();
    let spec = serde_ignored::deserialize(d, |path| beyond_types.push(spec_path(&path)))?;
    Ok(WireSpec { spec, beyond_types })
}

/// `spec.containers[0].fooBar`, as `kubectl explain` and vkube's other messages name fields.
fn spec_path(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => "spec".into(),
        Path::Seq { parent, index } => format!("{}[{index}]", spec_path(parent)),
        Path::Map { parent, key } => format!("{}.{key}", spec_path(parent)),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => spec_path(parent),
    }
}

impl From<WirePod> for VirtualPod {
    fn from(w: WirePod) -> Self {
        let pod = Pod {
            metadata: w.metadata,
            spec: w.spec.spec,
            status: w.status,
        };
        let mut cached = VirtualPod::from_pod(pod);
        cached.spec.beyond_types = w.spec.beyond_types.into_boxed_slice();
        cached
    }
}

impl VirtualPod {
    pub fn from_pod(pod: Pod) -> Self {
        let references = translate::references(&pod);
        // Serialising types that came from JSON cannot fail; were it to, the pod would read as
        // one without a spec (or status), which every reader already handles.
        let spec = CompactSpec {
            json: compact(pod.spec.as_ref()),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            references,
            beyond_types: Box::default(),
        };
        let status = CompactStatus {
            json: compact(pod.status.as_ref()),
            scheduled: pod_scheduled(pod.status.as_ref()),
        };
        VirtualPod {
            metadata: pod.metadata,
            spec,
            status,
        }
    }

    /// The whole pod, its spec parsed again (about as costly as its watch event was).
    pub fn to_pod(&self) -> Pod {
        Pod {
            metadata: self.metadata.clone(),
            spec: self.spec(),
            status: self.status(),
        }
    }

    pub fn spec(&self) -> Option<PodSpec> {
        parse(self.spec.json.as_deref())
    }

    pub fn status(&self) -> Option<PodStatus> {
        parse(self.status.json.as_deref())
    }

    /// Its `PodScheduled` condition is true.
    pub fn scheduled(&self) -> bool {
        self.status.scheduled
    }

    /// The node the pod is bound to.
    pub fn node_name(&self) -> Option<&str> {
        self.spec.node_name.as_deref()
    }

    /// Spec fields its API server sent that vkube's types do not know (and so cannot copy).
    pub fn fields_beyond_types(&self) -> &[String] {
        &self.spec.beyond_types
    }

    /// The configmaps, secrets and claims of its namespace the pod uses.
    pub fn references(&self) -> &References {
        &self.spec.references
    }
}

/// Whether the status shows the pod scheduled (`PodScheduled` true).
pub fn pod_scheduled(status: Option<&PodStatus>) -> bool {
    status.and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
        c.iter()
            .any(|c| c.type_ == "PodScheduled" && c.status == "True")
    })
}

fn compact<T: serde::Serialize>(part: Option<&T>) -> Option<Box<str>> {
    part.and_then(|p| serde_json::to_string(p).ok())
        .map(String::into_boxed_str)
}

fn parse<T: serde::de::DeserializeOwned>(json: Option<&str>) -> Option<T> {
    json.and_then(|s| serde_json::from_str(s).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WATCHED: &str = r#"{
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop", "uid": "v-1"},
        "spec": {
            "nodeName": "node-1",
            "containers": [{"name": "main", "image": "nginx",
                            "envFrom": [{"configMapRef": {"name": "settings"}}]}],
            "volumes": [{"name": "creds", "secret": {"secretName": "db"}},
                        {"name": "data", "persistentVolumeClaim": {"claimName": "pg"}}]
        },
        "status": {"phase": "Running", "podIP": "10.244.0.7",
                   "conditions": [{"type": "PodScheduled", "status": "True"}]}
    }"#;

    #[test]
    fn the_pod_comes_back_whole() {
        let pod: Pod = serde_json::from_str(WATCHED).expect("a pod");
        let cached: VirtualPod = serde_json::from_str(WATCHED).expect("a pod");
        assert_eq!(cached.to_pod(), pod);
        assert_eq!(cached.node_name(), Some("node-1"));
        assert!(cached.scheduled());
        assert_eq!(cached.references(), &translate::references(&pod));
        assert!(cached.references().config_maps.contains("settings"));
        assert!(cached.references().secrets.contains("db"));
        assert!(cached.references().claims.contains("pg"));
    }

    #[test]
    fn spec_fields_the_types_do_not_know_are_noted() {
        // What a 1.36 API server with GenericWorkload on sends, and a field of a later one.
        let newer = WATCHED
            .replace(
                r#""nodeName": "node-1","#,
                r#""nodeName": "node-1", "schedulingGroup": {"podGroupName": "g"},"#,
            )
            .replace(
                r#""image": "nginx","#,
                r#""image": "nginx", "hostKernel": {"modules": ["x"]},"#,
            );
        let cached: VirtualPod = serde_json::from_str(&newer).expect("a pod");
        assert_eq!(
            cached.fields_beyond_types(),
            ["spec.schedulingGroup", "spec.containers[0].hostKernel"]
        );
        // The rest reads as before.
        let known: VirtualPod = serde_json::from_str(WATCHED).expect("a pod");
        assert_eq!(cached.to_pod(), known.to_pod());
        assert!(known.fields_beyond_types().is_empty());
        // A status field the types do not know is not the spec's business: it goes up raw.
        let status = WATCHED.replace(r#""phase": "Running","#, r#""phase": "Running", "x": 1,"#);
        let cached: VirtualPod = serde_json::from_str(&status).expect("a pod");
        assert!(cached.fields_beyond_types().is_empty());
    }

    #[test]
    fn a_pod_without_a_spec_reads_as_one() {
        let cached: VirtualPod =
            serde_json::from_str(r#"{"metadata": {"name": "p"}}"#).expect("a pod");
        assert_eq!(cached.to_pod().spec, None);
        assert_eq!(cached.to_pod().status, None);
        assert_eq!(cached.node_name(), None);
        assert!(!cached.scheduled());
        assert_eq!(cached.references(), &References::default());
    }

    #[test]
    fn the_spec_is_not_kept_as_types() {
        // What the cache saves: the spec's JSON is far smaller than the types it parses into.
        let pod: Pod = serde_json::from_str(WATCHED).expect("a pod");
        let json = serde_json::to_string(&pod.spec).expect("serialisable");
        let inline = std::mem::size_of::<PodSpec>()
            + std::mem::size_of::<k8s_openapi::api::core::v1::Container>()
            + 2 * std::mem::size_of::<k8s_openapi::api::core::v1::Volume>();
        assert!(json.len() * 10 < inline, "{} vs {inline}", json.len());
        assert!(std::mem::size_of::<CompactSpec>() < std::mem::size_of::<PodSpec>() / 4);
        assert!(std::mem::size_of::<CompactStatus>() < std::mem::size_of::<PodStatus>() / 4);
    }
}
