//! The host objects one VirtualCluster turns into, built from the resource and the admin's
//! policy. Pure: no I/O; the reconciler applies them with server-side apply.
//!
//! Everything namespaced lives in the tenant's host namespace `vkube-NAME`, so deleting that
//! namespace removes it all; the namespace carries an owner reference to the VirtualCluster. The
//! cluster-scoped grants (the owner's ClusterRole and its binding, the syncer's cluster-read
//! binding) are deleted by the manager's finalizer once the namespace is gone.
//!
//! Every object carries [`UID_LABEL`] with the VirtualCluster's UID: the manager creates the
//! namespace with a plain create, and touches (updates, deletes) only objects that carry it, so
//! a namespace or object it did not make for this very cluster is never adopted. Rights inside
//! the namespace come from shared ClusterRoles of the chart, bound there by name (`bind`): the
//! syncer's ([`SYNCER_CLUSTER_ROLE`], the Role of manifests/serve-rbac.yaml) and the manager's
//! own ([`MANAGER_TENANT_CLUSTER_ROLE`]), which is bound first, since RBAC lets the manager
//! grant the owner only what it holds in that namespace.

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::Subject;
use serde_json::{Value, json};

use crate::api::{ExposureType, OWNER_ANNOTATION, VirtualCluster};
use crate::host::{self, LABEL_MANAGED_BY, LABEL_VIRTUAL_CLUSTER};

use super::policy::{Policy, QuantityKind, Resolved, parse_quantity};

pub const MANAGED_BY: &str = "vkube-manager";
/// The VirtualCluster's UID, on the namespace and on every object made for it: what the manager
/// may touch, and what the chart's admission policy lets it touch.
pub const UID_LABEL: &str = "vkube.dev/virtual-cluster-uid";
/// The chart's ClusterRole for tenant syncers: the Role of manifests/serve-rbac.yaml, bound in
/// each tenant namespace to its ServiceAccount.
pub const SYNCER_CLUSTER_ROLE: &str = "vkube-serve";
/// The chart's ClusterRole with the manager's rights inside a tenant namespace.
pub const MANAGER_TENANT_CLUSTER_ROLE: &str = "vkube-manager-tenant";
/// The RoleBinding giving the manager [`MANAGER_TENANT_CLUSTER_ROLE`] in a tenant namespace.
pub const MANAGER_BINDING: &str = "vkube-manager";
/// The opt-in cluster-read ClusterRole (manifests/serve-cluster-rbac.yaml, shipped by the chart).
pub const SYNCER_CLUSTER_READ_ROLE: &str = "vkube-serve-cluster-read";
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
pub const CONTROL_PLANE: &str = "control-plane";
/// The control plane's StatefulSet, ServiceAccount, Role and RoleBinding.
pub const SYNCER_NAME: &str = "vkube";
pub const OWNER_ROLE: &str = "vkube-owner";
pub const TENANT_POLICY_NAME: &str = "vkube-tenant";
pub const API_PORT: i32 = 443;
pub const LISTEN_PORT: i32 = 8443;
/// Where `vkube serve` answers the tenant pods' DNS (unprivileged; the Service maps 53 to it).
pub const DNS_PORT: i32 = 1053;
pub const DATA_DIR: &str = "/var/lib/vkube/data";
/// The NetworkPolicy that lets the admin's namespaces (and nobody else) reach the control plane
/// pod's metrics port (`policy.tenantMetrics`).
pub const METRICS_POLICY: &str = "vkube-metrics";
/// The control plane container's metrics port, by name (the chart's PodMonitor scrapes it).
pub const METRICS_PORT_NAME: &str = "metrics";
/// The namespace label Kubernetes sets to each namespace's name (no one else can set it).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The EndpointSlice that adds the manager's waker to a sleeping cluster's API Service.
pub const WAKER_SLICE: &str = "vkube-waker";
/// Its `endpointslice.kubernetes.io/managed-by`: the host's EndpointSlice controllers leave
/// slices of other managers alone (kube-proxy reads every slice of the Service).
pub const WAKER_MANAGED_BY: &str = "vkube-manager";
pub const SLICE_SERVICE_LABEL: &str = "kubernetes.io/service-name";
pub const SLICE_MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";

/// The namespaced kinds the manager creates (applied in the order [`namespaced`] lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ServiceAccount,
    Role,
    RoleBinding,
    ResourceQuota,
    LimitRange,
    NetworkPolicy,
    Service,
    Ingress,
    StatefulSet,
}

#[derive(Debug, Clone)]
pub struct Namespaced {
    pub kind: Kind,
    pub name: String,
    pub body: Value,
}

pub fn host_namespace(vc_name: &str) -> String {
    host::default_namespace(vc_name)
}

pub fn service_name(vc_name: &str) -> String {
    format!("vkube-{vc_name}")
}

/// The control plane's only pod (StatefulSet `vkube`, one replica).
pub fn control_plane_pod(_vc_name: &str) -> String {
    format!("{SYNCER_NAME}-0")
}

pub fn owner_cluster_role(vc_name: &str) -> String {
    format!("vkube:owner:{vc_name}")
}

pub fn owner(vc: &VirtualCluster) -> Option<&str> {
    vc.metadata
        .annotations
        .as_ref()?
        .get(OWNER_ANNOTATION)
        .map(String::as_str)
        .filter(|o| !o.is_empty())
}

pub fn uid(vc: &VirtualCluster) -> &str {
    vc.metadata.uid.as_deref().unwrap_or_default()
}

/// Whether a host object was made for this VirtualCluster (carries its UID).
pub fn is_ours(labels: &BTreeMap<String, String>, vc_uid: &str) -> bool {
    !vc_uid.is_empty() && labels.get(UID_LABEL).map(String::as_str) == Some(vc_uid)
}

/// The UID of the VirtualCluster a host object was made for by a vkube manager, if any.
pub fn made_for(labels: &BTreeMap<String, String>) -> Option<&str> {
    (labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY))
        .then(|| labels.get(UID_LABEL).map(String::as_str))
        .flatten()
        .filter(|u| !u.is_empty())
}

/// Made for cluster `vc_name` by a manager that did not label UIDs yet (before vkube 0.2): the
/// manager's own objects in a namespace that is this cluster's (its UID labelled by the admin
/// when upgrading), and the grants named after the cluster.
pub fn is_legacy(labels: &BTreeMap<String, String>, vc_name: &str) -> bool {
    labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY)
        && labels.get(LABEL_VIRTUAL_CLUSTER).map(String::as_str) == Some(vc_name)
        && !labels.contains_key(UID_LABEL)
}

fn labels(vc_name: &str) -> Value {
    json!({
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_VIRTUAL_CLUSTER: vc_name,
    })
}

fn meta(vc_name: &str, name: &str) -> Value {
    json!({"name": name, "namespace": host_namespace(vc_name), "labels": labels(vc_name)})
}

/// Labels of objects made for `vc`: the tenant's labels and its UID.
fn owned_labels(vc: &VirtualCluster) -> Value {
    let mut l = labels(vc.metadata.name.as_deref().unwrap_or_default());
    l[UID_LABEL] = json!(uid(vc));
    l
}

fn owner_reference(vc: &VirtualCluster) -> Value {
    json!([{
        "apiVersion": "vkube.dev/v1alpha1",
        "kind": "VirtualCluster",
        "name": vc.metadata.name.clone().unwrap_or_default(),
        "uid": vc.metadata.uid.clone().unwrap_or_default(),
    }])
}

pub fn namespace(vc: &VirtualCluster, policy: &Policy, resolved: &Resolved) -> Value {
    let name = vc.metadata.name.clone().unwrap_or_default();
    let mut labels = owned_labels(vc);
    let level = resolved.pod_security.max(policy.pod_security).as_str();
    labels["pod-security.kubernetes.io/enforce"] = level.into();
    labels["pod-security.kubernetes.io/warn"] = level.into();
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": host_namespace(&name), "labels": labels,
                     "ownerReferences": owner_reference(vc)},
    })
}

/// The syncer's rules: exactly the Role of manifests/serve-rbac.yaml (one source of truth for
/// what `vkube serve` needs in its namespace).
pub fn syncer_rules() -> Result<Value, String> {
    const RBAC: &str = include_str!("../../manifests/serve-rbac.yaml");
    for doc in serde_yaml::Deserializer::from_str(RBAC) {
        let v: Value = serde::Deserialize::deserialize(doc).map_err(|e| e.to_string())?;
        if v["kind"] == "Role" {
            return Ok(v["rules"].clone());
        }
    }
    Err("manifests/serve-rbac.yaml has no Role".into())
}

/// The opt-in cluster-read grant for tenant `vc`'s syncer: the ClusterRoleBinding of
/// manifests/serve-cluster-rbac.yaml (one source of truth) for its namespace. The ClusterRole
/// itself is the chart's, shared by all tenants; the manager binds it by name (`bind`).
pub fn syncer_cluster_read_binding(vc: &VirtualCluster) -> Result<Value, String> {
    const RBAC: &str = include_str!("../../manifests/serve-cluster-rbac.yaml");
    let vc_name = vc.metadata.name.clone().unwrap_or_default();
    let rbac = RBAC.replace("NAMESPACE", &host_namespace(&vc_name));
    for doc in serde_yaml::Deserializer::from_str(&rbac) {
        let mut v: Value = serde::Deserialize::deserialize(doc).map_err(|e| e.to_string())?;
        if v["kind"] == "ClusterRoleBinding" {
            v["metadata"]["labels"] = owned_labels(vc);
            v["metadata"]["ownerReferences"] = owner_reference(vc);
            return Ok(v);
        }
    }
    Err("manifests/serve-cluster-rbac.yaml has no ClusterRoleBinding".into())
}

/// The manager itself as an RBAC subject (from its own identity: a ServiceAccount in the chart).
pub fn subject_for_user(username: &str) -> Subject {
    match username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
    {
        Some((namespace, name)) => Subject {
            kind: "ServiceAccount".into(),
            name: name.into(),
            namespace: Some(namespace.into()),
            api_group: None,
        },
        None => Subject {
            kind: "User".into(),
            name: username.into(),
            namespace: None,
            api_group: Some("rbac.authorization.k8s.io".into()),
        },
    }
}

/// Name of [`syncer_cluster_read_binding`].
pub fn syncer_cluster_read_binding_name(vc_name: &str) -> String {
    format!("vkube-serve-cluster-read-{}", host_namespace(vc_name))
}

/// Where the control plane is reached and whether it runs (awake) or not (asleep, paused).
#[derive(Debug, Clone, Copy)]
pub struct ControlPlaneAt<'a> {
    pub cluster_ip: &'a str,
    pub running: bool,
}

/// Everything namespaced, given the Service's ClusterIP once it is known (it goes into the
/// serving certificate and the kubeconfig so clients reach the API by IP, no DNS needed).
/// `manager` is the manager's own identity: its rights in the namespace are bound first.
pub fn namespaced(
    vc: &VirtualCluster,
    policy: &Policy,
    resolved: &Resolved,
    control_plane_at: Option<ControlPlaneAt<'_>>,
    manager: &Subject,
) -> Vec<Namespaced> {
    let name = vc.metadata.name.clone().unwrap_or_default();
    let ns = host_namespace(&name);
    let svc = service_name(&name);
    let mut out = vec![
        Namespaced {
            kind: Kind::RoleBinding,
            name: MANAGER_BINDING.into(),
            body: json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                         "metadata": meta(&name, MANAGER_BINDING),
                         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                     "name": MANAGER_TENANT_CLUSTER_ROLE},
                         "subjects": [manager]}),
        },
        Namespaced {
            kind: Kind::ServiceAccount,
            name: SYNCER_NAME.into(),
            body: json!({"apiVersion": "v1", "kind": "ServiceAccount",
                         "metadata": meta(&name, SYNCER_NAME)}),
        },
        Namespaced {
            kind: Kind::RoleBinding,
            name: SYNCER_NAME.into(),
            body: json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                         "metadata": meta(&name, SYNCER_NAME),
                         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                     "name": SYNCER_CLUSTER_ROLE},
                         "subjects": [{"kind": "ServiceAccount", "name": SYNCER_NAME, "namespace": ns}]}),
        },
    ];
    if let Some(owner) = owner(vc) {
        // The owner reads the kubeconfig and may port-forward to the control plane: nothing
        // else in the host namespace (the tenant's synced pods and secrets stay hidden).
        out.push(Namespaced {
            kind: Kind::Role,
            name: OWNER_ROLE.into(),
            body: json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": meta(&name, OWNER_ROLE),
            "rules": [
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
                 "resourceNames": [host::kubeconfig_secret_name(&name)]},
                {"apiGroups": [""], "resources": ["services"], "verbs": ["get"],
                 "resourceNames": [svc]},
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"],
                 "resourceNames": [control_plane_pod(&name)]},
                {"apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["get", "create"],
                 "resourceNames": [control_plane_pod(&name)]},
            ]}),
        });
        out.push(Namespaced {
            kind: Kind::RoleBinding,
            name: OWNER_ROLE.into(),
            body: json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": meta(&name, OWNER_ROLE),
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": OWNER_ROLE},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": owner}]}),
        });
    }
    out.push(Namespaced {
        kind: Kind::LimitRange,
        name: TENANT_POLICY_NAME.into(),
        body: limit_range(&name, policy),
    });
    // The base of the default tenant NetworkPolicy (the tenant's syncer keeps the rest).
    let control_plane = crate::translate::networkpolicy::ControlPlane::Pod {
        selector: serde_json::from_value(selector(&name)).unwrap_or_default(),
        api_port: LISTEN_PORT,
        dns_port: Some(DNS_PORT),
    };
    for (policy_name, spec) in
        crate::translate::networkpolicy::default_policies(Some(&control_plane))
    {
        out.push(Namespaced {
            kind: Kind::NetworkPolicy,
            body: json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                         "metadata": meta(&name, &policy_name), "spec": spec}),
            name: policy_name,
        });
    }
    // Always there, so turning tenant metrics off (or emptying the namespaces) closes the port
    // again on the next reconcile.
    out.push(Namespaced {
        kind: Kind::NetworkPolicy,
        name: METRICS_POLICY.into(),
        body: json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                     "metadata": meta(&name, METRICS_POLICY),
                     "spec": metrics_policy_spec(&name, policy.tenant_metrics.as_ref())}),
    });
    out.push(Namespaced {
        kind: Kind::Service,
        name: svc.clone(),
        body: service(&name, vc.spec.expose.type_),
    });
    if vc.spec.expose.type_ == ExposureType::Ingress
        && let Some(host) = &vc.spec.expose.host
    {
        out.push(Namespaced {
            kind: Kind::Ingress,
            name: svc.clone(),
            body: ingress(&name, host),
        });
    }
    if let Some(at) = control_plane_at {
        out.push(Namespaced {
            kind: Kind::StatefulSet,
            name: SYNCER_NAME.into(),
            body: stateful_set(vc, policy, resolved, at.cluster_ip, at.running),
        });
    }
    // The quota goes before anything that runs pods, counting the objects above as the control
    // plane's own.
    let quota = Namespaced {
        kind: Kind::ResourceQuota,
        name: TENANT_POLICY_NAME.into(),
        body: resource_quota(vc, policy, resolved, &own_objects(vc, &out)),
    };
    let at = out
        .iter()
        .position(|o| o.kind == Kind::LimitRange)
        .unwrap_or(out.len());
    out.insert(at, quota);
    // Whatever builds an object above, it carries the cluster's UID.
    for o in &mut out {
        o.body["metadata"]["labels"][UID_LABEL] = json!(uid(vc));
    }
    out
}

/// Objects of each ResourceQuota-counted kind the control plane itself keeps in the namespace,
/// so the quota the admin sets is what the tenant's workloads get. Keys are ResourceQuota
/// resource names; both spellings (`services`, `count/services`) count the same objects.
fn own_objects(vc: &VirtualCluster, made: &[Namespaced]) -> BTreeMap<&'static str, u64> {
    let count = |kind: Kind| made.iter().filter(|o| o.kind == kind).count() as u64;
    let services = count(Kind::Service);
    let exposure = vc.spec.expose.type_;
    let node_ports = u64::from(matches!(
        exposure,
        ExposureType::NodePort | ExposureType::LoadBalancer
    ));
    let load_balancers = u64::from(exposure == ExposureType::LoadBalancer);
    BTreeMap::from([
        // The API Service.
        ("services", services),
        ("count/services", services),
        ("services.nodeports", node_ports),
        ("services.loadbalancers", load_balancers),
        // The PKI and kubeconfig Secrets of `vkube serve`.
        ("secrets", 2),
        ("count/secrets", 2),
        // kube-root-ca.crt, which the host puts in every namespace.
        ("configmaps", 1),
        ("count/configmaps", 1),
        // The datastore volume.
        ("persistentvolumeclaims", 1),
        ("count/persistentvolumeclaims", 1),
        ("count/ingresses.networking.k8s.io", count(Kind::Ingress)),
        (
            "count/networkpolicies.networking.k8s.io",
            count(Kind::NetworkPolicy),
        ),
        // The API Service's slices (one per IP family).
        ("count/endpointslices.discovery.k8s.io", 2),
        ("count/statefulsets.apps", 1),
        // `vkube` and `default`.
        ("serviceaccounts", 2),
        ("count/serviceaccounts", 2),
    ])
}

/// The tenant gets what it asked for, and the admin's object counts; the control plane's own
/// pod and objects are added on top so the quota never starves it. `limits.memory` makes every
/// pod carry a memory limit (the LimitRange gives one to containers that set none).
fn resource_quota(
    vc: &VirtualCluster,
    policy: &Policy,
    resolved: &Resolved,
    own: &BTreeMap<&'static str, u64>,
) -> Value {
    let name = vc.metadata.name.clone().unwrap_or_default();
    let mut hard = serde_json::Map::new();
    let cp = &policy.control_plane;
    for (key, value) in &policy.object_quota {
        let extra = own.get(key.as_str()).copied().unwrap_or(0);
        let admins = parse_quantity(value, QuantityKind::Count).unwrap_or(0);
        hard.insert(key.clone(), json!((admins + u128::from(extra)).to_string()));
    }
    if let Some(mem) = &resolved.resources.memory
        && let (Ok(asked), Ok(cp_limit)) = (
            parse_quantity(mem, QuantityKind::Bytes),
            parse_quantity(&cp.memory_limit, QuantityKind::Bytes),
        )
    {
        // Whole bytes; the ratio is at least 1 (checked when the policy is read).
        let tenant = (asked as f64 * policy.memory_limit_ratio) as u128;
        hard.insert(
            "limits.memory".into(),
            json!((tenant + cp_limit).to_string()),
        );
    }
    if let Some(cpu) = &resolved.resources.cpu {
        hard.insert("requests.cpu".into(), json!(sum(cpu, &cp.cpu_request)));
    }
    if let Some(mem) = &resolved.resources.memory {
        hard.insert(
            "requests.memory".into(),
            json!(sum(mem, &cp.memory_request)),
        );
    }
    if let Some(pods) = resolved.resources.pods {
        hard.insert("pods".into(), json!((pods + 1).to_string()));
    }
    if let Some(storage) = &resolved.resources.storage {
        hard.insert("requests.storage".into(), json!(sum(storage, &cp.storage)));
    }
    json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": meta(&name, TENANT_POLICY_NAME),
           "spec": {"hard": hard}})
}

/// Two quantities added, written in the smallest unit both parse to (millicores or bytes).
fn sum(a: &str, b: &str) -> String {
    use super::policy::{QuantityKind, parse_quantity};
    let cpu_like = |q: &str| q.ends_with('m') || q.chars().all(|c| c.is_ascii_digit() || c == '.');
    if cpu_like(a) && cpu_like(b) {
        match (
            parse_quantity(a, QuantityKind::Cpu),
            parse_quantity(b, QuantityKind::Cpu),
        ) {
            (Ok(x), Ok(y)) => format!("{}m", x + y),
            _ => a.to_string(),
        }
    } else {
        match (
            parse_quantity(a, QuantityKind::Bytes),
            parse_quantity(b, QuantityKind::Bytes),
        ) {
            (Ok(x), Ok(y)) => (x + y).to_string(),
            _ => a.to_string(),
        }
    }
}

/// Default requests, which the quota needs to admit a pod that sets none, and a default
/// *memory* limit (the quota's `limits.memory` needs one on every container). No default CPU
/// limit: it would also cap the control plane, which sets no CPU limit on purpose (the API
/// server starves under a small one); its memory limit is its own, so a default memory limit
/// never applies to it.
fn limit_range(name: &str, policy: &Policy) -> Value {
    let mut requests = serde_json::Map::new();
    if let Some(cpu) = &policy.container_defaults.cpu {
        requests.insert("cpu".into(), json!(cpu));
    }
    if let Some(mem) = &policy.container_defaults.memory {
        requests.insert("memory".into(), json!(mem));
    }
    let mut item = json!({"type": "Container", "defaultRequest": requests});
    if let Some(limit) = &policy.container_defaults.memory_limit {
        item["default"] = json!({"memory": limit});
    }
    json!({"apiVersion": "v1", "kind": "LimitRange", "metadata": meta(name, TENANT_POLICY_NAME),
           "spec": {"limits": [item]}})
}

/// Ingress to the control plane pod's metrics port from the admin's namespaces only. The
/// control plane's base policy already isolates the pod's ingress, so this adds exactly that
/// allowance, or nothing: no rule at all when no namespace may scrape (an empty `from` would
/// mean every source) or metrics are off.
fn metrics_policy_spec(name: &str, metrics: Option<&super::policy::TenantMetrics>) -> Value {
    let rules: Vec<Value> = metrics
        .filter(|m| !m.allowed_namespaces.is_empty())
        .map(|m| {
            json!({
                "ports": [{"port": m.port, "protocol": "TCP"}],
                "from": [{"namespaceSelector": {"matchExpressions": [{
                    "key": NAMESPACE_NAME_LABEL, "operator": "In",
                    "values": m.allowed_namespaces}]}}],
            })
        })
        .into_iter()
        .collect();
    json!({"podSelector": {"matchLabels": selector(name)}, "policyTypes": ["Ingress"],
           "ingress": rules})
}

/// The labels selecting the control plane pod (also the golden files' control plane).
pub(crate) fn selector(name: &str) -> Value {
    json!({LABEL_VIRTUAL_CLUSTER: name, COMPONENT_LABEL: CONTROL_PLANE})
}

fn service(name: &str, exposure: ExposureType) -> Value {
    let type_ = match exposure {
        ExposureType::Ingress | ExposureType::ClusterIP => "ClusterIP",
        ExposureType::NodePort => "NodePort",
        ExposureType::LoadBalancer => "LoadBalancer",
    };
    let mut ports = vec![
        json!({"name": "https", "port": API_PORT, "targetPort": LISTEN_PORT, "protocol": "TCP"}),
    ];
    // The tenant pods' cluster DNS (vkube serve listens where this points), only on a Service
    // that stays inside the cluster: on a NodePort or load balancer it would be an open
    // resolver. (Such clusters' pods keep the host's DNS for now.)
    if type_ == "ClusterIP" {
        ports.push(json!({"name": "dns", "port": 53, "targetPort": DNS_PORT, "protocol": "UDP"}));
    }
    json!({"apiVersion": "v1", "kind": "Service", "metadata": meta(name, &service_name(name)),
        "spec": {"type": type_, "selector": selector(name), "ports": ports}})
}

fn ingress(name: &str, host: &str) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": service_name(name), "namespace": host_namespace(name), "labels": labels(name),
                     // The API authenticates by client certificate: TLS must reach it intact.
                     "annotations": {"nginx.ingress.kubernetes.io/ssl-passthrough": "true",
                                     "nginx.ingress.kubernetes.io/backend-protocol": "HTTPS"}},
        "spec": {"rules": [{"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": service_name(name), "port": {"number": API_PORT}}}}]}}]}})
}

pub fn stateful_set(
    vc: &VirtualCluster,
    policy: &Policy,
    resolved: &Resolved,
    cluster_ip: &str,
    running: bool,
) -> Value {
    let name = vc.metadata.name.clone().unwrap_or_default();
    let ns = host_namespace(&name);
    let svc = service_name(&name);
    let server = format!("https://{cluster_ip}:{API_PORT}");
    let mut args = vec![
        "serve".to_string(),
        "--service-name".into(),
        svc.clone(),
        "--extra-san".into(),
        cluster_ip.into(),
        "--kubeconfig-server".into(),
        server,
        "--pod-security".into(),
        resolved.pod_security.as_str().into(),
        // The image holds one version's binaries; serve refuses to run another than asked for.
        "--kubernetes-version".into(),
        resolved.version.clone(),
    ];
    // The admin's features of that version, inside the tenant only.
    args.extend(policy.feature_args(&resolved.version));
    if !policy.syncer_cluster_read {
        // Without the grant, say so in the arguments rather than in a warning at every start.
        args.extend(["--node-sync", "pseudo", "--storage-sync", "off"].map(String::from));
    }
    // The manager keeps the base NetworkPolicies itself; the admin's ranges go to the syncer.
    args.extend(["--default-network-policy", "off"].map(String::from));
    // While the pod stops (sleep, pause), the requests still routed to it are answered.
    args.extend(["--shutdown-delay-seconds", "2"].map(String::from));
    for c in &policy.network.egress_allow_cidrs {
        args.extend(["--egress-allow-cidr".into(), c.clone()]);
    }
    for c in &policy.network.egress_deny_cidrs {
        args.extend(["--egress-deny-cidr".into(), c.clone()]);
    }
    if let Some(m) = &policy.tenant_metrics {
        // Plain HTTP without credentials: the namespace's vkube-metrics policy decides who
        // reaches it.
        args.extend([
            "--metrics-bind-address".into(),
            format!("0.0.0.0:{}", m.port),
        ]);
    }
    if let Some(epoch) = &resolved.credentials_not_before {
        // Changes the pod template: the control plane restarts, re-issues the admin
        // certificate and refuses the old ones (see `vkube rotate-credentials`).
        args.extend(["--credentials-not-before".into(), epoch.clone()]);
    }
    args.extend(tenant_policy_args(policy));
    if vc.spec.sync.all_config_maps {
        args.push("--sync-all-configmaps".into());
    }
    if vc.spec.sync.all_secrets {
        args.push("--sync-all-secrets".into());
    }
    if policy.allowed_exposures.contains(&ExposureType::NodePort) {
        args.push("--allow-node-port".into());
    }
    if policy
        .allowed_exposures
        .contains(&ExposureType::LoadBalancer)
    {
        args.push("--allow-load-balancer".into());
    }
    let replicas = if running { 1 } else { 0 };
    let cp = &policy.control_plane;
    let mut pvc_spec = json!({"accessModes": ["ReadWriteOnce"],
                              "resources": {"requests": {"storage": cp.storage}}});
    if let Some(class) = cp.storage_class_name.as_ref().filter(|c| !c.is_empty()) {
        pvc_spec["storageClassName"] = json!(class);
    }
    let probe = |path: &str, period: i32, failures: i32| {
        json!({"httpGet": {"path": path, "port": LISTEN_PORT, "scheme": "HTTPS"},
               "periodSeconds": period, "failureThreshold": failures, "timeoutSeconds": 5})
    };
    let mut pod_labels = labels(&name);
    pod_labels[COMPONENT_LABEL] = json!(CONTROL_PLANE);
    let mut ports = vec![
        json!({"name": "https", "containerPort": LISTEN_PORT, "protocol": "TCP"}),
        json!({"name": "dns", "containerPort": DNS_PORT, "protocol": "UDP"}),
    ];
    if let Some(m) = &policy.tenant_metrics {
        ports.push(json!({"name": METRICS_PORT_NAME, "containerPort": m.port, "protocol": "TCP"}));
    }
    json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta(&name, SYNCER_NAME),
    "spec": {
        "replicas": replicas,
        "serviceName": svc,
        "selector": {"matchLabels": selector(&name)},
        "template": {
            "metadata": {"labels": pod_labels},
            "spec": {
                "serviceAccountName": SYNCER_NAME,
                "enableServiceLinks": false,
                "terminationGracePeriodSeconds": 30,
                "nodeSelector": policy.placement.node_selector,
                "tolerations": policy.placement.tolerations,
                "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                                    "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "vkube",
                    "image": resolved.image,
                    "imagePullPolicy": policy.image_pull_policy,
                    "args": args,
                    "env": [
                        {"name": "VKUBE_NAME", "value": name},
                        {"name": "VKUBE_HOST_NAMESPACE", "value": ns},
                        {"name": "VKUBE_LISTEN", "value": format!("0.0.0.0:{LISTEN_PORT}")},
                        {"name": "VKUBE_DATA_DIR", "value": DATA_DIR},
                        {"name": "VKUBE_LOG_FORMAT", "value": "json"},
                    ],
                    "ports": ports,
                    "startupProbe": probe("/livez", 2, 90),
                    "livenessProbe": probe("/livez", 10, 6),
                    "readinessProbe": probe("/readyz", 2, 3),
                    "resources": {
                        "requests": {"cpu": cp.cpu_request, "memory": cp.memory_request},
                        "limits": {"memory": cp.memory_limit},
                    },
                    "securityContext": {"allowPrivilegeEscalation": false,
                                        "capabilities": {"drop": ["ALL"]}},
                    "volumeMounts": [{"name": "data", "mountPath": DATA_DIR}],
                }],
            },
        },
        "volumeClaimTemplates": [{"metadata": {"name": "data", "labels": labels(&name)}, "spec": pvc_spec}],
    }})
}

/// The admin's widenings of the tenant's pod, metadata, Ingress, Service and API-egress policy,
/// as `vkube serve` flags (the safe defaults need none).
fn tenant_policy_args(policy: &Policy) -> Vec<String> {
    let t = &policy.tenant_pods;
    let mut args = Vec::new();
    let mut repeat = |flag: &str, values: &[String]| {
        for v in values {
            args.extend([flag.to_string(), v.clone()]);
        }
    };
    repeat("--allow-volume-type", &t.allowed_volume_types);
    repeat("--allow-csi-driver", &t.allowed_csi_drivers);
    let selector: Vec<String> = t
        .node_selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    repeat("--node-selector", &selector);
    repeat("--pod-toleration", &t.tolerations);
    repeat("--allow-toleration", &t.allowed_tolerations);
    repeat("--allow-runtime-class", &t.allowed_runtime_classes);
    repeat("--allow-label", &t.allowed_labels);
    repeat("--allow-annotation", &t.allowed_annotations);
    repeat("--allow-priority-class", &t.allowed_priority_classes);
    let custom: Vec<String> = policy.custom_resources.iter().map(|c| c.flag()).collect();
    repeat("--sync-custom-resource", &custom);
    repeat("--show-host-kind", &policy.show_host_kinds);
    if !t.default_priority_class.is_empty() {
        args.extend([
            "--default-priority-class".into(),
            t.default_priority_class.clone(),
        ]);
    }
    if policy.volume_snapshots {
        args.push("--sync-volume-snapshots".into());
    }
    if !policy.ingress.host_suffix.is_empty() {
        // The template itself: `vkube serve` puts the tenant's name in.
        args.extend([
            "--ingress-host-suffix".into(),
            policy.ingress.host_suffix.clone(),
        ]);
    }
    if policy.services.allow_external_name {
        args.push("--allow-external-name".into());
    }
    args.extend(["--apiserver-egress".into(), policy.apiserver_egress.clone()]);
    args
}

/// While `vc` sleeps, its API Service gets this EndpointSlice besides the one the host's
/// controller keeps for the control plane pod (empty then): the `https` port reaches the waker
/// at `ip:port` (the manager's pod). The Service itself never changes, so its ClusterIP, node
/// port or load balancer stay what clients have; deleting this slice is the whole way back.
/// The chart's guard lets the manager write slices only of this shape (the API Service's name
/// label, this manager label, a tenant namespace).
pub fn waker_slice(vc: &VirtualCluster, ip: std::net::IpAddr, port: u16) -> Value {
    let name = vc.metadata.name.clone().unwrap_or_default();
    let mut labels = owned_labels(vc);
    labels[SLICE_SERVICE_LABEL] = json!(service_name(&name));
    labels[SLICE_MANAGED_BY_LABEL] = json!(WAKER_MANAGED_BY);
    let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": WAKER_SLICE, "namespace": host_namespace(&name), "labels": labels},
        "addressType": family,
        "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}]})
}

/// Where a waker slice points (address and port), read back after a manager restart.
pub fn waker_slice_target(
    slice: &k8s_openapi::api::discovery::v1::EndpointSlice,
) -> Option<(std::net::IpAddr, u16)> {
    let ip = slice.endpoints.first()?.addresses.first()?.parse().ok()?;
    let port = slice
        .ports
        .as_ref()?
        .iter()
        .find(|p| p.name.as_deref() == Some("https"))?
        .port?;
    Some((ip, u16::try_from(port).ok()?))
}

/// The owner's rights on their own cluster object, by name: RBAC cannot filter a LIST by
/// owner, so developers get no LIST at all and each owner gets get/watch/update/patch/delete on
/// exactly their clusters.
pub fn owner_grants(vc: &VirtualCluster) -> Option<(Value, Value)> {
    let owner = owner(vc)?;
    let name = vc.metadata.name.clone().unwrap_or_default();
    let role = owner_cluster_role(&name);
    // The finalizer removes the grant last, once the namespace is gone. The owner reference is
    // for a cluster that disappears without it (its finalizer removed by hand): the garbage
    // collector then removes the grant at once, before anyone can create a cluster of the same
    // name that the old owner's grant would reach.
    let meta = json!({"name": role, "labels": owned_labels(vc),
                      "ownerReferences": owner_reference(vc)});
    Some((
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta,
            "rules": [{"apiGroups": ["vkube.dev"], "resources": ["virtualclusters"],
                       "resourceNames": [name], "verbs": ["get", "watch", "update", "patch", "delete"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": owner}]}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::policy::{Facts, check, tests::policy, tests::vc};
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota, Service};
    use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role, RoleBinding};

    #[test]
    fn the_admins_widenings_reach_vkube_serve_as_flags() {
        let vc = vc("alice", Default::default());
        let mut p = policy();
        p.tenant_pods.allowed_volume_types = vec!["csi".into()];
        p.tenant_pods.allowed_csi_drivers = vec!["secrets-store.csi.k8s.io".into()];
        p.tenant_pods.node_selector = [("pool".to_string(), "tenants".to_string())].into();
        p.tenant_pods.tolerations = vec!["pool=tenants:NoSchedule".into()];
        p.tenant_pods.allowed_tolerations = vec!["gpu:NoSchedule".into()];
        p.tenant_pods.allowed_runtime_classes = vec!["gvisor".into()];
        p.tenant_pods.allowed_labels = vec!["team".into()];
        p.tenant_pods.allowed_annotations = vec!["prometheus.io/*".into()];
        p.ingress.host_suffix = "{name}.apps.example.com".into();
        p.services.allow_external_name = true;
        p.apiserver_egress = "allow-public".into();
        p.tenant_pods.allowed_priority_classes = vec!["tenant-low".into(), "tenant-high".into()];
        p.tenant_pods.default_priority_class = "tenant-low".into();
        p.custom_resources = vec![crate::manager::policy::CustomResourceValues {
            group: "example.com".into(),
            version: "v1".into(),
            kind: "Widget".into(),
            resource: "widgets".into(),
            references: vec![crate::manager::policy::ReferenceValues {
                path: "spec.secretRef.name".into(),
                kind: "Secret".into(),
            }],
        }];
        p.volume_snapshots = true;
        p.show_host_kinds = vec!["networking.k8s.io/v1/IngressClass".into()];
        let r = check(&vc, &p, &Facts::new(0)).unwrap();
        let sts: StatefulSet =
            serde_json::from_value(stateful_set(&vc, &p, &r, "10.96.0.42", true)).unwrap();
        let args = sts.spec.unwrap().template.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap()
            .join(" ");
        for want in [
            "--allow-volume-type csi",
            "--allow-csi-driver secrets-store.csi.k8s.io",
            "--node-selector pool=tenants",
            "--pod-toleration pool=tenants:NoSchedule",
            "--allow-toleration gpu:NoSchedule",
            "--allow-runtime-class gvisor",
            "--allow-label team",
            "--allow-annotation prometheus.io/*",
            "--ingress-host-suffix {name}.apps.example.com",
            "--allow-external-name",
            "--apiserver-egress allow-public",
            "--allow-priority-class tenant-low --allow-priority-class tenant-high",
            "--default-priority-class tenant-low",
            "--sync-custom-resource example.com/v1/Widget:spec.secretRef.name=Secret",
            "--show-host-kind networking.k8s.io/v1/IngressClass",
            "--sync-volume-snapshots",
        ] {
            assert!(args.contains(want), "{want} missing from {args}");
        }
    }

    /// Documents of a chart template, with the template lines dropped (labels, conditionals:
    /// what is inside a conditional stays, i.e. the fullest rendering).
    fn chart_docs(template: &str) -> Vec<Value> {
        template
            .split("\n---")
            .map(|doc| {
                doc.lines()
                    .filter(|l| !l.contains("{{"))
                    .map(|l| format!("{l}\n"))
                    .collect::<String>()
            })
            .filter_map(|plain| serde_yaml::from_str::<Value>(&plain).ok())
            .filter(|v| v.is_object())
            .collect()
    }

    fn chart_cluster_role(name: &str) -> Vec<PolicyRule> {
        let docs = [
            include_str!("../../charts/vkube/templates/manager.yaml"),
            include_str!("../../charts/vkube/templates/tenant-roles.yaml"),
            include_str!("../../charts/vkube/templates/serve-cluster-read.yaml"),
        ]
        .into_iter()
        .flat_map(chart_docs)
        .collect::<Vec<_>>();
        let role = docs
            .into_iter()
            .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("the chart has no ClusterRole {name}"));
        serde_json::from_value(role["rules"].clone()).unwrap()
    }

    /// (apiGroup, resource, verb, resourceName or "") for every combination a rule allows.
    fn grants(rules: &[PolicyRule]) -> Vec<(String, String, String, String)> {
        let mut out = vec![];
        for r in rules {
            let names = r
                .resource_names
                .clone()
                .unwrap_or_else(|| vec![String::new()]);
            for g in r.api_groups.clone().unwrap_or_default() {
                for res in r.resources.clone().unwrap_or_default() {
                    for v in &r.verbs {
                        for n in &names {
                            out.push((g.clone(), res.clone(), v.clone(), n.clone()));
                        }
                    }
                }
            }
        }
        out
    }

    fn holds(held: &[PolicyRule], group: &str, resource: &str, verb: &str, name: &str) -> bool {
        grants(held).iter().any(|(g, r, v, n)| {
            g == group && r == resource && v == verb && (n.is_empty() || n == name)
        })
    }

    fn manager_subject() -> Subject {
        subject_for_user("system:serviceaccount:vkube-system:vkube-manager")
    }

    fn build_vc(vc: &VirtualCluster, p: &Policy) -> Vec<Namespaced> {
        let r = check(vc, p, &Facts::new(0)).unwrap();
        let at = ControlPlaneAt {
            cluster_ip: "10.96.0.42",
            running: !vc.spec.paused,
        };
        namespaced(vc, p, &r, Some(at), &manager_subject())
    }

    fn build(spec: crate::api::VirtualClusterSpec) -> (VirtualCluster, Vec<Namespaced>) {
        let vc = vc("alice", spec);
        let objs = build_vc(&vc, &policy());
        (vc, objs)
    }

    fn find<T: serde::de::DeserializeOwned>(objs: &[Namespaced], kind: Kind, name: &str) -> T {
        let o = objs
            .iter()
            .find(|o| o.kind == kind && o.name == name)
            .unwrap_or_else(|| panic!("no {kind:?} {name}"));
        serde_json::from_value(o.body.clone()).unwrap()
    }

    /// One source of truth: the chart's shared syncer ClusterRole is the Role plain
    /// `vkube serve` runs with.
    #[test]
    fn the_charts_syncer_cluster_role_is_the_role_in_manifests() {
        let want: Vec<PolicyRule> = serde_json::from_value(syncer_rules().unwrap()).unwrap();
        assert_eq!(chart_cluster_role(SYNCER_CLUSTER_ROLE), want);
        assert!(
            want.iter()
                .any(|r| r.resources.as_ref().unwrap().contains(&"pods".into()))
        );
    }

    /// The chart ships the ClusterRole the manager binds: it must be the one in manifests.
    #[test]
    fn the_charts_cluster_read_role_is_the_one_in_manifests() {
        let manifest_role: Value = serde_yaml::Deserializer::from_str(include_str!(
            "../../manifests/serve-cluster-rbac.yaml"
        ))
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|v| v["kind"] == "ClusterRole")
        .unwrap();
        assert_eq!(manifest_role["metadata"]["name"], SYNCER_CLUSTER_READ_ROLE);
        let want: Vec<PolicyRule> = serde_json::from_value(manifest_role["rules"].clone()).unwrap();
        assert_eq!(chart_cluster_role(SYNCER_CLUSTER_READ_ROLE), want);
        let vc = vc("alice", Default::default());
        let b = syncer_cluster_read_binding(&vc).unwrap();
        assert_eq!(
            b["metadata"]["name"],
            syncer_cluster_read_binding_name("alice")
        );
        assert_eq!(b["roleRef"]["name"], SYNCER_CLUSTER_READ_ROLE);
        assert_eq!(b["subjects"][0]["namespace"], "vkube-alice");
        assert_eq!(b["subjects"][0]["name"], SYNCER_NAME);
        assert_eq!(b["metadata"]["labels"][UID_LABEL], "uid-1");
        assert_eq!(b["metadata"]["ownerReferences"][0]["uid"], "uid-1");
    }

    /// A compromised manager is not cluster-admin: cluster-wide it holds the VirtualCluster API,
    /// namespaces and RBAC objects (narrowed by the admission policy vkube-manager-guard), and
    /// `bind` on exactly the roles it hands out; no Secret, pod, exec or wildcard anywhere.
    #[test]
    fn the_manager_holds_nothing_inside_namespaces_cluster_wide() {
        let held = chart_cluster_role("vkube-manager");
        let allowed = [
            "virtualclusters",
            "virtualclusters/status",
            "virtualclusters/finalizers",
            "namespaces",
            "clusterroles",
            "clusterrolebindings",
            "rolebindings",
        ];
        for (group, resource, verb, name) in grants(&held) {
            assert!(
                allowed.contains(&resource.as_str()),
                "cluster-wide {verb} {resource}"
            );
            assert!(
                !["*", "escalate", "impersonate"].contains(&verb.as_str()) && group != "*",
                "{verb} on {group}/{resource}"
            );
            if verb == "bind" {
                assert!(
                    [
                        SYNCER_CLUSTER_ROLE,
                        MANAGER_TENANT_CLUSTER_ROLE,
                        SYNCER_CLUSTER_READ_ROLE
                    ]
                    .contains(&name.as_str()),
                    "bind {name:?}"
                );
            }
        }
        assert!(holds(
            &held,
            "rbac.authorization.k8s.io",
            "clusterroles",
            "bind",
            SYNCER_CLUSTER_ROLE
        ));
        // The tenant role is what the manager holds in a tenant namespace: no exec there either.
        let tenant = chart_cluster_role(MANAGER_TENANT_CLUSTER_ROLE);
        for (_, resource, verb, _) in grants(&tenant) {
            assert!(
                !["pods/exec", "pods/attach", "configmaps"].contains(&resource.as_str())
                    && verb != "*",
                "tenant role: {verb} {resource}"
            );
        }
    }

    fn resource_of(kind: Kind) -> (&'static str, &'static str) {
        match kind {
            Kind::ServiceAccount => ("", "serviceaccounts"),
            Kind::Role => ("rbac.authorization.k8s.io", "roles"),
            Kind::RoleBinding => ("rbac.authorization.k8s.io", "rolebindings"),
            Kind::ResourceQuota => ("", "resourcequotas"),
            Kind::LimitRange => ("", "limitranges"),
            Kind::NetworkPolicy => ("networking.k8s.io", "networkpolicies"),
            Kind::Service => ("", "services"),
            Kind::Ingress => ("networking.k8s.io", "ingresses"),
            Kind::StatefulSet => ("apps", "statefulsets"),
        }
    }

    /// Everything the manager makes in a tenant namespace it may write with the rights it has
    /// there (its cluster-wide role plus vkube-manager-tenant), every role it binds it holds
    /// `bind` on, and every rule of the owner's Role it holds itself (RBAC's escalation check),
    /// or every new cluster fails with "attempting to grant".
    #[test]
    fn the_manager_can_make_and_grant_everything_in_a_tenant_namespace() {
        let mut held = chart_cluster_role("vkube-manager");
        held.extend(chart_cluster_role(MANAGER_TENANT_CLUSTER_ROLE));
        let mut p = policy();
        p.allowed_exposures = vec![ExposureType::Ingress];
        let spec = crate::api::VirtualClusterSpec {
            expose: crate::api::Exposure {
                type_: ExposureType::Ingress,
                host: Some("alice.example.test".into()),
            },
            ..Default::default()
        };
        let objs = build_vc(&vc("alice", spec), &p);
        assert!(objs.iter().any(|o| o.kind == Kind::Ingress));
        for o in &objs {
            let (group, resource) = resource_of(o.kind);
            for verb in ["get", "create", "patch", "delete"] {
                assert!(
                    holds(&held, group, resource, verb, &o.name),
                    "{verb} {resource}"
                );
            }
            if let Some(role_ref) = o.body.get("roleRef")
                && role_ref["kind"] == "ClusterRole"
            {
                let name = role_ref["name"].as_str().unwrap();
                assert!(
                    holds(
                        &held,
                        "rbac.authorization.k8s.io",
                        "clusterroles",
                        "bind",
                        name
                    ),
                    "bind {name}"
                );
            }
        }
        let owner: Role = find(&objs, Kind::Role, OWNER_ROLE);
        for (group, resource, verb, name) in grants(&owner.rules.unwrap()) {
            assert!(
                holds(&held, &group, &resource, &verb, &name),
                "owner's {verb} {resource}"
            );
        }
        // Pause: list and delete the tenant's pods; the readiness probe reads the kubeconfig.
        assert!(holds(&held, "", "pods", "deletecollection", ""));
        assert!(holds(&held, "", "secrets", "get", "vkube-alice-kubeconfig"));
    }

    /// RBAC checks what the manager may grant with what it holds in the namespace: its own
    /// binding is applied before every other object, the owner's Role after it.
    #[test]
    fn the_managers_binding_comes_first() {
        let (_, objs) = build(Default::default());
        assert_eq!(objs[0].kind, Kind::RoleBinding);
        assert_eq!(objs[0].name, MANAGER_BINDING);
        let b: RoleBinding = serde_json::from_value(objs[0].body.clone()).unwrap();
        assert_eq!(b.role_ref.kind, "ClusterRole");
        assert_eq!(b.role_ref.name, MANAGER_TENANT_CLUSTER_ROLE);
        assert_eq!(b.subjects.unwrap(), vec![manager_subject()]);
        let syncer: RoleBinding = find(&objs, Kind::RoleBinding, SYNCER_NAME);
        assert_eq!(syncer.role_ref.kind, "ClusterRole");
        assert_eq!(syncer.role_ref.name, SYNCER_CLUSTER_ROLE);
        let subject = &syncer.subjects.unwrap()[0];
        assert_eq!(
            (
                subject.kind.as_str(),
                subject.name.as_str(),
                subject.namespace.as_deref()
            ),
            ("ServiceAccount", SYNCER_NAME, Some("vkube-alice"))
        );
        // No per-tenant copy of the syncer's rules any more: the shared ClusterRole is bound.
        assert!(
            !objs
                .iter()
                .any(|o| o.kind == Kind::Role && o.name == SYNCER_NAME)
        );
    }

    #[test]
    fn the_manager_is_bound_as_the_identity_the_host_reports() {
        let sa = manager_subject();
        assert_eq!(sa.kind, "ServiceAccount");
        assert_eq!(sa.name, "vkube-manager");
        assert_eq!(sa.namespace.as_deref(), Some("vkube-system"));
        let user = subject_for_user("admin@example.test");
        assert_eq!(
            (user.kind.as_str(), user.name.as_str()),
            ("User", "admin@example.test")
        );
        assert_eq!(
            subject_for_user("system:serviceaccount:broken").kind,
            "User"
        );
    }

    /// What the manager may touch is what carries the cluster's UID: every object it makes.
    #[test]
    fn every_object_carries_the_clusters_uid() {
        let (vc, objs) = build(Default::default());
        for o in &objs {
            assert_eq!(
                o.body["metadata"]["labels"][UID_LABEL], "uid-1",
                "{:?} {}",
                o.kind, o.name
            );
        }
        let p = policy();
        let r = check(&vc, &p, &Facts::new(0)).unwrap();
        let ns = namespace(&vc, &p, &r);
        assert_eq!(ns["metadata"]["labels"][UID_LABEL], "uid-1");
        let (role, binding) = owner_grants(&vc).unwrap();
        for grant in [role, binding] {
            assert_eq!(grant["metadata"]["labels"][UID_LABEL], "uid-1");
            assert_eq!(grant["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        }
        let labels = |uid: Option<&str>, by: &str| {
            let mut l = BTreeMap::from([(LABEL_MANAGED_BY.to_string(), by.to_string())]);
            if let Some(u) = uid {
                l.insert(UID_LABEL.into(), u.into());
            }
            l
        };
        assert!(is_ours(&labels(Some("uid-1"), MANAGED_BY), "uid-1"));
        assert!(!is_ours(&labels(Some("uid-2"), MANAGED_BY), "uid-1"));
        assert!(!is_ours(&labels(None, MANAGED_BY), "uid-1"));
        assert!(!is_ours(&labels(Some(""), MANAGED_BY), ""));
        assert_eq!(made_for(&labels(Some("uid-2"), MANAGED_BY)), Some("uid-2"));
        // `vkube serve`'s own labels do not make a namespace the manager's.
        assert_eq!(made_for(&labels(Some("uid-2"), "vkube")), None);
        assert_eq!(made_for(&labels(None, MANAGED_BY)), None);
        // An older manager's objects of this cluster (no UID yet), not anyone else's.
        let mut old = labels(None, MANAGED_BY);
        old.insert(LABEL_VIRTUAL_CLUSTER.into(), "alice".into());
        assert!(is_legacy(&old, "alice"));
        assert!(!is_legacy(&old, "bob"));
        old.insert(LABEL_MANAGED_BY.into(), "vkube".into());
        assert!(!is_legacy(&old, "alice"));
        assert!(!is_legacy(&labels(Some("uid-2"), MANAGED_BY), "alice"));
    }

    #[test]
    fn the_control_plane_runs_serve_with_the_policy_image_and_placement() {
        let (_, objs) = build(Default::default());
        let sts: StatefulSet = find(&objs, Kind::StatefulSet, SYNCER_NAME);
        let spec = sts.spec.unwrap();
        assert_eq!(spec.replicas, Some(1));
        let pod = spec.template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("localhost/vkube/vkube:dev"));
        let args = c.args.clone().unwrap();
        assert_eq!(args[0], "serve");
        let joined = args.join(" ");
        assert!(joined.contains("--extra-san 10.96.0.42"), "{joined}");
        assert!(joined.contains("--kubeconfig-server https://10.96.0.42:443"));
        assert!(joined.contains("--service-name vkube-alice"));
        assert!(!joined.contains("--credentials-not-before"));
        let env: Vec<_> = c.env.clone().unwrap();
        assert!(
            env.iter()
                .any(|e| e.name == "VKUBE_HOST_NAMESPACE"
                    && e.value.as_deref() == Some("vkube-alice"))
        );
        assert_eq!(pod.node_selector.unwrap()["vkube.dev/node-type"], "real");
        assert_eq!(
            pod.tolerations.unwrap()[0].key.as_deref(),
            Some("vkube.dev/real-node")
        );
        assert!(c.readiness_probe.is_some() && c.liveness_probe.is_some());
        assert_eq!(spec.volume_claim_templates.unwrap().len(), 1);
    }

    #[test]
    fn a_credential_rotation_reaches_the_control_plane_as_its_epoch() {
        let mut vc = vc("alice", Default::default());
        vc.metadata.annotations.as_mut().unwrap().insert(
            crate::api::CREDENTIALS_NOT_BEFORE_ANNOTATION.into(),
            "2026-01-31T13:00:00.5+01:00".into(),
        );
        let objs = build_vc(&vc, &policy());
        let sts: StatefulSet = find(&objs, Kind::StatefulSet, SYNCER_NAME);
        let args = sts.spec.unwrap().template.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap()
            .join(" ");
        assert!(
            args.contains("--credentials-not-before 2026-01-31T12:00:00Z"),
            "{args}"
        );
    }

    /// The control plane container's `vkube serve` arguments, joined.
    fn serve_args(vc: &VirtualCluster, p: &Policy) -> String {
        let r = check(vc, p, &Facts::new(0)).unwrap();
        let sts: StatefulSet =
            serde_json::from_value(stateful_set(vc, p, &r, "10.96.0.42", true)).unwrap();
        sts.spec.unwrap().template.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap()
            .join(" ")
    }

    #[test]
    fn without_cluster_read_the_syncer_is_told_to_do_without_it() {
        let args = |cluster_read: bool| {
            let vc = vc("alice", Default::default());
            let p = Policy {
                syncer_cluster_read: cluster_read,
                ..policy()
            };
            serve_args(&vc, &p)
        };
        assert!(args(false).contains("--node-sync pseudo --storage-sync off"));
        assert!(!args(true).contains("--node-sync"));
    }

    #[test]
    fn a_versions_features_reach_its_tenants_control_plane_only() {
        let args = |gates: Option<&str>| {
            let vc = vc("alice", Default::default());
            let mut p = policy();
            for v in &mut p.kubernetes_versions {
                v.feature_gates = gates.map(String::from);
            }
            serve_args(&vc, &p)
        };
        assert!(
            args(Some("GenericWorkload=true")).contains("--feature-gates GenericWorkload=true")
        );
        assert!(!args(None).contains("--feature-gates"));
    }

    #[test]
    fn the_namespace_gets_the_base_network_policy_and_the_syncer_the_admins_ranges() {
        use k8s_openapi::api::networking::v1::NetworkPolicy;
        let (_, objs) = build(Default::default());
        // The tenant's pods isolated; the control plane pod open on 8443 to anyone, DNS to the
        // namespace. The syncer, told not to apply these itself, keeps the allowances.
        let base: NetworkPolicy = find(&objs, Kind::NetworkPolicy, TENANT_POLICY_NAME);
        assert_eq!(
            base.spec.unwrap().policy_types,
            Some(vec!["Ingress".to_string(), "Egress".to_string()])
        );
        let cp: NetworkPolicy = find(&objs, Kind::NetworkPolicy, "vkube-control-plane");
        let spec = serde_json::to_value(cp.spec.unwrap()).unwrap();
        assert_eq!(spec["podSelector"]["matchLabels"], selector("alice"));
        assert_eq!(
            spec["ingress"][0],
            json!({"ports": [{"port": LISTEN_PORT, "protocol": "TCP"}]})
        );
        assert_eq!(spec["ingress"][1]["ports"][0]["port"], DNS_PORT);
        let policies = objs
            .iter()
            .filter(|o| o.kind == Kind::NetworkPolicy)
            .count();
        assert_eq!(policies, 3, "nothing else may open what the base closes");
        // Without tenant metrics the metrics policy allows nothing.
        let metrics: NetworkPolicy = find(&objs, Kind::NetworkPolicy, METRICS_POLICY);
        assert_eq!(metrics.spec.unwrap().ingress, Some(vec![]));

        let vc = vc("alice", Default::default());
        let mut p = policy();
        p.network.egress_allow_cidrs = vec!["10.20.0.0/16".into()];
        p.network.egress_deny_cidrs = vec!["198.51.100.0/24".into()];
        let r = check(&vc, &p, &Facts::new(0)).unwrap();
        let sts: StatefulSet =
            serde_json::from_value(stateful_set(&vc, &p, &r, "10.96.0.42", true)).unwrap();
        let args = sts.spec.unwrap().template.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap()
            .join(" ");
        assert!(args.contains("--default-network-policy off"), "{args}");
        // The safe defaults need no flags but the API server's egress mode.
        assert!(!args.contains("--allow-"), "{args}");
        assert!(args.contains("--apiserver-egress tenant"), "{args}");
        assert!(args.contains("--egress-allow-cidr 10.20.0.0/16"), "{args}");
        assert!(
            args.contains("--egress-deny-cidr 198.51.100.0/24"),
            "{args}"
        );
    }

    /// The control plane serves metrics on the admin's port, and the one policy that opens it
    /// lets in the admin's namespaces alone: never a rule without sources (which would admit
    /// every pod, the tenant's and other tenants' included), never another port.
    #[test]
    fn tenant_metrics_are_served_and_open_only_to_the_admins_namespaces() {
        use crate::manager::policy::TenantMetrics;
        use k8s_openapi::api::networking::v1::NetworkPolicy;
        let render = |metrics: Option<TenantMetrics>| {
            let mut p = policy();
            p.tenant_metrics = metrics;
            let objs = build_vc(&vc("alice", Default::default()), &p);
            let sts: StatefulSet = find(&objs, Kind::StatefulSet, SYNCER_NAME);
            let c = sts.spec.unwrap().template.spec.unwrap().containers[0].clone();
            let np: NetworkPolicy = find(&objs, Kind::NetworkPolicy, METRICS_POLICY);
            (c, serde_json::to_value(np.spec.unwrap()).unwrap())
        };
        let (c, spec) = render(Some(TenantMetrics {
            port: 9090,
            allowed_namespaces: vec!["monitoring".into(), "ops".into()],
        }));
        let args = c.args.unwrap().join(" ");
        assert!(
            args.contains("--metrics-bind-address 0.0.0.0:9090"),
            "{args}"
        );
        let ports = c.ports.unwrap();
        let port = ports
            .iter()
            .find(|p| p.name.as_deref() == Some(METRICS_PORT_NAME))
            .expect("a named metrics port");
        assert_eq!(port.container_port, 9090);
        assert_eq!(spec["podSelector"]["matchLabels"], selector("alice"));
        assert_eq!(spec["policyTypes"], json!(["Ingress"]));
        assert_eq!(
            spec["ingress"],
            json!([{
                "ports": [{"port": 9090, "protocol": "TCP"}],
                "from": [{"namespaceSelector": {"matchExpressions": [{
                    "key": "kubernetes.io/metadata.name", "operator": "In",
                    "values": ["monitoring", "ops"]}]}}],
            }])
        );

        // Served, but no namespace named: no rule at all.
        let (c, spec) = render(Some(TenantMetrics {
            port: 9090,
            allowed_namespaces: vec![],
        }));
        assert!(c.args.unwrap().join(" ").contains("--metrics-bind-address"));
        assert_eq!(spec["ingress"], json!([]));

        // Off: not served, no port, nothing allowed (a policy left from before is emptied).
        let (c, spec) = render(None);
        assert!(!c.args.unwrap().join(" ").contains("--metrics-bind-address"));
        assert!(
            c.ports
                .unwrap()
                .iter()
                .all(|p| p.name.as_deref() != Some(METRICS_PORT_NAME))
        );
        assert_eq!(spec["ingress"], json!([]));
    }

    /// The chart's PodMonitor finds control planes by a label tenants cannot give their pods:
    /// `vkube.dev/virtual-cluster` is under vkube's prefix, which the syncer renames on every
    /// tenant pod, so the admin's Prometheus never scrapes a pod the tenant dressed up.
    #[test]
    fn the_pod_monitor_selects_by_a_label_no_tenant_pod_carries() {
        let chart = include_str!("../../charts/vkube/templates/metrics.yaml");
        let monitor = chart
            .split("kind: PodMonitor")
            .nth(1)
            .expect("metrics.yaml has a PodMonitor");
        assert!(
            monitor.contains(&format!("key: {LABEL_VIRTUAL_CLUSTER}, operator: Exists")),
            "{monitor}"
        );
        assert!(monitor.contains(&format!("port: {METRICS_PORT_NAME}")));
        let pod_template = stateful_set(
            &vc("alice", Default::default()),
            &policy(),
            &check(&vc("alice", Default::default()), &policy(), &Facts::new(0)).unwrap(),
            "10.96.0.42",
            true,
        );
        assert_eq!(
            pod_template["spec"]["template"]["metadata"]["labels"][LABEL_VIRTUAL_CLUSTER],
            "alice"
        );
        let tenant = crate::translate::Tenant::new("alice", "vkube-alice");
        assert_ne!(
            tenant.host_label_key(LABEL_VIRTUAL_CLUSTER),
            LABEL_VIRTUAL_CLUSTER
        );
    }

    #[test]
    fn paused_means_zero_replicas_and_no_statefulset_before_the_service_ip() {
        let (_, objs) = build(crate::api::VirtualClusterSpec {
            paused: true,
            ..Default::default()
        });
        let sts: StatefulSet = find(&objs, Kind::StatefulSet, SYNCER_NAME);
        assert_eq!(sts.spec.unwrap().replicas, Some(0));
        let vc = vc("alice", Default::default());
        let p = policy();
        let r = check(&vc, &p, &Facts::new(0)).unwrap();
        assert!(
            namespaced(&vc, &p, &r, None, &manager_subject())
                .iter()
                .all(|o| o.kind != Kind::StatefulSet)
        );
    }

    #[test]
    fn the_quota_adds_the_control_plane_to_what_the_tenant_asked() {
        let (_, objs) = build(Default::default());
        let q: ResourceQuota = find(&objs, Kind::ResourceQuota, TENANT_POLICY_NAME);
        let hard = q.spec.unwrap().hard.unwrap();
        assert_eq!(hard["requests.cpu"].0, "1100m");
        assert_eq!(hard["pods"].0, "21");
        assert_eq!(
            hard["requests.memory"].0,
            ((2u64 << 30) + (384u64 << 20)).to_string()
        );
        // Memory limits: twice the tenant's memory, plus the control plane's own limit.
        assert_eq!(
            hard["limits.memory"].0,
            ((4u64 << 30) + (1u64 << 30)).to_string()
        );
        // Storage by default: the tenant's plus the datastore volume.
        assert_eq!(
            hard["requests.storage"].0,
            ((10u64 << 30) + (1u64 << 30)).to_string()
        );
    }

    /// Services exhaust the host's ClusterIP range, Secrets and ConfigMaps grow its etcd: the
    /// quota counts them, with what the control plane keeps itself on top (its Service, its
    /// two Secrets, kube-root-ca.crt, its volume claim, the manager's NetworkPolicies).
    #[test]
    fn the_quota_counts_objects_on_top_of_the_control_planes_own() {
        let (_, objs) = build(Default::default());
        let q: ResourceQuota = find(&objs, Kind::ResourceQuota, TENANT_POLICY_NAME);
        let hard = q.spec.unwrap().hard.unwrap();
        let netpols = objs
            .iter()
            .filter(|o| o.kind == Kind::NetworkPolicy)
            .count();
        for (key, want) in [
            ("count/services", "11".to_string()),
            ("count/secrets", "22".into()),
            ("count/configmaps", "21".into()),
            ("count/persistentvolumeclaims", "6".into()),
            (
                "count/networkpolicies.networking.k8s.io",
                (5 + netpols).to_string(),
            ),
            ("count/jobs.batch", "7".into()),
            ("services.nodeports", "0".into()),
            ("services.loadbalancers", "0".into()),
        ] {
            assert_eq!(hard[key].0, want, "{key}");
        }
        // A NodePort API Service uses one node port; a load balancer one of each.
        let mut p = policy();
        p.allowed_exposures = vec![ExposureType::LoadBalancer];
        let mut spec = crate::api::VirtualClusterSpec::default();
        spec.expose.type_ = ExposureType::LoadBalancer;
        let objs = build_vc(&vc("alice", spec), &p);
        let q: ResourceQuota = find(&objs, Kind::ResourceQuota, TENANT_POLICY_NAME);
        let hard = q.spec.unwrap().hard.unwrap();
        assert_eq!(hard["services.nodeports"].0, "1");
        assert_eq!(hard["services.loadbalancers"].0, "1");
        // Nothing the admin did not ask for is counted.
        let mut p = policy();
        p.object_quota.clear();
        let objs = build_vc(&vc("alice", Default::default()), &p);
        let q: ResourceQuota = find(&objs, Kind::ResourceQuota, TENANT_POLICY_NAME);
        assert!(
            !q.spec
                .unwrap()
                .hard
                .unwrap()
                .keys()
                .any(|k| k.contains("count/"))
        );
    }

    /// A default memory limit, but no default CPU limit: the control plane sets its own memory
    /// limit (so the default never applies to it) and no CPU limit on purpose.
    #[test]
    fn the_limit_range_sets_default_requests_and_a_memory_limit_only() {
        let (_, objs) = build(Default::default());
        let lr: LimitRange = find(&objs, Kind::LimitRange, TENANT_POLICY_NAME);
        let item = &lr.spec.unwrap().limits[0];
        let default = item.default.clone().unwrap();
        assert_eq!(default.keys().collect::<Vec<_>>(), ["memory"]);
        assert_eq!(default["memory"].0, "256Mi");
        assert!(item.default_request.is_some());
        let sts: StatefulSet = find(&objs, Kind::StatefulSet, SYNCER_NAME);
        let c = &sts.spec.unwrap().template.spec.unwrap().containers[0];
        let resources = c.resources.clone().unwrap();
        let limits = resources.limits.unwrap();
        assert!(limits.contains_key("memory") && !limits.contains_key("cpu"));
    }

    #[test]
    fn the_owner_may_read_only_the_kubeconfig_and_their_cluster() {
        let (vc, objs) = build(Default::default());
        let role: Role = find(&objs, Kind::Role, OWNER_ROLE);
        let rules = role.rules.unwrap();
        assert!(rules.iter().all(|r| r.resource_names.is_some()));
        assert_eq!(
            rules[0].resource_names.as_ref().unwrap(),
            &vec!["vkube-alice-kubeconfig".to_string()]
        );
        let (cr, crb) = owner_grants(&vc).unwrap();
        let cr: ClusterRole = serde_json::from_value(cr).unwrap();
        let rule = &cr.rules.unwrap()[0];
        assert_eq!(
            rule.resource_names.as_ref().unwrap(),
            &vec!["alice".to_string()]
        );
        assert!(!rule.verbs.contains(&"list".to_string()));
        assert_eq!(crb["subjects"][0]["name"], "alice");
        let no_owner = VirtualCluster::new("bob", Default::default());
        assert!(owner_grants(&no_owner).is_none());
    }

    #[test]
    fn namespace_and_service_follow_policy_and_exposure() {
        let vc = vc("alice", Default::default());
        let p = policy();
        let r = check(&vc, &p, &Facts::new(0)).unwrap();
        let ns: Namespace = serde_json::from_value(namespace(&vc, &p, &r)).unwrap();
        let labels = ns.metadata.labels.unwrap();
        assert_eq!(labels["pod-security.kubernetes.io/enforce"], "baseline");
        assert_eq!(ns.metadata.owner_references.unwrap()[0].uid, "uid-1");
        let (_, objs) = build(crate::api::VirtualClusterSpec::default());
        let svc: Service = find(&objs, Kind::Service, "vkube-alice");
        assert_eq!(svc.spec.unwrap().type_.as_deref(), Some("ClusterIP"));
    }

    /// The waker's slice adds an endpoint to the API Service (by its name label, which the
    /// guard checks is the namespace's name) and reads back to the same address and port.
    #[test]
    fn the_waker_slice_points_the_api_service_at_the_manager() {
        let vc = vc("alice", Default::default());
        let body = waker_slice(&vc, "10.244.0.7".parse().unwrap(), 20001);
        let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
            serde_json::from_value(body.clone()).unwrap();
        let labels = slice.metadata.labels.clone().unwrap();
        assert_eq!(labels[SLICE_SERVICE_LABEL], service_name("alice"));
        assert_eq!(labels[SLICE_SERVICE_LABEL], host_namespace("alice"));
        assert_eq!(labels[SLICE_MANAGED_BY_LABEL], WAKER_MANAGED_BY);
        assert_eq!(labels[UID_LABEL], "uid-1");
        assert_eq!(slice.address_type, "IPv4");
        assert_eq!(
            waker_slice_target(&slice),
            Some(("10.244.0.7".parse().unwrap(), 20001))
        );
        // The port goes by name: the Service's https port.
        let (_, objs) = build(Default::default());
        let svc: Service = find(&objs, Kind::Service, "vkube-alice");
        let ports = svc.spec.unwrap().ports.unwrap();
        assert_eq!(ports[0].name.as_deref(), Some("https"));
        let v6 = waker_slice(&vc, "fd00::7".parse().unwrap(), 20002);
        assert_eq!(v6["addressType"], "IPv6");
    }

    /// The chart's admission policy for the manager names the same roles, label and prefixes
    /// the manager uses (a rename on one side only would lock the manager out).
    #[test]
    fn the_guard_policy_speaks_of_the_managers_names() {
        let guard = include_str!("../../charts/vkube/templates/guard.yaml");
        for name in [
            UID_LABEL,
            SYNCER_CLUSTER_ROLE,
            MANAGER_TENANT_CLUSTER_ROLE,
            SYNCER_CLUSTER_READ_ROLE,
            "vkube:owner:",
            "'vkube-serve-cluster-read-' + s.namespace",
            "pod-security.kubernetes.io/enforce",
            SLICE_SERVICE_LABEL,
            SLICE_MANAGED_BY_LABEL,
            WAKER_MANAGED_BY,
        ] {
            assert!(guard.contains(name), "guard.yaml does not mention {name}");
        }
        assert_eq!(owner_cluster_role("x"), "vkube:owner:x");
        assert_eq!(
            syncer_cluster_read_binding_name("x"),
            format!("vkube-serve-cluster-read-{}", host_namespace("x"))
        );
        assert!(host_namespace("x").starts_with("vkube-"));
        assert_eq!(SYNCER_NAME, "vkube");
    }
}
