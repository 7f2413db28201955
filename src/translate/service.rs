//! Services: same ports, selector confined to the tenant's pods of the same virtual namespace.
//!
//! The host copy is built from an allow-list of spec fields, never copied whole: what a field
//! does on the host decides. NodePort and LoadBalancer are allowed only if the admin's policy
//! says so; otherwise the host Service is a ClusterIP and the caller reports the downgrade as an
//! Event. ExternalName Services are not synced unless allowed: on the host an ExternalName is a
//! DNS alias in the host's cluster DNS that ingress controllers and other host components follow
//! on the tenant's behalf (a confused deputy); the tenant's own pods resolve it through vkube's
//! DNS, which answers from the virtual Service. Fields and annotations that claim addresses
//! (`externalIPs`, CVE-2020-8554: intercepting traffic to any IP; `loadBalancerIP` and the
//! load-balancer implementations' IP annotations) are left out, with an Event.

use k8s_openapi::api::core::v1::{Service, ServiceSpec};

use super::Tenant;
use super::endpoints::Cidr;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServicePolicy {
    pub allow_node_port: bool,
    pub allow_load_balancer: bool,
    pub allow_external_name: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceRefusal {
    #[error(
        "ExternalName services are not copied to the host: there an ExternalName is a DNS alias that host components (ingress controllers) follow on the tenant's behalf. Pods of this virtual cluster still resolve it through the cluster DNS; the platform can allow them with vkube serve --allow-external-name"
    )]
    ExternalNameNotAllowed,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostService {
    pub service: Service,
    /// Set when the virtual type was not allowed and the host copy is a ClusterIP instead.
    pub downgraded_from: Option<String>,
    /// Fields and annotations set on the virtual Service that the host copy leaves out, each
    /// with the reason (only those the tenant should hear about).
    pub dropped: Vec<(String, &'static str)>,
}

const CLAIMS_ADDRESSES: &str =
    "claims addresses on the host network, possibly another tenant's (CVE-2020-8554)";

/// Load-balancer implementations' annotations that pick a specific address or share one with
/// other Services: like `loadBalancerIP`, a claim on an address that may be someone else's.
const ADDRESS_ANNOTATIONS: &[&str] = &[
    "metallb.universe.tf/loadBalancerIPs",
    "metallb.universe.tf/allow-shared-ip",
    "metallb.io/loadBalancerIPs",
    "metallb.io/allow-shared-ip",
    "kube-vip.io/loadbalancerIPs",
];

pub fn to_host(
    v: &Service,
    tenant: &Tenant,
    policy: ServicePolicy,
) -> Result<HostService, ServiceRefusal> {
    let ns = v.metadata.namespace.clone().unwrap_or_default();
    let name = v.metadata.name.clone().unwrap_or_default();
    let vspec = v.spec.clone().unwrap_or_default();
    let vtype = vspec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
    let allowed = match vtype.as_str() {
        "NodePort" => policy.allow_node_port,
        "LoadBalancer" => policy.allow_load_balancer,
        "ExternalName" if !policy.allow_external_name => {
            return Err(ServiceRefusal::ExternalNameNotAllowed);
        }
        _ => true,
    };
    let host_type = if allowed {
        vtype.clone()
    } else {
        "ClusterIP".into()
    };
    let headless = vspec.cluster_ip.as_deref() == Some("None");
    let external_name = host_type == "ExternalName";
    let exposes_nodes = host_type == "NodePort" || host_type == "LoadBalancer";
    let load_balancer = host_type == "LoadBalancer";
    let mut dropped = Vec::new();
    if vspec
        .external_ips
        .as_ref()
        .is_some_and(|ips| !ips.is_empty())
    {
        dropped.push(("spec.externalIPs".to_string(), CLAIMS_ADDRESSES));
    }
    if vspec
        .load_balancer_ip
        .as_ref()
        .is_some_and(|ip| !ip.is_empty())
    {
        dropped.push(("spec.loadBalancerIP".to_string(), CLAIMS_ADDRESSES));
    }
    let mut ports = vspec.ports.clone();
    if !exposes_nodes {
        for p in ports.iter_mut().flatten() {
            p.node_port = None;
        }
    }
    // The allow-list: every field of ServiceSpec is named here, copied or not, and why.
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
        external_name: external_name.then(|| vspec.external_name.clone()).flatten(),
        // These shape only this Service's own routing.
        session_affinity: vspec.session_affinity.clone(),
        session_affinity_config: vspec.session_affinity_config.clone(),
        publish_not_ready_addresses: vspec.publish_not_ready_addresses,
        ip_families: vspec.ip_families.clone(),
        ip_family_policy: vspec.ip_family_policy.clone(),
        internal_traffic_policy: vspec.internal_traffic_policy.clone(),
        traffic_distribution: vspec.traffic_distribution.clone(),
        external_traffic_policy: exposes_nodes
            .then(|| vspec.external_traffic_policy.clone())
            .flatten(),
        load_balancer_class: load_balancer
            .then(|| vspec.load_balancer_class.clone())
            .flatten(),
        allocate_load_balancer_node_ports: load_balancer
            .then_some(vspec.allocate_load_balancer_node_ports)
            .flatten(),
        // Narrows who reaches the load balancer: leaving it out would open it wider than asked.
        load_balancer_source_ranges: load_balancer
            .then(|| vspec.load_balancer_source_ranges.clone())
            .flatten(),
        // Addresses are the host's to give (see `dropped`).
        external_ips: None,
        load_balancer_ip: None,
        // A node port of the tenant's choosing; the host allocates one (the virtual API sets
        // it on every LoadBalancer Service with traffic policy Local, so it is not reported).
        health_check_node_port: None,
    };
    let mut metadata = v.metadata.clone();
    if let Some(a) = metadata.annotations.as_mut() {
        for key in ADDRESS_ANNOTATIONS {
            if a.remove(*key).is_some() {
                dropped.push((format!("metadata.annotations[{key}]"), CLAIMS_ADDRESSES));
            }
        }
    }
    Ok(HostService {
        service: Service {
            metadata: tenant.host_meta(&metadata, tenant.label_name(&ns, &name)),
            spec: Some(spec),
            status: None,
        },
        downgraded_from: (!allowed).then_some(vtype),
        dropped,
    })
}

/// A Service that gets a cluster IP of its own (not headless, not ExternalName).
fn allocated_ips(svc: &Service) -> Option<(String, Option<Vec<String>>)> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let ip = spec
        .cluster_ip
        .clone()
        .filter(|ip| !ip.is_empty() && ip != "None")?;
    Some((ip, spec.cluster_ips.clone()))
}

/// Asks the host for the cluster IPs of `from` in the desired host Service: the IPs the host
/// copy already has (they are immutable, so an apply must repeat them), or, for a host copy yet
/// to be created, the IPs the virtual apiserver allocated (when they are free on the host, both
/// sides agree from the start and the virtual Service need not be re-created).
pub fn pin_cluster_ips(desired: &mut Service, from: &Service) {
    let Some((ip, ips)) = allocated_ips(from) else {
        return;
    };
    if allocated_ips(desired).is_some()
        || desired.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
        || desired.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName")
    {
        return;
    }
    if let Some(spec) = desired.spec.as_mut() {
        spec.cluster_ip = Some(ip);
        spec.cluster_ips = ips;
    }
}

/// Whether the virtual apiserver, whose service ranges are `ranges`, can show the host's cluster
/// IPs of `host`. When it cannot (its `--service-cidr` does not contain the host's range),
/// re-creating the virtual Service with them would fail, and then loop.
pub fn representable(host: &Service, ranges: &[Cidr]) -> bool {
    let Some((ip, ips)) = allocated_ips(host) else {
        return true;
    };
    ips.unwrap_or_else(|| vec![ip]).iter().all(|ip| {
        ip.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ranges.iter().any(|r| r.contains(&ip)))
    })
}

/// The virtual Service as it must be re-created so that it shows the cluster IPs that really
/// route (the host's); `None` when it already does, or has none to show (headless,
/// ExternalName, host IP not allocated yet). Cluster IPs are immutable, hence a re-creation:
/// same metadata (labels, annotations, owners) and spec, new IPs.
pub fn with_host_cluster_ips(v: &Service, host: &Service) -> Option<Service> {
    let (vip, vips) = allocated_ips(v)?;
    let (hip, hips) = allocated_ips(host)?;
    if vip == hip && (vips == hips || hips.is_none()) {
        return None;
    }
    let mut spec = v.spec.clone()?;
    spec.cluster_ip = Some(hip);
    spec.cluster_ips = hips;
    if let Some(families) = host.spec.as_ref().and_then(|s| s.ip_families.clone()) {
        spec.ip_families = Some(families);
    }
    Some(Service {
        metadata: kube::api::ObjectMeta {
            name: v.metadata.name.clone(),
            namespace: v.metadata.namespace.clone(),
            labels: v.metadata.labels.clone(),
            annotations: v.metadata.annotations.clone(),
            owner_references: v.metadata.owner_references.clone(),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ServicePort;
    use kube::api::ObjectMeta;
    use std::collections::BTreeMap;

    use crate::translate::test_support::tenant;

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
        let h = to_host(&svc("ClusterIP"), &tenant(), ServicePolicy::default()).unwrap();
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
        let h = to_host(&svc("NodePort"), &tenant(), ServicePolicy::default()).unwrap();
        assert_eq!(h.downgraded_from.as_deref(), Some("NodePort"));
        let spec = h.service.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.ports.unwrap()[0].node_port, None);
        let allowed = ServicePolicy {
            allow_node_port: true,
            ..Default::default()
        };
        let h = to_host(&svc("NodePort"), &tenant(), allowed).unwrap();
        assert_eq!(h.downgraded_from, None);
        assert_eq!(h.service.spec.unwrap().type_.as_deref(), Some("NodePort"));
    }

    const EXTERNAL_NAME_ALLOWED: ServicePolicy = ServicePolicy {
        allow_node_port: false,
        allow_load_balancer: false,
        allow_external_name: true,
    };

    fn external_name() -> Service {
        let mut e = svc("ExternalName");
        let spec = e.spec.as_mut().unwrap();
        spec.external_name = Some("db.example.com".into());
        spec.selector = None;
        spec.external_ips = None;
        e
    }

    #[test]
    fn headless_is_kept_and_external_name_only_when_allowed() {
        let mut v = svc("ClusterIP");
        v.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        let spec = to_host(&v, &tenant(), ServicePolicy::default())
            .unwrap()
            .service
            .spec
            .unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(
            to_host(&external_name(), &tenant(), ServicePolicy::default()),
            Err(ServiceRefusal::ExternalNameNotAllowed)
        );
        let spec = to_host(&external_name(), &tenant(), EXTERNAL_NAME_ALLOWED)
            .unwrap()
            .service
            .spec
            .unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ExternalName"));
        assert_eq!(spec.external_name.as_deref(), Some("db.example.com"));
        assert_eq!(spec.selector, None);
        // An externalName left on a Service of another type does not follow it to the host.
        let mut stale = svc("ClusterIP");
        stale.spec.as_mut().unwrap().external_name = Some("kubernetes.default".into());
        let spec = to_host(&stale, &tenant(), EXTERNAL_NAME_ALLOWED)
            .unwrap()
            .service
            .spec
            .unwrap();
        assert_eq!(spec.external_name, None);
    }

    /// A Service with every spec field set, as a tenant could write it.
    fn everything(type_: &str) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "annotations": {
                "metallb.universe.tf/loadBalancerIPs": "192.0.2.10",
                "metallb.io/allow-shared-ip": "bobs-key",
                "example.com/kept": "yes",
            }},
            "spec": {
                "type": type_,
                "allocateLoadBalancerNodePorts": false,
                "clusterIP": "10.96.1.1",
                "clusterIPs": ["10.96.1.1"],
                "externalIPs": ["203.0.113.9", "10.96.0.1"],
                "externalName": "api.bob.example.com",
                "externalTrafficPolicy": "Local",
                "healthCheckNodePort": 32000,
                "internalTrafficPolicy": "Local",
                "ipFamilies": ["IPv4"],
                "ipFamilyPolicy": "SingleStack",
                "loadBalancerClass": "example.com/internal",
                "loadBalancerIP": "192.0.2.10",
                "loadBalancerSourceRanges": ["198.51.100.0/24"],
                "ports": [{"port": 80, "nodePort": 30080, "targetPort": 8080, "protocol": "TCP"}],
                "publishNotReadyAddresses": true,
                "selector": {"app": "web"},
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                "trafficDistribution": "PreferClose",
            }
        }))
        .unwrap()
    }

    fn spec_keys(s: &Service) -> std::collections::BTreeSet<String> {
        serde_json::to_value(s.spec.as_ref().unwrap())
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    #[test]
    fn the_host_spec_is_an_allow_list_and_address_claims_are_reported() {
        let keys = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        let always = [
            "type",
            "ports",
            "selector",
            "sessionAffinity",
            "sessionAffinityConfig",
            "publishNotReadyAddresses",
            "ipFamilies",
            "ipFamilyPolicy",
            "internalTrafficPolicy",
            "trafficDistribution",
        ];
        let h = to_host(
            &everything("ClusterIP"),
            &tenant(),
            ServicePolicy::default(),
        )
        .unwrap();
        assert_eq!(spec_keys(&h.service), keys(&always));
        let dropped: Vec<&str> = h.dropped.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            dropped,
            [
                "spec.externalIPs",
                "spec.loadBalancerIP",
                "metadata.annotations[metallb.universe.tf/loadBalancerIPs]",
                "metadata.annotations[metallb.io/allow-shared-ip]",
            ]
        );
        assert!(h.dropped[0].1.contains("CVE-2020-8554"));
        let annotations = h.service.metadata.annotations.clone().unwrap();
        assert!(!annotations.keys().any(|k| k.starts_with("metallb")));
        // Other keys go on under the general metadata policy (renamed unless the admin allows).
        assert_eq!(
            annotations[&tenant().host_annotation_key("example.com/kept")],
            "yes"
        );

        // A load balancer keeps what shapes (and narrows) it, never an address of its choosing.
        let lb = ServicePolicy {
            allow_load_balancer: true,
            ..Default::default()
        };
        let h = to_host(&everything("LoadBalancer"), &tenant(), lb).unwrap();
        let mut with_lb: Vec<&str> = always.to_vec();
        with_lb.extend([
            "externalTrafficPolicy",
            "loadBalancerClass",
            "allocateLoadBalancerNodePorts",
            "loadBalancerSourceRanges",
        ]);
        assert_eq!(spec_keys(&h.service), keys(&with_lb));
        let spec = h.service.spec.unwrap();
        assert_eq!(
            spec.load_balancer_source_ranges,
            Some(vec!["198.51.100.0/24".to_string()])
        );
        assert_eq!(spec.ports.unwrap()[0].node_port, Some(30080));
        assert_eq!(spec.health_check_node_port, None);
        // Downgraded, it loses everything that belongs to exposure.
        let h = to_host(
            &everything("LoadBalancer"),
            &tenant(),
            ServicePolicy::default(),
        )
        .unwrap();
        assert_eq!(spec_keys(&h.service), keys(&always));
    }

    fn with_ip(mut s: Service, ip: &str) -> Service {
        let spec = s.spec.as_mut().unwrap();
        spec.cluster_ip = Some(ip.into());
        spec.cluster_ips = Some(vec![ip.into()]);
        s
    }

    #[test]
    fn a_new_host_copy_asks_for_the_virtual_ip_and_an_existing_one_keeps_its_own() {
        let v = with_ip(svc("ClusterIP"), "10.96.7.7");
        let mut desired = to_host(&v, &tenant(), ServicePolicy::default())
            .unwrap()
            .service;
        pin_cluster_ips(&mut desired, &v);
        let spec = desired.spec.clone().unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.7.7"));
        assert_eq!(spec.cluster_ips, Some(vec!["10.96.7.7".to_string()]));
        // Once pinned, it stays: a second pin from another source changes nothing.
        let other = with_ip(svc("ClusterIP"), "10.96.9.9");
        pin_cluster_ips(&mut desired, &other);
        assert_eq!(
            desired.spec.unwrap().cluster_ip.as_deref(),
            Some("10.96.7.7")
        );
        // Headless and ExternalName never get an IP.
        let mut headless = with_ip(svc("ClusterIP"), "None");
        headless.spec.as_mut().unwrap().cluster_ips = Some(vec!["None".into()]);
        let mut desired = to_host(&headless, &tenant(), ServicePolicy::default())
            .unwrap()
            .service;
        pin_cluster_ips(&mut desired, &v);
        assert_eq!(desired.spec.unwrap().cluster_ip.as_deref(), Some("None"));
        let mut desired = to_host(&external_name(), &tenant(), EXTERNAL_NAME_ALLOWED)
            .unwrap()
            .service;
        pin_cluster_ips(&mut desired, &v);
        assert_eq!(desired.spec.unwrap().cluster_ip, None);
    }

    #[test]
    fn host_ips_outside_the_virtual_range_cannot_be_shown() {
        let ranges: Vec<Cidr> = vec![
            "10.96.0.0/12".parse().unwrap(),
            "fd00::/108".parse().unwrap(),
        ];
        assert!(representable(
            &with_ip(svc("ClusterIP"), "10.96.0.44"),
            &ranges
        ));
        assert!(!representable(
            &with_ip(svc("ClusterIP"), "172.20.0.9"),
            &ranges
        ));
        let mut dual = with_ip(svc("ClusterIP"), "10.96.0.44");
        dual.spec.as_mut().unwrap().cluster_ips = Some(vec!["10.96.0.44".into(), "fd00::5".into()]);
        assert!(representable(&dual, &ranges));
        dual.spec.as_mut().unwrap().cluster_ips = Some(vec!["10.96.0.44".into(), "fd01::5".into()]);
        assert!(!representable(&dual, &ranges));
        // Nothing to show: nothing to refuse.
        assert!(representable(&with_ip(svc("ClusterIP"), "None"), &ranges));
    }

    #[test]
    fn the_virtual_service_is_recreated_with_the_host_ip_only_when_they_differ() {
        let mut v = with_ip(svc("ClusterIP"), "10.100.0.3");
        v.metadata.uid = Some("u-1".into());
        v.metadata.resource_version = Some("42".into());
        v.metadata.labels = Some(BTreeMap::from([("app".into(), "web".into())]));
        v.metadata.annotations = Some(BTreeMap::from([("note".into(), "keep".into())]));
        v.metadata.owner_references = Some(vec![Default::default()]);
        let host = with_ip(svc("ClusterIP"), "10.96.0.44");
        let again = with_host_cluster_ips(&v, &host).unwrap();
        let spec = again.spec.clone().unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.44"));
        assert_eq!(spec.cluster_ips, Some(vec!["10.96.0.44".to_string()]));
        assert_eq!(spec.ports, v.spec.as_ref().unwrap().ports);
        assert_eq!(spec.selector, v.spec.as_ref().unwrap().selector);
        assert_eq!(again.metadata.labels, v.metadata.labels);
        assert_eq!(again.metadata.annotations, v.metadata.annotations);
        assert_eq!(again.metadata.owner_references, v.metadata.owner_references);
        assert_eq!(again.metadata.uid, None);
        assert_eq!(again.metadata.resource_version, None);
        // Same IP: nothing to do; no host IP yet, headless, ExternalName: nothing either.
        assert_eq!(with_host_cluster_ips(&again, &host), None);
        let mut pending = svc("ClusterIP");
        pending.spec.as_mut().unwrap().cluster_ip = None;
        assert_eq!(with_host_cluster_ips(&v, &pending), None);
        let headless = with_ip(svc("ClusterIP"), "None");
        assert_eq!(with_host_cluster_ips(&headless, &host), None);
        let mut ext = with_ip(svc("ExternalName"), "10.100.0.3");
        ext.spec.as_mut().unwrap().external_name = Some("x.example.com".into());
        assert_eq!(with_host_cluster_ips(&ext, &host), None);
    }
}
