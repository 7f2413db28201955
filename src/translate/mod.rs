//! Pure translation between virtual objects and their host copies: names, ownership metadata and
//! labels here; one module per kind for the rest. No I/O, no async: everything is unit-tested.
//!
//! A namespaced virtual object `(namespace, name)` of virtual cluster `vc` lives in the host
//! namespace as `name-x-namespace-x-vc`. That form is used only when it is unambiguous and short
//! enough; otherwise the name is shortened deterministically with a hash of the full triple.
//! The reverse mapping never parses names: host objects carry their origin in labels/annotations.

pub mod configmap;
pub mod endpoints;
pub mod endpointslice;
pub mod ingress;
pub mod networkpolicy;
pub mod node;
pub mod pod;
pub mod pv;
pub mod pvc;
pub mod secret;
pub mod security;
pub mod service;
pub mod storageclass;

use std::collections::BTreeMap;

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
}

fn hex_digest(input: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, input.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
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

    /// Host metadata for a virtual object: translated name, our labels and annotations on top of
    /// the virtual ones (virtual keys under our reserved prefix are dropped: a tenant cannot
    /// claim to be another tenant's object).
    pub fn host_meta(&self, virtual_meta: &ObjectMeta, host_name: String) -> ObjectMeta {
        let namespace = virtual_meta.namespace.clone().unwrap_or_default();
        let mut labels: BTreeMap<String, String> = virtual_meta
            .labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| !k.starts_with(RESERVED_PREFIX))
            .collect();
        labels.extend(self.ownership_labels(&namespace));
        let mut annotations: BTreeMap<String, String> = virtual_meta
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| {
                !k.starts_with(RESERVED_PREFIX)
                    && k != "kubectl.kubernetes.io/last-applied-configuration"
            })
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
            .filter(|(k, _)| !k.starts_with(RESERVED_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.extend(self.ownership_labels(namespace));
        out
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
        Tenant {
            name: "alice".into(),
            host_namespace: "vkube-alice".into(),
        }
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
        assert_eq!(
            sel,
            BTreeMap::from([
                ("app".into(), "web".into()),
                (MANAGED_BY.into(), "alice".into()),
                (VIRTUAL_NAMESPACE.into(), "team-a".into()),
            ])
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
    }
}
