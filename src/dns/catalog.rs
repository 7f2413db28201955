//! The DNS catalog over watches: virtual Services and Endpoints (what exists, headless
//! addresses, hostnames) and the tenant's host Services (the ClusterIPs that route).

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use super::{Catalog, ServiceRecord};
use crate::syncer::{Driver, watched_store};
use crate::translate::{MANAGED_BY, Tenant};

/// At most this many addresses in one answer: it must fit a 512-byte UDP response.
const MAX_ADDRESSES: usize = 24;

pub struct StoreCatalog {
    /// `kubernetes.default.svc`: the API Service in front of vkube's proxy.
    api: Option<IpAddr>,
    virt_services: Store<Service>,
    virt_endpoints: Store<Endpoints>,
    host_services: Store<Service>,
    tenant: Tenant,
}

impl StoreCatalog {
    /// The catalog and the futures that keep its watches running.
    pub fn new(
        virt: kube::Client,
        host: kube::Client,
        tenant: Tenant,
        api: Option<IpAddr>,
    ) -> (Self, Vec<Driver>) {
        let (virt_services, _, a) =
            watched_store(Api::all(virt.clone()), watcher::Config::default(), vec![]);
        let (virt_endpoints, _, b) =
            watched_store(Api::all(virt), watcher::Config::default(), vec![]);
        let selector = format!("{MANAGED_BY}={}", tenant.name);
        let (host_services, _, c) = watched_store(
            Api::namespaced(host, &tenant.host_namespace),
            watcher::Config::default().labels(&selector),
            vec![],
        );
        let catalog = StoreCatalog {
            api,
            virt_services,
            virt_endpoints,
            host_services,
            tenant,
        };
        (catalog, vec![a, b, c])
    }

    fn endpoints(&self, namespace: &str, name: &str) -> Vec<(IpAddr, Option<String>)> {
        let Some(ep) = self
            .virt_endpoints
            .get(&ObjectRef::new(name).within(namespace))
        else {
            return vec![];
        };
        ep.subsets
            .iter()
            .flatten()
            .flat_map(|s| s.addresses.iter().flatten())
            .filter_map(|a| Some((a.ip.parse().ok()?, a.hostname.clone())))
            .collect()
    }
}

fn parse_ips(ips: Option<&Vec<String>>, single: Option<&String>) -> Vec<IpAddr> {
    match ips {
        Some(ips) if !ips.is_empty() => ips.iter().filter_map(|s| s.parse().ok()).collect(),
        _ => single.and_then(|s| s.parse().ok()).into_iter().collect(),
    }
}

impl Catalog for StoreCatalog {
    fn service(&self, namespace: &str, name: &str) -> Option<ServiceRecord> {
        if (namespace, name) == ("default", "kubernetes") {
            return self.api.map(|ip| ServiceRecord::ClusterIps(vec![ip]));
        }
        let vsvc = self
            .virt_services
            .get(&ObjectRef::new(name).within(namespace))?;
        let spec = vsvc.spec.as_ref()?;
        if spec.type_.as_deref() == Some("ExternalName") {
            return spec.external_name.clone().map(ServiceRecord::ExternalName);
        }
        if spec.cluster_ip.as_deref() == Some("None") {
            let mut ips: Vec<IpAddr> = self
                .endpoints(namespace, name)
                .into_iter()
                .map(|(ip, _)| ip)
                .collect();
            ips.truncate(MAX_ADDRESSES);
            return Some(ServiceRecord::Headless(ips));
        }
        // The host copy's IP routes; a virtual Service not synced yet has no usable address.
        let host_name = self.tenant.label_name(namespace, name);
        let hsvc = self
            .host_services
            .get(&ObjectRef::new(&host_name).within(&self.tenant.host_namespace))?;
        let hspec = hsvc.spec.as_ref()?;
        let ips = parse_ips(hspec.cluster_ips.as_ref(), hspec.cluster_ip.as_ref());
        (!ips.is_empty()).then_some(ServiceRecord::ClusterIps(ips))
    }

    fn endpoint_host(&self, namespace: &str, service: &str, hostname: &str) -> Option<IpAddr> {
        self.endpoints(namespace, service)
            .into_iter()
            .find(|(_, h)| h.as_deref() == Some(hostname))
            .map(|(ip, _)| ip)
    }
}
