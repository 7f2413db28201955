//! The host objects one VirtualCluster turns into, built from the resource and the admin's
//! policy. Pure: no I/O; the reconciler applies them with server-side apply.
//!
//! Everything namespaced lives in the tenant's host namespace `vkube-NAME`, so deleting that
//! namespace removes it all; the namespace carries an owner reference to the VirtualCluster. The
//! two cluster-scoped grants (the owner's ClusterRole and its binding) are deleted by the
//! manager's finalizer once the namespace is gone.

use serde_json::{Value, json};

use crate::api::{ExposureType, OWNER_ANNOTATION, VirtualCluster};
use crate::host::{self, LABEL_VIRTUAL_CLUSTER};

use super::policy::{Policy, Resolved};

pub const MANAGED_BY: &str = "vkube-manager";
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

/// The namespaced kinds the manager creates, in the order they are applied.
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

fn labels(vc_name: &str) -> Value {
    json!({
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_VIRTUAL_CLUSTER: vc_name,
    })
}

fn meta(vc_name: &str, name: &str) -> Value {
    json!({"name": name, "namespace": host_namespace(vc_name), "labels": labels(vc_name)})
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
    let mut labels = labels(&name);
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

/// The opt-in cluster-read grant for tenant `vc_name`'s syncer: the ClusterRoleBinding of
/// manifests/serve-cluster-rbac.yaml (one source of truth) for its namespace. The ClusterRole
/// itself is the chart's, shared by all tenants.
pub fn syncer_cluster_read_binding(vc_name: &str) -> Result<Value, String> {
    const RBAC: &str = include_str!("../../manifests/serve-cluster-rbac.yaml");
    let rbac = RBAC.replace("NAMESPACE", &host_namespace(vc_name));
    for doc in serde_yaml::Deserializer::from_str(&rbac) {
        let mut v: Value = serde::Deserialize::deserialize(doc).map_err(|e| e.to_string())?;
        if v["kind"] == "ClusterRoleBinding" {
            // Labelled as the tenant's (not owner-referenced: see `owner_grants`).
            v["metadata"]["labels"] = labels(vc_name);
            return Ok(v);
        }
    }
    Err("manifests/serve-cluster-rbac.yaml has no ClusterRoleBinding".into())
}

/// Name of [`syncer_cluster_read_binding`].
pub fn syncer_cluster_read_binding_name(vc_name: &str) -> String {
    format!("vkube-serve-cluster-read-{}", host_namespace(vc_name))
}

/// Everything namespaced, given the Service's ClusterIP once it is known (it goes into the
/// serving certificate and the kubeconfig so clients reach the API by IP, no DNS needed).
pub fn namespaced(
    vc: &VirtualCluster,
    policy: &Policy,
    resolved: &Resolved,
    cluster_ip: Option<&str>,
) -> Vec<Namespaced> {
    let name = vc.metadata.name.clone().unwrap_or_default();
    let ns = host_namespace(&name);
    let svc = service_name(&name);
    let mut out = vec![
        Namespaced {
            kind: Kind::ServiceAccount,
            name: SYNCER_NAME.into(),
            body: json!({"apiVersion": "v1", "kind": "ServiceAccount",
                         "metadata": meta(&name, SYNCER_NAME)}),
        },
        Namespaced {
            kind: Kind::Role,
            name: SYNCER_NAME.into(),
            body: json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                         "metadata": meta(&name, SYNCER_NAME),
                         "rules": syncer_rules().unwrap_or_else(|_| json!([]))}),
        },
        Namespaced {
            kind: Kind::RoleBinding,
            name: SYNCER_NAME.into(),
            body: json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                         "metadata": meta(&name, SYNCER_NAME),
                         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": SYNCER_NAME},
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
        kind: Kind::ResourceQuota,
        name: TENANT_POLICY_NAME.into(),
        body: resource_quota(&name, policy, resolved),
    });
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
    if let Some(ip) = cluster_ip {
        out.push(Namespaced {
            kind: Kind::StatefulSet,
            name: SYNCER_NAME.into(),
            body: stateful_set(vc, policy, resolved, ip),
        });
    }
    out
}

/// The tenant gets what it asked for; the control plane's own pod is added on top so the
/// quota never starves it.
fn resource_quota(name: &str, policy: &Policy, resolved: &Resolved) -> Value {
    let mut hard = serde_json::Map::new();
    let cp = &policy.control_plane;
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
    json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": meta(name, TENANT_POLICY_NAME),
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

/// Default *requests* only, which is what the quota needs to admit a pod that sets none. No
/// default limits: they would also cap the control plane's CPU (it sets no CPU limit on purpose,
/// the API server starves under a small one).
fn limit_range(name: &str, policy: &Policy) -> Value {
    let mut defaults = serde_json::Map::new();
    if let Some(cpu) = &policy.container_defaults.cpu {
        defaults.insert("cpu".into(), json!(cpu));
    }
    if let Some(mem) = &policy.container_defaults.memory {
        defaults.insert("memory".into(), json!(mem));
    }
    json!({"apiVersion": "v1", "kind": "LimitRange", "metadata": meta(name, TENANT_POLICY_NAME),
           "spec": {"limits": [{"type": "Container", "defaultRequest": defaults}]}})
}

fn selector(name: &str) -> Value {
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
    ];
    if !policy.syncer_cluster_read {
        // Without the grant, say so in the arguments rather than in a warning at every start.
        args.extend(["--node-sync", "pseudo", "--storage-sync", "off"].map(String::from));
    }
    // The manager keeps the base NetworkPolicies itself; the admin's ranges go to the syncer.
    args.extend(["--default-network-policy", "off"].map(String::from));
    for c in &policy.network.egress_allow_cidrs {
        args.extend(["--egress-allow-cidr".into(), c.clone()]);
    }
    for c in &policy.network.egress_deny_cidrs {
        args.extend(["--egress-deny-cidr".into(), c.clone()]);
    }
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
    let replicas = if vc.spec.paused { 0 } else { 1 };
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
                    "ports": [{"name": "https", "containerPort": LISTEN_PORT, "protocol": "TCP"},
                              {"name": "dns", "containerPort": DNS_PORT, "protocol": "UDP"}],
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

/// The owner's rights on their own cluster object, by name: RBAC cannot filter a LIST by
/// owner, so developers get no LIST at all and each owner gets get/watch/update/patch/delete on
/// exactly their clusters.
pub fn owner_grants(vc: &VirtualCluster) -> Option<(Value, Value)> {
    let owner = owner(vc)?;
    let name = vc.metadata.name.clone().unwrap_or_default();
    let role = owner_cluster_role(&name);
    // No owner reference: the garbage collector would delete the grant as soon as the cluster is
    // being deleted, while its namespace is still going away; the finalizer removes it last.
    let meta = json!({"name": role, "labels": labels(&name)});
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
    /// RBAC lets the manager grant only rights it holds: its ClusterRole in the chart must cover
    /// every rule of the syncer's Role, or every new cluster fails with "attempting to grant".
    #[test]
    fn the_managers_cluster_role_covers_the_syncers_role() {
        let chart = include_str!("../../charts/vkube/templates/manager.yaml");
        // The ClusterRole document, without its template lines (labels).
        let doc = chart
            .split("\n---")
            .find(|d| d.contains("\nkind: ClusterRole\n"))
            .unwrap();
        let plain: String = doc
            .lines()
            .filter(|l| !l.contains("{{"))
            .map(|l| format!("{l}\n"))
            .collect();
        let role: Value = serde_yaml::from_str(&plain).unwrap();
        let held: Vec<(String, String, String)> = role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| {
                let strs = |k: &str| -> Vec<String> {
                    r[k].as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap().to_string())
                        .collect()
                };
                let (groups, resources, verbs) =
                    (strs("apiGroups"), strs("resources"), strs("verbs"));
                let mut out = vec![];
                for g in &groups {
                    for res in &resources {
                        for v in &verbs {
                            out.push((g.clone(), res.clone(), v.clone()));
                        }
                    }
                }
                out
            })
            .collect();
        let cluster_read: Vec<Value> = serde_yaml::Deserializer::from_str(include_str!(
            "../../manifests/serve-cluster-rbac.yaml"
        ))
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|v| v["kind"] == "ClusterRole")
        .flat_map(|v| v["rules"].as_array().unwrap().clone())
        .collect();
        assert!(!cluster_read.is_empty());
        let syncer = syncer_rules().unwrap().as_array().unwrap().clone();
        for rule in syncer.iter().chain(&cluster_read) {
            for g in rule["apiGroups"].as_array().unwrap() {
                for res in rule["resources"].as_array().unwrap() {
                    for v in rule["verbs"].as_array().unwrap() {
                        let want = (
                            g.as_str().unwrap().to_string(),
                            res.as_str().unwrap().to_string(),
                            v.as_str().unwrap().to_string(),
                        );
                        assert!(held.contains(&want), "the manager cannot grant {want:?}");
                    }
                }
            }
        }
    }

    /// The chart ships the ClusterRole the manager binds: it must be the one in manifests.
    #[test]
    fn the_charts_cluster_read_role_is_the_one_in_manifests() {
        let chart = include_str!("../../charts/vkube/templates/serve-cluster-read.yaml");
        let plain: String = chart
            .lines()
            .filter(|l| !l.contains("{{"))
            .map(|l| format!("{l}\n"))
            .collect();
        let chart_role: Value = serde_yaml::from_str(&plain).unwrap();
        let manifest_role: Value = serde_yaml::Deserializer::from_str(include_str!(
            "../../manifests/serve-cluster-rbac.yaml"
        ))
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|v| v["kind"] == "ClusterRole")
        .unwrap();
        assert_eq!(
            chart_role["metadata"]["name"],
            manifest_role["metadata"]["name"]
        );
        assert_eq!(chart_role["rules"], manifest_role["rules"]);
        let b = syncer_cluster_read_binding("alice").unwrap();
        assert_eq!(
            b["metadata"]["name"],
            syncer_cluster_read_binding_name("alice")
        );
        assert_eq!(b["roleRef"]["name"], manifest_role["metadata"]["name"]);
        assert_eq!(b["subjects"][0]["namespace"], "vkube-alice");
        assert_eq!(b["subjects"][0]["name"], SYNCER_NAME);
    }

    use super::*;
    use crate::manager::policy::{check, tests::policy, tests::vc};
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::{Namespace, ResourceQuota, Service};
    use k8s_openapi::api::rbac::v1::{ClusterRole, Role};

    fn build(spec: crate::api::VirtualClusterSpec) -> (VirtualCluster, Vec<Namespaced>) {
        let vc = vc("alice", spec);
        let p = policy();
        let r = check(&vc, &p, 0).unwrap();
        let objs = namespaced(&vc, &p, &r, Some("10.96.0.42"));
        (vc, objs)
    }

    fn find<T: serde::de::DeserializeOwned>(objs: &[Namespaced], kind: Kind, name: &str) -> T {
        let o = objs
            .iter()
            .find(|o| o.kind == kind && o.name == name)
            .unwrap_or_else(|| panic!("no {kind:?} {name}"));
        serde_json::from_value(o.body.clone()).unwrap()
    }

    #[test]
    fn the_syncer_role_is_the_one_in_manifests() {
        let rules = syncer_rules().unwrap();
        let (_, objs) = build(Default::default());
        let role: Role = find(&objs, Kind::Role, SYNCER_NAME);
        let want: Vec<k8s_openapi::api::rbac::v1::PolicyRule> =
            serde_json::from_value(rules).unwrap();
        assert_eq!(role.rules.unwrap(), want);
        assert!(
            want.iter()
                .any(|r| r.resources.as_ref().unwrap().contains(&"pods".into()))
        );
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
    fn without_cluster_read_the_syncer_is_told_to_do_without_it() {
        let args = |cluster_read: bool| {
            let vc = vc("alice", Default::default());
            let p = Policy {
                syncer_cluster_read: cluster_read,
                ..policy()
            };
            let r = check(&vc, &p, 0).unwrap();
            let sts: StatefulSet =
                serde_json::from_value(stateful_set(&vc, &p, &r, "10.96.0.42")).unwrap();
            sts.spec.unwrap().template.spec.unwrap().containers[0]
                .args
                .clone()
                .unwrap()
                .join(" ")
        };
        assert!(args(false).contains("--node-sync pseudo --storage-sync off"));
        assert!(!args(true).contains("--node-sync"));
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
        assert_eq!(policies, 2, "nothing else may open what the base closes");

        let vc = vc("alice", Default::default());
        let mut p = policy();
        p.network.egress_allow_cidrs = vec!["10.20.0.0/16".into()];
        p.network.egress_deny_cidrs = vec!["198.51.100.0/24".into()];
        let r = check(&vc, &p, 0).unwrap();
        let sts: StatefulSet =
            serde_json::from_value(stateful_set(&vc, &p, &r, "10.96.0.42")).unwrap();
        let args = sts.spec.unwrap().template.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap()
            .join(" ");
        assert!(args.contains("--default-network-policy off"), "{args}");
        assert!(args.contains("--egress-allow-cidr 10.20.0.0/16"), "{args}");
        assert!(
            args.contains("--egress-deny-cidr 198.51.100.0/24"),
            "{args}"
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
        let r = check(&vc, &p, 0).unwrap();
        assert!(
            namespaced(&vc, &p, &r, None)
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
    }

    #[test]
    fn the_limit_range_sets_default_requests_and_no_limits() {
        let (_, objs) = build(Default::default());
        let lr: k8s_openapi::api::core::v1::LimitRange =
            find(&objs, Kind::LimitRange, TENANT_POLICY_NAME);
        let item = &lr.spec.unwrap().limits[0];
        assert!(
            item.default.is_none(),
            "a default limit would cap the control plane"
        );
        assert!(item.default_request.is_some());
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
        // The grant must outlive the namespace: no owner reference for the garbage collector.
        assert!(crb["metadata"].get("ownerReferences").is_none());
        let no_owner = VirtualCluster::new("bob", Default::default());
        assert!(owner_grants(&no_owner).is_none());
    }

    #[test]
    fn namespace_and_service_follow_policy_and_exposure() {
        let vc = vc("alice", Default::default());
        let p = policy();
        let r = check(&vc, &p, 0).unwrap();
        let ns: Namespace = serde_json::from_value(namespace(&vc, &p, &r)).unwrap();
        let labels = ns.metadata.labels.unwrap();
        assert_eq!(labels["pod-security.kubernetes.io/enforce"], "baseline");
        assert_eq!(ns.metadata.owner_references.unwrap()[0].uid, "uid-1");
        let (_, objs) = build(crate::api::VirtualClusterSpec::default());
        let svc: Service = find(&objs, Kind::Service, "vkube-alice");
        assert_eq!(svc.spec.unwrap().type_.as_deref(), Some("ClusterIP"));
    }
}
