//! Pure translation between virtual objects and their host copies: names, ownership metadata and
//! labels here; one module per kind for the rest. No I/O, no async: everything is unit-tested.
//!
//! A namespaced virtual object `(namespace, name)` of virtual cluster `vc` lives in the host
//! namespace as `name-x-namespace-x-vc`. That form is used only when it is unambiguous and short
//! enough; otherwise the name is shortened deterministically with a hash of the full triple.
//! The reverse mapping never parses names: host objects carry their origin in labels/annotations.

pub mod configmap;
pub mod custom;
pub mod endpoints;
pub mod endpointslice;
pub mod fields;
pub mod ingress;
pub mod metrics;
pub mod networkpolicy;
pub mod node;
pub mod pdb;
pub mod placement;
pub mod pod;
pub mod pv;
pub mod pvc;
pub mod secret;
pub mod security;
pub mod service;
pub mod storageclass;
pub mod volumes;

#[cfg(test)]
mod golden;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::ObjectMeta;

/// Label: the virtual cluster a host object belongs to. Host watches select on it.
pub const MANAGED_BY: &str = "vkube.dev/managed-by";
/// Label: the virtual namespace (≤ 63 characters, so it fits a label value).
pub const VIRTUAL_NAMESPACE: &str = "vkube.dev/namespace";
/// Annotation: the virtual name (may exceed a label value's 63 characters).
pub const VIRTUAL_NAME: &str = "vkube.dev/name";
/// Annotation: the virtual object's UID, so a re-created virtual object is told apart.
pub const VIRTUAL_UID: &str = "vkube.dev/uid";
/// Annotation: hash of the desired host object; equal hash = nothing to write.
pub const DESIRED_HASH: &str = "vkube.dev/desired-hash";
/// Prefix reserved for vkube's own labels and annotations on host objects.
pub const RESERVED_PREFIX: &str = "vkube.dev/";

/// Kubernetes name length limits.
pub const DNS_LABEL_MAX: usize = 63;
pub const DNS_SUBDOMAIN_MAX: usize = 253;

const SEPARATOR: &str = "-x-";
const HASH_LEN: usize = 10;

/// Who we are translating for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Virtual cluster name.
    pub name: String,
    /// The host namespace every synced object lives in.
    pub host_namespace: String,
    /// Which label and annotation keys reach the host as they are (the rest are renamed).
    pub metadata: Arc<MetadataPolicy>,
}

/// A label or annotation key pattern: an exact key, `prefix/*` (every key with that prefix), or
/// `*` (every key). Nothing else is a wildcard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPattern {
    Exact(String),
    /// The prefix with its trailing `/`.
    Prefix(String),
    All,
}

impl KeyPattern {
    pub fn matches(&self, key: &str) -> bool {
        match self {
            KeyPattern::Exact(k) => k == key,
            KeyPattern::Prefix(p) => key.starts_with(p.as_str()) && !key[p.len()..].contains('/'),
            KeyPattern::All => true,
        }
    }
}

impl std::str::FromStr for KeyPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(KeyPattern::All);
        }
        let (body, prefix) = match s.strip_suffix("/*") {
            Some(p) => (p, true),
            None => (s, false),
        };
        let bad = |why: &str| {
            Err(format!(
                "invalid key pattern {s:?}: {why} (an exact key, `prefix/*` or `*`)"
            ))
        };
        if body.is_empty() || body.contains('*') {
            return bad("`*` only as a whole pattern or after `prefix/`");
        }
        if body.matches('/').count() > usize::from(!prefix) {
            return bad("too many `/`");
        }
        Ok(if prefix {
            KeyPattern::Prefix(format!("{body}/"))
        } else {
            KeyPattern::Exact(body.to_string())
        })
    }
}

/// Label keys copied to the host as they are by default: harmless to any host component, and
/// those the virtual controllers set (and tenants select on). Any other key is renamed.
pub const DEFAULT_LABELS: &[&str] = &[
    "app",
    "app.kubernetes.io/*",
    "run",
    "pod-template-hash",
    "pod-template-generation",
    "controller-revision-hash",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "batch.kubernetes.io/*",
    "job-name",
    "controller-uid",
];

/// Annotation keys copied to the host as they are by default.
pub const DEFAULT_ANNOTATIONS: &[&str] = &[
    "kubectl.kubernetes.io/default-container",
    "kubernetes.io/description",
];

/// Which tenant label and annotation keys reach the host unchanged. Host controllers, CNI
/// plugins and webhooks act on keys (Multus networks, Calico IP pools, mesh and Vault injection,
/// pod identity, autoscaler eviction, external-dns, secret replication...): a key not allowed
/// here is renamed to an inert key of vkube's, with its value kept, so nothing on the host acts
/// on it while selectors, which vkube maps the same way, still match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataPolicy {
    pub labels: Vec<KeyPattern>,
    pub annotations: Vec<KeyPattern>,
}

impl Default for MetadataPolicy {
    fn default() -> Self {
        let parse = |keys: &[&str]| -> Vec<KeyPattern> {
            keys.iter().filter_map(|k| k.parse().ok()).collect()
        };
        MetadataPolicy {
            labels: parse(DEFAULT_LABELS),
            annotations: parse(DEFAULT_ANNOTATIONS),
        }
    }
}

impl MetadataPolicy {
    /// The defaults widened by the admin's patterns (`--allow-label`, `--allow-annotation`).
    pub fn widened(labels: Vec<KeyPattern>, annotations: Vec<KeyPattern>) -> Self {
        let mut policy = MetadataPolicy::default();
        policy.labels.extend(labels);
        policy.annotations.extend(annotations);
        policy
    }
}

/// Renamed tenant keys: `vkube.dev/l-<hash>` (labels) and `vkube.dev/a-<hash>` (annotations).
/// vkube's own keys are words, never these shapes (a test checks every constant).
const RENAMED_LABEL: &str = "l-";
const RENAMED_ANNOTATION: &str = "a-";
/// 128 bits of the key's SHA-256: the renamed key stays a valid label key (name part ≤ 63).
const RENAMED_HASH_LEN: usize = 32;

/// `key` as it goes to the host: unchanged when `allowed` matches it (and it is not under
/// vkube's prefix), otherwise vkube's inert key for it.
fn host_key(key: &str, allowed: &[KeyPattern], tag: &str) -> String {
    if !key.starts_with(RESERVED_PREFIX) && allowed.iter().any(|p| p.matches(key)) {
        return key.to_string();
    }
    format!(
        "{RESERVED_PREFIX}{tag}{}",
        &hex_digest(key)[..RENAMED_HASH_LEN]
    )
}

/// Whether `key` is a renamed tenant key (not one of vkube's own).
pub fn is_renamed_key(key: &str) -> bool {
    let Some(rest) = key.strip_prefix(RESERVED_PREFIX) else {
        return false;
    };
    let Some(hash) = rest
        .strip_prefix(RENAMED_LABEL)
        .or_else(|| rest.strip_prefix(RENAMED_ANNOTATION))
    else {
        return false;
    };
    hash.len() == RENAMED_HASH_LEN && hash.bytes().all(|b| b.is_ascii_hexdigit())
}

fn hex_digest(input: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let d = ring::digest::digest(&ring::digest::SHA256, input.as_bytes());
    let mut out = String::with_capacity(64);
    for b in d.as_ref() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

/// A part is safe in the plain form if it cannot blur the `-x-` separators: it contains no
/// `-x-` and does not end in `-x`. Then splitting at the first two `-x-` recovers the triple.
fn unambiguous(part: &str) -> bool {
    !part.contains(SEPARATOR) && !part.ends_with("-x")
}

/// Host name of virtual object `namespace/name` of tenant `vc`, at most `limit` characters.
pub fn host_name(namespace: &str, name: &str, vc: &str, limit: usize) -> String {
    let full = format!("{name}{SEPARATOR}{namespace}{SEPARATOR}{vc}");
    if full.len() <= limit && unambiguous(name) && unambiguous(namespace) {
        return full;
    }
    // '/' cannot occur in any of the parts, so the hashed input is unambiguous.
    let hash = hex_digest(&format!("{namespace}/{name}/{vc}"));
    let keep = limit.saturating_sub(HASH_LEN + 1).min(full.len());
    let prefix = full[..keep].trim_end_matches(['-', '.']);
    if prefix.is_empty() {
        // Only for tiny limits; still a valid name: hashes start with a letter after 'h'.
        return format!("h{}", &hash[..HASH_LEN.min(limit.saturating_sub(1))]);
    }
    format!("{prefix}-{}", &hash[..HASH_LEN])
}

impl Tenant {
    /// A tenant with the default metadata policy.
    pub fn new(name: impl Into<String>, host_namespace: impl Into<String>) -> Self {
        Tenant {
            name: name.into(),
            host_namespace: host_namespace.into(),
            metadata: Arc::new(MetadataPolicy::default()),
        }
    }

    /// The host key of a tenant label key. Every label vkube writes to the host and every
    /// selector it translates goes through this one function, so selectors keep matching.
    pub fn host_label_key(&self, key: &str) -> String {
        host_key(key, &self.metadata.labels, RENAMED_LABEL)
    }

    /// The host key of a tenant annotation key.
    pub fn host_annotation_key(&self, key: &str) -> String {
        host_key(key, &self.metadata.annotations, RENAMED_ANNOTATION)
    }

    /// Host name for objects whose names are DNS labels (pods' hostnames, services).
    pub fn label_name(&self, namespace: &str, name: &str) -> String {
        host_name(namespace, name, &self.name, DNS_LABEL_MAX)
    }

    /// Host name for objects whose names are DNS subdomains (configmaps, secrets, PVCs, ...).
    pub fn subdomain_name(&self, namespace: &str, name: &str) -> String {
        host_name(namespace, name, &self.name, DNS_SUBDOMAIN_MAX)
    }

    /// Labels every host object carries.
    pub fn ownership_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (MANAGED_BY.to_string(), self.name.clone()),
            (VIRTUAL_NAMESPACE.to_string(), namespace.to_string()),
        ])
    }

    /// Host metadata for a virtual object: translated name, the virtual labels and annotations
    /// under their host keys ([`Tenant::host_label_key`]: a key the host might act on is
    /// renamed, and a tenant key under vkube's prefix can never become one of vkube's own, so a
    /// tenant cannot claim to be another tenant's object), and vkube's own on top.
    pub fn host_meta(&self, virtual_meta: &ObjectMeta, host_name: String) -> ObjectMeta {
        let namespace = virtual_meta.namespace.clone().unwrap_or_default();
        let mut labels: BTreeMap<String, String> = virtual_meta
            .labels
            .iter()
            .flatten()
            .map(|(k, v)| (self.host_label_key(k), v.clone()))
            .collect();
        labels.extend(self.ownership_labels(&namespace));
        let mut annotations: BTreeMap<String, String> = virtual_meta
            .annotations
            .iter()
            .flatten()
            .filter(|(k, _)| k.as_str() != "kubectl.kubernetes.io/last-applied-configuration")
            .map(|(k, v)| (self.host_annotation_key(k), v.clone()))
            .collect();
        annotations.insert(
            VIRTUAL_NAME.to_string(),
            virtual_meta.name.clone().unwrap_or_default(),
        );
        annotations.insert(
            VIRTUAL_UID.to_string(),
            virtual_meta.uid.clone().unwrap_or_default(),
        );
        ObjectMeta {
            name: Some(host_name),
            namespace: Some(self.host_namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        }
    }

    /// A label selector (as a map) that matches only host pods of `namespace` in this tenant.
    pub fn translate_selector(
        &self,
        namespace: &str,
        selector: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = selector
            .iter()
            .map(|(k, v)| (self.host_label_key(k), v.clone()))
            .collect();
        out.extend(self.ownership_labels(namespace));
        out
    }

    /// Turns a tenant's label selector into a host one: keys mapped as the labels are, and
    /// confined to this tenant and, given `namespace`, to that virtual namespace.
    pub fn confine_selector(&self, sel: &mut LabelSelector, namespace: Option<&str>) {
        let labels = sel.match_labels.take().unwrap_or_default();
        let mut labels: BTreeMap<String, String> = labels
            .into_iter()
            .map(|(k, v)| (self.host_label_key(&k), v))
            .collect();
        for e in sel.match_expressions.iter_mut().flatten() {
            e.key = self.host_label_key(&e.key);
        }
        labels.insert(MANAGED_BY.into(), self.name.clone());
        if let Some(ns) = namespace {
            labels.insert(VIRTUAL_NAMESPACE.into(), ns.into());
        }
        sel.match_labels = Some(labels);
    }

    /// Whether a host object is ours (by label, never by name).
    pub fn owns(&self, host_meta: &ObjectMeta) -> bool {
        host_meta
            .labels
            .as_ref()
            .and_then(|l| l.get(MANAGED_BY))
            .is_some_and(|v| v == &self.name)
    }
}

/// Where a host object came from, read from its labels and annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
}

pub fn origin(host_meta: &ObjectMeta) -> Option<Origin> {
    let namespace = host_meta.labels.as_ref()?.get(VIRTUAL_NAMESPACE)?.clone();
    let annotations = host_meta.annotations.as_ref()?;
    let name = annotations.get(VIRTUAL_NAME)?.clone();
    let uid = annotations
        .get(VIRTUAL_UID)
        .cloned()
        .filter(|u| !u.is_empty());
    Some(Origin {
        namespace,
        name,
        uid,
    })
}

/// Host text (an error, an event message) about a host object, in the tenant's names: "host
/// namespace/host name" first, then the host name alone, then the host namespace.
pub fn in_virtual_names(text: &str, host: (&str, &str), virt: (&str, &str)) -> String {
    let (host_name, host_ns) = host;
    let (virt_name, virt_ns) = virt;
    text.replace(
        &format!("{host_ns}/{host_name}"),
        &format!("{virt_ns}/{virt_name}"),
    )
    .replace(host_name, virt_name)
    .replace(host_ns, virt_ns)
}

/// Stable hash of a serialisable desired state (serde_json maps are ordered: BTreeMap).
pub fn desired_hash<T: serde::Serialize>(value: &T) -> String {
    let json = serde_json::to_string(value).unwrap_or_default();
    hex_digest(&json)[..16].to_string()
}

/// Label on virtual StorageClasses and PersistentVolumes that mirror the host's: only vkube
/// writes them, and only they are ever removed by it.
pub const HOST_MIRROR: &str = "vkube.dev/host-mirror";

/// A host object's labels without vkube's own prefix (a host label must not forge ownership),
/// plus [`HOST_MIRROR`]: the labels of a virtual mirror.
pub fn mirror_labels(host: &ObjectMeta) -> BTreeMap<String, String> {
    let mut labels = unreserved_labels(host);
    labels.insert(HOST_MIRROR.into(), "true".into());
    labels
}

/// A host object's labels without vkube's own prefix.
pub fn unreserved_labels(host: &ObjectMeta) -> BTreeMap<String, String> {
    host.labels
        .iter()
        .flatten()
        .filter(|(k, _)| !k.starts_with(RESERVED_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Whether `have` already shows everything in `want` (objects compared key by key, extra keys
/// in `have` ignored; anything else compared as a whole): a mirror is rewritten only when this
/// is false, and what a tenant added beside it is not fought over.
pub fn json_contains(have: &serde_json::Value, want: &serde_json::Value) -> bool {
    match (have, want) {
        (serde_json::Value::Object(h), serde_json::Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| h.get(k).is_some_and(|hv| json_contains(hv, wv))),
        _ => have == want,
    }
}

/// Whether a name is a valid DNS-1123 subdomain (what most object names must be).
pub fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty() && name.len() <= DNS_SUBDOMAIN_MAX && name.split('.').all(is_dns_label_part)
}

/// Whether a name is a valid DNS-1123 label.
pub fn is_dns_label(name: &str) -> bool {
    name.len() <= DNS_LABEL_MAX && is_dns_label_part(name)
}

fn is_dns_label_part(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Fixtures shared by the translation tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::Tenant;

    /// The tenant "alice" in host namespace "vkube-alice".
    pub fn tenant() -> Tenant {
        Tenant::new("alice", "vkube-alice")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_text_speaks_of_virtual_names() {
        let host = ("web-x-default-x-alice", "vkube-alice");
        let virt = ("web", "default");
        assert_eq!(
            super::in_virtual_names(
                "Successfully assigned vkube-alice/web-x-default-x-alice to node-1",
                host,
                virt
            ),
            "Successfully assigned default/web to node-1"
        );
        assert_eq!(
            super::in_virtual_names(
                "container nope is not valid for pod web-x-default-x-alice in namespace vkube-alice",
                host,
                virt
            ),
            "container nope is not valid for pod web in namespace default"
        );
        assert_eq!(super::in_virtual_names("no names", host, virt), "no names");
    }

    use super::*;
    use proptest::prelude::*;

    use crate::translate::test_support::tenant;

    #[test]
    fn containment_ignores_extra_keys_but_not_changed_values() {
        let have = serde_json::json!({"a": {"b": 1, "extra": 2}, "l": [1, 2]});
        assert!(json_contains(&have, &serde_json::json!({"a": {"b": 1}})));
        assert!(!json_contains(&have, &serde_json::json!({"a": {"b": 2}})));
        assert!(!json_contains(&have, &serde_json::json!({"l": [1]})));
        assert!(!json_contains(&have, &serde_json::json!({"missing": 1})));
    }

    #[test]
    fn plain_form_when_short_and_unambiguous() {
        assert_eq!(
            host_name("default", "web", "alice", 63),
            "web-x-default-x-alice"
        );
        assert_eq!(
            host_name("team-a", "web.config", "alice", 253),
            "web.config-x-team-a-x-alice"
        );
    }

    #[test]
    fn ambiguous_parts_are_hashed() {
        // Without the rule both would be "a-x-x-b-x-vc".
        let one = host_name("b", "a-x", "vc", 63);
        let two = host_name("x-b", "a", "vc", 63);
        assert_ne!(one, two);
        assert_eq!(two, "a-x-x-b-x-vc");
        assert!(one.starts_with("a-x-x-b-x-vc-"), "{one}");
        let three = host_name("c", "a-x-b", "vc", 63);
        assert_ne!(three, host_name("b-x-c", "a", "vc", 63));
    }

    #[test]
    fn long_names_are_shortened_deterministically() {
        let long = "a".repeat(60);
        let n = host_name("default", &long, "alice", 63);
        assert_eq!(n.len(), 63);
        assert!(is_dns_label(&n), "{n}");
        assert_eq!(n, host_name("default", &long, "alice", 63));
        assert_ne!(n, host_name("default2", &long, "alice", 63));
        // A known value pins the algorithm: changing it would orphan every synced object.
        assert_eq!(
            host_name("default", &long, "alice", 63),
            format!(
                "{}-{}",
                "a".repeat(52),
                &hex_digest(&format!("default/{long}/alice"))[..10]
            )
        );
    }

    #[test]
    fn shortening_never_ends_a_prefix_with_a_dash_or_dot() {
        let name = format!("{}-b", "a".repeat(51));
        let n = host_name("ns", &name, "vc", 63);
        assert!(is_dns_label(&n), "{n}");
        let name = format!("{}.b", "a".repeat(240));
        let n = host_name("ns", &name, "vc", 253);
        assert!(is_dns_subdomain(&n), "{n}");
    }

    #[test]
    fn host_meta_marks_origin_and_drops_reserved_keys() {
        let t = tenant();
        let meta = ObjectMeta {
            name: Some("web".into()),
            namespace: Some("default".into()),
            uid: Some("u-1".into()),
            labels: Some(BTreeMap::from([
                ("app".into(), "web".into()),
                (MANAGED_BY.into(), "mallory".into()),
            ])),
            annotations: Some(BTreeMap::from([(VIRTUAL_NAME.into(), "forged".into())])),
            ..Default::default()
        };
        let host = t.host_meta(&meta, t.label_name("default", "web"));
        assert_eq!(host.name.as_deref(), Some("web-x-default-x-alice"));
        assert_eq!(host.namespace.as_deref(), Some("vkube-alice"));
        let labels = host.labels.clone().unwrap();
        assert_eq!(labels["app"], "web");
        assert_eq!(labels[MANAGED_BY], "alice");
        assert_eq!(labels[VIRTUAL_NAMESPACE], "default");
        assert!(t.owns(&host));
        assert_eq!(
            origin(&host),
            Some(Origin {
                namespace: "default".into(),
                name: "web".into(),
                uid: Some("u-1".into())
            })
        );
    }

    #[test]
    fn selectors_are_confined_to_the_namespace_and_tenant() {
        let t = tenant();
        let sel = t.translate_selector(
            "team-a",
            &BTreeMap::from([
                ("app".into(), "web".into()),
                (MANAGED_BY.into(), "x".into()),
            ]),
        );
        // The tenant's own `vkube.dev/managed-by` is renamed (as on its pods), never ours.
        assert_eq!(
            sel,
            BTreeMap::from([
                ("app".into(), "web".into()),
                (t.host_label_key(MANAGED_BY), "x".into()),
                (MANAGED_BY.into(), "alice".into()),
                (VIRTUAL_NAMESPACE.into(), "team-a".into()),
            ])
        );
    }

    #[test]
    fn key_patterns_parse_and_match_exactly() {
        let cases: [(&str, &str, bool); 7] = [
            ("app", "app", true),
            ("app", "app.kubernetes.io/name", false),
            ("app.kubernetes.io/*", "app.kubernetes.io/name", true),
            ("app.kubernetes.io/*", "x.app.kubernetes.io/name", false),
            ("app.kubernetes.io/*", "app.kubernetes.io", false),
            ("*", "anything/at-all", true),
            ("example.com/team", "example.com/team", true),
        ];
        for (pattern, key, want) in cases {
            let p: KeyPattern = pattern.parse().unwrap();
            assert_eq!(p.matches(key), want, "{pattern} ~ {key}");
        }
        for bad in ["", "a*", "*/x", "a/b/c", "a/*/b", "/*"] {
            assert!(bad.parse::<KeyPattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn host_acting_keys_are_renamed_and_harmless_ones_kept() {
        let t = tenant();
        for kept in [
            "app",
            "app.kubernetes.io/name",
            "pod-template-hash",
            "job-name",
        ] {
            assert_eq!(t.host_label_key(kept), kept);
        }
        for renamed in [
            "aadpodidbinding",
            "sidecar.istio.io/inject",
            "azure.workload.identity/use",
        ] {
            let k = t.host_label_key(renamed);
            assert!(is_renamed_key(&k), "{k}");
            assert!(is_dns_label(&k["vkube.dev/".len()..]), "{k}");
            assert_eq!(k, t.host_label_key(renamed), "stable");
        }
        for renamed in [
            "k8s.v1.cni.cncf.io/networks",
            "cni.projectcalico.org/ipv4pools",
            "vault.hashicorp.com/agent-inject",
            "cluster-autoscaler.kubernetes.io/safe-to-evict",
            "external-dns.alpha.kubernetes.io/hostname",
            "replicator.v1.mittwald.de/replicate-from",
            "container.apparmor.security.beta.kubernetes.io/main",
        ] {
            assert!(is_renamed_key(&t.host_annotation_key(renamed)), "{renamed}");
        }
        assert_eq!(
            t.host_annotation_key("kubectl.kubernetes.io/default-container"),
            "kubectl.kubernetes.io/default-container"
        );
        // Labels and annotations of the same key never share a host key.
        assert_ne!(t.host_label_key("tier"), t.host_annotation_key("tier"));
    }

    #[test]
    fn no_tenant_key_ever_becomes_one_of_vkubes_own() {
        // Even with everything allowed, a tenant key under vkube's prefix is renamed.
        let mut t = tenant();
        t.metadata = Arc::new(MetadataPolicy::widened(
            vec![KeyPattern::All],
            vec![KeyPattern::All],
        ));
        let own = [
            MANAGED_BY,
            VIRTUAL_NAMESPACE,
            VIRTUAL_NAME,
            VIRTUAL_UID,
            DESIRED_HASH,
            HOST_MIRROR,
            "vkube.dev/service-account-token",
            "vkube.dev/token-expires",
            "vkube.dev/token-issued",
            "vkube.dev/virtual-cluster",
            "vkube.dev/virtual-node",
            "vkube.dev/mirrored-labels",
            "vkube.dev/recreating",
            "vkube.dev/owner",
            "vkube.dev/cleanup",
            "vkube.dev/node-type",
            "vkube.dev/real-node",
            "vkube.dev/bench",
        ];
        for key in own {
            assert!(!is_renamed_key(key), "{key} looks renamed");
            assert_ne!(t.host_label_key(key), key);
            assert_ne!(t.host_annotation_key(key), key);
            assert!(is_renamed_key(&t.host_label_key(key)));
        }
        assert_eq!(t.host_label_key("aadpodidbinding"), "aadpodidbinding");
        // A renamed key handed back in is renamed again, not kept.
        let once = t.host_label_key(MANAGED_BY);
        assert_ne!(t.host_label_key(&once), once);
    }

    #[test]
    fn label_selectors_map_keys_like_the_labels() {
        let t = tenant();
        let mut sel = LabelSelector {
            match_labels: Some(BTreeMap::from([("tier".into(), "web".into())])),
            match_expressions: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                    key: "aadpodidbinding".into(),
                    operator: "Exists".into(),
                    values: None,
                },
            ]),
        };
        t.confine_selector(&mut sel, Some("shop"));
        let labels = sel.match_labels.unwrap();
        assert_eq!(labels[&t.host_label_key("tier")], "web");
        assert_eq!(labels[MANAGED_BY], "alice");
        assert_eq!(labels[VIRTUAL_NAMESPACE], "shop");
        assert_eq!(
            sel.match_expressions.unwrap()[0].key,
            t.host_label_key("aadpodidbinding")
        );
    }

    fn dns_label() -> impl Strategy<Value = String> {
        // Biased towards the separator's characters to hit ambiguous cases.
        "[a-z0-9]([a-z0-9x-]{0,40}[a-z0-9x])?"
    }

    fn dns_subdomain() -> impl Strategy<Value = String> {
        prop::collection::vec(dns_label(), 1..8).prop_map(|parts| parts.join("."))
    }

    proptest! {
        #[test]
        fn distinct_triples_never_collide(
            a in (dns_label(), dns_label(), prop::sample::select(vec!["alice", "a-x", "x-b", "bob"])),
            b in (dns_label(), dns_label(), prop::sample::select(vec!["alice", "a-x", "x-b", "bob"])),
        ) {
            prop_assume!(a != b);
            for limit in [DNS_LABEL_MAX, DNS_SUBDOMAIN_MAX] {
                prop_assert_ne!(host_name(&a.0, &a.1, a.2, limit), host_name(&b.0, &b.1, b.2, limit));
            }
        }

        #[test]
        fn output_is_valid_and_within_limits(ns in dns_label(), name in dns_subdomain(), vc in dns_label()) {
            let sub = host_name(&ns, &name, &vc, DNS_SUBDOMAIN_MAX);
            prop_assert!(sub.len() <= DNS_SUBDOMAIN_MAX);
            prop_assert!(is_dns_subdomain(&sub), "{}", sub);
            let label_name = name.replace('.', "-");
            let label = host_name(&ns, &label_name, &vc, DNS_LABEL_MAX);
            prop_assert!(is_dns_label(&label), "{}", label);
            // Stable: the same input gives the same output.
            prop_assert_eq!(label.clone(), host_name(&ns, &label_name, &vc, DNS_LABEL_MAX));
        }

        #[test]
        fn every_host_name_ends_in_the_tenant_or_a_hash(
            ns in dns_label(),
            name in dns_subdomain(),
            vc in prop::sample::select(vec!["alice", "a-x", "x-b", "certs"]),
        ) {
            for limit in [DNS_LABEL_MAX, DNS_SUBDOMAIN_MAX] {
                let out = host_name(&ns, &name, vc, limit);
                prop_assert!(translation_shaped(&out, vc), "{}", out);
            }
        }
    }

    /// Whether `name` has the shape of a translated name of tenant `vc`: the plain form ends in
    /// `-x-VC`, the shortened one in `-` and ten hex digits (or is `h` and hex digits).
    fn translation_shaped(name: &str, vc: &str) -> bool {
        let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
        name.ends_with(&format!("{SEPARATOR}{vc}"))
            || name
                .rsplit_once('-')
                .is_some_and(|(_, tail)| tail.len() == HASH_LEN && hex(tail))
            || name.strip_prefix('h').is_some_and(hex)
    }

    #[test]
    fn no_virtual_name_translates_to_the_host_objects_vkube_itself_keeps() {
        // The credentials and kubeconfig Secrets, the API Service and the datastore claim: no
        // (namespace, name) the tenant chooses can be translated to them, so a same-named
        // virtual object always lands beside them. (A tenant name whose last label is ten hex
        // digits would make `vkube-NAME` hash-shaped; it is then the ownership label that keeps
        // the Service safe: HostNameConflict.)
        for vc in ["alice", "a-x", "x-b", "certs", "team-1"] {
            for reserved in [
                format!("vkube-{vc}-certs"),
                format!("vkube-{vc}-kubeconfig"),
                format!("vkube-{vc}"),
                "data-vkube-0".to_string(),
            ] {
                assert!(!translation_shaped(&reserved, vc), "{reserved} for {vc}");
            }
        }
    }
}
