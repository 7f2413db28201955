//! Cluster DNS for the tenant's pods, served by vkube itself: `svc.ns.svc.cluster.local` answers
//! with the ClusterIP that really routes (the host Service's), headless services with their
//! endpoints, `a-b-c-d.ns.pod.cluster.local` with the address, and every other name is relayed
//! to the upstream resolver. Why inside vkube rather than a CoreDNS pod per tenant: no extra pod,
//! image or memory per virtual cluster, answers come from watches vkube keeps anyway, and the
//! host IPs are known here without a second translation.
//!
//! `resolve` is pure (names in, answer out); `server` is the UDP loop; `catalog` reads the
//! watched objects.

pub mod catalog;
pub mod server;

use std::net::IpAddr;

/// What the catalog knows about a virtual Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceRecord {
    /// Its ClusterIPs (the host's, which route).
    ClusterIps(Vec<IpAddr>),
    /// Headless: the ready endpoint addresses.
    Headless(Vec<IpAddr>),
    ExternalName(String),
}

/// Lookups `resolve` needs; implemented over watch stores, and by maps in tests.
pub trait Catalog: Send + Sync {
    fn service(&self, namespace: &str, name: &str) -> Option<ServiceRecord>;
    /// The address of endpoint `hostname` of headless service `service` (StatefulSet pods).
    fn endpoint_host(&self, namespace: &str, service: &str, hostname: &str) -> Option<IpAddr>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryType {
    A,
    Aaaa,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Addresses(Vec<IpAddr>),
    Alias(String),
    /// The name exists, with no record of the asked type.
    NoData,
    NxDomain,
    /// Not a cluster name: ask the upstream resolver.
    Forward,
}

/// Answers `name` (lower-case, without the trailing dot) within cluster domain `domain`.
pub fn resolve(name: &str, qtype: QueryType, domain: &str, catalog: &dyn Catalog) -> Answer {
    let Some(local) = name
        .strip_suffix(domain)
        .and_then(|rest| rest.strip_suffix('.'))
    else {
        return if name == domain {
            Answer::NoData
        } else {
            Answer::Forward
        };
    };
    let labels: Vec<&str> = local.split('.').collect();
    let addresses = |ips: Vec<IpAddr>| {
        let wanted: Vec<IpAddr> = ips
            .into_iter()
            .filter(|ip| match qtype {
                QueryType::A => ip.is_ipv4(),
                QueryType::Aaaa => ip.is_ipv6(),
                QueryType::Other => false,
            })
            .collect();
        if wanted.is_empty() {
            Answer::NoData
        } else {
            Answer::Addresses(wanted)
        }
    };
    match labels.as_slice() {
        [service, namespace, "svc"] => match catalog.service(namespace, service) {
            Some(ServiceRecord::ClusterIps(ips)) | Some(ServiceRecord::Headless(ips)) => {
                addresses(ips)
            }
            Some(ServiceRecord::ExternalName(target)) => Answer::Alias(target),
            None => Answer::NxDomain,
        },
        [host, service, namespace, "svc"] => {
            match catalog.endpoint_host(namespace, service, host) {
                Some(ip) => addresses(vec![ip]),
                None => Answer::NxDomain,
            }
        }
        [dashed, _namespace, "pod"] => match dashed.replace('-', ".").parse::<IpAddr>() {
            Ok(ip @ IpAddr::V4(_)) => addresses(vec![ip]),
            _ => Answer::NxDomain,
        },
        _ => Answer::NxDomain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct Map {
        services: BTreeMap<(String, String), ServiceRecord>,
        hosts: BTreeMap<(String, String, String), IpAddr>,
    }

    impl Catalog for Map {
        fn service(&self, namespace: &str, name: &str) -> Option<ServiceRecord> {
            self.services.get(&(namespace.into(), name.into())).cloned()
        }
        fn endpoint_host(&self, namespace: &str, service: &str, hostname: &str) -> Option<IpAddr> {
            self.hosts
                .get(&(namespace.into(), service.into(), hostname.into()))
                .copied()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn catalog() -> Map {
        let mut m = Map::default();
        m.services.insert(
            ("shop".into(), "web".into()),
            ServiceRecord::ClusterIps(vec![ip("10.96.3.4")]),
        );
        m.services.insert(
            ("shop".into(), "db".into()),
            ServiceRecord::Headless(vec![ip("10.85.0.7"), ip("10.85.0.8")]),
        );
        m.services.insert(
            ("shop".into(), "ext".into()),
            ServiceRecord::ExternalName("example.com".into()),
        );
        m.hosts
            .insert(("shop".into(), "db".into(), "db-0".into()), ip("10.85.0.7"));
        m
    }

    const D: &str = "cluster.local";

    #[test]
    fn services_answer_with_the_ip_that_routes() {
        let c = catalog();
        assert_eq!(
            resolve("web.shop.svc.cluster.local", QueryType::A, D, &c),
            Answer::Addresses(vec![ip("10.96.3.4")])
        );
        assert_eq!(
            resolve("db.shop.svc.cluster.local", QueryType::A, D, &c),
            Answer::Addresses(vec![ip("10.85.0.7"), ip("10.85.0.8")])
        );
        assert_eq!(
            resolve("db-0.db.shop.svc.cluster.local", QueryType::A, D, &c),
            Answer::Addresses(vec![ip("10.85.0.7")])
        );
        assert_eq!(
            resolve("ext.shop.svc.cluster.local", QueryType::A, D, &c),
            Answer::Alias("example.com".into())
        );
        assert_eq!(
            resolve("10-85-0-9.shop.pod.cluster.local", QueryType::A, D, &c),
            Answer::Addresses(vec![ip("10.85.0.9")])
        );
    }

    #[test]
    fn existing_names_without_that_record_type_are_nodata_not_nxdomain() {
        // Resolvers ask A and AAAA together; NXDOMAIN for AAAA would fail the whole lookup.
        let c = catalog();
        assert_eq!(
            resolve("web.shop.svc.cluster.local", QueryType::Aaaa, D, &c),
            Answer::NoData
        );
        assert_eq!(
            resolve("web.shop.svc.cluster.local", QueryType::Other, D, &c),
            Answer::NoData
        );
    }

    #[test]
    fn unknown_cluster_names_are_nxdomain_and_the_rest_is_forwarded() {
        let c = catalog();
        for name in [
            "nope.shop.svc.cluster.local",
            "web.other.svc.cluster.local",
            "web.shop.cluster.local",
            "x.db-1.db.shop.svc.cluster.local",
            "db-1.db.shop.svc.cluster.local",
            "not-an-ip.shop.pod.cluster.local",
            // A search-path expansion of an outside name.
            "example.com.shop.svc.cluster.local",
        ] {
            assert_eq!(
                resolve(name, QueryType::A, D, &c),
                Answer::NxDomain,
                "{name}"
            );
        }
        for name in ["example.com", "cluster.local.example.com", "local"] {
            assert_eq!(
                resolve(name, QueryType::A, D, &c),
                Answer::Forward,
                "{name}"
            );
        }
    }
}
