//! Ingresses (networking.k8s.io/v1): the host copy routes the same hosts and paths to the host
//! copies of the virtual backends, and terminates TLS with the host copy of the virtual Secret.
//!
//! An Ingress is configuration for a controller the tenant shares with everyone on the host, so
//! the copy is also where the platform's policy applies: the class must be one the admin allows
//! (a default fills in when the tenant names none), configuration snippets (raw controller
//! configuration, CVE-2021-25742) are dropped, and resource backends, which name arbitrary
//! objects of the namespace that vkube does not sync, are left out.

use std::collections::BTreeSet;

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, Ingress, IngressBackend, IngressSpec, IngressTLS,
};

use super::Tenant;

/// The pre-v1 way to name a class; read as the class when the spec names none.
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngressPolicy {
    /// Ingress classes tenants may use; empty allows any.
    pub allowed_classes: Vec<String>,
    /// Class given to an Ingress that names none; without it the host's default class applies.
    pub default_class: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngressRefusal {
    #[error(
        "ingress class {class:?} is not allowed by the platform's policy; allowed: {allowed}",
        allowed = .allowed.join(", ")
    )]
    ClassNotAllowed {
        class: Option<String>,
        allowed: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostIngress {
    pub ingress: Ingress,
    /// Annotations not copied (configuration snippets).
    pub dropped_annotations: Vec<String>,
    /// Backends left out because they name resources instead of services.
    pub dropped_resource_backends: usize,
}

/// Virtual Secrets the Ingress terminates TLS with.
pub fn tls_secrets(v: &Ingress) -> BTreeSet<String> {
    v.spec
        .iter()
        .flat_map(|s| s.tls.iter().flatten())
        .filter_map(|t| t.secret_name.clone())
        .collect()
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

fn is_snippet(key: &str) -> bool {
    key.contains("snippet")
}

pub fn to_host(
    v: &Ingress,
    tenant: &Tenant,
    policy: &IngressPolicy,
) -> Result<HostIngress, IngressRefusal> {
    let ns = v.metadata.namespace.clone().unwrap_or_default();
    let name = v.metadata.name.clone().unwrap_or_default();
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
    let mut meta = tenant.host_meta(&v.metadata, tenant.subdomain_name(&ns, &name));
    let mut dropped_annotations = Vec::new();
    if let Some(a) = meta.annotations.as_mut() {
        // The class moves into the spec: one place for the host controller to read it.
        a.remove(LEGACY_CLASS_ANNOTATION);
        // Checked on the tenant's keys: `host_meta` has renamed those not allowed already.
        dropped_annotations = v
            .metadata
            .annotations
            .iter()
            .flatten()
            .map(|(k, _)| k)
            .filter(|k| is_snippet(k))
            .cloned()
            .collect();
        for k in &dropped_annotations {
            a.remove(&tenant.host_annotation_key(k));
        }
    }
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
    let vspec = v.spec.clone().unwrap_or_default();
    let default_backend = vspec.default_backend.and_then(&mut backend);
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
                default_backend,
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
    use std::collections::BTreeMap;

    use crate::translate::test_support::tenant;

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
                        "/".into(),
                    ),
                ])),
                ..Default::default()
            },
            spec: Some(IngressSpec {
                ingress_class_name: class.map(String::from),
                default_backend: Some(service_backend("fallback")),
                rules: Some(vec![IngressRule {
                    host: Some("shop.example.com".into()),
                    http: Some(HTTPIngressRuleValue {
                        paths: vec![
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
                    }),
                }]),
                tls: Some(vec![IngressTLS {
                    hosts: Some(vec!["shop.example.com".into()]),
                    secret_name: Some("shop-tls".into()),
                }]),
            }),
            status: None,
        }
    }

    #[test]
    fn backends_and_tls_secret_are_translated() {
        let h = to_host(
            &ingress(Some("nginx")),
            &tenant(),
            &IngressPolicy::default(),
        )
        .unwrap();
        let meta = &h.ingress.metadata;
        assert_eq!(meta.name.as_deref(), Some("web-x-shop-x-alice"));
        assert_eq!(meta.namespace.as_deref(), Some("vkube-alice"));
        assert!(tenant().owns(meta));
        let spec = h.ingress.spec.unwrap();
        assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
        assert_eq!(
            spec.default_backend.unwrap().service.unwrap().name,
            "fallback-x-shop-x-alice"
        );
        let rules = spec.rules.unwrap();
        assert_eq!(rules[0].host.as_deref(), Some("shop.example.com"));
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
        assert_eq!(tls[0].hosts, Some(vec!["shop.example.com".to_string()]));
    }

    #[test]
    fn snippets_are_dropped_and_other_annotations_kept() {
        // Controller annotations reach the host only where the admin allows them.
        let mut t = tenant();
        t.metadata = std::sync::Arc::new(crate::translate::MetadataPolicy::widened(
            vec![],
            vec!["nginx.ingress.kubernetes.io/*".parse().unwrap()],
        ));
        let h = to_host(&ingress(None), &t, &IngressPolicy::default()).unwrap();
        let a = h.ingress.metadata.annotations.unwrap();
        assert!(!a.contains_key("nginx.ingress.kubernetes.io/configuration-snippet"));
        assert_eq!(a["nginx.ingress.kubernetes.io/rewrite-target"], "/");
        let by_default = to_host(&ingress(None), &tenant(), &IngressPolicy::default()).unwrap();
        let a = by_default.ingress.metadata.annotations.unwrap();
        assert!(!a.contains_key("nginx.ingress.kubernetes.io/rewrite-target"));
        assert_eq!(
            h.dropped_annotations,
            vec!["nginx.ingress.kubernetes.io/configuration-snippet".to_string()]
        );
    }

    #[test]
    fn class_policy_allows_defaults_and_refuses() {
        let policy = IngressPolicy {
            allowed_classes: vec!["public".into(), "internal".into()],
            default_class: Some("public".into()),
        };
        // No class: the default fills in.
        let h = to_host(&ingress(None), &tenant(), &policy).unwrap();
        assert_eq!(
            h.ingress.spec.unwrap().ingress_class_name.as_deref(),
            Some("public")
        );
        // The legacy annotation counts as the class, and moves into the spec.
        let mut legacy = ingress(None);
        legacy
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(LEGACY_CLASS_ANNOTATION.into(), "internal".into());
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
        assert!(err.to_string().contains("public, internal"), "{err}");
        // With a list and no default, naming no class is refused too.
        let strict = IngressPolicy {
            default_class: None,
            ..policy
        };
        assert!(to_host(&ingress(None), &tenant(), &strict).is_err());
        // Without a list, anything goes and no class stays no class.
        let h = to_host(&ingress(None), &tenant(), &IngressPolicy::default()).unwrap();
        assert_eq!(h.ingress.spec.unwrap().ingress_class_name, None);
    }

    #[test]
    fn tls_secrets_are_listed() {
        assert_eq!(
            tls_secrets(&ingress(None)),
            BTreeSet::from(["shop-tls".to_string()])
        );
        assert!(tls_secrets(&Ingress::default()).is_empty());
    }
}
