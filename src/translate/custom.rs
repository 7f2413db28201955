//! Custom resources (and VolumeSnapshots) synced by configuration: the admin names a namespaced
//! kind by group/version/kind (`--sync-custom-resource`) and the field paths inside its objects
//! that refer to other objects of the same namespace; the host copy is the virtual object under
//! its translated name, with the tenant's metadata policy, each configured reference naming the
//! tenant's host copy of what it refers to, and every namespace field confined.
//!
//! A custom resource's spec is copied as it is otherwise: vkube cannot know what an operator
//! does with each field, so the admin allows only kinds whose operator is safe for tenants to
//! drive. What vkube does know is enforced for every kind:
//! - references at configured paths are translated (a name can then never reach a host object
//!   that is not the tenant's: `letsencrypt-prod` becomes `letsencrypt-prod-x-default-x-alice`,
//!   which no ClusterIssuer is called), and paths the admin marks `-` must be empty;
//! - any field whose name contains `namespace` (`namespace`, `targetNamespace`,
//!   `namespaceSelector`, `namespaces`) may name only the object's own namespace, which becomes
//!   the host namespace; anything else refuses the object (an operator would act there);
//! - label selectors at configured paths are confined to the tenant and namespace, with keys
//!   mapped as pod labels are;
//! - metadata follows the tenant's key policy (`Tenant::host_meta`); status is never sent down.
//!
//! Host objects of other kinds are shown read-only in the virtual cluster by [`mirror`].

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{DynamicObject, ObjectMeta, TypeMeta};
use serde_json::Value;

use super::security::Violation;
use super::{Tenant, mirror_labels};

/// What a configured field path refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Secret,
    ConfigMap,
    Service,
    PersistentVolumeClaim,
    /// Another synced custom kind (`Kind.group`): its host copy's name.
    Custom {
        kind: String,
        group: String,
    },
    /// A label selector (matchLabels/matchExpressions): confined to the tenant's namespace.
    Selector,
    /// Must be empty: a field that would name a host object vkube does not sync.
    Refused,
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "Secret" => Target::Secret,
            "ConfigMap" => Target::ConfigMap,
            "Service" => Target::Service,
            "PersistentVolumeClaim" => Target::PersistentVolumeClaim,
            "Selector" => Target::Selector,
            "-" => Target::Refused,
            other => match other.split_once('.') {
                Some((kind, group)) if !kind.is_empty() && !group.is_empty() => Target::Custom {
                    kind: kind.into(),
                    group: group.into(),
                },
                _ => {
                    return Err(format!(
                        "unknown reference kind {other:?}: Secret, ConfigMap, Service, PersistentVolumeClaim, Selector, KIND.GROUP of another synced kind, or - (must be empty)"
                    ));
                }
            },
        })
    }
}

/// One step of a field path: a field, or every element of an array (`[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Field(String),
    Each,
}

/// A field path such as `spec.secretRef.name` or `spec.volumes[].secret.name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    text: String,
    steps: Vec<Step>,
}

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for FieldPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| Err(format!("invalid field path {s:?}: {why}"));
        let mut steps = Vec::new();
        for part in s.split('.') {
            let (name, each) = match part.strip_suffix("[]") {
                Some(n) => (n, true),
                None => (part, false),
            };
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return bad("dot-separated field names, `[]` after a list field");
            }
            steps.push(Step::Field(name.into()));
            if each {
                steps.push(Step::Each);
            }
        }
        if matches!(steps.first(), Some(Step::Field(f)) if f == "metadata" || f == "status") {
            return bad("metadata and status are never sent to the host");
        }
        Ok(FieldPath {
            text: s.into(),
            steps,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub path: FieldPath,
    pub target: Target,
}

/// A namespaced kind synced down, with its references (`--sync-custom-resource`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomKind {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub references: Vec<Reference>,
}

impl CustomKind {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `Kind.group`, as references and messages name it.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.kind, self.group)
    }

    /// The VolumeSnapshot of the CSI snapshot CRDs (`--sync-volume-snapshots`): its source claim
    /// is the tenant's synced claim; a pre-provisioned content is a cluster-scoped host object
    /// and is refused. The class is the host's, shown read-only.
    pub fn volume_snapshot() -> CustomKind {
        let r = |path: &str, target: Target| Reference {
            path: path.parse().expect("a valid built-in path"),
            target,
        };
        CustomKind {
            group: SNAPSHOT_GROUP.into(),
            version: "v1".into(),
            kind: "VolumeSnapshot".into(),
            references: vec![
                r(
                    "spec.source.persistentVolumeClaimName",
                    Target::PersistentVolumeClaim,
                ),
                r("spec.source.volumeSnapshotContentName", Target::Refused),
            ],
        }
    }
}

pub const SNAPSHOT_GROUP: &str = "snapshot.storage.k8s.io";

/// Parses `GROUP/VERSION/KIND[:PATH=TARGET,...]`, e.g.
/// `example.com/v1/Widget:spec.secretRef.name=Secret,spec.selector=Selector`.
impl std::str::FromStr for CustomKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (gvk, refs) = match s.split_once(':') {
            Some((g, r)) => (g, Some(r)),
            None => (s, None),
        };
        let parts: Vec<&str> = gvk.split('/').collect();
        let [group, version, kind] = parts.as_slice() else {
            return Err(format!(
                "invalid custom resource {s:?}: GROUP/VERSION/KIND[:PATH=KIND,...], e.g. example.com/v1/Widget:spec.secretRef.name=Secret"
            ));
        };
        if group.is_empty() || !group.contains('.') {
            return Err(format!(
                "invalid custom resource {s:?}: {group:?} is not a custom resource group (built-in kinds are synced by vkube itself)"
            ));
        }
        if version.is_empty()
            || kind.is_empty()
            || !kind.starts_with(|c: char| c.is_ascii_uppercase())
        {
            return Err(format!(
                "invalid custom resource {s:?}: a version and a Kind (capitalised) are needed"
            ));
        }
        let mut references = Vec::new();
        for r in refs.into_iter().flat_map(|r| r.split(',')) {
            let Some((path, target)) = r.split_once('=') else {
                return Err(format!("invalid reference {r:?} in {s:?}: PATH=KIND"));
            };
            references.push(Reference {
                path: path.parse()?,
                target: target.parse()?,
            });
        }
        Ok(CustomKind {
            group: group.to_string(),
            version: version.to_string(),
            kind: kind.to_string(),
            references,
        })
    }
}

/// A host copy, and the names of the Secrets and ConfigMaps it refers to (synced with it).
#[derive(Debug, Clone, PartialEq)]
pub struct HostCustom {
    pub object: DynamicObject,
}

/// The Secrets and ConfigMaps a virtual object refers to at its configured paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomReferences {
    pub secrets: BTreeSet<String>,
    pub config_maps: BTreeSet<String>,
}

pub fn references(obj: &DynamicObject, kind: &CustomKind) -> CustomReferences {
    let mut out = CustomReferences::default();
    for r in &kind.references {
        let set = match r.target {
            Target::Secret => &mut out.secrets,
            Target::ConfigMap => &mut out.config_maps,
            _ => continue,
        };
        visit(&obj.data, &r.path.steps, &mut |v| {
            if let Some(n) = v.as_str().filter(|n| !n.is_empty()) {
                set.insert(n.to_string());
            }
        });
    }
    out
}

/// Calls `f` with every value at `steps` under `value` (missing fields are skipped).
fn visit(value: &Value, steps: &[Step], f: &mut dyn FnMut(&Value)) {
    match steps.split_first() {
        None => f(value),
        Some((Step::Field(name), rest)) => {
            if let Some(v) = value.get(name.as_str()) {
                visit(v, rest, f);
            }
        }
        Some((Step::Each, rest)) => {
            for v in value.as_array().into_iter().flatten() {
                visit(v, rest, f);
            }
        }
    }
}

/// Like [`visit`], mutably, with the concrete path (`spec.refs[1].name`) for messages.
fn visit_mut(value: &mut Value, steps: &[Step], at: &str, f: &mut dyn FnMut(&mut Value, &str)) {
    match steps.split_first() {
        None => f(value, at),
        Some((Step::Field(name), rest)) => {
            let at = if at.is_empty() {
                name.clone()
            } else {
                format!("{at}.{name}")
            };
            if let Some(v) = value.get_mut(name.as_str()) {
                visit_mut(v, rest, &at, f);
            }
        }
        Some((Step::Each, rest)) => {
            for (i, v) in value.as_array_mut().into_iter().flatten().enumerate() {
                visit_mut(v, rest, &format!("{at}[{i}]"), f);
            }
        }
    }
}

/// The host copy of virtual object `v` of `kind` (pure). Refused with every offending field
/// named, or the object with translated references.
pub fn to_host(
    v: &DynamicObject,
    kind: &CustomKind,
    tenant: &Tenant,
) -> Result<HostCustom, Vec<Violation>> {
    let ns = v.metadata.namespace.clone().unwrap_or_default();
    let name = v.metadata.name.clone().unwrap_or_default();
    let mut data = v.data.clone();
    if let Some(o) = data.as_object_mut() {
        o.remove("status");
        o.remove("metadata");
        o.remove("apiVersion");
        o.remove("kind");
    }
    let mut refused = Vec::new();
    // Selectors are confined as a whole below; vkube's own namespace label in a confined
    // selector must not be read as a namespace field. They are set aside meanwhile.
    let mut selectors = Vec::new();
    for r in kind
        .references
        .iter()
        .filter(|r| r.target == Target::Selector)
    {
        visit_mut(&mut data, &r.path.steps, "", &mut |value, _| {
            selectors.push(value.take());
        });
    }
    confine_namespaces(&mut data, "", &ns, &tenant.host_namespace, &mut refused);
    let mut selectors = selectors.into_iter();
    for r in kind
        .references
        .iter()
        .filter(|r| r.target == Target::Selector)
    {
        visit_mut(&mut data, &r.path.steps, "", &mut |value, _| {
            *value = selectors.next().unwrap_or_default();
        });
    }
    for r in &kind.references {
        visit_mut(&mut data, &r.path.steps, "", &mut |value, at| {
            if value.is_null() {
                return;
            }
            match &r.target {
                Target::Refused => refused.push(Violation {
                    field: at.into(),
                    message: "names an object of the host cluster that is not synced; remove it"
                        .into(),
                }),
                Target::Selector => match serde_json::from_value::<LabelSelector>(value.clone()) {
                    Ok(mut sel) => {
                        tenant.confine_selector(&mut sel, Some(&ns));
                        *value = serde_json::to_value(sel).unwrap_or_default();
                    }
                    Err(e) => refused.push(Violation {
                        field: at.into(),
                        message: format!("not a label selector ({e}); fix or remove it"),
                    }),
                },
                target => match value.as_str() {
                    Some("") => {}
                    Some(n) => {
                        *value = Value::String(match target {
                            Target::Service => tenant.label_name(&ns, n),
                            _ => tenant.subdomain_name(&ns, n),
                        })
                    }
                    None => refused.push(Violation {
                        field: at.into(),
                        message: "a reference must be a name (a string)".into(),
                    }),
                },
            }
        });
    }
    if !refused.is_empty() {
        return Err(refused);
    }
    Ok(HostCustom {
        object: DynamicObject {
            types: Some(TypeMeta {
                api_version: kind.api_version(),
                kind: kind.kind.clone(),
            }),
            metadata: tenant.host_meta(&v.metadata, tenant.subdomain_name(&ns, &name)),
            data,
        },
    })
}

/// Every field whose name contains "namespace" (any case) may hold only the object's own
/// namespace, which becomes the host namespace; a list of names likewise. Anything else there
/// (another namespace, a namespace selector) refuses the object: the operator would act in
/// that namespace, which is not the tenant's.
fn confine_namespaces(
    value: &mut Value,
    at: &str,
    own: &str,
    host_ns: &str,
    refused: &mut Vec<Violation>,
) {
    let confine_one = |v: &mut Value, field: &str, refused: &mut Vec<Violation>| {
        match v {
        Value::Null => {}
        Value::String(s) if s.is_empty() => {}
        Value::String(s) if s == own => *s = host_ns.to_string(),
        Value::String(s) => refused.push(Violation {
            field: field.into(),
            message: format!(
                "names namespace {s:?}: only the object's own namespace ({own}) can be used on the host; remove it"
            ),
        }),
        _ => refused.push(Violation {
            field: field.into(),
            message: format!(
                "selects namespaces; only the object's own namespace ({own}) can be used on the host: remove it"
            ),
        }),
    }
    };
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let field = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                if k.to_ascii_lowercase().contains("namespace") {
                    match v {
                        Value::Array(items) => {
                            for (i, item) in items.iter_mut().enumerate() {
                                confine_one(item, &format!("{field}[{i}]"), refused);
                            }
                        }
                        other => confine_one(other, &field, refused),
                    }
                } else {
                    confine_namespaces(v, &field, own, host_ns, refused);
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                confine_namespaces(item, &format!("{at}[{i}]"), own, host_ns, refused);
            }
        }
        _ => {}
    }
}

/// The status the virtual object should show: the host copy's (when it has one and it differs).
pub fn status_to_show(host: &DynamicObject, virt: &DynamicObject) -> Option<Value> {
    let status = host.data.get("status").filter(|s| !s.is_null())?;
    (virt.data.get("status") != Some(status)).then(|| status.clone())
}

/// A host kind shown read-only in the virtual cluster (`--show-host-kind`); `names` limits it
/// to those objects (priority classes: the admin's list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKind {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub names: Option<BTreeSet<String>>,
}

impl HostKind {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn priority_classes(names: BTreeSet<String>) -> HostKind {
        HostKind {
            group: "scheduling.k8s.io".into(),
            version: "v1".into(),
            kind: "PriorityClass".into(),
            names: Some(names),
        }
    }

    pub fn volume_snapshot_classes() -> HostKind {
        HostKind {
            group: SNAPSHOT_GROUP.into(),
            version: "v1".into(),
            kind: "VolumeSnapshotClass".into(),
            names: None,
        }
    }
}

/// `GROUP/VERSION/KIND` (`networking.k8s.io/v1/IngressClass`; core kinds as `/v1/KIND`).
impl std::str::FromStr for HostKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [group, version, kind] if !version.is_empty() && !kind.is_empty() => Ok(HostKind {
                group: group.to_string(),
                version: version.to_string(),
                kind: kind.to_string(),
                names: None,
            }),
            _ => Err(format!(
                "invalid host kind {s:?}: GROUP/VERSION/KIND, e.g. networking.k8s.io/v1/IngressClass"
            )),
        }
    }
}

/// Annotations kept on a mirror: which class is the host's default (the virtual API then
/// defaults as the host does). Every other host annotation stays on the host.
fn kept_annotation(key: &str) -> bool {
    key.ends_with("/is-default-class")
}

/// The read-only virtual mirror of a cluster-scoped host object (pure): its content as the
/// host has it, without the host's identity (uid, owner references, finalizers), with the
/// host's labels except vkube's prefix, the mirror label, and only the default-class
/// annotation. Status is left out: a mirror shows what the host configured.
pub fn mirror(host: &DynamicObject) -> DynamicObject {
    let annotations: std::collections::BTreeMap<String, String> = host
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| kept_annotation(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut data = host.data.clone();
    if let Some(o) = data.as_object_mut() {
        o.remove("status");
        o.remove("metadata");
    }
    DynamicObject {
        types: host.types.clone(),
        metadata: ObjectMeta {
            name: host.metadata.name.clone(),
            labels: Some(mirror_labels(&host.metadata)),
            annotations: Some(annotations).filter(|a| !a.is_empty()),
            ..Default::default()
        },
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::test_support::tenant;
    use crate::translate::{HOST_MIRROR, MANAGED_BY, VIRTUAL_NAMESPACE};
    use serde_json::json;

    fn widget_kind() -> CustomKind {
        "example.com/v1/Widget:spec.secretRef.name=Secret,spec.configs[].name=ConfigMap,spec.backend=Service,spec.source.claim=PersistentVolumeClaim,spec.issuerRef.name=Issuer.cert-manager.io,spec.selector=Selector,spec.contentName=-"
            .parse()
            .unwrap()
    }

    fn widget(spec: Value) -> DynamicObject {
        DynamicObject {
            types: Some(TypeMeta {
                api_version: "example.com/v1".into(),
                kind: "Widget".into(),
            }),
            metadata: ObjectMeta {
                name: Some("w".into()),
                namespace: Some("default".into()),
                uid: Some("u-1".into()),
                labels: Some([("sidecar.istio.io/inject".to_string(), "true".to_string())].into()),
                owner_references: Some(vec![Default::default()]),
                finalizers: Some(vec!["example.com/cleanup".into()]),
                ..Default::default()
            },
            data: json!({"spec": spec, "status": {"ready": true}}),
        }
    }

    #[test]
    fn the_flag_form_parses_and_bad_ones_say_why() {
        let k = widget_kind();
        assert_eq!(k.api_version(), "example.com/v1");
        assert_eq!(k.qualified(), "Widget.example.com");
        assert_eq!(k.references.len(), 7);
        assert_eq!(
            k.references[4].target,
            Target::Custom {
                kind: "Issuer".into(),
                group: "cert-manager.io".into()
            }
        );
        let plain: CustomKind = "example.com/v1/Widget".parse().unwrap();
        assert!(plain.references.is_empty());
        for bad in [
            "Widget",
            "example.com/Widget",
            "/v1/Pod",
            "apps/v1/Deployment",
            "example.com/v1/widget",
            "example.com/v1/Widget:spec.x",
            "example.com/v1/Widget:spec.x=Pod",
            "example.com/v1/Widget:metadata.name=Secret",
            "example.com/v1/Widget:status.secret=Secret",
            "example.com/v1/Widget:spec..x=Secret",
            "example.com/v1/Widget:spec.a[0]=Secret",
        ] {
            assert!(
                bad.parse::<CustomKind>().is_err(),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn references_name_the_tenants_copies_and_metadata_follows_the_key_policy() {
        let t = tenant();
        let v = widget(json!({
            "secretRef": {"name": "creds"},
            "configs": [{"name": "a"}, {"name": "b"}],
            "backend": "web",
            "source": {"claim": "data"},
            "issuerRef": {"name": "letsencrypt-prod", "kind": "ClusterIssuer"},
            "replicas": 3,
        }));
        let h = to_host(&v, &widget_kind(), &t).unwrap().object;
        assert_eq!(h.metadata.name.as_deref(), Some("w-x-default-x-alice"));
        assert_eq!(h.metadata.namespace.as_deref(), Some("vkube-alice"));
        assert_eq!(h.metadata.owner_references, None);
        assert_eq!(h.metadata.finalizers, None);
        let labels = h.metadata.labels.unwrap();
        assert_eq!(labels[MANAGED_BY], "alice");
        assert_eq!(labels[VIRTUAL_NAMESPACE], "default");
        assert!(!labels.contains_key("sidecar.istio.io/inject"));
        let spec = &h.data["spec"];
        assert_eq!(spec["secretRef"]["name"], "creds-x-default-x-alice");
        assert_eq!(spec["configs"][1]["name"], "b-x-default-x-alice");
        assert_eq!(spec["backend"], "web-x-default-x-alice");
        assert_eq!(spec["source"]["claim"], "data-x-default-x-alice");
        // A cluster-scoped host object cannot be named: the translated name is the tenant's.
        assert_eq!(
            spec["issuerRef"]["name"],
            "letsencrypt-prod-x-default-x-alice"
        );
        assert_eq!(spec["replicas"], 3);
        assert!(h.data.get("status").is_none(), "status is never sent down");
        let refs = references(&v, &widget_kind());
        assert_eq!(refs.secrets, BTreeSet::from(["creds".to_string()]));
        assert_eq!(
            refs.config_maps,
            BTreeSet::from(["a".to_string(), "b".to_string()])
        );
    }

    #[test]
    fn namespace_fields_name_only_the_objects_own_namespace() {
        let t = tenant();
        let own = widget(json!({"secretRef": {"name": "s", "namespace": "default"},
                                "targetNamespace": "default"}));
        let h = to_host(&own, &widget_kind(), &t).unwrap().object;
        assert_eq!(h.data["spec"]["secretRef"]["namespace"], "vkube-alice");
        assert_eq!(h.data["spec"]["targetNamespace"], "vkube-alice");

        let hostile = widget(json!({
            "secretRef": {"name": "vkube-bob-certs", "namespace": "vkube-bob"},
            "targets": [{"watchNamespace": "kube-system"}],
            "namespaceSelector": {"any": true},
            "allowedNamespaces": ["default", "kube-system"],
        }));
        let err = to_host(&hostile, &widget_kind(), &t).unwrap_err();
        let fields: Vec<&str> = err.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.allowedNamespaces[1]",
                "spec.namespaceSelector",
                "spec.secretRef.namespace",
                "spec.targets[0].watchNamespace",
            ]
        );
    }

    #[test]
    fn refused_paths_and_non_names_refuse_the_object() {
        let t = tenant();
        let v = widget(json!({"contentName": "snapcontent-of-bob", "secretRef": {"name": 7}}));
        let err = to_host(&v, &widget_kind(), &t).unwrap_err();
        let fields: Vec<&str> = err.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["spec.secretRef.name", "spec.contentName"]);
        // Absent or empty is fine.
        assert!(to_host(&widget(json!({"contentName": null})), &widget_kind(), &t).is_ok());
    }

    #[test]
    fn selectors_are_confined_with_keys_mapped_as_pod_labels() {
        let t = tenant();
        let v = widget(json!({"selector": {"matchLabels": {
            "app": "web", MANAGED_BY: "bob", "team": "x"}}}));
        let h = to_host(&v, &widget_kind(), &t).unwrap().object;
        let sel = &h.data["spec"]["selector"]["matchLabels"];
        assert_eq!(sel["app"], "web");
        assert_eq!(
            sel[MANAGED_BY], "alice",
            "another tenant cannot be selected"
        );
        assert_eq!(sel[VIRTUAL_NAMESPACE], "default");
        assert_eq!(sel[t.host_label_key("team")], "x");
        let bad = widget(json!({"selector": "app=web"}));
        assert!(to_host(&bad, &widget_kind(), &t).is_err());
    }

    #[test]
    fn the_volume_snapshot_source_is_the_tenants_claim_and_never_a_host_content() {
        let t = tenant();
        let k = CustomKind::volume_snapshot();
        let mut v = widget(json!({"source": {"persistentVolumeClaimName": "data"},
                                  "volumeSnapshotClassName": "csi-snap"}));
        v.types = None;
        let h = to_host(&v, &k, &t).unwrap().object;
        assert_eq!(
            h.data["spec"]["source"]["persistentVolumeClaimName"],
            "data-x-default-x-alice"
        );
        assert_eq!(h.data["spec"]["volumeSnapshotClassName"], "csi-snap");
        assert_eq!(h.types.unwrap().api_version, "snapshot.storage.k8s.io/v1");
        let content = widget(json!({"source": {"volumeSnapshotContentName": "other-tenants"}}));
        assert!(to_host(&content, &k, &t).is_err());
    }

    #[test]
    fn status_flows_up_only_when_it_differs() {
        let v = widget(json!({}));
        let mut h = v.clone();
        assert_eq!(status_to_show(&h, &v), None);
        h.data["status"] = json!({"ready": false});
        assert_eq!(status_to_show(&h, &v), Some(json!({"ready": false})));
        h.data.as_object_mut().unwrap().remove("status");
        assert_eq!(status_to_show(&h, &v), None);
    }

    #[test]
    fn a_mirror_shows_the_host_object_without_its_identity() {
        let host = DynamicObject {
            types: Some(TypeMeta {
                api_version: "scheduling.k8s.io/v1".into(),
                kind: "PriorityClass".into(),
            }),
            metadata: ObjectMeta {
                name: Some("tenant-high".into()),
                uid: Some("host-uid".into()),
                resource_version: Some("7".into()),
                labels: Some(
                    [
                        (MANAGED_BY.to_string(), "bob".to_string()),
                        ("tier".to_string(), "gold".to_string()),
                    ]
                    .into(),
                ),
                annotations: Some(
                    [
                        ("internal/owner".to_string(), "ops".to_string()),
                        (
                            "ingressclass.kubernetes.io/is-default-class".to_string(),
                            "true".to_string(),
                        ),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            data: json!({"value": 1000, "globalDefault": false, "status": {"x": 1}}),
        };
        let m = mirror(&host);
        assert_eq!(m.metadata.uid, None);
        assert_eq!(m.metadata.resource_version, None);
        let labels = m.metadata.labels.unwrap();
        assert_eq!(labels[HOST_MIRROR], "true");
        assert_eq!(labels["tier"], "gold");
        assert!(!labels.contains_key(MANAGED_BY));
        assert_eq!(m.metadata.annotations.unwrap().len(), 1);
        assert_eq!(m.data, json!({"value": 1000, "globalDefault": false}));
        let k: HostKind = "networking.k8s.io/v1/IngressClass".parse().unwrap();
        assert_eq!(k.api_version(), "networking.k8s.io/v1");
        let core: HostKind = "/v1/Namespace".parse().unwrap();
        assert_eq!(core.api_version(), "v1");
        assert!("IngressClass".parse::<HostKind>().is_err());
    }
}
