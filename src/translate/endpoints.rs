//! Endpoints of Services without a selector: the tenant writes them by hand, so the host copy is
//! the only way the host's kube-proxy learns where such a Service leads. The host gets plain
//! `v1` Endpoints under the translated Service name; its endpointslice-mirroring controller
//! turns them into the EndpointSlices kube-proxy reads (so the slices stay the host's own, with
//! the host's labels and limits). Services with a selector are left to the host's endpoints
//! controller, which computes them from the host pods.
//!
//! Addresses are checked before they reach the host. Endpoints are a known confused-deputy
//! vector (CVE-2021-25740): a host ingress controller or load balancer that trusts a Service
//! forwards to whatever its endpoints say, past other tenants' NetworkPolicies. So a tenant may
//! point endpoints at addresses outside the cluster networks and at its own pods, never at
//! special addresses (loopback, link-local, multicast, unspecified: also refused by the host
//! apiserver, but with an error the tenant never sees) nor, by default, at private ranges, where
//! pods, services, nodes and the host's API server live. The admin can allow private ranges
//! outside the cluster (a database subnet) by policy.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use k8s_openapi::api::core::v1::{EndpointAddress, EndpointSubset, Endpoints, Service};

use super::Tenant;

/// Label that stops the endpointslice-mirroring controller; the host must mirror our copy.
const SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";

/// Label selector for Endpoints not maintained by the endpoints controller, which labels what
/// it writes as its own (and, before Kubernetes 1.33, as skip-mirror).
pub const NOT_DERIVED: &str = "endpoints.kubernetes.io/managed-by!=endpoint-controller,endpointslice.kubernetes.io/skip-mirror!=true";

/// Private and shared address ranges: where cluster networks live.
pub const PRIVATE_RANGES: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
];

/// An IP network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a CIDR such as 10.20.0.0/16 or fd00::/8")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrError(s.to_string());
        let (addr, prefix) = s.split_once('/').ok_or_else(err)?;
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let prefix: u8 = prefix.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(err());
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    /// The address as written (not necessarily the network address).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        let (net, ip, bits) = match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => (u32::from(n) as u128, u32::from(*i) as u128, 32),
            (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(*i), 128),
            _ => return false,
        };
        let host_bits = bits - u32::from(self.prefix);
        if host_bits >= bits {
            return true;
        }
        (net >> host_bits) == (ip >> host_bits)
    }
}

/// What the admin lets tenants point endpoints at, beyond public addresses and their own pods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    /// Private ranges that are outside the cluster networks and may be targeted.
    pub allowed: Vec<Cidr>,
}

/// Why an address was not copied to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotAnIp,
    Special,
    Private,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::NotAnIp => "not an IP address",
            Refusal::Special => "a loopback, link-local, multicast or unspecified address",
            Refusal::Private => {
                "in a private range (cluster networks live there) and not one of this cluster's pods"
            }
        })
    }
}

fn is_special(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_unspecified()
                || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_multicast()
                || v6.is_unspecified()
                || v6.is_unicast_link_local()
        }
    }
}

/// Whether the tenant may point an endpoint at `ip`. `own_pod` says whether an address is the
/// IP of one of this tenant's host pods.
pub fn check_address(
    ip: &str,
    policy: &EndpointPolicy,
    own_pod: &dyn Fn(&str) -> bool,
) -> Result<(), Refusal> {
    let parsed: IpAddr = ip.parse().map_err(|_| Refusal::NotAnIp)?;
    // An IPv4-mapped IPv6 address is judged as the IPv4 address it carries.
    let parsed = match parsed {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(parsed, IpAddr::V4),
        v4 => v4,
    };
    if is_special(&parsed) {
        return Err(Refusal::Special);
    }
    let private = PRIVATE_RANGES
        .iter()
        .filter_map(|r| r.parse::<Cidr>().ok())
        .any(|c| c.contains(&parsed));
    if private && !own_pod(ip) && !policy.allowed.iter().any(|c| c.contains(&parsed)) {
        return Err(Refusal::Private);
    }
    Ok(())
}

/// Whether the virtual Service's endpoints are the tenant's to write (and so are synced down).
pub fn synced_for(svc: &Service) -> bool {
    let Some(spec) = &svc.spec else {
        return false;
    };
    spec.type_.as_deref() != Some("ExternalName")
        && spec.selector.as_ref().is_none_or(|s| s.is_empty())
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostEndpoints {
    pub endpoints: Endpoints,
    /// Addresses left out, with the reason.
    pub refused: Vec<(String, Refusal)>,
    /// Whether an address was let through only because one of the tenant's pods has it: pod IPs
    /// are reused, so the caller checks again later.
    pub uses_pod_ips: bool,
}

/// The host copy of hand-written endpoints, under the host name of their Service.
pub fn to_host(
    v: &Endpoints,
    tenant: &Tenant,
    policy: &EndpointPolicy,
    own_pod_ips: &HashSet<String>,
) -> HostEndpoints {
    let ns = v.metadata.namespace.clone().unwrap_or_default();
    let name = v.metadata.name.clone().unwrap_or_default();
    let mut meta = tenant.host_meta(&v.metadata, tenant.label_name(&ns, &name));
    if let Some(labels) = meta.labels.as_mut() {
        labels.remove(SKIP_MIRROR);
    }
    let own_pod = |ip: &str| own_pod_ips.contains(ip);
    let mut refused = Vec::new();
    let mut uses_pod_ips = false;
    let mut keep = |addrs: Option<Vec<EndpointAddress>>| -> Option<Vec<EndpointAddress>> {
        let kept: Vec<EndpointAddress> = addrs
            .unwrap_or_default()
            .into_iter()
            .filter_map(|a| match check_address(&a.ip, policy, &own_pod) {
                Ok(()) => {
                    uses_pod_ips |= own_pod(&a.ip);
                    // targetRef and nodeName name virtual objects; the host has its own.
                    Some(EndpointAddress {
                        ip: a.ip,
                        hostname: a.hostname,
                        node_name: None,
                        target_ref: None,
                    })
                }
                Err(r) => {
                    refused.push((a.ip, r));
                    None
                }
            })
            .collect();
        (!kept.is_empty()).then_some(kept)
    };
    let subsets: Vec<EndpointSubset> = v
        .subsets
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|s| {
            let addresses = keep(s.addresses);
            let not_ready_addresses = keep(s.not_ready_addresses);
            (addresses.is_some() || not_ready_addresses.is_some()).then_some(EndpointSubset {
                addresses,
                not_ready_addresses,
                ports: s.ports,
            })
        })
        .collect();
    HostEndpoints {
        endpoints: Endpoints {
            metadata: meta,
            subsets: (!subsets.is_empty()).then_some(subsets),
        },
        refused,
        uses_pod_ips,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EndpointPort, ObjectReference, ServiceSpec};
    use kube::api::ObjectMeta;
    use std::collections::BTreeMap;

    use crate::translate::test_support::tenant;

    fn addr(ip: &str) -> EndpointAddress {
        EndpointAddress {
            ip: ip.into(),
            node_name: Some("virtual-node".into()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: Some("db-0".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn endpoints(ips: &[&str]) -> Endpoints {
        Endpoints {
            metadata: ObjectMeta {
                name: Some("db".into()),
                namespace: Some("shop".into()),
                uid: Some("u-1".into()),
                labels: Some(BTreeMap::from([
                    ("app".into(), "db".into()),
                    (SKIP_MIRROR.into(), "true".into()),
                ])),
                ..Default::default()
            },
            subsets: Some(vec![EndpointSubset {
                addresses: Some(ips.iter().map(|ip| addr(ip)).collect()),
                not_ready_addresses: None,
                ports: Some(vec![EndpointPort {
                    port: 5432,
                    name: Some("pg".into()),
                    ..Default::default()
                }]),
            }]),
        }
    }

    #[test]
    fn cidrs_parse_and_contain() {
        let c: Cidr = "10.96.0.0/16".parse().unwrap();
        assert!(c.contains(&"10.96.255.1".parse().unwrap()));
        assert!(!c.contains(&"10.97.0.1".parse().unwrap()));
        assert!(!c.contains(&"fd00::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(&"8.8.8.8".parse().unwrap()));
        let one: Cidr = "192.0.2.7/32".parse().unwrap();
        assert!(one.contains(&"192.0.2.7".parse().unwrap()));
        assert!(!one.contains(&"192.0.2.8".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(&"fd12::1".parse().unwrap()));
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/8", "::/129", "10.0.0.0/-1"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!(c.to_string(), "10.96.0.0/16");
    }

    #[test]
    fn special_and_private_addresses_are_refused_unless_allowed() {
        let none = EndpointPolicy::default();
        let no_pods = |_: &str| false;
        assert_eq!(check_address("192.0.2.10", &none, &no_pods), Ok(()));
        assert_eq!(check_address("2001:db8::1", &none, &no_pods), Ok(()));
        for special in [
            "127.0.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert_eq!(
                check_address(special, &none, &no_pods),
                Err(Refusal::Special),
                "{special}"
            );
        }
        for private in [
            "10.96.0.1",
            "172.16.0.5",
            "192.168.1.1",
            "100.64.0.1",
            "fd00::5",
        ] {
            assert_eq!(
                check_address(private, &none, &no_pods),
                Err(Refusal::Private),
                "{private}"
            );
        }
        assert_eq!(
            check_address("::ffff:10.0.0.1", &none, &no_pods),
            Err(Refusal::Private)
        );
        assert_eq!(check_address("::ffff:192.0.2.1", &none, &no_pods), Ok(()));
        assert_eq!(
            check_address("db.example.com", &none, &no_pods),
            Err(Refusal::NotAnIp)
        );
        // The tenant's own pods and admin-allowed ranges are fine.
        assert_eq!(
            check_address("10.244.1.5", &none, &|ip: &str| ip == "10.244.1.5"),
            Ok(())
        );
        let allowed = EndpointPolicy {
            allowed: vec!["172.20.0.0/16".parse().unwrap()],
        };
        assert_eq!(check_address("172.20.3.4", &allowed, &no_pods), Ok(()));
        assert_eq!(
            check_address("172.21.3.4", &allowed, &no_pods),
            Err(Refusal::Private)
        );
        // Even an allowed range never lets loopback through.
        let everything = EndpointPolicy {
            allowed: vec!["0.0.0.0/0".parse().unwrap()],
        };
        assert_eq!(
            check_address("127.0.0.1", &everything, &no_pods),
            Err(Refusal::Special)
        );
    }

    #[test]
    fn host_copy_has_the_service_name_and_only_allowed_addresses() {
        let pods = HashSet::from(["10.244.0.9".to_string()]);
        let v = endpoints(&["192.0.2.10", "10.96.0.1", "10.244.0.9", "127.0.0.1"]);
        let h = to_host(&v, &tenant(), &EndpointPolicy::default(), &pods);
        assert_eq!(
            h.endpoints.metadata.name.as_deref(),
            Some("db-x-shop-x-alice")
        );
        let labels = h.endpoints.metadata.labels.clone().unwrap();
        assert_eq!(labels["app"], "db");
        assert!(!labels.contains_key(SKIP_MIRROR));
        assert!(tenant().owns(&h.endpoints.metadata));
        let subsets = h.endpoints.subsets.clone().unwrap();
        let ips: Vec<&str> = subsets[0]
            .addresses
            .iter()
            .flatten()
            .map(|a| a.ip.as_str())
            .collect();
        assert_eq!(ips, ["192.0.2.10", "10.244.0.9"]);
        let first = &subsets[0].addresses.as_ref().unwrap()[0];
        assert_eq!(
            (first.node_name.clone(), first.target_ref.clone()),
            (None, None)
        );
        assert_eq!(subsets[0].ports.as_ref().unwrap()[0].port, 5432);
        assert_eq!(
            h.refused,
            vec![
                ("10.96.0.1".to_string(), Refusal::Private),
                ("127.0.0.1".to_string(), Refusal::Special)
            ]
        );
        assert!(h.uses_pod_ips);
    }

    #[test]
    fn a_subset_left_without_addresses_is_dropped() {
        let v = endpoints(&["10.0.0.1"]);
        let h = to_host(&v, &tenant(), &EndpointPolicy::default(), &HashSet::new());
        assert_eq!(h.endpoints.subsets, None);
        assert!(!h.uses_pod_ips);
    }

    #[test]
    fn only_selectorless_non_external_services_are_synced() {
        let svc = |selector: Option<BTreeMap<String, String>>, type_: &str| Service {
            spec: Some(ServiceSpec {
                selector,
                type_: Some(type_.into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(synced_for(&svc(None, "ClusterIP")));
        assert!(synced_for(&svc(Some(BTreeMap::new()), "ClusterIP")));
        assert!(!synced_for(&svc(
            Some(BTreeMap::from([("app".into(), "x".into())])),
            "ClusterIP"
        )));
        assert!(!synced_for(&svc(None, "ExternalName")));
        assert!(!synced_for(&Service::default()));
    }
}
