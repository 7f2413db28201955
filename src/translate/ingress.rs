//! Ingresses (networking.k8s.io/v1): the host copy routes the same hosts and paths to the host
//! copies of the virtual backends, and terminates TLS with the host copy of the virtual Secret.
//!
//! An Ingress is configuration for a controller the tenant shares with everyone on the host, so
//! the copy is also where the platform's policy applies:
//!
//! - **Hosts are confined** to the tenant's DNS suffix (`--ingress-host-suffix`): every rule
//!   host, TLS host and server alias is the suffix or ends in `.SUFFIX` (wildcards only as
//!   `*.SUFFIX` or deeper). Suffixes of different tenants are disjoint, so the paths under them
//!   are the tenant's own. A rule without a host, a TLS entry without hosts and a
//!   `defaultBackend` are refused: controllers use them for every host they serve. Without a
//!   suffix nothing is published (vkube cannot tell which hosts are the tenant's).
//! - **The class** must be one the admin allows (a default fills in when the tenant names none).
//! - **Controller annotations** with a history of configuration injection, or that reach
//!   outside the Ingress (raw snippets, `auth-url`, mirrors, redirects, cross-namespace Secrets,
//!   Traefik middlewares, ALB groups), never reach the host, even when the admin lets the
//!   controller's annotation prefix through in general. Secret and Service references are
//!   translated to the tenant's host copies. Values of annotations that controllers template
//!   into their configuration file may not carry the characters that configuration gives
//!   meaning to. An annotation that restricts who may reach the Ingress (`auth-*`, source
//!   ranges) is never dropped silently: publishing the Ingress without it would expose what the
//!   tenant meant to protect, so the whole Ingress is refused instead.
//!
//! A partially bad Ingress is refused whole: publishing half of it would surprise its owner.
//! Resource backends, which name objects vkube does not sync, are left out.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, Ingress, IngressBackend, IngressSpec, IngressTLS,
};

use super::Tenant;

/// The pre-v1 way to name a class; read as the class when the spec names none.
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// Stands for the tenant's name in `--ingress-host-suffix` (one template for every tenant).
pub const TENANT_PLACEHOLDER: &str = "{name}";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngressPolicy {
    /// Ingress classes tenants may use; empty allows any.
    pub allowed_classes: Vec<String>,
    /// Class given to an Ingress that names none; without it the host's default class applies.
    pub default_class: Option<String>,
    /// The tenant's DNS suffix (see [`host_suffix_for`]); `None`: no Ingress is published.
    pub host_suffix: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ingress host suffix {suffix:?}: {reason}")]
pub struct InvalidHostSuffix {
    pub suffix: String,
    pub reason: &'static str,
}

/// The tenant's host suffix from the admin's template (`{name}` becomes the tenant's name): a
/// DNS name in lower case, without a trailing dot or wildcard.
pub fn host_suffix_for(template: &str, tenant: &str) -> Result<String, InvalidHostSuffix> {
    let suffix = template
        .replace(TENANT_PLACEHOLDER, tenant)
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let err = |reason| {
        Err(InvalidHostSuffix {
            suffix: suffix.clone(),
            reason,
        })
    };
    if suffix.contains('*') {
        return err("a suffix is a plain DNS name; tenants may use wildcards below it");
    }
    if !super::is_dns_subdomain(&suffix) || !suffix.split('.').all(super::is_dns_label) {
        return err("it must be a DNS name such as {name}.apps.example.com");
    }
    Ok(suffix)
}

/// One field of the Ingress that the platform's policy refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRefusal {
    /// Path of the field, as kubectl explain names it (`spec.rules[0].host`).
    pub field: String,
    /// Why, and what would be accepted.
    pub reason: String,
}

impl std::fmt::Display for FieldRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// How a refusal names the class a tenant asked for (a tenant reads it: no Rust syntax).
fn class_named(class: Option<&str>) -> String {
    match class {
        Some(c) => format!("ingress class \"{c}\""),
        None => "an Ingress without a class".to_string(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngressRefusal {
    #[error(
        "the platform has not configured ingress hosts for this virtual cluster (vkube serve --ingress-host-suffix); ask the platform's admin"
    )]
    NoHostSuffix,
    #[error(
        "{} is not allowed by the platform's policy; allowed: {}",
        class_named(.class.as_deref()),
        if .allowed.is_empty() { "none".to_string() } else { .allowed.join(", ") }
    )]
    ClassNotAllowed {
        class: Option<String>,
        allowed: Vec<String>,
    },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Fields(Vec<FieldRefusal>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostIngress {
    pub ingress: Ingress,
    /// Annotations not copied, each with the reason.
    pub dropped_annotations: Vec<(String, &'static str)>,
    /// Backends left out because they name resources instead of services.
    pub dropped_resource_backends: usize,
}

/// Controllers that template annotation values into a configuration file: where the values
/// themselves have carried injections (CVE-2021-25746, CVE-2023-5044, CVE-2025-1097).
const TEMPLATING_PREFIXES: &[&str] = &[
    "nginx.ingress.kubernetes.io/",
    "nginx.org/",
    "nginx.com/",
    "haproxy.org/",
    "haproxy.com/",
    "haproxy-ingress.github.io/",
    "ingress.kubernetes.io/",
];

/// Controllers whose annotations the built-in rules know (besides the templating ones).
const OTHER_CONTROLLER_PREFIXES: &[&str] = &[
    "traefik.ingress.kubernetes.io/",
    "alb.ingress.kubernetes.io/",
];

/// Raw configuration blocks (besides any key containing `snippet`, CVE-2021-25742 and
/// CVE-2023-5043): HAProxy Ingress's config-*, haproxytech's raw ACLs.
const RAW_CONFIGURATION: &[&str] = &[
    "config-backend",
    "config-defaults",
    "config-frontend",
    "config-global",
    "config-proxy",
    "config-sections",
    "config-tcp",
    "config-tcp-service",
    "route-acl",
];

/// Annotations whose values were injected into the controller's configuration, or that make
/// the controller send requests to addresses of the tenant's choosing, the host's own
/// included.
const INJECTION_HISTORY: &[(&str, &str)] = &[
    (
        "auth-url",
        "injection (CVE-2025-24514); the controller calls any address given, cluster-internal ones included",
    ),
    ("auth-tls-match-cn", "injection (CVE-2025-1097)"),
    (
        "auth-proxy-set-headers",
        "injection (CVE-2025-15566); names a ConfigMap, which vkube does not sync",
    ),
    (
        "mirror-target",
        "injection (CVE-2025-1098); copies requests to any address given",
    ),
    ("mirror-host", "injection (CVE-2025-1098)"),
    ("permanent-redirect", "injection (CVE-2023-5044)"),
    (
        "temporal-redirect",
        "the same code as permanent-redirect (CVE-2023-5044)",
    ),
];

/// Annotations naming objects the tenant cannot create on the host, or that tie its Ingress
/// to other namespaces' Ingresses.
const FOREIGN_OBJECTS: &[(&str, &str)] = &[
    (
        "fastcgi-params-configmap",
        "names a ConfigMap, which vkube does not sync",
    ),
    (
        "custom-headers",
        "names a ConfigMap, which vkube does not sync",
    ),
    (
        "router.middlewares",
        "names Traefik Middlewares, host objects the tenant cannot create",
    ),
    (
        "router.tls.options",
        "names Traefik TLSOptions, host objects the tenant cannot create",
    ),
    (
        "service.serverstransport",
        "names a Traefik ServersTransport, a host object the tenant cannot create",
    ),
    (
        "group.name",
        "merges Ingresses of several namespaces into one load balancer whose settings each of them can change",
    ),
];

/// Annotations naming a Secret (`name`, or `namespace/name` for some controllers).
const SECRET_REFERENCES: &[&str] = &[
    "auth-secret",
    "auth-tls-secret",
    "proxy-ssl-secret",
    "basic-auth-secret",
    "jwt-key",
    "server-ca",
    "server-crt",
    "client-ca",
    "secure-crt-secret",
    "secure-verify-ca-secret",
    "ssl-certificate",
];

/// ingress-nginx's default backend for the Ingress: a Service of its namespace.
const SERVICE_REFERENCES: &[&str] = &["default-backend"];

/// Extra names the controller serves for the Ingress: hosts like the rules' own.
const HOST_LISTS: &[&str] = &["server-alias"];

/// What becomes of one annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Keep,
    Rewrite(String),
    Drop(&'static str),
    Refuse(String),
}

/// The part of a known controller's annotation key after its prefix.
fn controller_local_name(key: &str) -> Option<(&'static str, &str)> {
    TEMPLATING_PREFIXES
        .iter()
        .chain(OTHER_CONTROLLER_PREFIXES)
        .find_map(|p| key.strip_prefix(p).map(|local| (*p, local)))
}

/// Annotations that restrict who may reach the Ingress: refused, never silently dropped.
fn restricts_access(prefix: &str, local: &str) -> bool {
    local.starts_with("auth-")
        || local.starts_with("basic-auth")
        || local.starts_with("jwt")
        || local == "satisfy"
        || [
            "source-range",
            "whitelist",
            "allowlist",
            "denylist",
            "blacklist",
        ]
        .iter()
        .any(|w| local.contains(w))
        || (prefix == "traefik.ingress.kubernetes.io/" && local == "router.middlewares")
}

/// Characters a controller's configuration file gives meaning to (directive ends, blocks,
/// quotes, escapes, line breaks); no legitimate value of a templated annotation needs them.
fn forbidden_value_char(prefix: &str, c: char) -> bool {
    c.is_control()
        || matches!(c, '{' | '}' | '\'' | '"' | '\\' | '`')
        || (c == ';' && prefix == "nginx.ingress.kubernetes.io/")
}

struct Context<'a> {
    tenant: &'a Tenant,
    namespace: &'a str,
    suffix: &'a str,
}

fn classify(key: &str, value: &str, cx: &Context) -> Verdict {
    if key.contains("snippet") {
        return Verdict::Drop("raw controller configuration (CVE-2021-25742, CVE-2023-5043)");
    }
    let Some((prefix, local)) = controller_local_name(key) else {
        return Verdict::Keep;
    };
    if RAW_CONFIGURATION.contains(&local) {
        return Verdict::Drop("raw controller configuration");
    }
    if let Some((_, why)) = INJECTION_HISTORY.iter().find(|(k, _)| *k == local) {
        return Verdict::Drop(why);
    }
    if let Some((_, why)) = FOREIGN_OBJECTS.iter().find(|(k, _)| *k == local) {
        return Verdict::Drop(why);
    }
    if TEMPLATING_PREFIXES.contains(&prefix) {
        let bad: BTreeSet<char> = value
            .chars()
            .filter(|c| forbidden_value_char(prefix, *c))
            .collect();
        if !bad.is_empty() {
            return Verdict::Drop(
                "its value holds characters the controller's configuration gives meaning to",
            );
        }
    }
    if SECRET_REFERENCES.contains(&local) {
        return match secret_reference(value, cx.namespace) {
            Ok((qualified, name)) => {
                let host_name = cx.tenant.subdomain_name(cx.namespace, name);
                Verdict::Rewrite(if qualified {
                    format!("{}/{host_name}", cx.tenant.host_namespace)
                } else {
                    host_name
                })
            }
            Err(why) => Verdict::Refuse(why),
        };
    }
    if SERVICE_REFERENCES.contains(&local) {
        let name = value.trim();
        return if super::is_dns_label(name) {
            Verdict::Rewrite(cx.tenant.label_name(cx.namespace, name))
        } else {
            Verdict::Refuse(format!(
                "{value:?} is not the name of a Service of namespace {}",
                cx.namespace
            ))
        };
    }
    if HOST_LISTS.contains(&local) {
        let outside: Vec<&str> = value
            .split([',', ' '])
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .filter(|h| !within_suffix(h, cx.suffix))
            .collect();
        if !outside.is_empty() {
            return Verdict::Refuse(format!(
                "{} outside this cluster's ingress domain; {}",
                outside.join(", "),
                allowed_hosts(cx.suffix)
            ));
        }
    }
    Verdict::Keep
}

/// A Secret reference of an annotation in namespace `namespace`: whether it was written as
/// `namespace/name`, and the name. Other namespaces are refused: their Secrets are not the
/// Ingress's to use, and on the host the name would lead somewhere else entirely.
fn secret_reference<'v>(value: &'v str, namespace: &str) -> Result<(bool, &'v str), String> {
    let value = value.trim();
    let (qualified, name) = match value.split_once('/') {
        Some((ns, name)) if ns == namespace => (true, name),
        Some((ns, _)) => {
            return Err(format!(
                "names a Secret of namespace {ns:?}; only Secrets of the Ingress's own namespace {namespace:?} can be used"
            ));
        }
        None => (false, value),
    };
    if !super::is_dns_subdomain(name) {
        return Err(format!("{value:?} is not the name of a Secret"));
    }
    Ok((qualified, name))
}

/// Whether `host` (a rule or TLS host, possibly `*.`-prefixed) is `suffix` or below it.
/// Compared label by label: `evil-alice.apps.example.com` is not below `alice.apps.example.com`.
pub fn within_suffix(host: &str, suffix: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let name = host.strip_prefix("*.").unwrap_or(&host);
    let valid = super::is_dns_subdomain(name) && name.split('.').all(super::is_dns_label);
    valid
        && (name == suffix
            || name
                .strip_suffix(suffix)
                .is_some_and(|rest| rest.ends_with('.')))
}

fn allowed_hosts(suffix: &str) -> String {
    format!("use {suffix} or a name ending in .{suffix} (wildcards as *.{suffix})")
}

/// Characters in a path that controllers' configuration gives meaning to (CVE-2021-25745 went
/// through the path); regular expressions do not need them.
fn forbidden_path_char(c: char) -> bool {
    c.is_control() || c.is_whitespace() || matches!(c, ';' | '{' | '}' | '\'' | '"' | '\\' | '`')
}

/// Virtual Secrets the Ingress uses: TLS, and those its controller annotations name.
pub fn referenced_secrets(v: &Ingress) -> BTreeSet<String> {
    let namespace = v.metadata.namespace.as_deref().unwrap_or_default();
    let tls = v
        .spec
        .iter()
        .flat_map(|s| s.tls.iter().flatten())
        .filter_map(|t| t.secret_name.clone());
    let annotated = v
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| {
            controller_local_name(k).is_some_and(|(_, l)| SECRET_REFERENCES.contains(&l))
        })
        .filter_map(|(_, value)| secret_reference(value, namespace).ok())
        .map(|(_, name)| name.to_string());
    tls.chain(annotated).collect()
}

/// The class the tenant asked for (spec first, then the legacy annotation).
fn requested_class(v: &Ingress) -> Option<String> {
    v.spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.clone())
        .or_else(|| {
            v.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(LEGACY_CLASS_ANNOTATION).cloned())
        })
}

/// Every host, path and TLS field the policy refuses.
fn spec_refusals(spec: &IngressSpec, suffix: &str) -> Vec<FieldRefusal> {
    let mut refused = Vec::new();
    let mut refuse = |field: String, reason: String| refused.push(FieldRefusal { field, reason });
    if spec.default_backend.is_some() {
        refuse(
            "spec.defaultBackend".into(),
            format!(
                "a default backend answers for hosts that are not this Ingress's; use rules with a host instead ({})",
                allowed_hosts(suffix)
            ),
        );
    }
    for (i, rule) in spec.rules.iter().flatten().enumerate() {
        match rule.host.as_deref().filter(|h| !h.is_empty()) {
            None => refuse(
                format!("spec.rules[{i}].host"),
                format!(
                    "a rule without a host matches every host; {}",
                    allowed_hosts(suffix)
                ),
            ),
            Some(h) if !within_suffix(h, suffix) => refuse(
                format!("spec.rules[{i}].host"),
                format!(
                    "{h:?} is outside this cluster's ingress domain; {}",
                    allowed_hosts(suffix)
                ),
            ),
            Some(_) => {}
        }
        for (j, p) in rule.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
            let path = p.path.as_deref().unwrap_or_default();
            let bad: String = path.chars().filter(|c| forbidden_path_char(*c)).collect();
            if !bad.is_empty() {
                refuse(
                    format!("spec.rules[{i}].http.paths[{j}].path"),
                    format!(
                        "{path:?} holds characters ({bad:?}) that ingress controllers' configuration gives meaning to"
                    ),
                );
            }
        }
    }
    for (i, tls) in spec.tls.iter().flatten().enumerate() {
        let hosts = tls.hosts.as_deref().unwrap_or_default();
        if hosts.is_empty() {
            refuse(
                format!("spec.tls[{i}].hosts"),
                format!(
                    "TLS without hosts applies to every host; list them ({})",
                    allowed_hosts(suffix)
                ),
            );
        }
        for (j, h) in hosts.iter().enumerate() {
            if !within_suffix(h, suffix) {
                refuse(
                    format!("spec.tls[{i}].hosts[{j}]"),
                    format!(
                        "{h:?} is outside this cluster's ingress domain; {}",
                        allowed_hosts(suffix)
                    ),
                );
            }
        }
        if let Some(s) = tls
            .secret_name
            .as_deref()
            .filter(|s| !super::is_dns_subdomain(s))
        {
            refuse(
                format!("spec.tls[{i}].secretName"),
                format!("{s:?} is not the name of a Secret of the Ingress's namespace"),
            );
        }
    }
    refused
}

pub fn to_host(
    v: &Ingress,
    tenant: &Tenant,
    policy: &IngressPolicy,
) -> Result<HostIngress, IngressRefusal> {
    let ns = v.metadata.namespace.clone().unwrap_or_default();
    let name = v.metadata.name.clone().unwrap_or_default();
    let Some(suffix) = policy.host_suffix.as_deref() else {
        return Err(IngressRefusal::NoHostSuffix);
    };
    let class = requested_class(v).or_else(|| policy.default_class.clone());
    if !policy.allowed_classes.is_empty()
        && !class
            .as_ref()
            .is_some_and(|c| policy.allowed_classes.contains(c))
    {
        return Err(IngressRefusal::ClassNotAllowed {
            class,
            allowed: policy.allowed_classes.clone(),
        });
    }
    let vspec = v.spec.clone().unwrap_or_default();
    let mut refused = spec_refusals(&vspec, suffix);

    let cx = Context {
        tenant,
        namespace: &ns,
        suffix,
    };
    let mut annotations = BTreeMap::new();
    let mut dropped_annotations = Vec::new();
    for (key, value) in v.metadata.annotations.iter().flatten() {
        // The class moves into the spec: one place for the host controller to read it.
        if key == LEGACY_CLASS_ANNOTATION {
            continue;
        }
        match classify(key, value, &cx) {
            Verdict::Keep => {
                annotations.insert(key.clone(), value.clone());
            }
            Verdict::Rewrite(v) => {
                annotations.insert(key.clone(), v);
            }
            Verdict::Drop(why) => match controller_local_name(key) {
                Some((prefix, local)) if restricts_access(prefix, local) => {
                    refused.push(FieldRefusal {
                        field: format!("metadata.annotations[{key}]"),
                        reason: format!(
                            "not allowed: {why}; publishing the Ingress without this access restriction would expose it"
                        ),
                    })
                }
                _ => dropped_annotations.push((key.clone(), why)),
            },
            Verdict::Refuse(why) => refused.push(FieldRefusal {
                field: format!("metadata.annotations[{key}]"),
                reason: why,
            }),
        }
    }
    if !refused.is_empty() {
        return Err(IngressRefusal::Fields(refused));
    }
    let cleaned = kube::api::ObjectMeta {
        annotations: Some(annotations),
        ..v.metadata.clone()
    };
    let meta = tenant.host_meta(&cleaned, tenant.subdomain_name(&ns, &name));

    let mut dropped_resource_backends = 0;
    let mut backend = |b: IngressBackend| -> Option<IngressBackend> {
        match b.service {
            Some(mut svc) => {
                svc.name = tenant.label_name(&ns, &svc.name);
                Some(IngressBackend {
                    service: Some(svc),
                    resource: None,
                })
            }
            None => {
                dropped_resource_backends += 1;
                None
            }
        }
    };
    let rules = vspec.rules.map(|rules| {
        rules
            .into_iter()
            .map(|mut r| {
                if let Some(http) = r.http.as_mut() {
                    http.paths = std::mem::take(&mut http.paths)
                        .into_iter()
                        .filter_map(|p| {
                            backend(p.backend).map(|b| HTTPIngressPath {
                                backend: b,
                                path: p.path,
                                path_type: p.path_type,
                            })
                        })
                        .collect();
                }
                r
            })
            .collect()
    });
    let tls = vspec.tls.map(|tls| {
        tls.into_iter()
            .map(|t| IngressTLS {
                hosts: t.hosts,
                secret_name: t.secret_name.map(|s| tenant.subdomain_name(&ns, &s)),
            })
            .collect()
    });
    Ok(HostIngress {
        ingress: Ingress {
            metadata: meta,
            spec: Some(IngressSpec {
                ingress_class_name: class,
                // Refused above; never copied.
                default_backend: None,
                rules,
                tls,
            }),
            status: None,
        },
        dropped_annotations,
        dropped_resource_backends,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::TypedLocalObjectReference;
    use k8s_openapi::api::networking::v1::{
        HTTPIngressRuleValue, IngressRule, IngressServiceBackend, ServiceBackendPort,
    };
    use kube::api::ObjectMeta;

    /// A tenant whose admin lets every annotation key through the general metadata policy, so
    /// these tests see the Ingress-specific rules alone (they must hold whatever that policy is).
    fn tenant() -> Tenant {
        let mut t = crate::translate::test_support::tenant();
        t.metadata = std::sync::Arc::new(crate::translate::MetadataPolicy::widened(
            vec![],
            vec!["*".parse().unwrap()],
        ));
        t
    }

    #[test]
    fn controller_annotations_are_renamed_unless_the_admin_allows_them() {
        let by_default = to_host(
            &ingress(None),
            &crate::translate::test_support::tenant(),
            &policy(),
        )
        .unwrap();
        let a = by_default.ingress.metadata.annotations.unwrap();
        assert!(!a.contains_key("nginx.ingress.kubernetes.io/rewrite-target"));
        // Dropped ones are not even renamed.
        let t = crate::translate::test_support::tenant();
        assert!(!a.contains_key(
            &t.host_annotation_key("nginx.ingress.kubernetes.io/configuration-snippet")
        ));
    }

    const SUFFIX: &str = "alice.apps.example.com";

    fn policy() -> IngressPolicy {
        IngressPolicy {
            host_suffix: Some(SUFFIX.into()),
            ..Default::default()
        }
    }

    fn service_backend(name: &str) -> IngressBackend {
        IngressBackend {
            service: Some(IngressServiceBackend {
                name: name.into(),
                port: Some(ServiceBackendPort {
                    number: Some(80),
                    name: None,
                }),
            }),
            resource: None,
        }
    }

    fn path(p: &str, backend: IngressBackend) -> HTTPIngressPath {
        HTTPIngressPath {
            path: Some(p.into()),
            path_type: "Prefix".into(),
            backend,
        }
    }

    fn rule(host: Option<&str>, paths: Vec<HTTPIngressPath>) -> IngressRule {
        IngressRule {
            host: host.map(String::from),
            http: Some(HTTPIngressRuleValue { paths }),
        }
    }

    fn ingress(class: Option<&str>) -> Ingress {
        Ingress {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                uid: Some("u-1".into()),
                annotations: Some(BTreeMap::from([
                    (
                        "nginx.ingress.kubernetes.io/configuration-snippet".into(),
                        "more_set_headers x;".into(),
                    ),
                    (
                        "nginx.ingress.kubernetes.io/rewrite-target".into(),
                        "/$2".into(),
                    ),
                ])),
                ..Default::default()
            },
            spec: Some(IngressSpec {
                ingress_class_name: class.map(String::from),
                default_backend: None,
                rules: Some(vec![rule(
                    Some("shop.alice.apps.example.com"),
                    vec![
                        path("/", service_backend("web")),
                        path(
                            "/files",
                            IngressBackend {
                                service: None,
                                resource: Some(TypedLocalObjectReference {
                                    api_group: Some("storage.example.com".into()),
                                    kind: "Bucket".into(),
                                    name: "files".into(),
                                }),
                            },
                        ),
                    ],
                )]),
                tls: Some(vec![IngressTLS {
                    hosts: Some(vec!["shop.alice.apps.example.com".into()]),
                    secret_name: Some("shop-tls".into()),
                }]),
            }),
            status: None,
        }
    }

    fn with_annotation(mut i: Ingress, key: &str, value: &str) -> Ingress {
        i.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(key.into(), value.into());
        i
    }

    fn refused_fields(result: Result<HostIngress, IngressRefusal>) -> Vec<String> {
        match result {
            Err(IngressRefusal::Fields(f)) => f.into_iter().map(|f| f.field).collect(),
            other => panic!("expected field refusals, got {other:?}"),
        }
    }

    #[test]
    fn backends_and_tls_secret_are_translated() {
        let h = to_host(&ingress(Some("nginx")), &tenant(), &policy()).unwrap();
        let meta = &h.ingress.metadata;
        assert_eq!(meta.name.as_deref(), Some("web-x-shop-x-alice"));
        assert_eq!(meta.namespace.as_deref(), Some("vkube-alice"));
        assert!(tenant().owns(meta));
        let spec = h.ingress.spec.unwrap();
        assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
        assert_eq!(spec.default_backend, None);
        let rules = spec.rules.unwrap();
        assert_eq!(
            rules[0].host.as_deref(),
            Some("shop.alice.apps.example.com")
        );
        let paths = &rules[0].http.as_ref().unwrap().paths;
        assert_eq!(paths.len(), 1, "the resource backend is left out");
        let svc = paths[0].backend.service.as_ref().unwrap();
        assert_eq!(svc.name, "web-x-shop-x-alice");
        assert_eq!(svc.port.as_ref().unwrap().number, Some(80));
        assert_eq!(paths[0].path.as_deref(), Some("/"));
        assert_eq!(h.dropped_resource_backends, 1);
        let tls = spec.tls.unwrap();
        assert_eq!(
            tls[0].secret_name.as_deref(),
            Some("shop-tls-x-shop-x-alice")
        );
        assert_eq!(
            tls[0].hosts,
            Some(vec!["shop.alice.apps.example.com".to_string()])
        );
    }

    #[test]
    fn hosts_are_compared_label_by_label_under_the_suffix() {
        let cases = [
            ("alice.apps.example.com", true),
            ("shop.alice.apps.example.com", true),
            ("a.b.alice.apps.example.com", true),
            ("*.alice.apps.example.com", true),
            ("*.shop.alice.apps.example.com", true),
            ("Shop.ALICE.apps.example.com", true),
            // Another tenant's, the platform's, or a look-alike.
            ("bob.apps.example.com", false),
            ("shop.bob.apps.example.com", false),
            ("evil-alice.apps.example.com", false),
            ("xalice.apps.example.com", false),
            ("alice.apps.example.com.evil.com", false),
            ("apps.example.com", false),
            ("*.apps.example.com", false),
            ("*", false),
            ("", false),
            // Not DNS names.
            ("*.*.alice.apps.example.com", false),
            ("a.*.alice.apps.example.com", false),
            ("a..alice.apps.example.com", false),
            ("alice.apps.example.com.", false),
            (".alice.apps.example.com", false),
            ("shöp.alice.apps.example.com", false),
            ("sh op.alice.apps.example.com", false),
            ("10.0.0.1", false),
        ];
        for (host, ok) in cases {
            assert_eq!(within_suffix(host, SUFFIX), ok, "{host:?}");
        }
    }

    #[test]
    fn without_a_suffix_nothing_is_published() {
        let none = IngressPolicy::default();
        assert_eq!(
            to_host(&ingress(None), &tenant(), &none),
            Err(IngressRefusal::NoHostSuffix)
        );
        assert!(
            IngressRefusal::NoHostSuffix
                .to_string()
                .contains("--ingress-host-suffix")
        );
    }

    #[test]
    fn hosts_outside_the_suffix_catch_alls_and_bad_paths_refuse_the_whole_ingress() {
        let mut i = ingress(None);
        let spec = i.spec.as_mut().unwrap();
        spec.default_backend = Some(service_backend("fallback"));
        spec.rules.as_mut().unwrap().extend([
            rule(
                Some("shop.bob.apps.example.com"),
                vec![path("/", service_backend("web"))],
            ),
            rule(None, vec![path("/", service_backend("web"))]),
            rule(Some(""), vec![]),
            rule(
                Some("ok.alice.apps.example.com"),
                vec![
                    path("/fine/(.*)$", service_backend("web")),
                    path("/x;\n}location /y {", service_backend("web")),
                ],
            ),
        ]);
        spec.tls.as_mut().unwrap().extend([
            IngressTLS {
                hosts: Some(vec!["*.apps.example.com".into()]),
                secret_name: Some("wild".into()),
            },
            IngressTLS {
                hosts: None,
                secret_name: Some("kube-system/default-cert".into()),
            },
        ]);
        let fields = refused_fields(to_host(&i, &tenant(), &policy()));
        assert_eq!(
            fields,
            [
                "spec.defaultBackend",
                "spec.rules[1].host",
                "spec.rules[2].host",
                "spec.rules[3].host",
                "spec.rules[4].http.paths[1].path",
                "spec.tls[1].hosts[0]",
                "spec.tls[2].hosts",
                "spec.tls[2].secretName",
            ]
        );
        let message = to_host(&i, &tenant(), &policy()).unwrap_err().to_string();
        assert!(
            message.contains("\"shop.bob.apps.example.com\" is outside"),
            "{message}"
        );
        assert!(message.contains(".alice.apps.example.com"), "{message}");
    }

    #[test]
    fn ssl_passthrough_is_kept_only_with_the_tenants_own_hosts() {
        let passthrough = "nginx.ingress.kubernetes.io/ssl-passthrough";
        let own = with_annotation(ingress(None), passthrough, "true");
        let h = to_host(&own, &tenant(), &policy()).unwrap();
        assert_eq!(h.ingress.metadata.annotations.unwrap()[passthrough], "true");
        let mut stolen = with_annotation(ingress(None), passthrough, "true");
        stolen.spec.as_mut().unwrap().rules.as_mut().unwrap()[0].host =
            Some("api.bob.apps.example.com".into());
        stolen.spec.as_mut().unwrap().tls = None;
        assert_eq!(
            refused_fields(to_host(&stolen, &tenant(), &policy())),
            ["spec.rules[0].host"]
        );
    }

    #[derive(Debug, PartialEq)]
    enum Outcome {
        Kept(&'static str),
        Rewritten(String),
        Dropped,
        Refused,
    }

    #[test]
    fn controller_annotations_are_kept_translated_dropped_or_refused() {
        use Outcome::*;
        let cases: &[(&str, &str, Outcome)] = &[
            (
                "nginx.ingress.kubernetes.io/rewrite-target",
                "/$1",
                Kept("/$1"),
            ),
            (
                "nginx.ingress.kubernetes.io/ssl-redirect",
                "true",
                Kept("true"),
            ),
            (
                "nginx.ingress.kubernetes.io/whitelist-source-range",
                "10.0.0.0/8",
                Kept("10.0.0.0/8"),
            ),
            (
                "example.com/unrelated",
                "{\"json\": true}",
                Kept("{\"json\": true}"),
            ),
            (
                "alb.ingress.kubernetes.io/actions.x",
                "{\"type\":\"fixed-response\"}",
                Kept("{\"type\":\"fixed-response\"}"),
            ),
            // Raw configuration, in any controller's words.
            ("nginx.ingress.kubernetes.io/server-snippet", "x", Dropped),
            ("nginx.org/location-snippets", "x", Dropped),
            ("haproxy.org/backend-config-snippet", "x", Dropped),
            ("haproxy-ingress.github.io/config-backend", "x", Dropped),
            ("haproxy.org/route-acl", "x", Dropped),
            // Injection histories, SSRF, objects the tenant cannot make on the host.
            (
                "nginx.ingress.kubernetes.io/mirror-target",
                "http://10.0.0.1/",
                Dropped,
            ),
            ("nginx.ingress.kubernetes.io/mirror-host", "x", Dropped),
            (
                "nginx.ingress.kubernetes.io/permanent-redirect",
                "https://x/",
                Dropped,
            ),
            (
                "nginx.ingress.kubernetes.io/fastcgi-params-configmap",
                "kube-system/x",
                Dropped,
            ),
            (
                "traefik.ingress.kubernetes.io/router.tls.options",
                "default-x@kubernetescrd",
                Dropped,
            ),
            ("alb.ingress.kubernetes.io/group.name", "shared", Dropped),
            // Values that would end a directive or open a block.
            (
                "nginx.ingress.kubernetes.io/upstream-vhost",
                "x;\nssl_engine /proc/1/fd/3",
                Dropped,
            ),
            (
                "nginx.ingress.kubernetes.io/proxy-body-size",
                "8m }",
                Dropped,
            ),
            (
                "nginx.ingress.kubernetes.io/cors-allow-origin",
                "https://a\r",
                Dropped,
            ),
            ("haproxy.org/timeout-server", "5s\"", Dropped),
            // Access restrictions that cannot be honoured refuse the Ingress instead.
            (
                "nginx.ingress.kubernetes.io/auth-url",
                "http://kubernetes.default.svc/",
                Refused,
            ),
            (
                "nginx.ingress.kubernetes.io/auth-tls-match-cn",
                "CN=x #\n}",
                Refused,
            ),
            (
                "nginx.ingress.kubernetes.io/auth-proxy-set-headers",
                "ns/cm",
                Refused,
            ),
            (
                "nginx.ingress.kubernetes.io/whitelist-source-range",
                "10.0.0.0/8;\nallow all",
                Refused,
            ),
            (
                "traefik.ingress.kubernetes.io/router.middlewares",
                "kube-system-auth@kubernetescrd",
                Refused,
            ),
            // Secret references: translated within the namespace, refused across.
            (
                "nginx.ingress.kubernetes.io/auth-secret",
                "htpasswd",
                Rewritten("htpasswd-x-shop-x-alice".into()),
            ),
            (
                "nginx.ingress.kubernetes.io/auth-tls-secret",
                "shop/ca",
                Rewritten("vkube-alice/ca-x-shop-x-alice".into()),
            ),
            (
                "nginx.ingress.kubernetes.io/proxy-ssl-secret",
                "shop/client",
                Rewritten("vkube-alice/client-x-shop-x-alice".into()),
            ),
            (
                "nginx.org/basic-auth-secret",
                "users",
                Rewritten("users-x-shop-x-alice".into()),
            ),
            (
                "nginx.ingress.kubernetes.io/auth-tls-secret",
                "vkube-bob/vkube-bob-certs",
                Refused,
            ),
            (
                "nginx.ingress.kubernetes.io/auth-secret",
                "kube-system/admin",
                Refused,
            ),
            (
                "nginx.ingress.kubernetes.io/proxy-ssl-secret",
                "other/client",
                Refused,
            ),
            ("haproxy.org/server-ca", "a/b/c", Refused),
            // A Service of the namespace, translated; the host's own are out of reach.
            (
                "nginx.ingress.kubernetes.io/default-backend",
                "errors",
                Rewritten("errors-x-shop-x-alice".into()),
            ),
            (
                "nginx.ingress.kubernetes.io/default-backend",
                "vkube-system/x",
                Refused,
            ),
            // Extra host names: confined like the rules' hosts.
            (
                "nginx.ingress.kubernetes.io/server-alias",
                "www.alice.apps.example.com, *.m.alice.apps.example.com",
                Kept("www.alice.apps.example.com, *.m.alice.apps.example.com"),
            ),
            (
                "nginx.ingress.kubernetes.io/server-alias",
                "www.alice.apps.example.com,bob.apps.example.com",
                Refused,
            ),
        ];
        for (key, value, expected) in cases {
            let i = with_annotation(ingress(None), key, value);
            let result = to_host(&i, &tenant(), &policy());
            let got = match &result {
                Err(IngressRefusal::Fields(f)) => {
                    assert_eq!(f.len(), 1, "{key}: {f:?}");
                    assert_eq!(f[0].field, format!("metadata.annotations[{key}]"));
                    Refused
                }
                Err(other) => panic!("{key}: {other}"),
                Ok(h) => {
                    let a = h.ingress.metadata.annotations.clone().unwrap_or_default();
                    if h.dropped_annotations.iter().any(|(k, _)| k == key) {
                        assert!(!a.contains_key(*key), "{key} dropped but copied");
                        Dropped
                    } else if a.get(*key).map(String::as_str) == Some(*value) {
                        Kept(value)
                    } else {
                        Rewritten(a.get(*key).cloned().unwrap_or_default())
                    }
                }
            };
            assert_eq!(&got, expected, "{key}: {value:?}");
        }
    }

    #[test]
    fn a_dropped_annotation_is_reported_with_its_reason() {
        let h = to_host(&ingress(None), &tenant(), &policy()).unwrap();
        let a = h.ingress.metadata.annotations.unwrap();
        assert!(!a.contains_key("nginx.ingress.kubernetes.io/configuration-snippet"));
        assert_eq!(a["nginx.ingress.kubernetes.io/rewrite-target"], "/$2");
        assert_eq!(h.dropped_annotations.len(), 1);
        let (key, why) = &h.dropped_annotations[0];
        assert_eq!(key, "nginx.ingress.kubernetes.io/configuration-snippet");
        assert!(why.contains("CVE-2021-25742"), "{why}");
    }

    #[test]
    fn class_policy_allows_defaults_and_refuses() {
        let policy = IngressPolicy {
            allowed_classes: vec!["public".into(), "internal".into()],
            default_class: Some("public".into()),
            host_suffix: Some(SUFFIX.into()),
        };
        // No class: the default fills in.
        let h = to_host(&ingress(None), &tenant(), &policy).unwrap();
        assert_eq!(
            h.ingress.spec.unwrap().ingress_class_name.as_deref(),
            Some("public")
        );
        // The legacy annotation counts as the class, and moves into the spec.
        let legacy = with_annotation(ingress(None), LEGACY_CLASS_ANNOTATION, "internal");
        let h = to_host(&legacy, &tenant(), &policy).unwrap();
        assert_eq!(
            h.ingress
                .spec
                .as_ref()
                .unwrap()
                .ingress_class_name
                .as_deref(),
            Some("internal")
        );
        assert!(
            !h.ingress
                .metadata
                .annotations
                .unwrap()
                .contains_key(LEGACY_CLASS_ANNOTATION)
        );
        // A class outside the list is refused.
        let err = to_host(&ingress(Some("admin-only")), &tenant(), &policy).unwrap_err();
        assert_eq!(
            err,
            IngressRefusal::ClassNotAllowed {
                class: Some("admin-only".into()),
                allowed: vec!["public".into(), "internal".into()]
            }
        );
        assert_eq!(
            err.to_string(),
            "ingress class \"admin-only\" is not allowed by the platform's policy; allowed: public, internal"
        );
        // With a list and no default, naming no class is refused too.
        let strict = IngressPolicy {
            default_class: None,
            ..policy
        };
        let err = to_host(&ingress(None), &tenant(), &strict).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("an Ingress without a class is not allowed"),
            "{err}"
        );
        // Without a list, anything goes and no class stays no class.
        let h = to_host(&ingress(None), &tenant(), &self::policy()).unwrap();
        assert_eq!(h.ingress.spec.unwrap().ingress_class_name, None);
    }

    #[test]
    fn referenced_secrets_are_tls_and_same_namespace_annotations() {
        let i = with_annotation(
            with_annotation(
                with_annotation(
                    ingress(None),
                    "nginx.ingress.kubernetes.io/auth-secret",
                    "htpasswd",
                ),
                "nginx.ingress.kubernetes.io/auth-tls-secret",
                "shop/ca",
            ),
            "nginx.ingress.kubernetes.io/proxy-ssl-secret",
            "other/client",
        );
        assert_eq!(
            referenced_secrets(&i),
            BTreeSet::from(["shop-tls".to_string(), "htpasswd".into(), "ca".into()])
        );
        assert!(referenced_secrets(&Ingress::default()).is_empty());
    }

    #[test]
    fn the_suffix_template_names_the_tenant_and_must_be_a_dns_name() {
        assert_eq!(
            host_suffix_for("{name}.apps.example.com", "alice"),
            Ok("alice.apps.example.com".into())
        );
        assert_eq!(
            host_suffix_for("Apps.Example.COM.", "alice"),
            Ok("apps.example.com".into())
        );
        for bad in [
            "*.{name}.example.com",
            "{name}..example.com",
            "{name}_x.example.com",
            "",
            "-{name}.example.com",
        ] {
            assert!(host_suffix_for(bad, "alice").is_err(), "{bad:?}");
        }
    }
}
