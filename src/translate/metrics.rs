//! The `metrics.k8s.io` API of a virtual cluster, translated from the host's (pure): host pod
//! metrics become the tenant's under their virtual names only when the host pod is this tenant's
//! copy of that very virtual pod; a tenant's label selector becomes a host selector confined to
//! the tenant (and namespace); node metrics are shown only for nodes the tenant sees.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ObjectMeta;
use serde::{Deserialize, Serialize};

use super::{MANAGED_BY, Tenant, VIRTUAL_NAMESPACE, origin};

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";
pub const GROUP_VERSION: &str = "metrics.k8s.io/v1beta1";

/// `PodMetrics` as metrics-server serves it (k8s-openapi has no metrics types).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodMetrics {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    #[serde(default)]
    pub containers: Vec<ContainerMetrics>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ContainerMetrics {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub usage: BTreeMap<String, Quantity>,
}

/// `NodeMetrics` as metrics-server serves it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeMetrics {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    #[serde(default)]
    pub usage: BTreeMap<String, Quantity>,
}

/// A metrics list (`PodMetricsList`, `NodeMetricsList`) as the host sends it.
#[derive(Deserialize, Clone, Debug)]
pub struct MetricsList<T> {
    #[serde(default = "Vec::new")]
    pub items: Vec<T>,
}

/// The list the tenant gets.
pub fn list_json<T: Serialize>(kind: &str, items: &[T]) -> serde_json::Value {
    serde_json::json!({
        "kind": kind,
        "apiVersion": GROUP_VERSION,
        "metadata": {},
        "items": items,
    })
}

/// One requirement of a label selector in its string form (`app=web,tier in (a,b),!canary`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Equals(String),
    NotEquals(String),
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector {selector:?}: {why}")]
pub struct SelectorError {
    pub selector: String,
    pub why: String,
}

fn valid_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    name_ok && prefix.is_none_or(|p| !p.is_empty() && super::is_dns_subdomain(p))
}

fn valid_value(value: &str) -> bool {
    value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Parses a label selector in the string form the API takes (`labelSelector=`). Anything that
/// is not a well-formed selector is an error (never "match everything").
pub fn parse_selector(selector: &str) -> Result<Vec<Requirement>, SelectorError> {
    let err = |why: &str| SelectorError {
        selector: selector.chars().take(200).collect(),
        why: why.into(),
    };
    let mut terms = Vec::new();
    let mut depth = 0usize;
    let mut start = 0usize;
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1).ok_or_else(|| err("unbalanced )"))?,
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(err("unbalanced ("));
    }
    terms.push(&selector[start..]);
    if terms.len() == 1 && terms[0].trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for term in terms {
        let term = term.trim();
        if term.is_empty() {
            return Err(err("empty requirement"));
        }
        let requirement = if let Some(key) = term.strip_prefix('!') {
            Requirement {
                key: key.trim().to_string(),
                op: Op::DoesNotExist,
            }
        } else if let Some((key, values, negated)) = set_term(term) {
            let values = values
                .split(',')
                .map(|v| v.trim().to_string())
                .collect::<BTreeSet<_>>();
            if values.iter().any(|v| !valid_value(v)) {
                return Err(err("invalid value in a set"));
            }
            Requirement {
                key: key.to_string(),
                op: if negated {
                    Op::NotIn(values)
                } else {
                    Op::In(values)
                },
            }
        } else if let Some((key, value)) = term.split_once("!=") {
            Requirement {
                key: key.trim().to_string(),
                op: Op::NotEquals(value.trim().to_string()),
            }
        } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
            Requirement {
                key: key.trim().to_string(),
                op: Op::Equals(value.trim().to_string()),
            }
        } else {
            Requirement {
                key: term.to_string(),
                op: Op::Exists,
            }
        };
        if !valid_key(&requirement.key) {
            return Err(err("invalid key"));
        }
        if let Op::Equals(v) | Op::NotEquals(v) = &requirement.op
            && !valid_value(v)
        {
            return Err(err("invalid value"));
        }
        out.push(requirement);
    }
    Ok(out)
}

/// `key in (a,b)` / `key notin (a,b)`: (key, "a,b", negated).
fn set_term(term: &str) -> Option<(&str, &str, bool)> {
    let open = term.find('(')?;
    let inner = term[open + 1..].strip_suffix(')')?;
    let head = term[..open].trim_end();
    let (key, negated) = if let Some(k) = head.strip_suffix(" notin") {
        (k, true)
    } else if let Some(k) = head.strip_suffix(" in") {
        (k, false)
    } else {
        return None;
    };
    Some((key.trim(), inner, negated))
}

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match &self.op {
            Op::Equals(v) => value == Some(v),
            Op::NotEquals(v) => value != Some(v),
            Op::In(set) => value.is_some_and(|v| set.contains(v)),
            Op::NotIn(set) => value.is_none_or(|v| !set.contains(v)),
            Op::Exists => value.is_some(),
            Op::DoesNotExist => value.is_none(),
        }
    }

    fn to_selector_string(&self) -> String {
        let set = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(",");
        match &self.op {
            Op::Equals(v) => format!("{}={v}", self.key),
            Op::NotEquals(v) => format!("{}!={v}", self.key),
            Op::In(s) => format!("{} in ({})", self.key, set(s)),
            Op::NotIn(s) => format!("{} notin ({})", self.key, set(s)),
            Op::Exists => self.key.clone(),
            Op::DoesNotExist => format!("!{}", self.key),
        }
    }
}

pub fn matches_all(requirements: &[Requirement], labels: &BTreeMap<String, String>) -> bool {
    requirements.iter().all(|r| r.matches(labels))
}

/// The host selector for a tenant's pod selector: each key mapped as the syncer maps pod labels
/// (so it selects the same pods), plus this tenant's ownership label and, given one, the virtual
/// namespace. A key under vkube's prefix maps to an inert key, so a tenant cannot select by
/// another tenant's ownership labels.
pub fn host_selector(
    tenant: &Tenant,
    requirements: &[Requirement],
    namespace: Option<&str>,
) -> String {
    let mut parts: Vec<String> = requirements
        .iter()
        .map(|r| {
            Requirement {
                key: tenant.host_label_key(&r.key),
                op: r.op.clone(),
            }
            .to_selector_string()
        })
        .collect();
    parts.push(format!("{MANAGED_BY}={}", tenant.name));
    if let Some(ns) = namespace {
        parts.push(format!("{VIRTUAL_NAMESPACE}={ns}"));
    }
    parts.join(",")
}

/// The tenant's view of one host pod's metrics, or `None` when the host pod is not this
/// tenant's copy of `virtual_pod`: the host pod must carry this tenant's ownership label, name
/// `virtual_pod` as its origin (namespace and name) and carry its UID (a re-created virtual pod
/// of the same name must not get the old host pod's numbers). Labels are the virtual pod's.
pub fn pod_to_virtual(
    host: &PodMetrics,
    tenant: &Tenant,
    host_pod: &ObjectMeta,
    virtual_pod: &ObjectMeta,
) -> Option<PodMetrics> {
    if !tenant.owns(host_pod) || host_pod.namespace.as_deref() != Some(&tenant.host_namespace) {
        return None;
    }
    if host.metadata.name != host_pod.name {
        return None;
    }
    let o = origin(host_pod)?;
    let vmeta = virtual_pod;
    if Some(&o.namespace) != vmeta.namespace.as_ref() || Some(&o.name) != vmeta.name.as_ref() {
        return None;
    }
    if o.uid.is_none() || o.uid != vmeta.uid {
        return None;
    }
    Some(PodMetrics {
        kind: Some("PodMetrics".into()),
        api_version: Some(GROUP_VERSION.into()),
        metadata: ObjectMeta {
            name: vmeta.name.clone(),
            namespace: vmeta.namespace.clone(),
            labels: vmeta.labels.clone(),
            creation_timestamp: host.metadata.creation_timestamp.clone(),
            ..Default::default()
        },
        timestamp: host.timestamp.clone(),
        window: host.window.clone(),
        containers: host.containers.clone(),
    })
}

/// A host node's metrics under the virtual node (same name; labels the virtual node's).
pub fn node_to_virtual(
    host: &NodeMetrics,
    virtual_labels: Option<&BTreeMap<String, String>>,
) -> NodeMetrics {
    NodeMetrics {
        kind: Some("NodeMetrics".into()),
        api_version: Some(GROUP_VERSION.into()),
        metadata: ObjectMeta {
            name: host.metadata.name.clone(),
            labels: virtual_labels.cloned(),
            creation_timestamp: host.metadata.creation_timestamp.clone(),
            ..Default::default()
        },
        timestamp: host.timestamp.clone(),
        window: host.window.clone(),
        usage: host.usage.clone(),
    }
}

/// A pseudo-node's metrics (`--node-sync pseudo`: the host node is hidden): the sum of this
/// tenant's own pods on it, never the node's whole usage, which would show other tenants' load.
pub fn pseudo_node_metrics(
    name: &str,
    virtual_labels: Option<&BTreeMap<String, String>>,
    pods_on_node: &[&PodMetrics],
) -> NodeMetrics {
    let mut cpu_nanos: u128 = 0;
    let mut memory_nanos: u128 = 0;
    for pod in pods_on_node {
        for c in &pod.containers {
            cpu_nanos += c.usage.get("cpu").and_then(|q| nanos(&q.0)).unwrap_or(0);
            memory_nanos += c.usage.get("memory").and_then(|q| nanos(&q.0)).unwrap_or(0);
        }
    }
    let first = pods_on_node.first();
    NodeMetrics {
        kind: Some("NodeMetrics".into()),
        api_version: Some(GROUP_VERSION.into()),
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: virtual_labels.cloned(),
            ..Default::default()
        },
        timestamp: first.and_then(|p| p.timestamp.clone()),
        window: first.and_then(|p| p.window.clone()),
        usage: BTreeMap::from([
            ("cpu".to_string(), Quantity(format!("{cpu_nanos}n"))),
            (
                "memory".to_string(),
                Quantity(format!("{}Ki", memory_nanos / 1_000_000_000 / 1024)),
            ),
        ]),
    }
}

/// The nodes a tenant sees: host nodes running one of its (ownership-labelled) host pods that
/// are also virtual nodes vkube made. A node the tenant created itself gets no host numbers,
/// even if it is named like a host node and carries vkube's label: it must also run a pod.
pub fn visible_nodes<'a>(
    tenant: &Tenant,
    host_pods: impl IntoIterator<Item = (&'a ObjectMeta, Option<&'a str>)>,
    virtual_nodes: impl IntoIterator<Item = &'a ObjectMeta>,
) -> BTreeSet<String> {
    let running: BTreeSet<&str> = host_pods
        .into_iter()
        .filter(|(meta, _)| tenant.owns(meta))
        .filter_map(|(_, node)| node)
        .collect();
    virtual_nodes
        .into_iter()
        .filter(|m| {
            m.labels
                .as_ref()
                .and_then(|l| l.get(super::node::VIRTUAL_NODE_LABEL))
                .is_some()
        })
        .filter_map(|m| m.name.clone())
        .filter(|n| running.contains(n.as_str()))
        .collect()
}

/// A Kubernetes quantity times 10⁹, exactly: CPU in nanocores, bytes in nanobytes. Decimal
/// (n, u, m, k, M, G, T, P, E) and binary (Ki … Ei) suffixes and exponents (`1e3`); `None` for
/// anything else or a negative value (a usage or a request is never below zero).
pub fn nanos(q: &str) -> Option<u128> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number = number.strip_prefix('+').unwrap_or(number);
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && frac.is_empty())
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    // The value as digits / 10^scale.
    let digits: u128 = format!("{whole}{frac}")
        .trim_start_matches('0')
        .parse()
        .unwrap_or(0);
    let mut exp10: i32 = -i32::try_from(frac.len()).ok()? + 9;
    let mut mult: u128 = 1;
    match suffix {
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "" => {}
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => mult = 1 << 10,
        "Mi" => mult = 1 << 20,
        "Gi" => mult = 1 << 30,
        "Ti" => mult = 1 << 40,
        "Pi" => mult = 1 << 50,
        "Ei" => mult = 1 << 60,
        s if s.starts_with(['e', 'E']) => {
            let e: i32 = s[1..].parse().ok()?;
            exp10 = exp10.checked_add(e)?;
        }
        _ => return None,
    }
    let value = digits.checked_mul(mult)?;
    if exp10 >= 0 {
        value.checked_mul(10u128.checked_pow(u32::try_from(exp10).ok()?)?)
    } else {
        // Below a nano-unit: rounded up, as Kubernetes rounds quantities up to its precision.
        let div = 10u128.checked_pow(u32::try_from(-exp10).ok()?)?;
        Some(value.div_ceil(div))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::{VIRTUAL_NAME, VIRTUAL_UID};

    fn tenant() -> Tenant {
        Tenant::new("alice", "vkube-alice")
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_parse_and_match_like_the_api_server() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let cases: &[(&str, bool)] = &[
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app=db", false),
            ("tier in (front,back)", true),
            ("tier notin (front)", false),
            ("tier notin (back)", true),
            ("app", true),
            ("!app", false),
            ("!canary", true),
            ("app=web, tier in (back, front)", true),
            ("app=web,canary", false),
        ];
        for (selector, want) in cases {
            let reqs = parse_selector(selector).unwrap();
            assert_eq!(matches_all(&reqs, &l), *want, "{selector}");
        }
    }

    #[test]
    fn malformed_selectors_are_errors_never_match_all() {
        for bad in [
            "app=web,",
            ",",
            "tier in (a",
            "tier in a)",
            "app=we b",
            "a b",
            "=web",
            "app=web=x",
            "tier in (a,b c)",
            "/x=1",
        ] {
            assert!(parse_selector(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn host_selectors_map_keys_and_confine_to_the_tenant_and_namespace() {
        let t = tenant();
        let reqs = parse_selector("app=web,tier in (a,b),!canary").unwrap();
        let host = host_selector(&t, &reqs, Some("prod"));
        let app = t.host_label_key("app");
        let canary = t.host_label_key("canary");
        assert!(host.contains(&format!("{app}=web")), "{host}");
        assert!(host.contains(&format!("!{canary}")), "{host}");
        assert!(host.ends_with("vkube.dev/managed-by=alice,vkube.dev/namespace=prod"));
        // A tenant naming vkube's own keys gets inert keys, not another tenant's pods.
        let forged = parse_selector("vkube.dev/managed-by=bob").unwrap();
        let host = host_selector(&t, &forged, None);
        assert!(!host.contains("vkube.dev/managed-by=bob"), "{host}");
        assert!(host.ends_with("vkube.dev/managed-by=alice"));
        // The host API parses what we produce.
        let again = parse_selector(&host_selector(&t, &reqs, Some("prod"))).unwrap();
        assert_eq!(again.len(), 5);
    }

    fn host_pod(name: &str, managed_by: &str, ns: &str, vname: &str, uid: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(labels(&[
                (MANAGED_BY, managed_by),
                (VIRTUAL_NAMESPACE, "default"),
            ])),
            annotations: Some(labels(&[(VIRTUAL_NAME, vname), (VIRTUAL_UID, uid)])),
            ..Default::default()
        }
    }

    fn vpod(name: &str, uid: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            uid: Some(uid.into()),
            labels: Some(labels(&[("app", "web")])),
            ..Default::default()
        }
    }

    fn metrics(name: &str) -> PodMetrics {
        PodMetrics {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("vkube-alice".into()),
                labels: Some(labels(&[(MANAGED_BY, "alice")])),
                ..Default::default()
            },
            timestamp: Some("2026-01-01T00:00:00Z".into()),
            window: Some("10s".into()),
            containers: vec![ContainerMetrics {
                name: "c".into(),
                usage: BTreeMap::from([("cpu".into(), Quantity("5m".into()))]),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn pod_metrics_appear_under_the_virtual_name_only_for_the_tenants_own_copy() {
        let t = tenant();
        let host_name = "web-x-default-x-alice";
        let ok = pod_to_virtual(
            &metrics(host_name),
            &t,
            &host_pod(host_name, "alice", "vkube-alice", "web", "u1"),
            &vpod("web", "u1"),
        )
        .unwrap();
        assert_eq!(ok.metadata.name.as_deref(), Some("web"));
        assert_eq!(ok.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(ok.metadata.labels, Some(labels(&[("app", "web")])));
        assert_eq!(ok.containers, metrics(host_name).containers);
        assert_eq!(ok.kind.as_deref(), Some("PodMetrics"));
        // Not ours, another namespace, another virtual pod, a re-created pod, no UID, and
        // numbers of another host pod: nothing.
        let refused = [
            (
                host_pod(host_name, "bob", "vkube-alice", "web", "u1"),
                vpod("web", "u1"),
                host_name,
            ),
            (
                host_pod(host_name, "alice", "vkube-bob", "web", "u1"),
                vpod("web", "u1"),
                host_name,
            ),
            (
                host_pod(host_name, "alice", "vkube-alice", "db", "u1"),
                vpod("web", "u1"),
                host_name,
            ),
            (
                host_pod(host_name, "alice", "vkube-alice", "web", "u1"),
                vpod("web", "u2"),
                host_name,
            ),
            (
                host_pod(host_name, "alice", "vkube-alice", "web", ""),
                vpod("web", ""),
                host_name,
            ),
            (
                host_pod(host_name, "alice", "vkube-alice", "web", "u1"),
                vpod("web", "u1"),
                "other",
            ),
        ];
        for (i, (hp, vp, metrics_of)) in refused.iter().enumerate() {
            assert_eq!(
                pod_to_virtual(&metrics(metrics_of), &t, hp, vp),
                None,
                "case {i}"
            );
        }
    }

    #[test]
    fn only_nodes_running_the_tenants_pods_and_made_by_vkube_are_visible() {
        let t = tenant();
        let node = |name: &str, vkube: bool| ObjectMeta {
            name: Some(name.into()),
            labels: vkube.then(|| labels(&[(crate::translate::node::VIRTUAL_NODE_LABEL, "true")])),
            ..Default::default()
        };
        let mine = host_pod("a", "alice", "vkube-alice", "a", "1");
        let theirs = host_pod("b", "bob", "vkube-alice", "b", "2");
        let pods = [(&mine, Some("n1")), (&theirs, Some("n2")), (&mine, None)];
        let nodes = [
            node("n1", true),
            node("n2", true),
            node("n3", true),
            node("n1x", false),
        ];
        let seen = visible_nodes(&t, pods.iter().map(|(m, n)| (*m, *n)), nodes.iter());
        assert_eq!(seen, BTreeSet::from(["n1".to_string()]));
        // A node the tenant made itself, named like the host node, without vkube's label.
        let forged = [node("n1", false)];
        assert!(visible_nodes(&t, pods.iter().map(|(m, n)| (*m, *n)), forged.iter()).is_empty());
    }

    #[test]
    fn pseudo_nodes_show_the_sum_of_the_tenants_pods_only() {
        let mut a = metrics("a");
        a.containers.push(ContainerMetrics {
            name: "d".into(),
            usage: BTreeMap::from([
                ("cpu".into(), Quantity("1500000n".into())),
                ("memory".into(), Quantity("2Mi".into())),
            ]),
        });
        let b = metrics("b");
        let n = pseudo_node_metrics("n1", None, &[&a, &b]);
        assert_eq!(n.usage["cpu"].0, "11500000n");
        assert_eq!(n.usage["memory"].0, "2048Ki");
        assert_eq!(n.metadata.name.as_deref(), Some("n1"));
    }

    #[test]
    fn quantities_in_nano_units() {
        let cases: &[(&str, Option<u128>)] = &[
            ("0", Some(0)),
            ("1", Some(1_000_000_000)),
            ("250m", Some(250_000_000)),
            ("0.5", Some(500_000_000)),
            ("12345n", Some(12345)),
            ("3u", Some(3000)),
            ("1Ki", Some(1024 * 1_000_000_000)),
            ("1.5Gi", Some(3 * (1u128 << 29) * 1_000_000_000)),
            ("2k", Some(2_000 * 1_000_000_000)),
            ("1e3", Some(1_000 * 1_000_000_000)),
            ("1E", Some(1_000_000_000_000_000_000 * 1_000_000_000)),
            ("0.1n", Some(1)),
            ("-1", None),
            ("", None),
            ("abc", None),
            ("1Zi", None),
            ("1.2.3", None),
        ];
        for (q, want) in cases {
            assert_eq!(nanos(q), *want, "{q}");
        }
    }
}
