//! Pods: virtual pod → host pod (names of everything it references, labels, service account,
//! downward API), host status → virtual status, and the set of objects a pod references.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Container, EnvFromSource, EnvVar, ObjectFieldSelector, Pod, PodAffinityTerm, PodDNSConfig,
    PodDNSConfigOption, PodSpec, ProjectedVolumeSource, SecretProjection, Volume, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use super::security::{self, Level, Violation};
use super::{MANAGED_BY, Tenant, VIRTUAL_NAME, VIRTUAL_NAMESPACE, VIRTUAL_UID};

/// Key of the service-account token in the host Secret that replaces a projected token.
pub const TOKEN_KEY: &str = "token";

/// Per-pod inputs that are not in the pod itself.
#[derive(Debug, Clone, Default)]
pub struct PodContext {
    /// Host Secret holding this pod's virtual service-account token (see `syncer::tokens`);
    /// `None` drops projected tokens.
    pub token_secret: Option<String>,
    pub security: Level,
    /// Where pods reach the virtual API; `None` leaves the host's `KUBERNETES_*` variables.
    pub api: Option<ApiEndpoint>,
    /// The tenant's cluster DNS; `None` leaves pods on the host's.
    pub dns: Option<ClusterDns>,
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
    for vol in spec.volumes.iter().flatten() {
        if let Some(cm) = &vol.config_map {
            refs.config_maps.insert(cm.name.clone());
        }
        if let Some(s) = vol.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            refs.secrets.insert(s);
        }
        if let Some(c) = &vol.persistent_volume_claim {
            refs.claims.insert(c.claim_name.clone());
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

/// Whether the pod mounts a projected service-account token (needs a token Secret on the host).
pub fn wants_token(pod: &Pod) -> Option<TokenRequestSpec> {
    let spec = pod.spec.as_ref()?;
    spec.volumes
        .iter()
        .flatten()
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| p.sources.iter().flatten())
        .find_map(|s| s.service_account_token.as_ref())
        .map(|t| TokenRequestSpec {
            service_account: spec
                .service_account_name
                .clone()
                .unwrap_or_else(|| "default".into()),
            audience: t.audience.clone().filter(|a| !a.is_empty()),
            expiration_seconds: t.expiration_seconds.unwrap_or(3607),
        })
}

/// What to request from the virtual API for a pod's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequestSpec {
    pub service_account: String,
    pub audience: Option<String>,
    pub expiration_seconds: i64,
}

/// The host pod for `vpod`, or the reasons it may not run on the host.
pub fn to_host(vpod: &Pod, tenant: &Tenant, ctx: &PodContext) -> Result<Pod, Vec<Violation>> {
    let namespace = vpod.metadata.namespace.clone().unwrap_or_default();
    let name = vpod.metadata.name.clone().unwrap_or_default();
    let vspec = vpod.spec.clone().unwrap_or_default();
    let violations = security::check(&vspec, ctx.security);
    if !violations.is_empty() {
        return Err(violations);
    }
    let mut meta = tenant.host_meta(&vpod.metadata, tenant.label_name(&namespace, &name));
    // Annotations that make the kubelet or a mutating webhook act on the host are not ours to
    // pass on; the virtual ones stay on the virtual pod.
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubernetes.io/config.mirror");
    }
    meta.owner_references = None;

    let cm = |n: &str| tenant.subdomain_name(&namespace, n);
    let mut spec = vspec;
    spec.service_account_name = None;
    spec.service_account = None;
    // The host service account's token would reach the host API; the virtual one is mounted
    // from the token Secret instead.
    spec.automount_service_account_token = Some(false);
    spec.priority_class_name = None;
    spec.priority = None;
    spec.preemption_policy = None;
    spec.scheduler_name = None;
    spec.ephemeral_containers = None;
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
            .map(|v| translate_volume(v, &cm, ctx))
            .collect(),
    )
    .filter(|v: &Vec<Volume>| !v.is_empty());
    for c in spec.containers.iter_mut() {
        translate_container(c, &cm);
    }
    for c in spec.init_containers.iter_mut().flatten() {
        translate_container(c, &cm);
    }
    if let Some(api) = &ctx.api {
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            api_env(c, api);
        }
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
        if let Some(sel) = c.label_selector.as_mut() {
            confine_selector(sel, tenant, Some(&namespace));
        }
    }
    Ok(Pod {
        metadata: meta,
        spec: Some(spec),
        status: None,
    })
}

fn translate_volume(mut v: Volume, cm: &impl Fn(&str) -> String, ctx: &PodContext) -> Volume {
    if let Some(c) = v.config_map.as_mut() {
        c.name = cm(&c.name);
    }
    if let Some(s) = v.secret.as_mut()
        && let Some(n) = s.secret_name.as_mut()
    {
        *n = cm(n);
    }
    if let Some(c) = v.persistent_volume_claim.as_mut() {
        c.claim_name = cm(&c.claim_name);
    }
    if let Some(d) = v.downward_api.as_mut() {
        for item in d.items.iter_mut().flatten() {
            if let Some(f) = item.field_ref.as_mut() {
                translate_field_ref(f);
            }
        }
    }
    if let Some(p) = v.projected.take() {
        v.projected = Some(translate_projected(p, cm, ctx));
    }
    v
}

fn translate_projected(
    mut p: ProjectedVolumeSource,
    cm: &impl Fn(&str) -> String,
    ctx: &PodContext,
) -> ProjectedVolumeSource {
    let sources = p.sources.take().unwrap_or_default();
    let mut out = Vec::with_capacity(sources.len());
    for mut s in sources {
        if let Some(t) = s.service_account_token.take() {
            // The virtual token, requested by the syncer and stored in a host Secret.
            if let Some(secret) = &ctx.token_secret {
                out.push(VolumeProjection {
                    secret: Some(SecretProjection {
                        name: secret.clone(),
                        items: Some(vec![k8s_openapi::api::core::v1::KeyToPath {
                            key: TOKEN_KEY.into(),
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
                    translate_field_ref(f);
                }
            }
        }
        out.push(s);
    }
    p.sources = Some(out);
    p
}

/// Downward API fields that would show host values are redirected to our origin metadata.
fn translate_field_ref(f: &mut ObjectFieldSelector) {
    let replacement = match f.field_path.as_str() {
        "metadata.name" => format!("metadata.annotations['{VIRTUAL_NAME}']"),
        "metadata.namespace" => format!("metadata.labels['{VIRTUAL_NAMESPACE}']"),
        "metadata.uid" => format!("metadata.annotations['{VIRTUAL_UID}']"),
        _ => return,
    };
    f.field_path = replacement;
}

fn translate_container(c: &mut Container, cm: &impl Fn(&str) -> String) {
    for env in c.env.iter_mut().flatten() {
        translate_env(env, cm);
    }
    for from in c.env_from.iter_mut().flatten() {
        translate_env_from(from, cm);
    }
}

fn translate_env(env: &mut EnvVar, cm: &impl Fn(&str) -> String) {
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
        translate_field_ref(f);
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

/// Pod (anti-)affinity terms select host pods: confine them to this tenant and to the virtual
/// namespaces the term names (the pod's own by default).
fn confine_term(t: &mut PodAffinityTerm, tenant: &Tenant, namespace: &str) {
    let namespaces = t.namespaces.take().unwrap_or_default();
    let has_ns_selector = t.namespace_selector.take().is_some();
    let sel = t.label_selector.get_or_insert_with(LabelSelector::default);
    if has_ns_selector {
        // Namespace labels exist only in the virtual cluster: widen to all of the tenant.
        confine_selector(sel, tenant, None);
    } else if namespaces.is_empty() {
        confine_selector(sel, tenant, Some(namespace));
    } else {
        confine_selector(sel, tenant, None);
        sel.match_expressions
            .get_or_insert_with(Vec::new)
            .push(LabelSelectorRequirement {
                key: VIRTUAL_NAMESPACE.into(),
                operator: "In".into(),
                values: Some(namespaces),
            });
    }
}

fn confine_selector(sel: &mut LabelSelector, tenant: &Tenant, namespace: Option<&str>) {
    let labels = sel.match_labels.get_or_insert_with(BTreeMap::new);
    labels.retain(|k, _| !k.starts_with(super::RESERVED_PREFIX));
    labels.insert(MANAGED_BY.into(), tenant.name.clone());
    if let Some(ns) = namespace {
        labels.insert(VIRTUAL_NAMESPACE.into(), ns.into());
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
    use kube::api::ObjectMeta;

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
            api: None,
            dns: None,
        };
        let host = to_host(&pod(), &tenant(), &ctx).unwrap();
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
        let host = to_host(&pod(), &tenant(), &PodContext::default()).unwrap();
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
            wants_token(&pod()),
            Some(TokenRequestSpec {
                service_account: "builder".into(),
                audience: None,
                expiration_seconds: 3607,
            })
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
        let host = to_host(&p, &tenant(), &PodContext::default()).unwrap();
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
        let host = to_host(&p, &tenant(), &ctx).unwrap().spec.unwrap();
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
        let spec = to_host(&p, &tenant(), &ctx).unwrap().spec.unwrap();
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
            let spec = to_host(&p, &tenant(), &ctx).unwrap().spec.unwrap();
            assert_eq!(spec.dns_policy.as_deref(), Some(policy));
            assert_eq!(spec.dns_config, None);
        }
    }
}
