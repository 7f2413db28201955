//! Pods: virtual pod → host pod (names of everything it references, labels, service account,
//! downward API, volumes, placement), host status → virtual status, and the set of objects a pod
//! references. What may reach the host is decided field by field: pod security
//! ([`super::security`]), volume types ([`super::volumes`]), placement ([`super::placement`]);
//! a pod-spec field this version of vkube does not know is refused rather than copied.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Container, EnvFromSource, EnvVar, KeyToPath, ObjectFieldSelector, Pod, PodAffinityTerm,
    PodDNSConfig, PodDNSConfigOption, PodSpec, ProjectedVolumeSource, SecretProjection, Volume,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use super::placement::PlacementPolicy;
use super::security::{self, Level, Violation};
use super::volumes::{self, VolumePolicy};
use super::{Tenant, VIRTUAL_NAME, VIRTUAL_NAMESPACE, VIRTUAL_UID};

/// Key of the service-account token in the host Secret for the usual projection (the virtual
/// API's audience, the default lifetime): the key host pods created before per-projection
/// tokens mount, so it never changes.
pub const TOKEN_KEY: &str = "token";

/// The lifetime the virtual API server gives the token of its `kube-api-access` volumes.
pub const DEFAULT_TOKEN_SECONDS: i64 = 3607;

/// The admin's policy for what tenants' pods may use on the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodPolicy {
    pub volumes: VolumePolicy,
    pub placement: PlacementPolicy,
}

impl PodPolicy {
    /// The host PriorityClasses pods may name and the one others get (`placement::apply`).
    pub fn with_priority_classes(
        mut self,
        allowed: std::collections::BTreeSet<String>,
        default: Option<String>,
    ) -> Self {
        self.placement.priority_classes = allowed;
        self.placement.default_priority_class = default;
        self
    }
}

/// Per-pod inputs that are not in the pod itself.
#[derive(Debug, Clone, Default)]
pub struct PodContext {
    /// Host Secret holding this pod's virtual service-account tokens (see `syncer::tokens`);
    /// `None` drops projected tokens.
    pub token_secret: Option<String>,
    pub security: Level,
    /// Where pods reach the virtual API; `None` leaves the host's `KUBERNETES_*` variables.
    pub api: Option<ApiEndpoint>,
    /// The tenant's cluster DNS; `None` leaves pods on the host's.
    pub dns: Option<ClusterDns>,
    pub policy: Arc<PodPolicy>,
}

/// vkube's DNS server as pods address it, and the cluster domain it answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDns {
    pub nameserver: String,
    pub domain: String,
}

/// Pods that would use the cluster's DNS (`ClusterFirst`, the default) get vkube's instead,
/// with the search path of their virtual namespace; the tenant's own `dnsConfig` is kept after
/// ours. `Default` (the node's resolver) and `None` (the tenant's own config) stay as they are.
fn cluster_dns(spec: &mut PodSpec, namespace: &str, dns: &ClusterDns) {
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    if !matches!(policy, "ClusterFirst" | "ClusterFirstWithHostNet") {
        return;
    }
    let own = spec.dns_config.take().unwrap_or_default();
    let domain = &dns.domain;
    let mut nameservers = vec![dns.nameserver.clone()];
    let mut searches = vec![
        format!("{namespace}.svc.{domain}"),
        format!("svc.{domain}"),
        domain.clone(),
    ];
    for (list, extra) in [
        (&mut nameservers, own.nameservers),
        (&mut searches, own.searches),
    ] {
        for item in extra.unwrap_or_default() {
            if !list.contains(&item) {
                list.push(item);
            }
        }
    }
    // The kubelet refuses more than three nameservers.
    nameservers.truncate(3);
    let mut options = own.options.unwrap_or_default();
    if !options.iter().any(|o| o.name.as_deref() == Some("ndots")) {
        options.insert(
            0,
            PodDNSConfigOption {
                name: Some("ndots".into()),
                value: Some("5".into()),
            },
        );
    }
    spec.dns_policy = Some("None".into());
    spec.dns_config = Some(PodDNSConfig {
        nameservers: Some(nameservers),
        searches: Some(searches),
        options: Some(options),
    });
}

/// The host Service in front of vkube's API proxy, as pods address it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiEndpoint {
    pub host: String,
    pub port: i32,
}

/// The variables the kubelet sets for the `kubernetes` Service (in-cluster clients read
/// `KUBERNETES_SERVICE_HOST/PORT`), pointing at the virtual API instead of the host's. Set
/// explicitly they win over the kubelet's; a container's own definition wins over ours.
fn api_env(c: &mut Container, api: &ApiEndpoint) {
    let (host, port) = (&api.host, api.port);
    // IPv6 addresses need brackets in URLs.
    let url_host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let tcp = format!("tcp://{url_host}:{port}");
    let prefix = format!("KUBERNETES_PORT_{port}_TCP");
    let vars = [
        ("KUBERNETES_SERVICE_HOST".to_string(), host.clone()),
        ("KUBERNETES_SERVICE_PORT".to_string(), port.to_string()),
        (
            "KUBERNETES_SERVICE_PORT_HTTPS".to_string(),
            port.to_string(),
        ),
        ("KUBERNETES_PORT".to_string(), tcp.clone()),
        (prefix.clone(), tcp),
        (format!("{prefix}_PROTO"), "tcp".to_string()),
        (format!("{prefix}_PORT"), port.to_string()),
        (format!("{prefix}_ADDR"), host.clone()),
    ];
    let env = c.env.get_or_insert_with(Vec::new);
    for (name, value) in vars {
        if !env.iter().any(|e| e.name == name) {
            env.push(EnvVar {
                name,
                value: Some(value),
                value_from: None,
            });
        }
    }
}

/// The configMaps, secrets and claims a pod refers to, by virtual name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct References {
    pub config_maps: BTreeSet<String>,
    pub secrets: BTreeSet<String>,
    pub claims: BTreeSet<String>,
}

pub fn references(pod: &Pod) -> References {
    let mut refs = References::default();
    let Some(spec) = &pod.spec else {
        return refs;
    };
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    for vol in spec.volumes.iter().flatten() {
        if let Some(cm) = &vol.config_map {
            refs.config_maps.insert(cm.name.clone());
        }
        if let Some(s) = vol.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            refs.secrets.insert(s);
        }
        refs.secrets.extend(volumes::referenced_secrets(vol));
        if let Some(c) = &vol.persistent_volume_claim {
            refs.claims.insert(c.claim_name.clone());
        }
        if vol.ephemeral.is_some() {
            refs.claims
                .insert(volumes::ephemeral_claim_name(pod_name, &vol.name));
        }
        for src in vol
            .projected
            .as_ref()
            .and_then(|p| p.sources.as_ref())
            .into_iter()
            .flatten()
        {
            if let Some(cm) = &src.config_map {
                refs.config_maps.insert(cm.name.clone());
            }
            if let Some(s) = &src.secret {
                refs.secrets.insert(s.name.clone());
            }
        }
    }
    for c in all_containers(spec) {
        for env in c.env.iter().flatten() {
            if let Some(from) = &env.value_from {
                if let Some(r) = &from.config_map_key_ref {
                    refs.config_maps.insert(r.name.clone());
                }
                if let Some(r) = &from.secret_key_ref {
                    refs.secrets.insert(r.name.clone());
                }
            }
        }
        for from in c.env_from.iter().flatten() {
            if let Some(r) = &from.config_map_ref {
                refs.config_maps.insert(r.name.clone());
            }
            if let Some(r) = &from.secret_ref {
                refs.secrets.insert(r.name.clone());
            }
        }
    }
    for s in spec.image_pull_secrets.iter().flatten() {
        refs.secrets.insert(s.name.clone());
    }
    refs.config_maps.retain(|n| !n.is_empty());
    refs.secrets.retain(|n| !n.is_empty());
    refs.claims.retain(|n| !n.is_empty());
    refs
}

fn all_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
}

/// One token the syncer requests from the virtual API for a pod: one per distinct audience
/// and lifetime among the pod's projected service-account tokens, each stored under its own
/// key of the pod's token Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequestSpec {
    pub service_account: String,
    /// `None`: the virtual API's own audience.
    pub audience: Option<String>,
    pub expiration_seconds: i64,
    /// Key in the host token Secret.
    pub key: String,
}

/// Key of the token for `audience` and `expiration_seconds` in the host token Secret. Only the
/// virtual API's own token of the default lifetime uses [`TOKEN_KEY`]; every other pair gets a
/// key of its own, so a token meant for a third party is never the one the API accepts.
pub fn token_key(audience: Option<&str>, expiration_seconds: i64) -> String {
    match audience {
        None if expiration_seconds == DEFAULT_TOKEN_SECONDS => TOKEN_KEY.to_string(),
        _ => {
            let id = format!("{}\n{expiration_seconds}", audience.unwrap_or(""));
            format!("{TOKEN_KEY}-{}", &super::hex_digest(&id)[..16])
        }
    }
}

fn token_of(
    t: &k8s_openapi::api::core::v1::ServiceAccountTokenProjection,
) -> (Option<String>, i64) {
    (
        t.audience.clone().filter(|a| !a.is_empty()),
        t.expiration_seconds.unwrap_or(DEFAULT_TOKEN_SECONDS),
    )
}

/// The tokens the pod's projected service-account volumes need (empty: none).
pub fn wanted_tokens(pod: &Pod) -> Vec<TokenRequestSpec> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let service_account = spec
        .service_account_name
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into());
    let mut out: Vec<TokenRequestSpec> = Vec::new();
    for t in spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| p.sources.iter().flatten())
        .filter_map(|s| s.service_account_token.as_ref())
    {
        let (audience, expiration_seconds) = token_of(t);
        let key = token_key(audience.as_deref(), expiration_seconds);
        if !out.iter().any(|w| w.key == key) {
            out.push(TokenRequestSpec {
                service_account: service_account.clone(),
                audience,
                expiration_seconds,
                key,
            });
        }
    }
    out
}

/// A host pod, and what was left out of it that the tenant should hear about.
#[derive(Debug, Clone)]
pub struct HostPod {
    pub pod: Pod,
    pub dropped: Vec<Violation>,
}

/// The host pod for `vpod`, or the reasons it may not run on the host.
pub fn to_host(vpod: &Pod, tenant: &Tenant, ctx: &PodContext) -> Result<HostPod, Vec<Violation>> {
    let namespace = vpod.metadata.namespace.clone().unwrap_or_default();
    let name = vpod.metadata.name.clone().unwrap_or_default();
    let mut spec = vpod.spec.clone().unwrap_or_default();
    let no_annotations = BTreeMap::new();
    let annotations = vpod
        .metadata
        .annotations
        .as_ref()
        .unwrap_or(&no_annotations);
    let mut refused = security::check(annotations, &spec, ctx.security);
    refused.extend(security::unknown_fields(&spec));
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        refused.extend(volumes::check(i, v, &ctx.policy.volumes));
    }
    refused.extend(unsupported(&spec));
    let (placement_refused, mut dropped) =
        super::placement::apply(&mut spec, &ctx.policy.placement);
    refused.extend(placement_refused);
    if !refused.is_empty() {
        return Err(refused);
    }
    dropped.extend(left_out(&mut spec));

    let mut meta = tenant.host_meta(&vpod.metadata, tenant.label_name(&namespace, &name));
    meta.owner_references = None;

    let cm = |n: &str| tenant.subdomain_name(&namespace, n);
    if spec.hostname.is_none() && super::is_dns_label(&name) {
        spec.hostname = Some(name.clone());
    }
    if let Some(sub) = spec.subdomain.take() {
        spec.subdomain = Some(tenant.label_name(&namespace, &sub));
    }
    for s in spec.image_pull_secrets.iter_mut().flatten() {
        s.name = cm(&s.name);
    }
    let volumes = spec.volumes.take().unwrap_or_default();
    spec.volumes = Some(
        volumes
            .into_iter()
            .map(|v| translate_volume(v, &name, tenant, &cm, ctx))
            .collect(),
    )
    .filter(|v: &Vec<Volume>| !v.is_empty());
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        translate_container(c, tenant, &cm);
        if let Some(api) = &ctx.api {
            api_env(c, api);
        }
    }
    if ctx.api.is_some() {
        // The host's Services in this namespace are other virtual objects under translated
        // names: their link variables would only mislead.
        spec.enable_service_links = Some(false);
    }
    if let Some(dns) = &ctx.dns {
        cluster_dns(&mut spec, &namespace, dns);
    }
    if let Some(aff) = spec.affinity.as_mut() {
        let affinity = aff.pod_affinity.as_mut().map(|a| {
            (
                &mut a.required_during_scheduling_ignored_during_execution,
                &mut a.preferred_during_scheduling_ignored_during_execution,
            )
        });
        let anti = aff.pod_anti_affinity.as_mut().map(|a| {
            (
                &mut a.required_during_scheduling_ignored_during_execution,
                &mut a.preferred_during_scheduling_ignored_during_execution,
            )
        });
        for (required, preferred) in affinity.into_iter().chain(anti) {
            for t in required.iter_mut().flatten() {
                confine_term(t, tenant, &namespace);
            }
            for w in preferred.iter_mut().flatten() {
                confine_term(&mut w.pod_affinity_term, tenant, &namespace);
            }
        }
    }
    for c in spec.topology_spread_constraints.iter_mut().flatten() {
        c.match_label_keys =
            label_keys(c.match_label_keys.take(), c.label_selector.as_ref(), tenant);
        if let Some(sel) = c.label_selector.as_mut() {
            tenant.confine_selector(sel, Some(&namespace));
        }
    }
    Ok(HostPod {
        pod: Pod {
            metadata: meta,
            spec: Some(spec),
            status: None,
        },
        dropped,
    })
}

/// Pod fields that name host objects vkube does not sync: refused.
fn unsupported(spec: &PodSpec) -> Vec<Violation> {
    let mut out = Vec::new();
    if spec.resource_claims.as_ref().is_some_and(|c| !c.is_empty()) {
        out.push(Violation {
            field: "spec.resourceClaims".into(),
            message: "dynamic resource claims are not synced to the host; remove them".into(),
        });
    }
    for (kind, containers) in [
        ("containers", &spec.containers[..]),
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or(&[]),
        ),
    ] {
        for (i, c) in containers.iter().enumerate() {
            if c.resources
                .as_ref()
                .and_then(|r| r.claims.as_ref())
                .is_some_and(|c| !c.is_empty())
            {
                out.push(Violation {
                    field: format!("spec.{kind}[{i}].resources.claims"),
                    message: "dynamic resource claims are not synced to the host; remove them"
                        .into(),
                });
            }
        }
    }
    if spec.workload_ref.is_some() {
        out.push(Violation {
            field: "spec.workloadRef".into(),
            message: "workloads are not synced to the host; remove workloadRef".into(),
        });
    }
    out
}

/// Fields the host decides (or that only mean something in the virtual cluster): removed, with
/// a notice where the tenant set them on purpose.
fn left_out(spec: &mut PodSpec) -> Vec<Violation> {
    let mut dropped = Vec::new();
    let mut note = |field: &str, message: String| {
        dropped.push(Violation {
            field: field.into(),
            message,
        })
    };
    if let Some(s) = spec
        .scheduler_name
        .take()
        .filter(|s| s != "default-scheduler")
    {
        note(
            "spec.schedulerName",
            format!("the host's scheduler places pods; scheduler {s:?} left out"),
        );
    }
    if spec
        .ephemeral_containers
        .take()
        .is_some_and(|e| !e.is_empty())
    {
        note(
            "spec.ephemeralContainers",
            "ephemeral containers are not run on the host".into(),
        );
    }
    spec.service_account_name = None;
    spec.service_account = None;
    // The host service account's token would reach the host API; the virtual one is mounted
    // from the token Secret instead.
    spec.automount_service_account_token = Some(false);
    // The host's priority admission sets both from the host's class (`placement::apply` keeps
    // only a class the admin allows) and refuses a pod whose values differ from it.
    spec.priority = None;
    spec.preemption_policy = None;
    // The host's RuntimeClass admission sets it from the host's class.
    spec.overhead = None;
    dropped
}

/// What of a host pod may change after it is created (labels, annotations, images, the
/// deadline): what an update applies and what its desired hash covers. The rest of a pod's spec
/// is immutable, so a later change of how vkube translates it (a new version, a new flag) never
/// turns into an update the host would refuse; it applies to pods created from then on.
pub fn updatable(host: &Pod) -> Pod {
    let spec = host.spec.as_ref();
    let images = |cs: &[Container]| -> Vec<Container> {
        cs.iter()
            .map(|c| Container {
                name: c.name.clone(),
                image: c.image.clone(),
                ..Default::default()
            })
            .collect()
    };
    Pod {
        metadata: kube::api::ObjectMeta {
            name: host.metadata.name.clone(),
            namespace: host.metadata.namespace.clone(),
            labels: host.metadata.labels.clone(),
            annotations: host.metadata.annotations.clone(),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: images(spec.map(|s| &s.containers[..]).unwrap_or(&[])),
            init_containers: spec.and_then(|s| s.init_containers.as_deref()).map(images),
            active_deadline_seconds: spec.and_then(|s| s.active_deadline_seconds),
            ..Default::default()
        }),
        status: None,
    }
}

fn translate_volume(
    mut v: Volume,
    pod: &str,
    tenant: &Tenant,
    cm: &impl Fn(&str) -> String,
    ctx: &PodContext,
) -> Volume {
    if let Some(c) = v.config_map.as_mut() {
        c.name = cm(&c.name);
    }
    if let Some(s) = v.secret.as_mut()
        && let Some(n) = s.secret_name.as_mut()
    {
        *n = cm(n);
    }
    volumes::translate_secret_refs(&mut v, cm);
    if let Some(c) = v.persistent_volume_claim.as_mut() {
        c.claim_name = cm(&c.claim_name);
    }
    if v.ephemeral.is_some() {
        let claim = cm(&volumes::ephemeral_claim_name(pod, &v.name));
        volumes::ephemeral_to_claim(&mut v, claim);
    }
    if let Some(d) = v.downward_api.as_mut() {
        for item in d.items.iter_mut().flatten() {
            if let Some(f) = item.field_ref.as_mut() {
                translate_field_ref(f, tenant);
            }
        }
    }
    if let Some(p) = v.projected.take() {
        v.projected = Some(translate_projected(p, tenant, cm, ctx));
    }
    v
}

fn translate_projected(
    mut p: ProjectedVolumeSource,
    tenant: &Tenant,
    cm: &impl Fn(&str) -> String,
    ctx: &PodContext,
) -> ProjectedVolumeSource {
    let sources = p.sources.take().unwrap_or_default();
    let mut out = Vec::with_capacity(sources.len());
    for mut s in sources {
        if let Some(t) = s.service_account_token.take() {
            // The virtual token for this audience and lifetime, requested by the syncer and
            // stored under its own key of the pod's token Secret.
            if let Some(secret) = &ctx.token_secret {
                let (audience, seconds) = token_of(&t);
                out.push(VolumeProjection {
                    secret: Some(SecretProjection {
                        name: secret.clone(),
                        items: Some(vec![KeyToPath {
                            key: token_key(audience.as_deref(), seconds),
                            path: t.path,
                            mode: None,
                        }]),
                        optional: Some(false),
                    }),
                    ..Default::default()
                });
            }
            continue;
        }
        if let Some(c) = s.config_map.as_mut() {
            c.name = cm(&c.name);
        }
        if let Some(sec) = s.secret.as_mut() {
            sec.name = cm(&sec.name);
        }
        if let Some(d) = s.downward_api.as_mut() {
            for item in d.items.iter_mut().flatten() {
                if let Some(f) = item.field_ref.as_mut() {
                    translate_field_ref(f, tenant);
                }
            }
        }
        out.push(s);
    }
    p.sources = Some(out);
    p
}

/// Downward API fields that would show host values are redirected to our origin metadata, and
/// a label or annotation to its host key.
fn translate_field_ref(f: &mut ObjectFieldSelector, tenant: &Tenant) {
    let keyed = |path: &str, prefix: &str| -> Option<String> {
        path.strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")
            .map(str::to_string)
    };
    let replacement = match f.field_path.as_str() {
        "metadata.name" => format!("metadata.annotations['{VIRTUAL_NAME}']"),
        "metadata.namespace" => format!("metadata.labels['{VIRTUAL_NAMESPACE}']"),
        "metadata.uid" => format!("metadata.annotations['{VIRTUAL_UID}']"),
        path => {
            if let Some(k) = keyed(path, "metadata.labels") {
                format!("metadata.labels['{}']", tenant.host_label_key(&k))
            } else if let Some(k) = keyed(path, "metadata.annotations") {
                format!("metadata.annotations['{}']", tenant.host_annotation_key(&k))
            } else {
                return;
            }
        }
    };
    f.field_path = replacement;
}

fn translate_container(c: &mut Container, tenant: &Tenant, cm: &impl Fn(&str) -> String) {
    for env in c.env.iter_mut().flatten() {
        translate_env(env, tenant, cm);
    }
    for from in c.env_from.iter_mut().flatten() {
        translate_env_from(from, cm);
    }
}

fn translate_env(env: &mut EnvVar, tenant: &Tenant, cm: &impl Fn(&str) -> String) {
    let Some(from) = env.value_from.as_mut() else {
        return;
    };
    if let Some(r) = from.config_map_key_ref.as_mut() {
        r.name = cm(&r.name);
    }
    if let Some(r) = from.secret_key_ref.as_mut() {
        r.name = cm(&r.name);
    }
    if let Some(f) = from.field_ref.as_mut() {
        translate_field_ref(f, tenant);
    }
}

fn translate_env_from(from: &mut EnvFromSource, cm: &impl Fn(&str) -> String) {
    if let Some(r) = from.config_map_ref.as_mut() {
        r.name = cm(&r.name);
    }
    if let Some(r) = from.secret_ref.as_mut() {
        r.name = cm(&r.name);
    }
}

/// `matchLabelKeys`/`mismatchLabelKeys` of a term or constraint, as host label keys. The
/// virtual API server has already merged each key into the selector (with the pod's value)
/// when it created the pod; such keys are left out, since the host would merge them a second
/// time and refuse the duplicate.
fn label_keys(
    keys: Option<Vec<String>>,
    selector: Option<&LabelSelector>,
    tenant: &Tenant,
) -> Option<Vec<String>> {
    let merged = |k: &String| {
        selector
            .and_then(|s| s.match_expressions.as_ref())
            .is_some_and(|e| e.iter().any(|e| &e.key == k))
    };
    let keys: Vec<String> = keys
        .unwrap_or_default()
        .into_iter()
        .filter(|k| !merged(k))
        .map(|k| tenant.host_label_key(&k))
        .collect();
    Some(keys).filter(|k| !k.is_empty())
}

/// Pod (anti-)affinity terms select host pods: confine them to this tenant and to the virtual
/// namespaces the term names (the pod's own by default).
fn confine_term(t: &mut PodAffinityTerm, tenant: &Tenant, namespace: &str) {
    t.match_label_keys = label_keys(t.match_label_keys.take(), t.label_selector.as_ref(), tenant);
    t.mismatch_label_keys = label_keys(
        t.mismatch_label_keys.take(),
        t.label_selector.as_ref(),
        tenant,
    );
    let namespaces = t.namespaces.take().unwrap_or_default();
    let has_ns_selector = t.namespace_selector.take().is_some();
    let sel = t.label_selector.get_or_insert_with(LabelSelector::default);
    if has_ns_selector {
        // Namespace labels exist only in the virtual cluster: widen to all of the tenant.
        tenant.confine_selector(sel, None);
    } else if namespaces.is_empty() {
        tenant.confine_selector(sel, Some(namespace));
    } else {
        tenant.confine_selector(sel, None);
        sel.match_expressions
            .get_or_insert_with(Vec::new)
            .push(LabelSelectorRequirement {
                key: VIRTUAL_NAMESPACE.into(),
                operator: "In".into(),
                values: Some(namespaces),
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapKeySelector, ConfigMapVolumeSource, EnvVarSource, LocalObjectReference,
        PersistentVolumeClaimVolumeSource, PodAffinity, SecretVolumeSource,
        ServiceAccountTokenProjection,
    };

    use crate::translate::placement::PlacementPolicy;
    use kube::api::ObjectMeta;

    use crate::translate::MANAGED_BY;
    use crate::translate::test_support::tenant;

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-1".into()),
                namespace: Some("shop".into()),
                uid: Some("uid-1".into()),
                labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                service_account_name: Some("builder".into()),
                priority_class_name: Some("high".into()),
                image_pull_secrets: Some(vec![LocalObjectReference {
                    name: "regcred".into(),
                }]),
                containers: vec![Container {
                    name: "web".into(),
                    image: Some("nginx".into()),
                    env: Some(vec![
                        EnvVar {
                            name: "COLOR".into(),
                            value_from: Some(EnvVarSource {
                                config_map_key_ref: Some(ConfigMapKeySelector {
                                    name: "settings".into(),
                                    key: "color".into(),
                                    optional: None,
                                }),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                        EnvVar {
                            name: "POD_NAME".into(),
                            value_from: Some(EnvVarSource {
                                field_ref: Some(ObjectFieldSelector {
                                    field_path: "metadata.name".into(),
                                    api_version: None,
                                }),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                    ]),
                    env_from: Some(vec![EnvFromSource {
                        secret_ref: Some(k8s_openapi::api::core::v1::SecretEnvSource {
                            name: "db".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                volumes: Some(vec![
                    Volume {
                        name: "cfg".into(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: "files".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    Volume {
                        name: "tls".into(),
                        secret: Some(SecretVolumeSource {
                            secret_name: Some("tls".into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    Volume {
                        name: "data".into(),
                        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                            claim_name: "data".into(),
                            read_only: None,
                        }),
                        ..Default::default()
                    },
                    Volume {
                        name: "kube-api-access".into(),
                        projected: Some(ProjectedVolumeSource {
                            sources: Some(vec![
                                VolumeProjection {
                                    service_account_token: Some(ServiceAccountTokenProjection {
                                        path: "token".into(),
                                        expiration_seconds: Some(3607),
                                        audience: None,
                                    }),
                                    ..Default::default()
                                },
                                VolumeProjection {
                                    config_map: Some(
                                        k8s_openapi::api::core::v1::ConfigMapProjection {
                                            name: "kube-root-ca.crt".into(),
                                            ..Default::default()
                                        },
                                    ),
                                    ..Default::default()
                                },
                            ]),
                            default_mode: None,
                        }),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn references_cover_volumes_env_and_pull_secrets() {
        let r = references(&pod());
        assert_eq!(
            r.config_maps,
            BTreeSet::from(["files".into(), "kube-root-ca.crt".into(), "settings".into()])
        );
        assert_eq!(
            r.secrets,
            BTreeSet::from(["db".into(), "regcred".into(), "tls".into()])
        );
        assert_eq!(r.claims, BTreeSet::from(["data".into()]));
    }

    #[test]
    fn host_pod_references_translated_names() {
        let ctx = PodContext {
            token_secret: Some("web-1-x-shop-x-alice-token".into()),
            security: Level::Baseline,
            ..Default::default()
        };
        let host = to_host(&pod(), &tenant(), &ctx).unwrap().pod;
        assert_eq!(host.metadata.name.as_deref(), Some("web-1-x-shop-x-alice"));
        assert_eq!(host.metadata.namespace.as_deref(), Some("vkube-alice"));
        let spec = host.spec.unwrap();
        assert_eq!(spec.service_account_name, None);
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.priority_class_name, None);
        assert_eq!(spec.hostname.as_deref(), Some("web-1"));
        assert_eq!(
            spec.image_pull_secrets.unwrap()[0].name,
            "regcred-x-shop-x-alice"
        );
        let c = &spec.containers[0];
        let env = c.env.as_ref().unwrap();
        assert_eq!(
            env[0]
                .value_from
                .as_ref()
                .unwrap()
                .config_map_key_ref
                .as_ref()
                .unwrap()
                .name,
            "settings-x-shop-x-alice"
        );
        assert_eq!(
            env[1]
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.annotations['vkube.dev/name']"
        );
        assert_eq!(
            c.env_from.as_ref().unwrap()[0]
                .secret_ref
                .as_ref()
                .unwrap()
                .name,
            "db-x-shop-x-alice"
        );
        let vols = spec.volumes.unwrap();
        assert_eq!(
            vols[0].config_map.as_ref().unwrap().name,
            "files-x-shop-x-alice"
        );
        assert_eq!(
            vols[1].secret.as_ref().unwrap().secret_name.as_deref(),
            Some("tls-x-shop-x-alice")
        );
        assert_eq!(
            vols[2].persistent_volume_claim.as_ref().unwrap().claim_name,
            "data-x-shop-x-alice"
        );
        let sources = vols[3]
            .projected
            .as_ref()
            .unwrap()
            .sources
            .as_ref()
            .unwrap();
        let token = sources[0].secret.as_ref().unwrap();
        assert_eq!(token.name, "web-1-x-shop-x-alice-token");
        assert_eq!(token.items.as_ref().unwrap()[0].path, "token");
        assert_eq!(
            sources[1].config_map.as_ref().unwrap().name,
            "kube-root-ca.crt-x-shop-x-alice"
        );
    }

    #[test]
    fn without_a_token_secret_the_projected_token_is_dropped() {
        let host = to_host(&pod(), &tenant(), &PodContext::default())
            .unwrap()
            .pod;
        let vols = host.spec.unwrap().volumes.unwrap();
        let sources = vols[3]
            .projected
            .as_ref()
            .unwrap()
            .sources
            .as_ref()
            .unwrap();
        assert_eq!(sources.len(), 1);
        assert!(sources[0].config_map.is_some());
    }

    #[test]
    fn token_request_follows_the_projection() {
        assert_eq!(
            wanted_tokens(&pod()),
            [TokenRequestSpec {
                service_account: "builder".into(),
                audience: None,
                expiration_seconds: 3607,
                key: TOKEN_KEY.into(),
            }]
        );
    }

    #[test]
    fn affinity_is_confined_to_the_tenant_namespace() {
        let mut p = pod();
        p.spec.as_mut().unwrap().affinity = Some(k8s_openapi::api::core::v1::Affinity {
            pod_affinity: Some(PodAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![
                    PodAffinityTerm {
                        label_selector: Some(LabelSelector {
                            match_labels: Some(BTreeMap::from([("app".into(), "db".into())])),
                            match_expressions: None,
                        }),
                        topology_key: "kubernetes.io/hostname".into(),
                        ..Default::default()
                    },
                    PodAffinityTerm {
                        namespaces: Some(vec!["other".into()]),
                        topology_key: "kubernetes.io/hostname".into(),
                        ..Default::default()
                    },
                ]),
                preferred_during_scheduling_ignored_during_execution: None,
            }),
            ..Default::default()
        });
        let host = to_host(&p, &tenant(), &PodContext::default()).unwrap().pod;
        let terms = host
            .spec
            .unwrap()
            .affinity
            .unwrap()
            .pod_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap();
        let labels = terms[0]
            .label_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap();
        assert_eq!(labels[MANAGED_BY], "alice");
        assert_eq!(labels[VIRTUAL_NAMESPACE], "shop");
        assert_eq!(labels["app"], "db");
        let second = terms[1].label_selector.as_ref().unwrap();
        assert_eq!(terms[1].namespaces, None);
        let expr = &second.match_expressions.as_ref().unwrap()[0];
        assert_eq!(expr.key, VIRTUAL_NAMESPACE);
        assert_eq!(expr.values.as_deref(), Some(&["other".to_string()][..]));
    }

    #[test]
    fn privileged_pods_are_refused() {
        let mut p = pod();
        p.spec.as_mut().unwrap().host_network = Some(true);
        let err = to_host(&p, &tenant(), &PodContext::default()).unwrap_err();
        assert_eq!(err[0].field, "spec.hostNetwork");
    }

    #[test]
    fn pods_reach_the_virtual_api_not_the_hosts() {
        let mut p = pod();
        let spec = p.spec.as_mut().unwrap();
        spec.init_containers = Some(vec![Container {
            name: "init".into(),
            ..Default::default()
        }]);
        // A container's own value wins, as over the kubelet's.
        spec.containers[0]
            .env
            .get_or_insert_with(Vec::new)
            .push(EnvVar {
                name: "KUBERNETES_SERVICE_PORT".into(),
                value: Some("6443".into()),
                value_from: None,
            });
        let ctx = PodContext {
            api: Some(ApiEndpoint {
                host: "10.96.7.7".into(),
                port: 443,
            }),
            ..Default::default()
        };
        let host = to_host(&p, &tenant(), &ctx).unwrap().pod.spec.unwrap();
        assert_eq!(host.enable_service_links, Some(false));
        let value = |c: &Container, name: &str| {
            let found: Vec<_> = c.env.iter().flatten().filter(|e| e.name == name).collect();
            assert_eq!(found.len(), 1, "{name} set {} times", found.len());
            found[0].value.clone().unwrap()
        };
        let init = &host.init_containers.unwrap()[0];
        let main = &host.containers[0];
        for c in [init, main] {
            assert_eq!(value(c, "KUBERNETES_SERVICE_HOST"), "10.96.7.7");
            assert_eq!(value(c, "KUBERNETES_PORT"), "tcp://10.96.7.7:443");
            assert_eq!(value(c, "KUBERNETES_PORT_443_TCP_ADDR"), "10.96.7.7");
        }
        assert_eq!(value(init, "KUBERNETES_SERVICE_PORT"), "443");
        assert_eq!(value(main, "KUBERNETES_SERVICE_PORT"), "6443");

        // Without an API Service, pods are left as they were.
        let plain = to_host(&pod(), &tenant(), &PodContext::default())
            .unwrap()
            .pod
            .spec
            .unwrap();
        assert_eq!(plain.enable_service_links, None);
        assert!(
            plain.containers[0]
                .env
                .iter()
                .flatten()
                .all(|e| !e.name.starts_with("KUBERNETES_"))
        );
    }

    #[test]
    fn cluster_first_pods_use_the_tenants_dns_with_their_namespace_first() {
        let dns = ClusterDns {
            nameserver: "10.96.7.7".into(),
            domain: "cluster.local".into(),
        };
        let ctx = PodContext {
            dns: Some(dns),
            ..Default::default()
        };
        let mut p = pod();
        p.spec.as_mut().unwrap().dns_config = Some(PodDNSConfig {
            nameservers: Some(vec!["1.1.1.1".into()]),
            searches: Some(vec!["corp.example".into()]),
            options: Some(vec![PodDNSConfigOption {
                name: Some("timeout".into()),
                value: Some("2".into()),
            }]),
        });
        let spec = to_host(&p, &tenant(), &ctx).unwrap().pod.spec.unwrap();
        assert_eq!(spec.dns_policy.as_deref(), Some("None"));
        let config = spec.dns_config.unwrap();
        assert_eq!(
            config.nameservers.unwrap(),
            ["10.96.7.7".to_string(), "1.1.1.1".to_string()]
        );
        assert_eq!(
            config.searches.unwrap(),
            [
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "corp.example"
            ]
        );
        let options: Vec<_> = config
            .options
            .unwrap()
            .into_iter()
            .map(|o| (o.name.unwrap(), o.value.unwrap()))
            .collect();
        assert_eq!(
            options,
            [("ndots".into(), "5".into()), ("timeout".into(), "2".into())]
        );

        // The node's resolver, or the tenant's own config, stay.
        for policy in ["Default", "None"] {
            let mut p = pod();
            p.spec.as_mut().unwrap().dns_policy = Some(policy.into());
            let spec = to_host(&p, &tenant(), &ctx).unwrap().pod.spec.unwrap();
            assert_eq!(spec.dns_policy.as_deref(), Some(policy));
            assert_eq!(spec.dns_config, None);
        }
    }

    fn with_volume(v: Volume) -> Pod {
        let mut p = pod();
        p.spec
            .as_mut()
            .unwrap()
            .volumes
            .get_or_insert_with(Vec::new)
            .push(v);
        p
    }

    fn refused_fields(p: &Pod, ctx: &PodContext) -> Vec<String> {
        to_host(p, &tenant(), ctx)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.field)
            .collect()
    }

    #[test]
    fn host_storage_volumes_are_refused_and_allowed_ones_use_the_tenants_secrets() {
        let csi = Volume {
            name: "creds".into(),
            csi: Some(k8s_openapi::api::core::v1::CSIVolumeSource {
                driver: "secrets.example.com".into(),
                node_publish_secret_ref: Some(LocalObjectReference {
                    name: "vkube-alice-certs".into(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let p = with_volume(csi);
        assert_eq!(
            refused_fields(&p, &PodContext::default()),
            ["spec.volumes[4].csi"]
        );
        let ctx = PodContext {
            policy: Arc::new(PodPolicy {
                volumes: VolumePolicy::widened(
                    vec!["csi".into()],
                    vec!["secrets.example.com".into()],
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        let host = to_host(&p, &tenant(), &ctx).unwrap().pod;
        let vols = host.spec.unwrap().volumes.unwrap();
        assert_eq!(
            vols[4]
                .csi
                .as_ref()
                .unwrap()
                .node_publish_secret_ref
                .as_ref()
                .unwrap()
                .name,
            "vkube-alice-certs-x-shop-x-alice",
            "the tenant's synced Secret, never the host's own"
        );
        assert!(references(&p).secrets.contains("vkube-alice-certs"));
    }

    #[test]
    fn an_ephemeral_volume_is_the_claim_the_virtual_cluster_made() {
        let p = with_volume(Volume {
            name: "scratch".into(),
            ephemeral: Some(k8s_openapi::api::core::v1::EphemeralVolumeSource {
                volume_claim_template: Some(
                    k8s_openapi::api::core::v1::PersistentVolumeClaimTemplate {
                        metadata: None,
                        spec: k8s_openapi::api::core::v1::PersistentVolumeClaimSpec {
                            volume_name: Some("someone-elses-pv".into()),
                            data_source: Some(
                                k8s_openapi::api::core::v1::TypedLocalObjectReference {
                                    api_group: None,
                                    kind: "PersistentVolumeClaim".into(),
                                    name: "data-vkube-0".into(),
                                },
                            ),
                            ..Default::default()
                        },
                    },
                ),
            }),
            ..Default::default()
        });
        assert!(references(&p).claims.contains("web-1-scratch"));
        let host = to_host(&p, &tenant(), &PodContext::default()).unwrap().pod;
        let v = &host.spec.unwrap().volumes.unwrap()[4];
        assert!(v.ephemeral.is_none());
        assert_eq!(
            v.persistent_volume_claim.as_ref().unwrap().claim_name,
            "web-1-scratch-x-shop-x-alice"
        );
    }

    #[test]
    fn placement_is_the_hosts_within_the_admins_bounds() {
        let mut p = pod();
        let spec = p.spec.as_mut().unwrap();
        spec.node_name = Some("reserved-node".into());
        spec.tolerations = Some(vec![k8s_openapi::api::core::v1::Toleration {
            key: Some("dedicated".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        }]);
        spec.runtime_class_name = Some("kata".into());
        spec.overhead = Some(BTreeMap::new());
        assert_eq!(
            refused_fields(&p, &PodContext::default()),
            ["spec.runtimeClassName"]
        );
        p.spec.as_mut().unwrap().runtime_class_name = None;
        let ctx = PodContext {
            policy: Arc::new(PodPolicy {
                placement: PlacementPolicy {
                    node_selector: BTreeMap::from([("pool".into(), "tenants".into())]),
                    ..Default::default()
                },
                ..Default::default()
            }),
            ..Default::default()
        };
        let host = to_host(&p, &tenant(), &ctx).unwrap();
        let fields: Vec<_> = host.dropped.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["spec.tolerations[0]", "spec.priorityClassName"]);
        let spec = host.pod.spec.unwrap();
        assert_eq!(spec.node_name, None);
        assert_eq!(spec.tolerations, None);
        assert_eq!(spec.overhead, None);
        assert_eq!(spec.node_selector.unwrap()["pool"], "tenants");
        assert!(spec.affinity.unwrap().node_affinity.is_some());
    }

    #[test]
    fn claims_on_host_resources_are_refused() {
        let mut p = pod();
        p.spec.as_mut().unwrap().resource_claims =
            Some(vec![k8s_openapi::api::core::v1::PodResourceClaim {
                name: "gpu".into(),
                resource_claim_name: Some("someone-elses".into()),
                ..Default::default()
            }]);
        assert_eq!(
            refused_fields(&p, &PodContext::default()),
            ["spec.resourceClaims"]
        );
    }

    #[test]
    fn host_acting_labels_are_renamed_and_everything_selecting_them_follows() {
        let mut p = pod();
        let labels = p.metadata.labels.as_mut().unwrap();
        labels.insert("aadpodidbinding".into(), "admin-identity".into());
        labels.insert("tier".into(), "frontend".into());
        p.metadata.annotations = Some(BTreeMap::from([
            ("k8s.v1.cni.cncf.io/networks".into(), "host-net".into()),
            (
                "kubectl.kubernetes.io/default-container".into(),
                "web".into(),
            ),
        ]));
        let spec = p.spec.as_mut().unwrap();
        spec.containers[0]
            .env
            .get_or_insert_with(Vec::new)
            .push(EnvVar {
                name: "TIER".into(),
                value_from: Some(k8s_openapi::api::core::v1::EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.labels['tier']".into(),
                        api_version: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
        spec.topology_spread_constraints =
            Some(vec![k8s_openapi::api::core::v1::TopologySpreadConstraint {
                label_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([("tier".into(), "frontend".into())])),
                    match_expressions: Some(vec![LabelSelectorRequirement {
                        key: "pod-template-hash".into(),
                        operator: "In".into(),
                        values: Some(vec!["abc".into()]),
                    }]),
                }),
                // Merged by the virtual API server already; the host must not merge it again.
                match_label_keys: Some(vec!["pod-template-hash".into(), "tier".into()]),
                max_skew: 1,
                topology_key: "kubernetes.io/hostname".into(),
                when_unsatisfiable: "DoNotSchedule".into(),
                ..Default::default()
            }]);
        let t = tenant();
        let host = to_host(&p, &t, &PodContext::default()).unwrap().pod;
        let labels = host.metadata.labels.unwrap();
        let tier = t.host_label_key("tier");
        assert!(tier.starts_with("vkube.dev/l-"), "{tier}");
        assert!(!labels.contains_key("aadpodidbinding") && !labels.contains_key("tier"));
        assert_eq!(labels[&tier], "frontend");
        assert_eq!(labels["app"], "web");
        let annotations = host.metadata.annotations.unwrap();
        assert!(!annotations.contains_key("k8s.v1.cni.cncf.io/networks"));
        assert_eq!(
            annotations["kubectl.kubernetes.io/default-container"],
            "web"
        );
        let spec = host.spec.unwrap();
        let env = spec.containers[0].env.as_ref().unwrap();
        let field = env.iter().find(|e| e.name == "TIER").unwrap();
        assert_eq!(
            field
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            format!("metadata.labels['{tier}']")
        );
        let c = &spec.topology_spread_constraints.unwrap()[0];
        assert_eq!(c.match_label_keys, Some(vec![tier.clone()]));
        let sel = c.label_selector.as_ref().unwrap();
        assert_eq!(sel.match_labels.as_ref().unwrap()[&tier], "frontend");
        assert_eq!(sel.match_labels.as_ref().unwrap()[MANAGED_BY], "alice");
    }

    #[test]
    fn each_audience_gets_its_own_token_and_mount() {
        let mut p = pod();
        let vols = p.spec.as_mut().unwrap().volumes.as_mut().unwrap();
        vols.push(Volume {
            name: "vault".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "vault-token".into(),
                        expiration_seconds: Some(600),
                        audience: Some("vault".into()),
                    }),
                    ..Default::default()
                }]),
                default_mode: None,
            }),
            ..Default::default()
        });
        let wanted = wanted_tokens(&p);
        assert_eq!(wanted.len(), 2);
        assert_eq!(wanted[0].key, TOKEN_KEY);
        assert_eq!(wanted[0].audience, None);
        assert_eq!(wanted[1].audience.as_deref(), Some("vault"));
        assert_eq!(wanted[1].expiration_seconds, 600);
        assert_ne!(wanted[1].key, TOKEN_KEY);
        assert_eq!(token_key(Some("vault"), 600), wanted[1].key);
        let ctx = PodContext {
            token_secret: Some("s".into()),
            ..Default::default()
        };
        let host = to_host(&p, &tenant(), &ctx).unwrap().pod;
        let vols = host.spec.unwrap().volumes.unwrap();
        let key_of = |v: &Volume| {
            v.projected.as_ref().unwrap().sources.as_ref().unwrap()[0]
                .secret
                .as_ref()
                .unwrap()
                .items
                .as_ref()
                .unwrap()[0]
                .key
                .clone()
        };
        assert_eq!(key_of(&vols[3]), TOKEN_KEY);
        assert_eq!(key_of(&vols[4]), wanted[1].key);
    }

    #[test]
    fn only_what_a_pod_may_change_is_updated() {
        let host = to_host(&pod(), &tenant(), &PodContext::default())
            .unwrap()
            .pod;
        let update = updatable(&host);
        assert_eq!(update.metadata.labels, host.metadata.labels);
        let spec = update.spec.unwrap();
        assert_eq!(spec.containers[0].image.as_deref(), Some("nginx"));
        assert!(spec.containers[0].env.is_none());
        assert!(spec.volumes.is_none() && spec.affinity.is_none());
    }
}
