//! Services: same ports, selector confined to the tenant's pods of the same virtual namespace.
//! NodePort and LoadBalancer are allowed only if the admin's policy says so; otherwise the host
//! Service is a ClusterIP and the caller reports the downgrade as an Event.

use k8s_openapi::api::core::v1::{Service, ServiceSpec};

use super::Tenant;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServicePolicy {
    pub allow_node_port: bool,
    pub allow_load_balancer: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostService {
    pub service: Service,
    /// Set when the virtual type was not allowed and the host copy is a ClusterIP instead.
    pub downgraded_from: Option<String>,
}

pub fn to_host(v: &Service, tenant: &Tenant, policy: ServicePolicy) -> HostService {
    let ns = v.metadata.namespace.clone().unwrap_or_default();
    let name = v.metadata.name.clone().unwrap_or_default();
    let vspec = v.spec.clone().unwrap_or_default();
    let vtype = vspec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
    let allowed = match vtype.as_str() {
        "NodePort" => policy.allow_node_port,
        "LoadBalancer" => policy.allow_load_balancer,
        _ => true,
    };
    let host_type = if allowed {
        vtype.clone()
    } else {
        "ClusterIP".into()
    };
    let headless = vspec.cluster_ip.as_deref() == Some("None");
    let exposes_nodes = host_type == "NodePort" || host_type == "LoadBalancer";
    let mut ports = vspec.ports.clone();
    if !exposes_nodes {
        for p in ports.iter_mut().flatten() {
            p.node_port = None;
        }
    }
    let spec = ServiceSpec {
        type_: Some(host_type.clone()),
        ports,
        selector: vspec
            .selector
            .as_ref()
            .map(|s| tenant.translate_selector(&ns, s)),
        // The host allocates its own ClusterIP; only "None" (headless) is carried over.
        cluster_ip: headless.then(|| "None".to_string()),
        cluster_ips: headless.then(|| vec!["None".to_string()]),
        external_name: vspec.external_name.clone(),
        session_affinity: vspec.session_affinity.clone(),
        session_affinity_config: vspec.session_affinity_config.clone(),
        publish_not_ready_addresses: vspec.publish_not_ready_addresses,
        ip_families: vspec.ip_families.clone(),
        ip_family_policy: vspec.ip_family_policy.clone(),
        internal_traffic_policy: vspec.internal_traffic_policy.clone(),
        traffic_distribution: vspec.traffic_distribution.clone(),
        // externalIPs let a tenant capture traffic for arbitrary addresses (CVE-2020-8554).
        external_ips: None,
        external_traffic_policy: if exposes_nodes {
            vspec.external_traffic_policy.clone()
        } else {
            None
        },
        load_balancer_class: if host_type == "LoadBalancer" {
            vspec.load_balancer_class.clone()
        } else {
            None
        },
        allocate_load_balancer_node_ports: if host_type == "LoadBalancer" {
            vspec.allocate_load_balancer_node_ports
        } else {
            None
        },
        ..Default::default()
    };
    HostService {
        service: Service {
            metadata: tenant.host_meta(&v.metadata, tenant.label_name(&ns, &name)),
            spec: Some(spec),
            status: None,
        },
        downgraded_from: (!allowed).then_some(vtype),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ServicePort;
    use kube::api::ObjectMeta;
    use std::collections::BTreeMap;

    fn tenant() -> Tenant {
        Tenant {
            name: "alice".into(),
            host_namespace: "vkube-alice".into(),
        }
    }

    fn svc(type_: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some(type_.into()),
                cluster_ip: Some("10.96.5.5".into()),
                external_ips: Some(vec!["8.8.8.8".into()]),
                selector: Some(BTreeMap::from([("app".into(), "web".into())])),
                ports: Some(vec![ServicePort {
                    port: 80,
                    node_port: Some(30080),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn selector_and_name_are_translated_and_ip_left_to_the_host() {
        let h = to_host(&svc("ClusterIP"), &tenant(), ServicePolicy::default());
        assert_eq!(h.downgraded_from, None);
        assert_eq!(
            h.service.metadata.name.as_deref(),
            Some("web-x-shop-x-alice")
        );
        let spec = h.service.spec.unwrap();
        assert_eq!(spec.cluster_ip, None);
        assert_eq!(spec.external_ips, None);
        let sel = spec.selector.unwrap();
        assert_eq!(sel["app"], "web");
        assert_eq!(sel[super::super::VIRTUAL_NAMESPACE], "shop");
        assert_eq!(sel[super::super::MANAGED_BY], "alice");
    }

    #[test]
    fn node_ports_are_downgraded_unless_allowed() {
        let h = to_host(&svc("NodePort"), &tenant(), ServicePolicy::default());
        assert_eq!(h.downgraded_from.as_deref(), Some("NodePort"));
        let spec = h.service.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.ports.unwrap()[0].node_port, None);
        let allowed = ServicePolicy {
            allow_node_port: true,
            allow_load_balancer: false,
        };
        let h = to_host(&svc("NodePort"), &tenant(), allowed);
        assert_eq!(h.downgraded_from, None);
        assert_eq!(h.service.spec.unwrap().type_.as_deref(), Some("NodePort"));
    }

    #[test]
    fn headless_and_external_name_are_kept() {
        let mut v = svc("ClusterIP");
        v.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        let spec = to_host(&v, &tenant(), ServicePolicy::default())
            .service
            .spec
            .unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        let mut e = svc("ExternalName");
        e.spec.as_mut().unwrap().external_name = Some("db.example.com".into());
        e.spec.as_mut().unwrap().selector = None;
        let spec = to_host(&e, &tenant(), ServicePolicy::default())
            .service
            .spec
            .unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ExternalName"));
        assert_eq!(spec.external_name.as_deref(), Some("db.example.com"));
        assert_eq!(spec.selector, None);
    }
}
