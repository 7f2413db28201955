//! The mapping as released: every name, label, selector, annotation and host object vkube
//! derives from a virtual one is compared with the files under `tests/golden/`. Host objects
//! outlive a vkube release; a changed mapping would orphan them, or delete and re-create every
//! pod. So any change in these outputs fails here, and is made on purpose only, by regenerating
//! the files with `VKUBE_UPDATE_GOLDEN=1 cargo test --lib translate::golden` and saying in the
//! commit what the upgrade does with objects written the old way (e2e `upgrade::` writes host
//! objects from these files and starts the current syncer on them).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, PersistentVolumeClaim, Pod, Secret, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::{DynamicObject, ObjectMeta};
use serde::Serialize;
use serde_json::{Value, json};

use super::custom::CustomKind;
use super::endpoints::EndpointPolicy;
use super::ingress::IngressPolicy;
use super::networkpolicy::{ControlPlane, EgressPolicy, NamespaceLabels, TenantNetwork};
use super::pod::{self, ApiEndpoint, ClusterDns, PodContext, PodPolicy};
use super::service::ServicePolicy;
use super::{DNS_LABEL_MAX, DNS_SUBDOMAIN_MAX, KeyPattern, MetadataPolicy, Tenant, host_name};
use crate::names::MAX_TENANT_NAME;
use crate::syncer::apply::stamp;

/// The tenant every golden object belongs to (e2e `upgrade::` runs a tenant of this name).
pub const GOLDEN_TENANT: &str = "gold";
/// The virtual UID golden inputs carry; the upgrade test puts the real one in its place.
pub const GOLDEN_UID: &str = "00000000-0000-4000-8000-000000000000";

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn updating() -> bool {
    std::env::var_os("VKUBE_UPDATE_GOLDEN").is_some_and(|v| v == "1")
}

/// Compares `value` with the golden file `rel` (or writes it with VKUBE_UPDATE_GOLDEN=1).
/// Returns a description of the difference instead of panicking, so one run lists them all.
fn check(rel: &str, value: &impl Serialize) -> Option<String> {
    let path = dir().join(rel);
    let mut want = serde_json::to_string_pretty(value).expect("golden values serialise");
    want.push('\n');
    if updating() {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("golden directory");
        }
        std::fs::write(&path, &want).expect("golden file written");
        return None;
    }
    let Ok(have) = std::fs::read_to_string(&path) else {
        return Some(format!("{rel}: missing"));
    };
    if have == want {
        return None;
    }
    // The desired hash differs whenever anything does: name the field that changed instead.
    let differs = |hash_too: bool| {
        have.lines()
            .zip(want.lines())
            .position(|(h, w)| h != w && (hash_too || !h.contains(super::DESIRED_HASH)))
    };
    let line = differs(false)
        .or_else(|| differs(true))
        .unwrap_or_else(|| have.lines().count().min(want.lines().count()));
    Some(format!(
        "{rel}: differs from line {}:\n  golden:  {}\n  now:     {}",
        line + 1,
        have.lines().nth(line).unwrap_or("<end of file>"),
        want.lines().nth(line).unwrap_or("<end of file>"),
    ))
}

fn tenant() -> Tenant {
    Tenant::new(GOLDEN_TENANT, format!("vkube-{GOLDEN_TENANT}"))
}

/// The admin's settings the golden Ingresses, Endpoints, EndpointSlices and NetworkPolicies are
/// translated under. e2e `upgrade::` runs `vkube serve` with the same flags:
/// `--ingress-host-suffix`, `--ingress-class`, `--default-ingress-class`, `--allow-annotation`,
/// `--endpoint-allow-cidr`, `--egress-allow-cidr`.
const INGRESS_HOST_SUFFIX: &str = "{name}.apps.example.com";
const INGRESS_CLASS: &str = "nginx";
const INGRESS_ANNOTATIONS: &str = "nginx.ingress.kubernetes.io/*";
const ALLOWED_PRIVATE_RANGE: &str = "192.168.50.0/24";
/// `vkube serve`'s default `--service-cidr`, which it closes to tenant pods.
const SERVICE_CIDR: &str = "10.96.0.0/12";
/// An IP of one of the tenant's host pods (endpoints may always lead there).
const OWN_POD_IP: &str = "10.244.1.7";
/// The custom kind of `customresources/` as the admin configures it (`--sync-custom-resource`);
/// VolumeSnapshots are synced as `--sync-volume-snapshots` configures them.
const CUSTOM_KIND: &str = "e2e.vkube.dev/v1/Widget:spec.secretRef.name=Secret,spec.backend=Service,\
spec.configs[].name=ConfigMap,spec.claim=PersistentVolumeClaim,spec.gadget=Gadget.e2e.vkube.dev,\
spec.selector=Selector,spec.nodeName=-";

/// The label and annotation keys the admin widened, as `--allow-label`/`--allow-annotation`.
fn widened_tenant() -> Tenant {
    let parse = |keys: &[&str]| -> Vec<KeyPattern> {
        keys.iter().map(|k| k.parse().expect("pattern")).collect()
    };
    Tenant {
        metadata: Arc::new(MetadataPolicy::widened(
            parse(&["team", "example.com/*"]),
            parse(&["prometheus.io/*"]),
        )),
        ..tenant()
    }
}

/// The tenant Ingresses are published for: controller annotations let through as the admin of
/// an ingress-nginx host does (`--allow-annotation nginx.ingress.kubernetes.io/*`).
fn ingress_tenant() -> Tenant {
    Tenant {
        metadata: Arc::new(MetadataPolicy::widened(
            Vec::new(),
            vec![INGRESS_ANNOTATIONS.parse().expect("pattern")],
        )),
        ..tenant()
    }
}

fn ingress_policy() -> IngressPolicy {
    IngressPolicy {
        allowed_classes: vec![INGRESS_CLASS.into()],
        default_class: Some(INGRESS_CLASS.into()),
        host_suffix: Some(
            super::ingress::host_suffix_for(INGRESS_HOST_SUFFIX, GOLDEN_TENANT).expect("suffix"),
        ),
    }
}

fn endpoint_policy() -> EndpointPolicy {
    EndpointPolicy {
        allowed: vec![ALLOWED_PRIVATE_RANGE.parse().expect("cidr")],
    }
}

fn own_pod_ips() -> HashSet<String> {
    HashSet::from([OWN_POD_IP.to_string()])
}

/// The control plane as the manager runs it (its StatefulSet's pods in the host namespace).
fn control_plane() -> ControlPlane {
    ControlPlane::Pod {
        selector: serde_json::from_value(crate::manager::objects::selector(GOLDEN_TENANT))
            .expect("selector"),
        api_port: crate::manager::objects::LISTEN_PORT,
        dns_port: Some(crate::manager::objects::DNS_PORT),
    }
}

fn network() -> TenantNetwork {
    TenantNetwork {
        control_plane: vec![control_plane()],
        egress: EgressPolicy {
            allow: vec![ALLOWED_PRIVATE_RANGE.parse().expect("cidr")],
            deny: vec![SERVICE_CIDR.parse().expect("cidr")],
        },
    }
}

/// The virtual namespaces' labels (the API server labels each with its name).
fn namespace_labels() -> NamespaceLabels {
    [
        "default",
        "kube-node-lease",
        "kube-public",
        "kube-system",
        "shop",
        "team-a",
    ]
    .into_iter()
    .map(|ns| {
        let mut labels =
            BTreeMap::from([("kubernetes.io/metadata.name".to_string(), ns.to_string())]);
        if ns == "team-a" {
            labels.insert("team".into(), "a".into());
        }
        (ns.to_string(), labels)
    })
    .collect()
}

/// Names around every boundary of [`host_name`]: exactly at and one past each limit (the plain
/// form turns into the hashed one), ambiguous separators, the longest tenant and namespace.
fn name_cases() -> Vec<(String, String, String, usize)> {
    let long_vc = "v".repeat(MAX_TENANT_NAME);
    let long_ns = format!("n{}", "s".repeat(DNS_LABEL_MAX - 1));
    let mut cases = Vec::new();
    for vc in [GOLDEN_TENANT.to_string(), long_vc] {
        for ns in ["default".to_string(), "team-a".to_string(), long_ns.clone()] {
            for limit in [DNS_LABEL_MAX, DNS_SUBDOMAIN_MAX] {
                let fixed = ns.len() + vc.len() + 2 * "-x-".len();
                let mut names = vec![
                    "web".to_string(),
                    "web.config".to_string(),
                    "a-x".to_string(),
                    "x-b".to_string(),
                    "a-x-b".to_string(),
                    "kube-root-ca.crt".to_string(),
                    "web-".repeat(70)[..DNS_SUBDOMAIN_MAX].to_string(),
                ];
                for len in [limit.saturating_sub(fixed), limit + 1 - fixed.min(limit)] {
                    if len > 0 && len <= DNS_SUBDOMAIN_MAX {
                        // Ends in '-' where the hash cuts it, so the trimming shows too.
                        let mut n: String = "ab-".repeat(len).chars().take(len).collect();
                        n.replace_range(len - 1.., "z");
                        names.push(n);
                    }
                }
                for name in names {
                    cases.push((ns.clone(), name, vc.clone(), limit));
                }
            }
        }
        // The ambiguous pair the separator rule keeps apart.
        cases.push(("x-b".into(), "a".into(), vc.clone(), DNS_LABEL_MAX));
        cases.push(("b".into(), "a-x".into(), vc.clone(), DNS_LABEL_MAX));
    }
    cases
}

#[derive(Serialize)]
struct NameRow {
    namespace: String,
    name: String,
    vc: String,
    limit: usize,
    host: String,
}

fn names() -> Vec<NameRow> {
    name_cases()
        .into_iter()
        .map(|(namespace, name, vc, limit)| NameRow {
            host: host_name(&namespace, &name, &vc, limit),
            namespace,
            name,
            vc,
            limit,
        })
        .collect()
}

/// Keys of every kind: kept as they are, renamed to vkube's inert keys, and tenant keys under
/// vkube's own prefix (always renamed, so a tenant never forges vkube's metadata).
const KEYS: &[&str] = &[
    "app",
    "app.kubernetes.io/name",
    "app.kubernetes.io/part-of",
    "run",
    "pod-template-hash",
    "controller-revision-hash",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "batch.kubernetes.io/job-name",
    "job-name",
    "controller-uid",
    "team",
    "example.com/owner",
    "example.com/sub/owner",
    "tier",
    "k8s.v1.cni.cncf.io/networks",
    "sidecar.istio.io/inject",
    "kubectl.kubernetes.io/default-container",
    "kubernetes.io/description",
    "prometheus.io/scrape",
    "cluster-autoscaler.kubernetes.io/safe-to-evict",
    "vkube.dev/managed-by",
    "vkube.dev/namespace",
    "vkube.dev/name",
    "vkube.dev/uid",
    "vkube.dev/l-0123456789abcdef0123456789abcdef",
];

fn keys() -> Value {
    let row = |t: &Tenant| -> BTreeMap<&str, Value> {
        KEYS.iter()
            .map(|k| {
                (
                    *k,
                    json!({"label": t.host_label_key(k), "annotation": t.host_annotation_key(k)}),
                )
            })
            .collect()
    };
    json!({"default": row(&tenant()), "widened": row(&widened_tenant())})
}

fn virtual_meta() -> ObjectMeta {
    ObjectMeta {
        name: Some("web-0".into()),
        namespace: Some("shop".into()),
        uid: Some(GOLDEN_UID.into()),
        labels: Some(
            [
                ("app", "web"),
                ("tier", "front"),
                ("team", "checkout"),
                ("vkube.dev/managed-by", "someone-else"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ),
        annotations: Some(
            [
                ("kubernetes.io/description", "the shop"),
                ("prometheus.io/scrape", "true"),
                ("sidecar.istio.io/inject", "true"),
                ("vkube.dev/uid", "forged"),
                ("kubectl.kubernetes.io/last-applied-configuration", "{}"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ),
        ..Default::default()
    }
}

fn selectors() -> Value {
    let t = tenant();
    let map: BTreeMap<String, String> = [("app", "web"), ("tier", "front")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut sel = LabelSelector {
        match_labels: Some(map.clone()),
        match_expressions: Some(vec![
            LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["front".into(), "back".into()]),
            },
            LabelSelectorRequirement {
                key: "app.kubernetes.io/name".into(),
                operator: "Exists".into(),
                values: None,
            },
        ]),
    };
    let mut cluster_wide = sel.clone();
    t.confine_selector(&mut sel, Some("shop"));
    t.confine_selector(&mut cluster_wide, None);
    json!({
        "map": t.translate_selector("shop", &map),
        "namespaced": sel,
        "clusterWide": cluster_wide,
    })
}

fn metadata() -> Value {
    let meta = virtual_meta();
    json!({
        "default": tenant().host_meta(&meta, tenant().label_name("shop", "web-0")),
        "widened": widened_tenant().host_meta(&meta, tenant().label_name("shop", "web-0")),
    })
}

/// Derived names: the token Secret of a pod and the claim of an ephemeral volume.
fn derived() -> Value {
    let t = tenant();
    let pod = t.label_name("shop", "web-0");
    json!({
        "tokenSecret": crate::syncer::tokens::secret_name(&pod),
        "ephemeralClaim": t.subdomain_name("shop", &super::volumes::ephemeral_claim_name("web-0", "scratch")),
        "tokenKeys": {
            "default": pod::token_key(None, pod::DEFAULT_TOKEN_SECONDS),
            "vault": pod::token_key(Some("vault"), 600),
        },
    })
}

/// The context `vkube serve` gives pods: its API Service and DNS, the default policy.
fn pod_context(vpod: &Pod) -> PodContext {
    let host = tenant().label_name(
        vpod.metadata.namespace.as_deref().unwrap_or_default(),
        vpod.metadata.name.as_deref().unwrap_or_default(),
    );
    PodContext {
        token_secret: (!pod::wanted_tokens(vpod).is_empty())
            .then(|| crate::syncer::tokens::secret_name(&host)),
        security: Default::default(),
        api: Some(ApiEndpoint {
            host: "10.96.0.1".into(),
            port: 443,
        }),
        dns: Some(ClusterDns {
            nameserver: "10.96.0.10".into(),
            domain: "cluster.local".into(),
        }),
        policy: Arc::new(PodPolicy::default()),
    }
}

/// The input files of a kind: `tests/golden/<kind>/<case>.yaml`, sorted.
fn inputs(kind: &str) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(dir().join(kind))
        .expect("golden input directory")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let case = name.strip_suffix(".yaml")?.to_string();
            Some((case, std::fs::read_to_string(e.path()).expect("input")))
        })
        .collect();
    files.sort();
    files
}

/// The host object of every input of a kind, as the syncer's create sends it (with the desired
/// hash stamped): `tests/golden/<kind>/<case>.host.json`.
fn host_objects<V, H>(kind: &str, translate: impl Fn(&V) -> H) -> Vec<String>
where
    V: serde::de::DeserializeOwned,
    H: Serialize,
{
    let mut diffs = Vec::new();
    let cases = inputs(kind);
    assert!(!cases.is_empty(), "no golden inputs for {kind}");
    for (case, yaml) in &cases {
        let v: V = serde_yaml::from_str(yaml)
            .unwrap_or_else(|e| panic!("tests/golden/{kind}/{case}.yaml: {e}"));
        diffs.extend(check(&format!("{kind}/{case}.host.json"), &translate(&v)));
    }
    // An output without its input is a case someone removed: the mapping it showed is gone.
    for e in std::fs::read_dir(dir().join(kind))
        .expect("golden dir")
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(case) = name.strip_suffix(".host.json")
            && !cases.iter().any(|(c, _)| c == case)
        {
            diffs.push(format!("{kind}/{name}: no input {case}.yaml any more"));
        }
    }
    diffs
}

fn host_pod(vpod: &Pod) -> Value {
    match pod::to_host(vpod, &tenant(), &pod_context(vpod)) {
        Ok(h) => {
            let mut host = h.pod;
            // As `apply::ensure_parts` creates it: the hash covers the updatable part only.
            let hash = stamp(&mut pod::updatable(&host));
            host.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(super::DESIRED_HASH.into(), hash);
            let dropped: Vec<String> = h.dropped.iter().map(|v| v.to_string()).collect();
            json!({"pod": host, "dropped": dropped})
        }
        Err(refused) => {
            let refused: Vec<String> = refused.iter().map(|v| v.to_string()).collect();
            json!({"refused": refused})
        }
    }
}

fn stamped<K: kube::Resource + Serialize>(mut host: K) -> K {
    stamp(&mut host);
    host
}

fn host_ingress(v: &Ingress) -> Value {
    match super::ingress::to_host(v, &ingress_tenant(), &ingress_policy()) {
        Ok(h) => json!({
            "ingress": stamped(h.ingress),
            "droppedAnnotations": h.dropped_annotations,
            "droppedResourceBackends": h.dropped_resource_backends,
            "referencedSecrets": super::ingress::referenced_secrets(v),
        }),
        Err(e) => json!({"refused": e.to_string()}),
    }
}

fn refusals(refused: &[(String, super::endpoints::Refusal)]) -> Vec<String> {
    refused
        .iter()
        .map(|(ip, why)| format!("{ip}: {why}"))
        .collect()
}

fn host_endpoints(v: &Endpoints) -> Value {
    let h = super::endpoints::to_host(v, &tenant(), &endpoint_policy(), &own_pod_ips());
    json!({
        "endpoints": stamped(h.endpoints),
        "refused": refusals(&h.refused),
        "usesPodIps": h.uses_pod_ips,
    })
}

fn host_slice(v: &EndpointSlice) -> Value {
    let Some(service) = super::endpointslice::handwritten_for(v) else {
        return json!({"synced": false});
    };
    let h =
        super::endpointslice::to_host(v, service, &tenant(), &endpoint_policy(), &own_pod_ips());
    json!({
        "slice": stamped(h.slice),
        "refused": refusals(&h.refused),
        "usesPodIps": h.uses_pod_ips,
    })
}

fn host_network_policy(v: &NetworkPolicy) -> Value {
    match super::networkpolicy::to_host(v, &tenant(), &namespace_labels(), &network()) {
        Ok(h) => json!({
            "policy": stamped(h.policy),
            "notes": h.notes.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        }),
        Err(note) => json!({"refused": note.to_string()}),
    }
}

/// vkube's own policies in the host namespace, which have no virtual object: the base the
/// manager keeps (by name), and the syncer's default allowances for the golden policies (their
/// names carry the tenant and a hash of the virtual namespace).
fn network_defaults() -> Value {
    let policies: Vec<NetworkPolicy> = inputs("networkpolicies")
        .iter()
        .map(|(case, yaml)| {
            serde_yaml::from_str(yaml)
                .unwrap_or_else(|e| panic!("tests/golden/networkpolicies/{case}.yaml: {e}"))
        })
        .collect();
    let refs: Vec<&NetworkPolicy> = policies.iter().collect();
    let allowances = super::networkpolicy::allowances(&tenant(), &network(), &refs);
    json!({
        "base": super::networkpolicy::default_policies(Some(&control_plane()))
            .into_iter()
            .map(|(name, spec)| json!({"name": name, "spec": spec}))
            .collect::<Vec<_>>(),
        "allowances": allowances.policies.into_iter().map(stamped).collect::<Vec<_>>(),
        "tooComplex": allowances
            .too_complex
            .iter()
            .map(|(ns, dir)| format!("{ns} {}", dir.as_str()))
            .collect::<Vec<_>>(),
    })
}

fn host_custom(v: &DynamicObject) -> Value {
    let kind = if v.types.as_ref().is_some_and(|t| {
        t.api_version
            .starts_with(&format!("{}/", super::custom::SNAPSHOT_GROUP))
    }) {
        CustomKind::volume_snapshot()
    } else {
        CUSTOM_KIND.parse().expect("custom kind")
    };
    let references = super::custom::references(v, &kind);
    match super::custom::to_host(v, &kind, &tenant()) {
        Ok(h) => json!({
            "object": stamped(h.object),
            "referencedSecrets": references.secrets,
            "referencedConfigMaps": references.config_maps,
        }),
        Err(refused) => {
            json!({"refused": refused.iter().map(|v| v.to_string()).collect::<Vec<_>>()})
        }
    }
}

#[test]
fn the_mapping_matches_the_golden_files() {
    let mut diffs: Vec<String> = Vec::new();
    diffs.extend(check("names.json", &names()));
    diffs.extend(check("keys.json", &keys()));
    diffs.extend(check("selectors.json", &selectors()));
    diffs.extend(check("metadata.json", &metadata()));
    diffs.extend(check("derived.json", &derived()));
    diffs.extend(host_objects("pods", host_pod));
    diffs.extend(host_objects("configmaps", |v: &ConfigMap| {
        stamped(super::configmap::to_host(v, &tenant()))
    }));
    diffs.extend(host_objects("secrets", |v: &Secret| {
        stamped(super::secret::to_host(v, &tenant()))
    }));
    diffs.extend(host_objects(
        "services",
        |v: &Service| match super::service::to_host(v, &tenant(), ServicePolicy::default()) {
            Ok(h) => json!({
                "service": stamped(h.service),
                "downgradedFrom": h.downgraded_from,
                "dropped": h.dropped,
            }),
            Err(e) => json!({"refused": e.to_string()}),
        },
    ));
    diffs.extend(host_objects(
        "pvcs",
        |v: &PersistentVolumeClaim| match super::pvc::to_host(v, &tenant()) {
            Ok(h) => json!({"claim": stamped(h.claim)}),
            Err(refused) => {
                json!({"refused": refused.iter().map(|v| v.to_string()).collect::<Vec<_>>()})
            }
        },
    ));
    diffs.extend(host_objects("ingresses", host_ingress));
    diffs.extend(host_objects("endpoints", host_endpoints));
    diffs.extend(host_objects("endpointslices", host_slice));
    diffs.extend(host_objects("networkpolicies", host_network_policy));
    diffs.extend(check("network-defaults.json", &network_defaults()));
    diffs.extend(host_objects("pdbs", |v: &PodDisruptionBudget| {
        stamped(super::pdb::to_host(v, &tenant()))
    }));
    diffs.extend(host_objects("customresources", host_custom));
    assert!(
        diffs.is_empty(),
        "the mapping of virtual to host objects changed. Host objects written by the last \
         release would no longer match (renamed, orphaned, or pods re-created). If the change \
         is deliberate, regenerate with `VKUBE_UPDATE_GOLDEN=1 cargo test --lib \
         translate::golden`, review the diff, and make sure e2e upgrade:: still passes.\n\n{}",
        diffs.join("\n")
    );
}

/// The name cases really sit on both sides of each limit (else the table proves less).
#[test]
fn the_name_cases_cross_every_limit() {
    let rows = names();
    for limit in [DNS_LABEL_MAX, DNS_SUBDOMAIN_MAX] {
        let at: Vec<&NameRow> = rows.iter().filter(|r| r.limit == limit).collect();
        assert!(
            at.iter().any(
                |r| r.host == format!("{}-x-{}-x-{}", r.name, r.namespace, r.vc)
                    && r.host.len() == limit
            ),
            "a plain name of exactly {limit} characters"
        );
        assert!(
            at.iter().any(|r| {
                format!("{}-x-{}-x-{}", r.name, r.namespace, r.vc).len() == limit + 1
                    && r.host.len() <= limit
            }),
            "a name one past {limit}, hashed"
        );
    }
}
