//! The `VirtualCluster` custom resource (vkube.dev/v1alpha1): what a developer asks for and what
//! the manager reports back. The CRD YAML in manifests/ and the chart is generated from these
//! types (`vkube crd`), never written by hand.
//!
//! Scope: cluster-scoped. A virtual cluster owns a whole host namespace (`vkube-NAME`), so its
//! name must be unique cluster-wide, and developers need no namespace of their own to create
//! one. Who may see which cluster is decided per object (the manager grants the owner rights on
//! exactly their clusters by name), not by the namespace the object lives in.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "vkube.dev";
/// Who created the cluster. Set by `vkube create` from the caller's authenticated identity
/// (SelfSubjectReview); the chart's ValidatingAdmissionPolicy rejects a create whose value is
/// not `request.userInfo.username` and any change afterwards, so it cannot be faked.
pub const OWNER_ANNOTATION: &str = "vkube.dev/owner";
/// The manager's finalizer: the host namespace and the owner's grants go before the object.
pub const FINALIZER: &str = "vkube.dev/cleanup";
/// Credential rotation (RFC 3339, set by `vkube rotate-credentials`): client certificates of the
/// cluster issued before this time are refused and a new admin kubeconfig is published. The
/// manager passes it to the control plane as `vkube serve --credentials-not-before`.
pub const CREDENTIALS_NOT_BEFORE_ANNOTATION: &str = "vkube.dev/credentials-not-before";
/// `vkube sleep` (RFC 3339): the owner asks the cluster to sleep now; the first request to its
/// API wakes it again. A request newer than the last wake takes effect.
pub const SLEEP_REQUESTED_ANNOTATION: &str = "vkube.dev/sleep-requested";
/// `vkube wake` (RFC 3339): the owner asks a sleeping cluster to start now.
pub const WAKE_REQUESTED_ANNOTATION: &str = "vkube.dev/wake-requested";
/// What `spec.sleepAfter` accepts: a duration in hours, minutes and seconds, or `never`.
pub const SLEEP_AFTER_PATTERN: &str = "^(never|([0-9]+[hms])+)$";

/// A virtual Kubernetes cluster: its own control plane in a host namespace, its pods run on the
/// host's nodes.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "vkube.dev",
    version = "v1alpha1",
    kind = "VirtualCluster",
    plural = "virtualclusters",
    shortname = "vc",
    category = "vkube",
    status = "VirtualClusterStatus",
    doc = "A virtual Kubernetes cluster: its own control plane in a host namespace; its pods run on the host's nodes.",
    // The JSON form: the structured one repeats `type_ = "string"`, which clippy's
    // duplicated_attributes lint rejects.
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".status.kubernetesVersion"}"#,
    printcolumn = r#"{"name":"Owner","type":"string","jsonPath":".status.owner"}"#,
    printcolumn = r#"{"name":"Paused","type":"boolean","jsonPath":".spec.paused"}"#,
    printcolumn = r#"{"name":"Sleep After","type":"string","jsonPath":".spec.sleepAfter","priority":1}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.endpoint","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualClusterSpec {
    /// Kubernetes minor version of the control plane (e.g. "1.35"); one of the versions the admin
    /// allows. Empty: the admin's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
    /// What the syncer copies to the host and what it lets through.
    #[serde(default)]
    pub sync: SyncSpec,
    /// What the tenant's workloads may use on the host (a ResourceQuota on its host namespace).
    /// Empty fields: the admin's defaults. Above the admin's maximum: refused.
    #[serde(default)]
    pub resources: TenantResources,
    /// How the tenant API is reached.
    #[serde(default)]
    pub expose: Exposure,
    /// Time without API requests after which the cluster sleeps ("30m", "2h", "1h30m"; at least
    /// 1m): its control plane stops and its host pods are removed, all state kept, and the
    /// first request to its API wakes it. Empty: the admin's default; "never" (only where the
    /// admin sets no maximum): it never sleeps by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(SLEEP_AFTER_PATTERN))]
    pub sleep_after: Option<String>,
    /// Paused: the control plane is scaled to zero and the tenant's host pods are removed; the
    /// virtual objects stay in the datastore. Unlike sleep, no request ends a pause.
    #[serde(default)]
    pub paused: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncSpec {
    /// Copy every ConfigMap, not only those pods reference.
    #[serde(default)]
    pub all_config_maps: bool,
    /// Copy every Secret, not only those pods reference.
    #[serde(default)]
    pub all_secrets: bool,
    /// Pod Security level enforced before a pod reaches the host ("baseline" or "restricted");
    /// never weaker than the admin's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_security: Option<PodSecurity>,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum PodSecurity {
    Baseline,
    Restricted,
}

impl PodSecurity {
    pub fn as_str(self) -> &'static str {
        match self {
            PodSecurity::Baseline => "baseline",
            PodSecurity::Restricted => "restricted",
        }
    }
}

/// Quantities in Kubernetes notation ("2", "500m", "4Gi").
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantResources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Exposure {
    #[serde(default, rename = "type")]
    pub type_: ExposureType,
    /// Host name of the Ingress (type Ingress only). The Ingress must pass TLS through: the
    /// tenant API authenticates clients by certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ExposureType {
    /// Reachable inside the host cluster; `vkube connect` port-forwards from outside.
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
    Ingress,
}

impl ExposureType {
    pub fn as_str(self) -> &'static str {
        match self {
            ExposureType::ClusterIP => "ClusterIP",
            ExposureType::NodePort => "NodePort",
            ExposureType::LoadBalancer => "LoadBalancer",
            ExposureType::Ingress => "Ingress",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Human-readable reason for the phase (why it is refused, what it waits for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Ready, Synced, Sleeping (metav1.Condition style).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The resolved Kubernetes version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
    /// URL of the tenant API inside the host cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_namespace: Option<String>,
    /// The Secret holding the admin kubeconfig; only the owner may read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig_secret: Option<SecretRef>,
    /// The creating user, from the request identity (see [`OWNER_ANNOTATION`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The last `vkube sleep` and `vkube wake` (their annotations' values) the manager acted
    /// on: a request is new when its annotation differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_sleep_request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_wake_request: Option<String>,
    /// What the tenant uses on the host, metered by the manager from the host objects of the
    /// tenant's namespace (never from anything the tenant writes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// A tenant's usage: the figures of the last sample and totals accumulated since metering began.
/// Totals grow by the previous sample's figures times the time between samples (at most
/// 5 minutes of it: a longer gap, e.g. the manager down, is not metered rather than guessed).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// The tenant's host pods that hold resources (not Succeeded or Failed).
    pub pods: u32,
    /// Requests of those pods (a quantity, e.g. `1500m`).
    pub cpu_requested: String,
    /// Requests of those pods (a quantity, e.g. `512Mi`).
    pub memory_requested: String,
    /// Measured by the host's metrics API; absent when the host has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_used: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_used: Option<String>,
    /// Storage requested by the tenant's PersistentVolumeClaims.
    pub storage_claimed: String,
    /// Pod-seconds since `since`.
    pub pod_seconds: u64,
    /// Core-seconds of CPU requested since `since`.
    pub cpu_requested_seconds: f64,
    /// Core-seconds of CPU measured since `since` (only while the host's metrics API answered).
    pub cpu_used_seconds: f64,
    /// When metering began (RFC 3339).
    pub since: String,
    /// When the figures above were taken (RFC 3339).
    pub sampled_at: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Accepted; host objects are being created.
    Provisioning,
    /// The control plane is starting (the tenant API does not answer /readyz yet).
    Starting,
    Ready,
    /// Paused by the owner: no control plane, no host pods; state kept.
    Paused,
    /// Asleep (idle for `sleepAfter`, or `vkube sleep`): no control plane, no host pods, state
    /// kept; the first request to its API wakes it. The `Sleeping` condition says why and since
    /// when.
    Sleeping,
    /// Policy forbids it; see the message. Nothing was created on the host.
    Refused,
    /// Something failed that the manager keeps retrying; see the message.
    Failed,
    Deleting,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Provisioning => "Provisioning",
            Phase::Starting => "Starting",
            Phase::Ready => "Ready",
            Phase::Paused => "Paused",
            Phase::Sleeping => "Sleeping",
            Phase::Refused => "Refused",
            Phase::Failed => "Failed",
            Phase::Deleting => "Deleting",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
    pub key: String,
}

/// metav1.Condition, kept as our own type so the schema is generated with the rest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    pub reason: String,
    #[serde(default)]
    pub message: String,
    /// RFC 3339.
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The CRD as YAML, with a header saying where it comes from.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    let body = serde_yaml::to_string(&VirtualCluster::crd())?;
    Ok(format!(
        "# Generated by `vkube crd` from src/api.rs; do not edit (a unit test fails when stale).\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn the_crd_is_cluster_scoped_with_status_and_printer_columns() {
        let crd = VirtualCluster::crd();
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.group, GROUP);
        let v = &crd.spec.versions[0];
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        let cols: Vec<_> = v
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            cols,
            [
                "Phase",
                "Version",
                "Owner",
                "Paused",
                "Sleep After",
                "Endpoint",
                "Age"
            ]
        );
    }

    /// manifests/crd.yaml and the chart's copy are what `vkube crd` prints; regenerate with
    /// `cargo run -- crd > manifests/crd.yaml` (and the chart's crds/ copy).
    #[test]
    fn checked_in_crd_yaml_is_current() {
        let want = crd_yaml().unwrap();
        for (path, have) in [
            ("manifests/crd.yaml", include_str!("../manifests/crd.yaml")),
            (
                "charts/vkube/crds/virtualclusters.yaml",
                include_str!("../charts/vkube/crds/virtualclusters.yaml"),
            ),
        ] {
            assert!(
                have == want,
                "{path} is stale: run `cargo run -- crd > {path}`"
            );
        }
    }

    /// The CRD refuses what the manager could not parse, for everyone (admission may be off).
    #[test]
    fn sleep_after_has_the_managers_pattern() {
        let crd = serde_json::to_value(VirtualCluster::crd()).unwrap();
        let field = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["sleepAfter"];
        assert_eq!(field["pattern"], SLEEP_AFTER_PATTERN, "{field}");
        assert!(crate::manager::sleep::parse_duration("1h30m").is_ok());
        assert_eq!(
            SLEEP_AFTER_PATTERN,
            format!(
                "^(never|{})$",
                crate::manager::sleep::DURATION_PATTERN
                    .trim_start_matches('^')
                    .trim_end_matches('$')
            )
        );
    }

    #[test]
    fn an_empty_spec_reads_with_defaults() {
        let spec: VirtualClusterSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec, VirtualClusterSpec::default());
        assert_eq!(spec.expose.type_, ExposureType::ClusterIP);
        let spec: VirtualClusterSpec = serde_json::from_str(
            r#"{"kubernetesVersion":"1.35","expose":{"type":"NodePort"},"paused":true,
                "sync":{"podSecurity":"restricted"},"resources":{"cpu":"2","pods":10}}"#,
        )
        .unwrap();
        assert_eq!(spec.kubernetes_version.as_deref(), Some("1.35"));
        assert_eq!(spec.expose.type_, ExposureType::NodePort);
        assert_eq!(spec.sync.pod_security, Some(PodSecurity::Restricted));
        assert_eq!(spec.resources.pods, Some(10));
        assert!(spec.paused);
    }
}
