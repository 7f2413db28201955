//! EndpointSlices a tenant writes by hand for a selector-less Service (the successor of
//! hand-written Endpoints, which Kubernetes 1.33 deprecated). The host copy is labelled for the
//! host copy of the Service, so the host's kube-proxy reads it, and as managed by vkube, so the
//! host's EndpointSlice controllers (which only touch slices labelled as theirs) leave it alone.
//! Slices the virtual controllers made (mirrored from hand-written Endpoints, or computed for a
//! selector) are not copied: the Endpoints path and the host's own controllers cover them.
//! Addresses pass the same checks as Endpoints (`translate::endpoints`).

use std::collections::HashSet;

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

use super::Tenant;
use super::endpoints::{EndpointPolicy, Refusal, check_address};

/// Label naming the Service a slice belongs to.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Label naming the controller that manages a slice.
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Our value of [`MANAGED_BY`] on host slices.
pub const MANAGED_BY_VKUBE: &str = "vkube.dev";

/// Controllers of the virtual cluster whose slices are derived, never hand-written.
const KUBERNETES_CONTROLLERS: &[&str] = &[
    "endpointslice-controller.k8s.io",
    "endpointslicemirroring-controller.k8s.io",
];

/// Label selector for slices not made by [`KUBERNETES_CONTROLLERS`] (keep the two in step).
pub const NOT_DERIVED: &str = "endpointslice.kubernetes.io/managed-by notin (endpointslice-controller.k8s.io,endpointslicemirroring-controller.k8s.io)";

/// The virtual Service a hand-written slice belongs to; `None` for slices the virtual
/// controllers made and for slices that name no Service.
pub fn handwritten_for(v: &EndpointSlice) -> Option<&str> {
    let labels = v.metadata.labels.as_ref()?;
    if labels
        .get(MANAGED_BY)
        .is_some_and(|m| KUBERNETES_CONTROLLERS.contains(&m.as_str()))
    {
        return None;
    }
    labels.get(SERVICE_NAME).map(String::as_str)
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostSlice {
    pub slice: EndpointSlice,
    pub refused: Vec<(String, Refusal)>,
    /// See `endpoints::HostEndpoints::uses_pod_ips`.
    pub uses_pod_ips: bool,
}

/// The host copy of a hand-written slice of Service `service`. FQDN slices (deprecated, no
/// semantics, ignored by kube-proxy) carry nothing the host could check, so all their addresses
/// are refused.
pub fn to_host(
    v: &EndpointSlice,
    service: &str,
    tenant: &Tenant,
    policy: &EndpointPolicy,
    own_pod_ips: &HashSet<String>,
) -> HostSlice {
    let ns = v.metadata.namespace.clone().unwrap_or_default();
    let name = v.metadata.name.clone().unwrap_or_default();
    let mut meta = tenant.host_meta(&v.metadata, tenant.subdomain_name(&ns, &name));
    if let Some(labels) = meta.labels.as_mut() {
        labels.insert(SERVICE_NAME.into(), tenant.label_name(&ns, service));
        labels.insert(MANAGED_BY.into(), MANAGED_BY_VKUBE.into());
    }
    let ip_slice = matches!(v.address_type.as_str(), "IPv4" | "IPv6");
    let own_pod = |ip: &str| own_pod_ips.contains(ip);
    let mut refused = Vec::new();
    let mut uses_pod_ips = false;
    let endpoints = v
        .endpoints
        .iter()
        .filter_map(|e| {
            let mut addresses = Vec::new();
            for a in &e.addresses {
                let verdict = if ip_slice {
                    check_address(a, policy, &own_pod)
                } else {
                    Err(Refusal::NotAnIp)
                };
                match verdict {
                    Ok(()) => {
                        uses_pod_ips |= own_pod(a);
                        addresses.push(a.clone());
                    }
                    Err(r) => refused.push((a.clone(), r)),
                }
            }
            // nodeName, targetRef and hints name virtual objects or steer the host's routing.
            (!addresses.is_empty()).then(|| Endpoint {
                addresses,
                conditions: e.conditions.clone(),
                hostname: e.hostname.clone(),
                zone: e.zone.clone(),
                ..Default::default()
            })
        })
        .collect();
    HostSlice {
        slice: EndpointSlice {
            metadata: meta,
            address_type: v.address_type.clone(),
            endpoints,
            ports: v.ports.clone(),
        },
        refused,
        uses_pod_ips,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointPort};
    use kube::api::ObjectMeta;
    use std::collections::BTreeMap;

    use crate::translate::test_support::tenant;

    fn slice(managed_by: Option<&str>, address_type: &str, ips: &[&str]) -> EndpointSlice {
        let mut labels = BTreeMap::from([(SERVICE_NAME.to_string(), "db".to_string())]);
        if let Some(m) = managed_by {
            labels.insert(MANAGED_BY.into(), m.into());
        }
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some("db-1".into()),
                namespace: Some("shop".into()),
                uid: Some("u-1".into()),
                labels: Some(labels),
                ..Default::default()
            },
            address_type: address_type.into(),
            endpoints: ips
                .iter()
                .map(|ip| Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        ..Default::default()
                    }),
                    node_name: Some("virtual-node".into()),
                    target_ref: Some(ObjectReference::default()),
                    ..Default::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                name: Some("pg".into()),
                port: Some(5432),
                ..Default::default()
            }]),
        }
    }

    #[test]
    fn the_watch_selector_names_the_same_controllers() {
        for c in KUBERNETES_CONTROLLERS {
            assert!(NOT_DERIVED.contains(c), "{c}");
        }
        assert!(NOT_DERIVED.starts_with(MANAGED_BY));
    }

    #[test]
    fn only_handwritten_slices_are_synced() {
        assert_eq!(handwritten_for(&slice(None, "IPv4", &[])), Some("db"));
        assert_eq!(
            handwritten_for(&slice(Some("my-operator"), "IPv4", &[])),
            Some("db")
        );
        for derived in KUBERNETES_CONTROLLERS {
            assert_eq!(handwritten_for(&slice(Some(derived), "IPv4", &[])), None);
        }
        let mut orphan = slice(None, "IPv4", &[]);
        orphan.metadata.labels = None;
        assert_eq!(handwritten_for(&orphan), None);
    }

    #[test]
    fn host_copy_belongs_to_the_host_service_and_keeps_only_allowed_addresses() {
        let pods = HashSet::from(["10.244.0.9".to_string()]);
        let v = slice(
            Some("my-operator"),
            "IPv4",
            &["192.0.2.20", "10.96.0.1", "10.244.0.9"],
        );
        let h = to_host(&v, "db", &tenant(), &EndpointPolicy::default(), &pods);
        let meta = &h.slice.metadata;
        assert_eq!(meta.name.as_deref(), Some("db-1-x-shop-x-alice"));
        let labels = meta.labels.clone().unwrap();
        assert_eq!(labels[SERVICE_NAME], "db-x-shop-x-alice");
        assert_eq!(labels[MANAGED_BY], MANAGED_BY_VKUBE);
        assert!(tenant().owns(meta));
        let kept: Vec<&str> = h
            .slice
            .endpoints
            .iter()
            .flat_map(|e| e.addresses.iter().map(String::as_str))
            .collect();
        assert_eq!(kept, ["192.0.2.20", "10.244.0.9"]);
        let e = &h.slice.endpoints[0];
        assert_eq!((e.node_name.clone(), e.target_ref.clone()), (None, None));
        assert_eq!(e.conditions.as_ref().unwrap().ready, Some(true));
        assert_eq!(h.slice.ports, v.ports);
        assert_eq!(h.refused, vec![("10.96.0.1".to_string(), Refusal::Private)]);
        assert!(h.uses_pod_ips);
    }

    #[test]
    fn fqdn_slices_carry_nothing_to_the_host() {
        let v = slice(None, "FQDN", &["db.example.com"]);
        let h = to_host(
            &v,
            "db",
            &tenant(),
            &EndpointPolicy::default(),
            &HashSet::new(),
        );
        assert!(h.slice.endpoints.is_empty());
        assert_eq!(
            h.refused,
            vec![("db.example.com".to_string(), Refusal::NotAnIp)]
        );
    }
}
