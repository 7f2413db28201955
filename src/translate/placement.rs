//! Where a tenant's pod may run on the host: the host scheduler decides, within the admin's
//! bounds. The admin's node selector is ANDed into every pod (the scheduler requires a pod's
//! `nodeSelector` and its required node affinity both to match, so the tenant's own affinity
//! and selector can only narrow it); the tenant's tolerations reach the host only when the
//! admin allows them (a toleration only ever widens where a pod may go); the admin's enforced
//! tolerations are added; runtime classes only from the admin's list; `nodeName`, which would
//! skip the scheduler and with it taints and selectors, becomes a node affinity instead.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PodSpec,
    Toleration,
};

use super::security::Violation;

/// Tolerations the virtual API server's admission adds to every pod (`DefaultTolerationSeconds`):
/// they only keep a pod a few minutes on a node the host already placed it on.
pub const DEFAULT_ALLOWED_TOLERATIONS: &[&str] = &[
    "node.kubernetes.io/not-ready:NoExecute",
    "node.kubernetes.io/unreachable:NoExecute",
];

/// A toleration as the admin writes it: `key[=value][:effect]`. Matching is exact: no `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TolerationSpec {
    pub key: String,
    pub value: Option<String>,
    pub effect: Option<String>,
}

const EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];

impl std::str::FromStr for TolerationSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (rest, effect) = match s.rsplit_once(':') {
            Some((rest, effect)) => (rest, Some(effect.to_string())),
            None => (s, None),
        };
        let (key, value) = match rest.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (rest, None),
        };
        if key.is_empty() || key.contains('*') || value.as_deref().is_some_and(|v| v.contains('*'))
        {
            return Err(format!(
                "invalid toleration {s:?}: expected key[=value][:effect] with a key and no `*`"
            ));
        }
        if let Some(e) = &effect
            && !EFFECTS.contains(&e.as_str())
        {
            return Err(format!(
                "invalid toleration {s:?}: effect {e:?} is not one of {EFFECTS:?}"
            ));
        }
        Ok(TolerationSpec {
            key: key.to_string(),
            value,
            effect,
        })
    }
}

impl TolerationSpec {
    /// The toleration the admin enforces with this spec (`--pod-toleration`).
    pub fn to_toleration(&self) -> Toleration {
        Toleration {
            key: Some(self.key.clone()),
            operator: Some(
                if self.value.is_some() {
                    "Equal"
                } else {
                    "Exists"
                }
                .into(),
            ),
            value: self.value.clone(),
            effect: self.effect.clone(),
            toleration_seconds: None,
        }
    }

    /// Whether tenant toleration `t` is no wider than this spec: the same key, the spec's value
    /// (or any, when the spec names none), the spec's effect (or any, when it names none). An
    /// empty key or effect in `t` means "all", which is wider than any spec.
    pub fn covers(&self, t: &Toleration) -> bool {
        if t.key.as_deref() != Some(self.key.as_str()) {
            return false;
        }
        let value_ok = match t.operator.as_deref().unwrap_or("Equal") {
            "Equal" => self
                .value
                .as_ref()
                .is_none_or(|v| t.value.as_deref().unwrap_or("") == v),
            "Exists" => self.value.is_none(),
            // Newer comparison operators: not understood here, so not allowed.
            _ => false,
        };
        let effect_ok = match (&self.effect, t.effect.as_deref().filter(|e| !e.is_empty())) {
            (None, _) => true,
            (Some(want), Some(have)) => want == have,
            (Some(_), None) => false,
        };
        value_ok && effect_ok
    }
}

/// The admin's placement policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementPolicy {
    /// Merged into every host pod (`--node-selector KEY=VALUE`).
    pub node_selector: BTreeMap<String, String>,
    /// Added to every host pod (`--pod-toleration`).
    pub tolerations: Vec<TolerationSpec>,
    /// Tenant tolerations kept when one of these covers them (`--allow-toleration`, plus
    /// [`DEFAULT_ALLOWED_TOLERATIONS`]).
    pub allowed_tolerations: Vec<TolerationSpec>,
    /// `runtimeClassName`s tenants may use (`--allow-runtime-class`).
    pub runtime_classes: BTreeSet<String>,
    /// Host PriorityClasses tenant pods may name (`--allow-priority-class`); shown read-only in
    /// the virtual cluster.
    pub priority_classes: BTreeSet<String>,
    /// What a pod naming any other class gets instead (`--default-priority-class`, one of
    /// `priority_classes`); without it such a pod gets the host's default priority.
    pub default_priority_class: Option<String>,
}

impl Default for PlacementPolicy {
    fn default() -> Self {
        PlacementPolicy {
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            allowed_tolerations: DEFAULT_ALLOWED_TOLERATIONS
                .iter()
                .filter_map(|t| t.parse().ok())
                .collect(),
            runtime_classes: BTreeSet::new(),
            priority_classes: BTreeSet::new(),
            default_priority_class: None,
        }
    }
}

/// Parses `KEY=VALUE` (`--node-selector`).
pub fn parse_selector_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("invalid node selector {s:?}: expected KEY=VALUE")),
    }
}

/// Applies `policy` to a host pod spec. Returns the refusals (the pod must not run) and the
/// notices (fields left out, which the tenant should hear about).
pub fn apply(spec: &mut PodSpec, policy: &PlacementPolicy) -> (Vec<Violation>, Vec<Violation>) {
    let mut refused = Vec::new();
    let mut dropped = Vec::new();

    // The host scheduler places every pod; a pinned node becomes a requirement it checks
    // together with taints and the admin's selector.
    if let Some(node) = spec.node_name.take().filter(|n| !n.is_empty()) {
        require_node(spec, &node);
    }

    let tenant_selector = spec.node_selector.take().unwrap_or_default();
    for (k, v) in &tenant_selector {
        if policy
            .node_selector
            .get(k)
            .is_some_and(|enforced| enforced != v)
        {
            refused.push(Violation {
                field: format!("spec.nodeSelector[{k}]"),
                message: format!(
                    "the host requires {k}={} for every pod; remove it or use that value",
                    policy.node_selector[k]
                ),
            });
        }
    }
    let mut selector = tenant_selector;
    selector.extend(policy.node_selector.clone());
    spec.node_selector = Some(selector).filter(|s| !s.is_empty());

    let mut tolerations = Vec::new();
    for (i, t) in spec
        .tolerations
        .take()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        if policy.allowed_tolerations.iter().any(|a| a.covers(&t)) {
            tolerations.push(t);
        } else {
            dropped.push(Violation {
                field: format!("spec.tolerations[{i}]"),
                message: format!(
                    "toleration {} is not allowed on this host and was left out (the admin can allow it)",
                    describe(&t)
                ),
            });
        }
    }
    for enforced in &policy.tolerations {
        let t = enforced.to_toleration();
        if !tolerations.contains(&t) {
            tolerations.push(t);
        }
    }
    spec.tolerations = Some(tolerations).filter(|t| !t.is_empty());

    // Priority decides who the host scheduler evicts to make room: a tenant may only name a
    // host class the admin listed. A class the tenant made itself (any value it likes) or an
    // unlisted host class (`system-cluster-critical`) becomes the admin's default, never more.
    // The host's admission sets the priority value from the host's class.
    if let Some(class) = spec.priority_class_name.take().filter(|c| !c.is_empty()) {
        if policy.priority_classes.contains(&class) {
            spec.priority_class_name = Some(class);
        } else {
            spec.priority_class_name = policy.default_priority_class.clone();
            let instead = match &policy.default_priority_class {
                Some(d) => format!("the pod gets the host's class {d:?} instead"),
                None => "the pod gets the host's default priority".into(),
            };
            dropped.push(Violation {
                field: "spec.priorityClassName".into(),
                message: format!(
                    "priority class {class:?} is not one the host lets tenants use ({}); {instead}",
                    listed(&policy.priority_classes)
                ),
            });
        }
    }

    if let Some(class) = &spec.runtime_class_name
        && !policy.runtime_classes.contains(class)
    {
        refused.push(Violation {
            field: "spec.runtimeClassName".into(),
            message: format!(
                "runtime class {class:?} is not allowed on this host; remove it (or ask the admin to allow it)"
            ),
        });
    }
    (refused, dropped)
}

fn listed(names: &BTreeSet<String>) -> String {
    if names.is_empty() {
        "none are allowed".into()
    } else {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        format!("allowed: {}", names.join(", "))
    }
}

fn describe(t: &Toleration) -> String {
    let mut s = t.key.clone().unwrap_or_else(|| "<all keys>".into());
    if let Some(v) = t.value.as_deref().filter(|v| !v.is_empty()) {
        s.push('=');
        s.push_str(v);
    }
    s.push(':');
    s.push_str(
        t.effect
            .as_deref()
            .filter(|e| !e.is_empty())
            .unwrap_or("<all effects>"),
    );
    s
}

/// Adds "the node named `node`" to every required node-affinity term (terms are ORed, so each
/// must carry it), or makes the one term.
fn require_node(spec: &mut PodSpec, node: &str) {
    let requirement = NodeSelectorRequirement {
        key: "metadata.name".into(),
        operator: "In".into(),
        values: Some(vec![node.to_string()]),
    };
    let required = spec
        .affinity
        .get_or_insert_with(Affinity::default)
        .node_affinity
        .get_or_insert_with(NodeAffinity::default)
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_with(|| NodeSelector {
            node_selector_terms: Vec::new(),
        });
    if required.node_selector_terms.is_empty() {
        required
            .node_selector_terms
            .push(NodeSelectorTerm::default());
    }
    for term in required.node_selector_terms.iter_mut() {
        term.match_fields
            .get_or_insert_with(Vec::new)
            .push(requirement.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tol(key: &str, op: &str, value: Option<&str>, effect: Option<&str>) -> Toleration {
        Toleration {
            key: Some(key.into()).filter(|k: &String| !k.is_empty()),
            operator: Some(op.into()),
            value: value.map(Into::into),
            effect: effect.map(Into::into),
            toleration_seconds: None,
        }
    }

    #[test]
    fn toleration_specs_parse_and_cover_only_narrower_tolerations() {
        let spec: TolerationSpec = "vkube.dev/real-node=true:NoSchedule".parse().unwrap();
        let cases = [
            (
                tol(
                    "vkube.dev/real-node",
                    "Equal",
                    Some("true"),
                    Some("NoSchedule"),
                ),
                true,
            ),
            (
                tol("vkube.dev/real-node", "Exists", None, Some("NoSchedule")),
                false,
            ),
            (
                tol(
                    "vkube.dev/real-node",
                    "Equal",
                    Some("false"),
                    Some("NoSchedule"),
                ),
                false,
            ),
            (
                tol("vkube.dev/real-node", "Equal", Some("true"), None),
                false,
            ),
            (
                tol(
                    "vkube.dev/real-node",
                    "Equal",
                    Some("true"),
                    Some("NoExecute"),
                ),
                false,
            ),
            (tol("", "Exists", None, None), false),
            (
                tol("dedicated", "Equal", Some("true"), Some("NoSchedule")),
                false,
            ),
        ];
        for (t, want) in cases {
            assert_eq!(spec.covers(&t), want, "{t:?}");
        }
        let any_value: TolerationSpec = "dedicated".parse().unwrap();
        assert!(any_value.covers(&tol("dedicated", "Exists", None, None)));
        assert!(any_value.covers(&tol("dedicated", "Equal", Some("gpu"), Some("NoSchedule"))));
        assert!(!any_value.covers(&tol("dedicated", "Lt", Some("5"), None)));
        for bad in ["", "=x", "*", "a=*", "a:Sometimes", ":NoSchedule"] {
            assert!(bad.parse::<TolerationSpec>().is_err(), "{bad}");
        }
        assert_eq!(
            "a=b:NoExecute"
                .parse::<TolerationSpec>()
                .unwrap()
                .to_toleration(),
            tol("a", "Equal", Some("b"), Some("NoExecute"))
        );
    }

    #[test]
    fn the_admins_selector_and_tolerations_bound_every_pod() {
        let policy = PlacementPolicy {
            node_selector: BTreeMap::from([("pool".into(), "tenants".into())]),
            tolerations: vec!["pool=tenants:NoSchedule".parse().unwrap()],
            ..Default::default()
        };
        let mut spec = PodSpec {
            node_selector: Some(BTreeMap::from([("disk".into(), "ssd".into())])),
            tolerations: Some(vec![
                tol(
                    "node.kubernetes.io/not-ready",
                    "Exists",
                    None,
                    Some("NoExecute"),
                ),
                tol("dedicated", "Equal", Some("infra"), Some("NoSchedule")),
                tol("", "Exists", None, None),
            ]),
            node_name: Some("node-7".into()),
            ..Default::default()
        };
        let (refused, dropped) = apply(&mut spec, &policy);
        assert!(refused.is_empty(), "{refused:?}");
        let dropped: Vec<_> = dropped.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(dropped, ["spec.tolerations[1]", "spec.tolerations[2]"]);
        assert_eq!(
            spec.node_selector.unwrap(),
            BTreeMap::from([
                ("disk".into(), "ssd".into()),
                ("pool".into(), "tenants".into())
            ])
        );
        let keys: Vec<_> = spec
            .tolerations
            .unwrap()
            .into_iter()
            .map(|t| t.key.unwrap())
            .collect();
        assert_eq!(keys, ["node.kubernetes.io/not-ready", "pool"]);
        assert_eq!(spec.node_name, None);
        let terms = spec
            .affinity
            .unwrap()
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 1);
        assert_eq!(
            terms[0].match_fields.as_ref().unwrap()[0].values,
            Some(vec!["node-7".into()])
        );
    }

    #[test]
    fn only_the_admins_priority_classes_reach_the_host_and_others_get_the_default() {
        let policy = PlacementPolicy {
            priority_classes: BTreeSet::from(["tenant-low".into(), "tenant-high".into()]),
            default_priority_class: Some("tenant-low".into()),
            ..Default::default()
        };
        let with = |class: &str| PodSpec {
            priority_class_name: Some(class.into()),
            ..Default::default()
        };
        let mut spec = with("tenant-high");
        let (refused, dropped) = apply(&mut spec, &policy);
        assert!(refused.is_empty() && dropped.is_empty());
        assert_eq!(spec.priority_class_name.as_deref(), Some("tenant-high"));
        // A class the tenant made itself (value 1e9, say), or the host's critical classes.
        for above in ["my-own-top-priority", "system-node-critical"] {
            let mut spec = with(above);
            let (refused, dropped) = apply(&mut spec, &policy);
            assert!(refused.is_empty());
            assert_eq!(dropped[0].field, "spec.priorityClassName");
            assert!(dropped[0].message.contains("tenant-low"), "{}", dropped[0]);
            assert_eq!(spec.priority_class_name.as_deref(), Some("tenant-low"));
        }
        let mut spec = with("system-node-critical");
        let (_, dropped) = apply(&mut spec, &PlacementPolicy::default());
        assert_eq!(spec.priority_class_name, None);
        assert!(dropped[0].message.contains("none are allowed"));
        let mut none = PodSpec::default();
        assert!(apply(&mut none, &policy).1.is_empty());
        assert_eq!(none.priority_class_name, None);
    }

    #[test]
    fn a_conflicting_selector_or_unlisted_runtime_class_is_refused() {
        let policy = PlacementPolicy {
            node_selector: BTreeMap::from([("pool".into(), "tenants".into())]),
            runtime_classes: BTreeSet::from(["gvisor".into()]),
            ..Default::default()
        };
        let mut spec = PodSpec {
            node_selector: Some(BTreeMap::from([("pool".into(), "infra".into())])),
            runtime_class_name: Some("kata".into()),
            ..Default::default()
        };
        let (refused, _) = apply(&mut spec, &policy);
        let fields: Vec<_> = refused.iter().map(|r| r.field.as_str()).collect();
        assert_eq!(fields, ["spec.nodeSelector[pool]", "spec.runtimeClassName"]);
        let mut ok = PodSpec {
            node_selector: Some(BTreeMap::from([("pool".into(), "tenants".into())])),
            runtime_class_name: Some("gvisor".into()),
            ..Default::default()
        };
        assert!(apply(&mut ok, &policy).0.is_empty());
    }

    #[test]
    fn a_pinned_node_is_required_in_every_affinity_term() {
        let mut spec = PodSpec {
            node_name: Some("n1".into()),
            affinity: Some(Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: vec![
                            NodeSelectorTerm::default(),
                            NodeSelectorTerm::default(),
                        ],
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        apply(&mut spec, &PlacementPolicy::default());
        let terms = spec
            .affinity
            .unwrap()
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        assert!(
            terms
                .iter()
                .all(|t| t.match_fields.as_ref().unwrap()[0].values == Some(vec!["n1".into()]))
        );
    }
}
