//! The admin's policy (chart values → a YAML file the manager reads) and the checks a
//! VirtualCluster must pass before anything is created for it. Pure: no I/O.
//!
//! The chart's ValidatingAdmissionPolicy refuses the same version and limit violations at
//! admission time; the manager checks again (the policy may be missing or edited) and is the
//! only place the per-user count can be checked, since admission cannot count other objects.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Toleration;
use serde::{Deserialize, Serialize};

use crate::api::{ExposureType, PodSecurity, TenantResources, VirtualCluster};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// Clusters one user may own; 0 = no limit.
    #[serde(default)]
    pub max_clusters_per_user: u32,
    /// Allowed Kubernetes versions and the image holding each one's pinned binaries.
    pub kubernetes_versions: Vec<VersionImage>,
    /// Used when a cluster names no version; must be one of `kubernetes_versions`.
    pub default_kubernetes_version: String,
    #[serde(default = "default_pull_policy")]
    pub image_pull_policy: String,
    /// The most one tenant may ask for.
    #[serde(default)]
    pub max_resources: TenantResources,
    /// What a tenant gets when it asks for nothing.
    #[serde(default)]
    pub default_resources: TenantResources,
    /// Requests given to tenant containers that set none (a LimitRange), so a quota on
    /// cpu/memory does not reject them, and the memory limit of containers that set none.
    #[serde(default)]
    pub container_defaults: ContainerDefaults,
    /// The tenant's memory limits may add up to this many times its memory (`limits.memory` of
    /// the quota; at least 1).
    #[serde(default = "default_memory_limit_ratio")]
    pub memory_limit_ratio: f64,
    /// Objects one tenant may keep on the host: ResourceQuota resource names (`count/services`,
    /// `services.nodeports`, ...) and how many, on top of what the control plane needs itself.
    #[serde(default)]
    pub object_quota: BTreeMap<String, String>,
    /// Names no VirtualCluster may have (besides `system` and the one whose host namespace would
    /// be the manager's own, which are always reserved).
    #[serde(default)]
    pub reserved_names: Vec<String>,
    #[serde(default)]
    pub control_plane: ControlPlanePolicy,
    #[serde(default = "default_exposures")]
    pub allowed_exposures: Vec<ExposureType>,
    /// The weakest Pod Security level a tenant may choose; also the host namespace's
    /// pod-security.kubernetes.io/enforce label.
    #[serde(default = "default_pod_security")]
    pub pod_security: PodSecurity,
    /// Where control planes and tenant pods run.
    #[serde(default)]
    pub placement: Placement,
    /// Bind each tenant's syncer to the read-only ClusterRole of
    /// manifests/serve-cluster-rbac.yaml (chart value `syncer.clusterRead`): virtual nodes
    /// mirror host nodes and the host's StorageClasses/PersistentVolumes are shown. Off: pseudo
    /// nodes, no storage mirrors, nothing cluster-wide for the syncer.
    #[serde(default)]
    pub syncer_cluster_read: bool,
    /// Tenant pods' network beyond the default tenant NetworkPolicy (chart value
    /// `policy.network`), passed to each tenant's `vkube serve`.
    #[serde(default)]
    pub network: NetworkValues,
    /// What tenant pods may ask of the host beyond the safe defaults (chart value
    /// `policy.tenantPods`), passed to each tenant's `vkube serve` as flags.
    #[serde(default)]
    pub tenant_pods: TenantPodValues,
    /// Tenant Ingresses (chart value `policy.ingress`).
    #[serde(default)]
    pub ingress: IngressValues,
    /// Tenant Services (chart value `policy.services`).
    #[serde(default)]
    pub services: ServiceValues,
    /// Where each tenant's virtual API server may connect on its behalf (`--apiserver-egress`:
    /// tenant, allow-public or unrestricted).
    #[serde(default = "default_apiserver_egress")]
    pub apiserver_egress: String,
    /// Custom resource kinds every tenant's objects are synced to the host for (chart value
    /// `policy.customResources`): `--sync-custom-resource`, and a rule each in `vkube-serve`.
    #[serde(default)]
    pub custom_resources: Vec<CustomResourceValues>,
    /// `--sync-volume-snapshots` (chart value `policy.volumeSnapshots`).
    #[serde(default)]
    pub volume_snapshots: bool,
    /// `--show-host-kind`: cluster-scoped host kinds shown read-only (`GROUP/VERSION/KIND`).
    #[serde(default)]
    pub show_host_kinds: Vec<String>,
    /// When idle clusters sleep (chart value `policy.sleepAfter`).
    #[serde(default)]
    pub sleep_after: SleepAfterPolicy,
    /// Each tenant's `vkube serve` metrics, scrapeable by the admin's namespaces (chart values
    /// `metrics.tenants` and `metrics.allowedNamespaces`). Absent: not served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_metrics: Option<TenantMetrics>,
}

/// Where tenants' control planes serve their metrics, and who may scrape them.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantMetrics {
    /// The control plane pod's metrics port (`vkube serve --metrics-bind-address 0.0.0.0:PORT`).
    pub port: u16,
    /// Namespaces whose pods may reach that port, by name (the admin's Prometheus). Empty:
    /// nobody (the port is still served, for `kubectl port-forward`).
    #[serde(default)]
    pub allowed_namespaces: Vec<String>,
}

impl TenantMetrics {
    /// Ports `vkube serve` itself listens on in the pod, and the ephemeral range its loopback
    /// children (etcd, kube-apiserver) take ports from: the metrics port may be none of them.
    fn validate(&self) -> Result<(), PolicyError> {
        let invalid = |why: String| PolicyError::Invalid(format!("tenantMetrics.{why}"));
        let taken = [
            (super::objects::LISTEN_PORT, "the API port"),
            (super::objects::DNS_PORT, "the DNS port"),
        ];
        if let Some((_, what)) = taken.iter().find(|(p, _)| *p == i32::from(self.port)) {
            return Err(invalid(format!("port: {} is {what}", self.port)));
        }
        if !(1024..=32767).contains(&self.port) {
            return Err(invalid(format!(
                "port: {} must be in 1024-32767 (unprivileged, below the ephemeral ports the control plane's own components take)",
                self.port
            )));
        }
        // Namespace names are DNS labels; anything else would never match and hide a typo.
        let label = |ns: &str| {
            (1..=63).contains(&ns.len())
                && ns
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !ns.starts_with('-')
                && !ns.ends_with('-')
        };
        if let Some(bad) = self.allowed_namespaces.iter().find(|ns| !label(ns)) {
            return Err(invalid(format!(
                "allowedNamespaces: {bad:?} is not a namespace name"
            )));
        }
        Ok(())
    }
}

/// The admin's bounds on `spec.sleepAfter` (durations as `30m`, `2h`, `1h30m`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SleepAfterPolicy {
    /// For clusters that set no `sleepAfter`. Empty: they never sleep by themselves.
    #[serde(default)]
    pub default: String,
    /// The longest a cluster may choose. Empty: no maximum, and `never` is allowed.
    #[serde(default)]
    pub max: String,
}

impl SleepAfterPolicy {
    fn parsed(field: &str, text: &str) -> Result<Option<Duration>, PolicyError> {
        if text.is_empty() {
            return Ok(None);
        }
        let d = super::sleep::parse_duration(text)
            .map_err(|e| PolicyError::Invalid(format!("sleepAfter.{field}: {e}")))?;
        if d < super::sleep::MIN_SLEEP_AFTER {
            return Err(PolicyError::Invalid(format!(
                "sleepAfter.{field}: {text} is shorter than the minimum 1m"
            )));
        }
        Ok(Some(d))
    }

    fn validate(&self) -> Result<(), PolicyError> {
        let default = Self::parsed("default", &self.default)?;
        let max = Self::parsed("max", &self.max)?;
        match (default, max) {
            (None, Some(_)) => Err(PolicyError::Invalid(
                "sleepAfter.default must be set when sleepAfter.max is (a cluster that sets none would never sleep)".into(),
            )),
            (Some(d), Some(m)) if d > m => Err(PolicyError::Invalid(format!(
                "sleepAfter.default {} is longer than sleepAfter.max {}",
                self.default, self.max
            ))),
            _ => Ok(()),
        }
    }
}

/// One custom resource kind of `policy.customResources`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomResourceValues {
    pub group: String,
    pub version: String,
    pub kind: String,
    /// The plural resource name (for the RBAC rule the chart adds to `vkube-serve`).
    pub resource: String,
    /// Field paths holding names of the same namespace, and what they name.
    #[serde(default)]
    pub references: Vec<ReferenceValues>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReferenceValues {
    pub path: String,
    pub kind: String,
}

impl CustomResourceValues {
    /// The `--sync-custom-resource` value.
    pub fn flag(&self) -> String {
        let mut s = format!("{}/{}/{}", self.group, self.version, self.kind);
        let refs: Vec<String> = self
            .references
            .iter()
            .map(|r| format!("{}={}", r.path, r.kind))
            .collect();
        if !refs.is_empty() {
            s.push(':');
            s.push_str(&refs.join(","));
        }
        s
    }
}

/// Widenings of the syncer's pod and metadata policy; each list becomes a repeated flag.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantPodValues {
    /// `--allow-volume-type`: volume types besides the safe defaults (`csi`, `nfs`, ...).
    #[serde(default)]
    pub allowed_volume_types: Vec<String>,
    /// `--allow-csi-driver`: drivers inline `csi` volumes may name.
    #[serde(default, rename = "allowedCSIDrivers")]
    pub allowed_csi_drivers: Vec<String>,
    /// `--node-selector`: labels every tenant pod's node must carry.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// `--pod-toleration`: tolerations added to every tenant pod, `key[=value][:effect]`.
    #[serde(default)]
    pub tolerations: Vec<String>,
    /// `--allow-toleration`: tenant tolerations kept on the host, `key[=value][:effect]`.
    #[serde(default)]
    pub allowed_tolerations: Vec<String>,
    /// `--allow-runtime-class`.
    #[serde(default)]
    pub allowed_runtime_classes: Vec<String>,
    /// `--allow-label`: label keys copied to the host unchanged (exact, `prefix/*` or `*`).
    #[serde(default)]
    pub allowed_labels: Vec<String>,
    /// `--allow-annotation`: annotation keys copied to the host unchanged.
    #[serde(default)]
    pub allowed_annotations: Vec<String>,
    /// `--allow-priority-class`: host PriorityClasses tenant pods may name.
    #[serde(default)]
    pub allowed_priority_classes: Vec<String>,
    /// `--default-priority-class`: what a pod naming another class gets (empty: none).
    #[serde(default)]
    pub default_priority_class: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressValues {
    /// `--ingress-host-suffix`: the DNS suffix of each tenant's Ingress hosts, with `{name}` for
    /// the cluster's name (`{name}.apps.example.com`). Empty: tenant Ingresses are not published.
    #[serde(default)]
    pub host_suffix: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceValues {
    /// `--allow-external-name`: ExternalName Services reach the host's DNS.
    #[serde(default)]
    pub allow_external_name: bool,
}

fn default_apiserver_egress() -> String {
    "tenant".into()
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetworkValues {
    /// Ranges tenant pods may reach although closed by default (`--egress-allow-cidr`).
    #[serde(default, rename = "egressAllowCIDRs")]
    pub egress_allow_cidrs: Vec<String>,
    /// More ranges closed to tenant pods (`--egress-deny-cidr`): the cluster's networks that
    /// lie outside the private ranges.
    #[serde(default, rename = "egressDenyCIDRs")]
    pub egress_deny_cidrs: Vec<String>,
}

fn default_pull_policy() -> String {
    "IfNotPresent".into()
}
fn default_exposures() -> Vec<ExposureType> {
    vec![ExposureType::ClusterIP]
}
fn default_pod_security() -> PodSecurity {
    PodSecurity::Baseline
}
fn default_memory_limit_ratio() -> f64 {
    2.0
}

/// Names always reserved: `vkube-system` is where the chart is usually installed.
pub const ALWAYS_RESERVED: &[&str] = &["system"];

/// Quota resources the manager sets from `resources` itself; `objectQuota` may not name them.
const RESOURCE_KEYS: &[&str] = &[
    "pods",
    "count/pods",
    "cpu",
    "requests.cpu",
    "memory",
    "requests.memory",
    "limits.memory",
    "requests.storage",
];

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VersionImage {
    pub version: String,
    pub image: String,
    /// `vkube serve --feature-gates` for tenants of this version (gates differ between minors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_gates: Option<String>,
    /// `vkube serve --runtime-config` for tenants of this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_config: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerDefaults {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Memory limit of containers that set none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlPlanePolicy {
    pub cpu_request: String,
    pub memory_request: String,
    pub memory_limit: String,
    /// Datastore volume size; the PVC of the control plane's StatefulSet.
    pub storage: String,
    /// Empty: the host's default StorageClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for ControlPlanePolicy {
    fn default() -> Self {
        ControlPlanePolicy {
            cpu_request: "100m".into(),
            memory_request: "384Mi".into(),
            memory_limit: "1Gi".into(),
            storage: "1Gi".into(),
            storage_class_name: None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Placement {
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("reading the policy file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("the policy is inconsistent: {0}")]
    Invalid(String),
}

impl Policy {
    /// The values that become `vkube serve` flags are parsed as `vkube serve` parses them, so a
    /// typo stops the manager at start instead of every tenant's control plane.
    fn validate_tenant_values(&self) -> Result<(), PolicyError> {
        use crate::translate::KeyPattern;
        use crate::translate::placement::TolerationSpec;
        let invalid = |field: &str, e: String| PolicyError::Invalid(format!("{field}: {e}"));
        let t = &self.tenant_pods;
        for (field, specs) in [
            ("tenantPods.tolerations", &t.tolerations),
            ("tenantPods.allowedTolerations", &t.allowed_tolerations),
        ] {
            for spec in specs {
                spec.parse::<TolerationSpec>()
                    .map_err(|e| invalid(field, e))?;
            }
        }
        for (field, patterns) in [
            ("tenantPods.allowedLabels", &t.allowed_labels),
            ("tenantPods.allowedAnnotations", &t.allowed_annotations),
        ] {
            for p in patterns {
                p.parse::<KeyPattern>()
                    .map_err(|e| invalid(field, e.to_string()))?;
            }
        }
        for (k, v) in &t.node_selector {
            crate::translate::placement::parse_selector_pair(&format!("{k}={v}"))
                .map_err(|e| invalid("tenantPods.nodeSelector", e))?;
        }
        if !self.ingress.host_suffix.is_empty() {
            crate::translate::ingress::host_suffix_for(&self.ingress.host_suffix, "example")
                .map_err(|e| invalid("ingress.hostSuffix", e.to_string()))?;
        }
        self.apiserver_egress
            .parse::<crate::egress::EgressMode>()
            .map_err(|e| invalid("apiserverEgress", e))?;
        if !t.default_priority_class.is_empty()
            && !t
                .allowed_priority_classes
                .contains(&t.default_priority_class)
        {
            return Err(invalid(
                "tenantPods.defaultPriorityClass",
                "must be one of tenantPods.allowedPriorityClasses".into(),
            ));
        }
        for c in &self.custom_resources {
            c.flag()
                .parse::<crate::translate::custom::CustomKind>()
                .map_err(|e| invalid("customResources", e))?;
            if c.resource.is_empty() {
                return Err(invalid(
                    "customResources",
                    format!("{}: resource (the plural name) is needed", c.kind),
                ));
            }
        }
        for k in &self.show_host_kinds {
            k.parse::<crate::translate::custom::HostKind>()
                .map_err(|e| invalid("showHostKinds", e))?;
        }
        Ok(())
    }

    pub fn from_yaml(yaml: &str, path: &str) -> Result<Policy, PolicyError> {
        let policy: Policy = serde_yaml::from_str(yaml).map_err(|e| PolicyError::Read {
            path: path.into(),
            reason: e.to_string(),
        })?;
        policy.validate()?;
        Ok(policy)
    }

    fn validate(&self) -> Result<(), PolicyError> {
        // Every listed version is one this vkube runs (`vkube serve --kubernetes-version`),
        // written as the minor ("1.35"), once: a tenant must never be promised a control plane
        // that cannot start.
        let mut seen = std::collections::BTreeSet::new();
        for v in &self.kubernetes_versions {
            let minor = crate::controlplane::version::Minor::supported(&v.version)
                .map_err(|e| PolicyError::Invalid(format!("kubernetesVersions: {e}")))?;
            if minor.to_string() != v.version {
                return Err(PolicyError::Invalid(format!(
                    "kubernetesVersions: write {:?} as the minor, {minor:?}",
                    v.version
                )));
            }
            if !seen.insert(minor) {
                return Err(PolicyError::Invalid(format!(
                    "kubernetesVersions: {minor} is listed twice"
                )));
            }
            use crate::controlplane::features::{FeatureGates, RuntimeConfig};
            if let Some(g) = &v.feature_gates {
                FeatureGates::parse(g).map_err(|e| {
                    PolicyError::Invalid(format!("kubernetesVersions {minor} featureGates: {e}"))
                })?;
            }
            if let Some(r) = &v.runtime_config {
                RuntimeConfig::parse(r).map_err(|e| {
                    PolicyError::Invalid(format!("kubernetesVersions {minor} runtimeConfig: {e}"))
                })?;
            }
        }
        if self.image_for(&self.default_kubernetes_version).is_none() {
            return Err(PolicyError::Invalid(format!(
                "defaultKubernetesVersion {:?} is not in kubernetesVersions",
                self.default_kubernetes_version
            )));
        }
        for (field, q, kind) in quantities(&self.max_resources)
            .into_iter()
            .chain(quantities(&self.default_resources))
        {
            parse_quantity(q, kind).map_err(|e| PolicyError::Invalid(format!("{field}: {e}")))?;
        }
        self.validate_tenant_values()?;
        for (field, cidrs) in [
            ("network.egressAllowCIDRs", &self.network.egress_allow_cidrs),
            ("network.egressDenyCIDRs", &self.network.egress_deny_cidrs),
        ] {
            for c in cidrs {
                c.parse::<crate::translate::endpoints::Cidr>()
                    .map_err(|e| PolicyError::Invalid(format!("{field}: {e}")))?;
            }
        }
        if !(self.memory_limit_ratio.is_finite() && self.memory_limit_ratio >= 1.0) {
            return Err(PolicyError::Invalid(format!(
                "memoryLimitRatio {} must be a number of at least 1",
                self.memory_limit_ratio
            )));
        }
        let d = &self.container_defaults;
        if let Some(limit) = &d.memory_limit {
            let limit = parse_quantity(limit, QuantityKind::Bytes)
                .map_err(|e| PolicyError::Invalid(format!("containerDefaults.memoryLimit: {e}")))?;
            if let Some(request) = &d.memory
                && parse_quantity(request, QuantityKind::Bytes).is_ok_and(|r| r > limit)
            {
                return Err(PolicyError::Invalid(
                    "containerDefaults.memory is above containerDefaults.memoryLimit".into(),
                ));
            }
        }
        self.sleep_after.validate()?;
        if let Some(m) = &self.tenant_metrics {
            m.validate()?;
        }
        for (key, value) in &self.object_quota {
            if RESOURCE_KEYS.contains(&key.as_str()) {
                return Err(PolicyError::Invalid(format!(
                    "objectQuota.{key}: set through maxResources/defaultResources"
                )));
            }
            parse_quantity(value, QuantityKind::Count)
                .map_err(|e| PolicyError::Invalid(format!("objectQuota.{key}: {e}")))?;
        }
        Ok(())
    }

    pub fn image_for(&self, version: &str) -> Option<&str> {
        self.kubernetes_versions
            .iter()
            .find(|v| v.version == version)
            .map(|v| v.image.as_str())
    }

    /// The `vkube serve` flags of a version's features (`--feature-gates`, `--runtime-config`).
    pub fn feature_args(&self, version: &str) -> Vec<String> {
        let Some(v) = self
            .kubernetes_versions
            .iter()
            .find(|v| v.version == version)
        else {
            return Vec::new();
        };
        let mut args = Vec::new();
        if let Some(g) = &v.feature_gates {
            args.extend(["--feature-gates".to_string(), g.clone()]);
        }
        if let Some(r) = &v.runtime_config {
            args.extend(["--runtime-config".to_string(), r.clone()]);
        }
        args
    }

    pub fn allowed_versions(&self) -> Vec<&str> {
        self.kubernetes_versions
            .iter()
            .map(|v| v.version.as_str())
            .collect()
    }
}

/// What a VirtualCluster resolves to once the policy's defaults are applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub version: String,
    pub image: String,
    pub resources: TenantResources,
    pub pod_security: PodSecurity,
    /// The owner's credential rotation (annotation), normalised RFC 3339.
    pub credentials_not_before: Option<String>,
    /// `spec.sleepAfter` with the admin's default applied; `None`: never idle.
    pub sleep_after: Option<Duration>,
    /// The owner's last `vkube sleep` and `vkube wake` (the annotations' values).
    pub sleep_requested: Option<String>,
    pub wake_requested: Option<String>,
}

/// What the check needs to know besides the cluster and the policy.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// How many accepted clusters the same owner created before this one.
    pub earlier_of_owner: usize,
    /// The manager's own namespace (the chart's release namespace).
    pub own_namespace: Option<&'a str>,
    pub now: time::OffsetDateTime,
}

impl Facts<'_> {
    pub fn new(earlier_of_owner: usize) -> Facts<'static> {
        Facts {
            earlier_of_owner,
            own_namespace: None,
            now: time::OffsetDateTime::now_utc(),
        }
    }
}

/// Why a cluster may not have this name, if it may not: the name must make a valid host
/// namespace `vkube-NAME`, and that namespace must not be one vkube keeps for itself (the
/// manager's own, `vkube-system`) or the admin reserved.
pub fn name_refusal(name: &str, policy: &Policy, own_namespace: Option<&str>) -> Option<String> {
    if let Err(e) = crate::names::validate_tenant_name(name) {
        return Some(format!(
            "{e} (the host namespace vkube-NAME must be a valid namespace name): choose another name"
        ));
    }
    let ns = super::objects::host_namespace(name);
    if own_namespace == Some(ns.as_str()) {
        return Some(format!(
            "the name {name:?} is reserved: its host namespace {ns} is the vkube manager's own namespace; choose another name"
        ));
    }
    if ALWAYS_RESERVED.contains(&name) || policy.reserved_names.iter().any(|r| r == name) {
        return Some(format!(
            "the name {name:?} is reserved by the admin (its host namespace would be {ns}); choose another name"
        ));
    }
    None
}

/// Why a cluster is refused; the text is shown to the developer as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub Vec<String>);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused by the admin's policy: {}", self.0.join("; "))
    }
}

/// Checks a cluster against the policy. `facts.earlier_of_owner` is how many accepted clusters
/// the same owner created before this one: counting only earlier ones makes the decision stable
/// (a cluster accepted once is not refused later because a newer one appeared).
pub fn check(vc: &VirtualCluster, policy: &Policy, facts: &Facts) -> Result<Resolved, Refusal> {
    let earlier_of_owner = facts.earlier_of_owner;
    let mut why = Vec::new();
    if let Some(refusal) = name_refusal(
        vc.metadata.name.as_deref().unwrap_or_default(),
        policy,
        facts.own_namespace,
    ) {
        why.push(refusal);
    }
    let credentials_not_before = match vc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::api::CREDENTIALS_NOT_BEFORE_ANNOTATION))
    {
        None => None,
        Some(text) => match crate::credentials::parse_not_before(text, facts.now) {
            Ok(t) => k8s_openapi::jiff::Timestamp::from_second(t.unix_timestamp())
                .ok()
                .map(|t| t.to_string()),
            Err(e) => {
                why.push(format!(
                    "annotation {}: {} (set it with `vkube rotate-credentials NAME`)",
                    crate::api::CREDENTIALS_NOT_BEFORE_ANNOTATION,
                    e.to_string()
                        .trim_start_matches("--credentials-not-before ")
                ));
                None
            }
        },
    };
    let version = vc
        .spec
        .kubernetes_version
        .clone()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| policy.default_kubernetes_version.clone());
    let image = policy.image_for(&version).map(str::to_string);
    if image.is_none() {
        why.push(format!(
            "Kubernetes version {version:?} is not allowed (allowed: {})",
            policy.allowed_versions().join(", ")
        ));
    }
    if policy.max_clusters_per_user > 0 && earlier_of_owner >= policy.max_clusters_per_user as usize
    {
        why.push(format!(
            "you already have {earlier_of_owner} virtual clusters, the most one user may have is {} \
             (delete one with `vkube delete NAME`)",
            policy.max_clusters_per_user
        ));
    }
    if !policy.allowed_exposures.contains(&vc.spec.expose.type_) {
        why.push(format!(
            "exposure {} is not allowed (allowed: {})",
            vc.spec.expose.type_.as_str(),
            policy
                .allowed_exposures
                .iter()
                .map(|e| e.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if vc.spec.expose.type_ == ExposureType::Ingress && vc.spec.expose.host.is_none() {
        why.push("exposure Ingress needs expose.host".into());
    }
    let resources = with_defaults(&vc.spec.resources, &policy.default_resources);
    for ((field, asked, kind), (_, max, _)) in quantities_all(&resources)
        .into_iter()
        .zip(quantities_all(&policy.max_resources))
    {
        let Some(asked) = asked else { continue };
        let asked_v = match parse_quantity(&asked, kind) {
            Ok(v) => v,
            Err(e) => {
                why.push(format!("resources.{field}: {e}"));
                continue;
            }
        };
        if let Some(max) = max
            && let Ok(max_v) = parse_quantity(&max, kind)
            && asked_v > max_v
        {
            why.push(format!(
                "resources.{field} {asked} is above the admin's maximum {max}"
            ));
        }
    }
    let pod_security = vc
        .spec
        .sync
        .pod_security
        .unwrap_or(policy.pod_security)
        .max(policy.pod_security);
    if vc
        .spec
        .sync
        .pod_security
        .is_some_and(|p| p < policy.pod_security)
    {
        why.push(format!(
            "sync.podSecurity {} is weaker than the admin's {}",
            vc.spec
                .sync
                .pod_security
                .map(PodSecurity::as_str)
                .unwrap_or_default(),
            policy.pod_security.as_str()
        ));
    }
    let sleep_after = match resolve_sleep_after(vc.spec.sleep_after.as_deref(), &policy.sleep_after)
    {
        Ok(d) => d,
        Err(e) => {
            why.push(e);
            None
        }
    };
    let mut request = |annotation: &str, command: &str| {
        let text = vc.metadata.annotations.as_ref()?.get(annotation)?;
        match request_time(text) {
            Ok(()) => Some(text.clone()),
            Err(e) => {
                why.push(format!(
                    "annotation {annotation}: {e} (set it with `vkube {command} NAME`)"
                ));
                None
            }
        }
    };
    let sleep_requested = request(crate::api::SLEEP_REQUESTED_ANNOTATION, "sleep");
    let wake_requested = request(crate::api::WAKE_REQUESTED_ANNOTATION, "wake");
    match image {
        Some(image) if why.is_empty() => Ok(Resolved {
            version,
            image,
            resources,
            pod_security,
            credentials_not_before,
            sleep_after,
            sleep_requested,
            wake_requested,
        }),
        _ => Err(Refusal(why)),
    }
}

/// `spec.sleepAfter` against the admin's bounds: empty takes the default, `never` only without
/// a maximum, a duration at least 1m and at most the maximum.
fn resolve_sleep_after(
    asked: Option<&str>,
    policy: &SleepAfterPolicy,
) -> Result<Option<Duration>, String> {
    let max = SleepAfterPolicy::parsed("max", &policy.max).ok().flatten();
    let default = SleepAfterPolicy::parsed("default", &policy.default)
        .ok()
        .flatten();
    match asked.filter(|a| !a.is_empty()) {
        None => Ok(default),
        Some("never") => match max {
            Some(_) => Err(format!(
                "sleepAfter never is not allowed: the admin's maximum is {}",
                policy.max
            )),
            None => Ok(None),
        },
        Some(text) => {
            let d = super::sleep::parse_duration(text).map_err(|e| format!("sleepAfter: {e}"))?;
            if d < super::sleep::MIN_SLEEP_AFTER {
                return Err(format!("sleepAfter {text} is shorter than the minimum 1m"));
            }
            if let Some(m) = max
                && d > m
            {
                return Err(format!(
                    "sleepAfter {text} is above the admin's maximum {}",
                    policy.max
                ));
            }
            Ok(Some(d))
        }
    }
}

/// An owner's request is the time it was made (RFC 3339). Only its value changing matters
/// (the manager records the last value it acted on): no clocks are compared.
fn request_time(text: &str) -> Result<(), String> {
    text.parse::<k8s_openapi::jiff::Timestamp>()
        .map(|_| ())
        .map_err(|_| format!("{text:?} is not an RFC 3339 time"))
}

fn with_defaults(asked: &TenantResources, defaults: &TenantResources) -> TenantResources {
    TenantResources {
        cpu: asked.cpu.clone().or_else(|| defaults.cpu.clone()),
        memory: asked.memory.clone().or_else(|| defaults.memory.clone()),
        pods: asked.pods.or(defaults.pods),
        storage: asked.storage.clone().or_else(|| defaults.storage.clone()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantityKind {
    Cpu,
    Bytes,
    Count,
}

fn quantities(r: &TenantResources) -> Vec<(&'static str, &str, QuantityKind)> {
    quantities_ref(r)
        .into_iter()
        .filter_map(|(f, q, k)| q.map(|q| (f, q, k)))
        .collect()
}

fn quantities_ref(r: &TenantResources) -> [(&'static str, Option<&str>, QuantityKind); 3] {
    [
        ("cpu", r.cpu.as_deref(), QuantityKind::Cpu),
        ("memory", r.memory.as_deref(), QuantityKind::Bytes),
        ("storage", r.storage.as_deref(), QuantityKind::Bytes),
    ]
}

fn quantities_all(r: &TenantResources) -> [(&'static str, Option<String>, QuantityKind); 4] {
    let [a, b, c] = quantities_ref(r);
    [
        (a.0, a.1.map(str::to_string), a.2),
        (b.0, b.1.map(str::to_string), b.2),
        (c.0, c.1.map(str::to_string), c.2),
        ("pods", r.pods.map(|p| p.to_string()), QuantityKind::Count),
    ]
}

/// A Kubernetes quantity in a comparable unit: millicores for CPU, bytes otherwise. Supports the
/// suffixes people write (m, k/M/G/T, Ki/Mi/Gi/Ti) and plain decimals; not exponent notation.
pub fn parse_quantity(q: &str, kind: QuantityKind) -> Result<u128, String> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let bad = || format!("{q:?} is not a quantity (e.g. 500m, 2, 512Mi, 4Gi)");
    if num.is_empty() {
        return Err(bad());
    }
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    if frac.contains('.') || whole.is_empty() && frac.is_empty() {
        return Err(bad());
    }
    // Work in thousandths so "0.5" and "500m" compare equal.
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let frac3: String = frac.chars().chain("000".chars()).take(3).collect();
    let frac3: u128 = frac3.parse().map_err(|_| bad())?;
    let milli = whole * 1000 + frac3;
    // `milli` thousandths of the number; scale to thousandths of the unit (millicores for CPU).
    let thousandths = match suffix {
        "m" => milli / 1000,
        "" => milli,
        "k" => milli * 1000,
        "M" => milli * 1_000_000,
        "G" => milli * 1_000_000_000,
        "T" => milli * 1_000_000_000_000,
        "Ki" => milli * 1024,
        "Mi" => milli * (1 << 20),
        "Gi" => milli * (1 << 30),
        "Ti" => milli * (1 << 40),
        _ => return Err(bad()),
    };
    Ok(match kind {
        QuantityKind::Cpu => thousandths,
        // Bytes and counts compare in whole units.
        QuantityKind::Bytes | QuantityKind::Count => thousandths / 1000,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::VirtualClusterSpec;

    pub(crate) fn policy() -> Policy {
        Policy::from_yaml(
            r#"
maxClustersPerUser: 2
kubernetesVersions: [{version: "1.35", image: "localhost/vkube/vkube:dev"}]
defaultKubernetesVersion: "1.35"
maxResources: {cpu: "4", memory: 8Gi, pods: 50, storage: 20Gi}
defaultResources: {cpu: "1", memory: 2Gi, pods: 20, storage: 10Gi}
containerDefaults: {cpu: 100m, memory: 128Mi, memoryLimit: 256Mi}
objectQuota:
  count/services: "10"
  count/secrets: "20"
  count/configmaps: "20"
  count/persistentvolumeclaims: "5"
  count/networkpolicies.networking.k8s.io: "5"
  count/jobs.batch: "7"
  services.nodeports: "0"
  services.loadbalancers: "0"
placement:
  nodeSelector: {vkube.dev/node-type: real}
  tolerations: [{key: vkube.dev/real-node, operator: Exists, effect: NoSchedule}]
"#,
            "test",
        )
        .unwrap()
    }

    #[test]
    fn tenant_widenings_are_parsed_as_vkube_serve_parses_them() {
        let with = |extra: &str| -> Result<Policy, PolicyError> {
            let mut v: serde_yaml::Value = serde_yaml::to_value(policy()).unwrap();
            let extra: serde_yaml::Mapping = serde_yaml::from_str(extra).unwrap();
            for (k, val) in extra {
                v[k] = val;
            }
            Policy::from_yaml(&serde_yaml::to_string(&v).unwrap(), "test")
        };
        with(
            r#"{tenantPods: {tolerations: ["pool=t:NoSchedule"], allowedLabels: ["istio.io/*"]},
                ingress: {hostSuffix: "{name}.apps.example.com"}, apiserverEgress: allow-public}"#,
        )
        .unwrap();
        for (bad, field) in [
            (
                r#"{tenantPods: {allowedTolerations: ["pool=*"]}}"#,
                "tenantPods.allowedTolerations",
            ),
            (
                r#"{tenantPods: {tolerations: ["k:Sometimes"]}}"#,
                "tenantPods.tolerations",
            ),
            (
                r#"{tenantPods: {allowedAnnotations: ["a*b"]}}"#,
                "tenantPods.allowedAnnotations",
            ),
            (r#"{ingress: {hostSuffix: "*.apps"}}"#, "ingress.hostSuffix"),
            (r#"{apiserverEgress: open}"#, "apiserverEgress"),
        ] {
            let err = with(bad).unwrap_err().to_string();
            assert!(err.contains(field), "{bad}: {err}");
        }
    }

    #[test]
    fn tenant_metrics_ports_and_namespaces_are_checked() {
        let with = |metrics: &str| {
            let mut v: serde_yaml::Value = serde_yaml::to_value(policy()).unwrap();
            v["tenantMetrics"] = serde_yaml::from_str(metrics).unwrap();
            Policy::from_yaml(&serde_yaml::to_string(&v).unwrap(), "test")
        };
        let ok = with("{port: 8080, allowedNamespaces: [monitoring]}").unwrap();
        assert_eq!(
            ok.tenant_metrics,
            Some(TenantMetrics {
                port: 8080,
                allowed_namespaces: vec!["monitoring".into()]
            })
        );
        assert!(policy().tenant_metrics.is_none());
        for (bad, says) in [
            ("{port: 8443}", "the API port"),
            ("{port: 1053}", "the DNS port"),
            ("{port: 80}", "1024-32767"),
            ("{port: 40000}", "1024-32767"),
            (
                "{port: 8080, allowedNamespaces: [Monitoring]}",
                "not a namespace",
            ),
            ("{port: 8080, allowedNamespaces: ['']}", "not a namespace"),
        ] {
            let err = with(bad).unwrap_err().to_string();
            assert!(
                err.contains("tenantMetrics") && err.contains(says),
                "{bad}: {err}"
            );
        }
    }

    pub(crate) fn vc(name: &str, spec: VirtualClusterSpec) -> VirtualCluster {
        let mut vc = VirtualCluster::new(name, spec);
        vc.metadata.annotations = Some(
            [(
                crate::api::OWNER_ANNOTATION.to_string(),
                "alice".to_string(),
            )]
            .into(),
        );
        vc.metadata.uid = Some("uid-1".into());
        vc
    }

    #[test]
    fn quantities_compare_across_suffixes() {
        use QuantityKind::*;
        assert_eq!(parse_quantity("500m", Cpu), parse_quantity("0.5", Cpu));
        assert_eq!(parse_quantity("2", Cpu), Ok(2000));
        assert_eq!(parse_quantity("1Gi", Bytes), Ok(1 << 30));
        assert_eq!(parse_quantity("1G", Bytes), Ok(1_000_000_000));
        assert_eq!(parse_quantity("1.5Gi", Bytes), Ok(3 << 29));
        for bad in ["", "Gi", "1.2.3", "1x", "-1", "1e3"] {
            assert!(parse_quantity(bad, Bytes).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_are_applied_and_checked() {
        let r = check(&vc("a", Default::default()), &policy(), &Facts::new(0)).unwrap();
        assert_eq!(r.version, "1.35");
        assert_eq!(r.image, "localhost/vkube/vkube:dev");
        assert_eq!(r.resources.cpu.as_deref(), Some("1"));
        assert_eq!(r.resources.pods, Some(20));
        assert_eq!(r.pod_security, PodSecurity::Baseline);
    }

    #[test]
    fn what_the_policy_forbids_is_refused_with_every_reason() {
        let spec = VirtualClusterSpec {
            kubernetes_version: Some("1.20".into()),
            resources: TenantResources {
                cpu: Some("8".into()),
                memory: Some("9Gi".into()),
                pods: Some(51),
                storage: None,
            },
            expose: crate::api::Exposure {
                type_: ExposureType::LoadBalancer,
                host: None,
            },
            ..Default::default()
        };
        let Refusal(why) = check(&vc("a", spec), &policy(), &Facts::new(2)).unwrap_err();
        let text = why.join("\n");
        assert!(
            text.contains("version \"1.20\" is not allowed (allowed: 1.35)"),
            "{text}"
        );
        assert!(text.contains("the most one user may have is 2"), "{text}");
        assert!(
            text.contains("resources.cpu 8 is above the admin's maximum 4"),
            "{text}"
        );
        assert!(text.contains("resources.memory 9Gi"), "{text}");
        assert!(text.contains("resources.pods 51"), "{text}");
        assert!(
            text.contains("exposure LoadBalancer is not allowed"),
            "{text}"
        );
        assert_eq!(why.len(), 6);
    }

    #[test]
    fn limits_at_the_maximum_and_one_cluster_below_the_count_pass() {
        let spec = VirtualClusterSpec {
            resources: TenantResources {
                cpu: Some("4000m".into()),
                memory: Some("8Gi".into()),
                pods: Some(50),
                storage: Some("20Gi".into()),
            },
            ..Default::default()
        };
        assert!(check(&vc("a", spec), &policy(), &Facts::new(1)).is_ok());
    }

    #[test]
    fn a_weaker_pod_security_than_the_admins_is_refused() {
        let mut p = policy();
        p.pod_security = PodSecurity::Restricted;
        let mut spec = VirtualClusterSpec::default();
        spec.sync.pod_security = Some(PodSecurity::Baseline);
        assert!(check(&vc("a", spec), &p, &Facts::new(0)).is_err());
        let r = check(&vc("a", Default::default()), &p, &Facts::new(0)).unwrap();
        assert_eq!(r.pod_security, PodSecurity::Restricted);
    }

    /// The chart's default policy values, as its helper renders them (image filled in, empty
    /// storage class dropped), are a policy the manager accepts.
    #[test]
    fn the_charts_default_policy_is_valid() {
        let values: serde_yaml::Value =
            serde_yaml::from_str(include_str!("../../charts/vkube/values.yaml")).unwrap();
        let mut policy = values["policy"].clone();
        for v in policy["kubernetesVersions"].as_sequence_mut().unwrap() {
            v["image"] = "localhost/vkube/vkube:dev".into();
        }
        policy["imagePullPolicy"] = "IfNotPresent".into();
        if let Some(cp) = policy["controlPlane"].as_mapping_mut() {
            cp.remove("storageClassName");
        }
        let p = Policy::from_yaml(&serde_yaml::to_string(&policy).unwrap(), "values").unwrap();
        assert_eq!(p.allowed_versions(), ["1.35"]);
        // Safe by default: a storage limit, memory limits, objects and node ports counted.
        assert!(p.default_resources.storage.is_some());
        assert!(p.container_defaults.memory_limit.is_some());
        for key in [
            "count/services",
            "count/secrets",
            "count/configmaps",
            "services.nodeports",
        ] {
            assert!(p.object_quota.contains_key(key), "{key}");
        }
        assert_eq!(p.object_quota["services.nodeports"], "0");
        assert!(check(&vc("a", Default::default()), &p, &Facts::new(0)).is_ok());
    }

    fn facts(own: Option<&str>) -> Facts<'_> {
        Facts {
            earlier_of_owner: 0,
            own_namespace: own,
            now: time::OffsetDateTime::from_unix_timestamp(1_769_860_800).unwrap(),
        }
    }

    /// `vkube-system`, the manager's own namespace, the admin's list and names that make no
    /// valid namespace are refused, whoever asks.
    #[test]
    fn reserved_and_invalid_names_are_refused() {
        let mut p = policy();
        p.reserved_names = vec!["kube".into()];
        let refused = |name: &str, own: Option<&str>| {
            let Refusal(why) = check(&vc(name, Default::default()), &p, &facts(own)).unwrap_err();
            why.join("; ")
        };
        assert!(refused("system", None).contains("\"system\" is reserved"));
        assert!(refused("kube", None).contains("reserved by the admin"));
        let own = refused("tools", Some("vkube-tools"));
        assert!(own.contains("the vkube manager's own namespace"), "{own}");
        assert!(
            check(
                &vc("tools", Default::default()),
                &p,
                &facts(Some("platform"))
            )
            .is_ok()
        );
        for bad in ["a.b", "Alice", "-a", &"x".repeat(41), ""] {
            let why = refused(bad, None);
            assert!(
                why.contains("must be a valid namespace name"),
                "{bad}: {why}"
            );
        }
        assert!(check(&vc(&"x".repeat(40), Default::default()), &p, &facts(None)).is_ok());
        // The chart's helper reserves `system` too (the manager does on its own).
        assert!(
            include_str!("../../charts/vkube/templates/_helpers.tpl").contains("(list \"system\")")
        );
        assert_eq!(ALWAYS_RESERVED, ["system"]);
    }

    #[test]
    fn a_credential_rotation_must_be_a_time_not_in_the_future() {
        let with = |value: &str| {
            let mut v = vc("a", Default::default());
            v.metadata.annotations.as_mut().unwrap().insert(
                crate::api::CREDENTIALS_NOT_BEFORE_ANNOTATION.into(),
                value.into(),
            );
            check(&v, &policy(), &facts(None))
        };
        assert_eq!(
            with("2026-01-31T11:00:00Z")
                .unwrap()
                .credentials_not_before
                .as_deref(),
            Some("2026-01-31T11:00:00Z")
        );
        let Refusal(why) = with("soon").unwrap_err();
        assert!(why[0].contains("not an RFC 3339 time"), "{why:?}");
        assert!(why[0].contains("vkube rotate-credentials"), "{why:?}");
        let Refusal(why) = with("2026-02-01T00:00:00Z").unwrap_err();
        assert!(why[0].contains("in the future"), "{why:?}");
    }

    #[test]
    fn sleep_after_takes_the_admins_default_and_stays_under_the_maximum() {
        let mut p = policy();
        p.sleep_after = SleepAfterPolicy {
            default: "2h".into(),
            max: "8h".into(),
        };
        let with = |asked: Option<&str>| {
            check(
                &vc(
                    "a",
                    VirtualClusterSpec {
                        sleep_after: asked.map(str::to_string),
                        ..Default::default()
                    },
                ),
                &p,
                &facts(None),
            )
        };
        assert_eq!(
            with(None).unwrap().sleep_after,
            Some(Duration::from_secs(7200))
        );
        assert_eq!(
            with(Some("")).unwrap().sleep_after,
            Some(Duration::from_secs(7200))
        );
        assert_eq!(
            with(Some("30m")).unwrap().sleep_after,
            Some(Duration::from_secs(1800))
        );
        assert_eq!(
            with(Some("8h")).unwrap().sleep_after,
            Some(Duration::from_secs(8 * 3600))
        );
        for (asked, says) in [
            ("8h1s", "above the admin's maximum 8h"),
            ("never", "never is not allowed"),
            ("30s", "shorter than the minimum 1m"),
            ("1d", "is not a duration"),
        ] {
            let Refusal(why) = with(Some(asked)).unwrap_err();
            assert!(why.join(" ").contains(says), "{asked}: {why:?}");
        }
        // No maximum: `never` opts out; no default: clusters that set none never sleep.
        let mut p = policy();
        p.sleep_after.default = "1h".into();
        let r = check(
            &vc(
                "a",
                VirtualClusterSpec {
                    sleep_after: Some("never".into()),
                    ..Default::default()
                },
            ),
            &p,
            &facts(None),
        )
        .unwrap();
        assert_eq!(r.sleep_after, None);
        let r = check(&vc("a", Default::default()), &policy(), &facts(None)).unwrap();
        assert_eq!(r.sleep_after, None);
    }

    #[test]
    fn the_sleep_policy_is_checked_when_read() {
        let base =
            "kubernetesVersions: [{version: '1.35', image: x}]\ndefaultKubernetesVersion: '1.35'\n";
        let read = |extra: &str| Policy::from_yaml(&format!("{base}{extra}"), "p");
        assert!(read("sleepAfter: {default: 30m, max: 2h}\n").is_ok());
        assert!(read("sleepAfter: {default: 30m}\n").is_ok());
        for (bad, says) in [
            ("sleepAfter: {max: 2h}\n", "must be set when"),
            ("sleepAfter: {default: 3h, max: 2h}\n", "longer than"),
            ("sleepAfter: {default: 10s}\n", "minimum"),
            ("sleepAfter: {default: soon}\n", "sleepAfter.default"),
        ] {
            let err = read(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn sleep_and_wake_requests_are_times() {
        let with = |annotation: &str, value: &str| {
            let mut v = vc("a", Default::default());
            v.metadata
                .annotations
                .as_mut()
                .unwrap()
                .insert(annotation.into(), value.into());
            check(&v, &policy(), &facts(None))
        };
        let r = with(
            crate::api::SLEEP_REQUESTED_ANNOTATION,
            "2026-01-31T11:00:00Z",
        )
        .unwrap();
        assert_eq!(
            r.sleep_requested.map(|t| t.to_string()).as_deref(),
            Some("2026-01-31T11:00:00Z")
        );
        let r = with(
            crate::api::WAKE_REQUESTED_ANNOTATION,
            "2026-01-31T12:04:00.123456789+00:00",
        )
        .unwrap();
        assert!(r.wake_requested.is_some());
        let Refusal(why) = with(crate::api::SLEEP_REQUESTED_ANNOTATION, "now").unwrap_err();
        assert!(why[0].contains("vkube sleep NAME"), "{why:?}");
        let Refusal(why) = with(crate::api::WAKE_REQUESTED_ANNOTATION, "tomorrow").unwrap_err();
        assert!(why[0].contains("vkube wake NAME"), "{why:?}");
    }

    #[test]
    fn object_quota_and_memory_limits_are_checked_when_read() {
        let base =
            "kubernetesVersions: [{version: '1.35', image: x}]\ndefaultKubernetesVersion: '1.35'\n";
        let read = |extra: &str| Policy::from_yaml(&format!("{base}{extra}"), "p");
        assert!(read("objectQuota: {count/services: '5', count/jobs.batch: '3'}\n").is_ok());
        let err = read("objectQuota: {pods: '5'}\n").unwrap_err().to_string();
        assert!(err.contains("maxResources/defaultResources"), "{err}");
        assert!(read("objectQuota: {count/services: lots}\n").is_err());
        assert!(read("memoryLimitRatio: 0.5\n").is_err());
        assert_eq!(read("").unwrap().memory_limit_ratio, 2.0);
        let err = read("containerDefaults: {memory: 1Gi, memoryLimit: 256Mi}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("above containerDefaults.memoryLimit"), "{err}");
    }

    #[test]
    fn an_inconsistent_policy_is_rejected() {
        let err = Policy::from_yaml(
            "kubernetesVersions: [{version: '1.35', image: x}]\ndefaultKubernetesVersion: '1.34'\n",
            "p",
        )
        .unwrap_err();
        assert!(err.to_string().contains("defaultKubernetesVersion"));
        assert!(Policy::from_yaml("bogus: 1\n", "p").is_err());
    }

    #[test]
    fn only_versions_vkube_runs_are_listed_once_as_minors() {
        let read = |versions: &str| {
            Policy::from_yaml(
                &format!("kubernetesVersions: {versions}\ndefaultKubernetesVersion: '1.35'\n"),
                "p",
            )
        };
        let p = read("[{version: '1.34', image: a}, {version: '1.35', image: b}, {version: '1.36', image: c}]")
            .unwrap();
        assert_eq!(p.allowed_versions(), ["1.34", "1.35", "1.36"]);
        assert_eq!(p.image_for("1.34"), Some("a"));
        for (bad, why) in [
            (
                "[{version: '1.35', image: b}, {version: '1.20', image: a}]",
                "not supported",
            ),
            (
                "[{version: '1.35', image: b}, {version: '1.35', image: a}]",
                "listed twice",
            ),
            (
                "[{version: '1.35', image: b}, {version: 'v1.34', image: a}]",
                "as the minor",
            ),
            (
                "[{version: '1.35', image: b}, {version: 'latest', image: a}]",
                "invalid",
            ),
        ] {
            let err = read(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn a_versions_features_are_checked_and_become_serve_flags() {
        let read = |extra: &str| {
            Policy::from_yaml(
                &format!(
                    "kubernetesVersions: [{{version: '1.35', image: b}}, {{version: '1.36', image: c{extra}}}]\ndefaultKubernetesVersion: '1.35'\n"
                ),
                "p",
            )
        };
        let p = read(", featureGates: 'GenericWorkload=true', runtimeConfig: 'scheduling.k8s.io/v1alpha2=true'")
            .unwrap();
        assert_eq!(
            p.feature_args("1.36"),
            [
                "--feature-gates",
                "GenericWorkload=true",
                "--runtime-config",
                "scheduling.k8s.io/v1alpha2=true"
            ]
        );
        assert!(p.feature_args("1.35").is_empty());
        for (bad, why) in [
            (", featureGates: 'GenericWorkload'", "1.36 featureGates"),
            (
                ", featureGates: 'A=true --anonymous-auth=true'",
                "featureGates",
            ),
            (", runtimeConfig: 'api/all'", "1.36 runtimeConfig"),
        ] {
            let err = read(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn network_ranges_must_be_cidrs() {
        let base =
            "kubernetesVersions: [{version: '1.35', image: x}]\ndefaultKubernetesVersion: '1.35'\n";
        let ok = Policy::from_yaml(
            &format!("{base}network: {{egressAllowCIDRs: [10.20.0.0/16], egressDenyCIDRs: ['fd00::/8']}}\n"),
            "p",
        )
        .unwrap();
        assert_eq!(ok.network.egress_allow_cidrs, ["10.20.0.0/16"]);
        let err = Policy::from_yaml(
            &format!("{base}network: {{egressAllowCIDRs: [10.20.0.0]}}\n"),
            "p",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("network.egressAllowCIDRs"),
            "{err}"
        );
    }
}
