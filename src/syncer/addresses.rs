//! The tenant's own addresses on the host, read from the syncer's caches for the API server's
//! egress guard (`crate::egress`): the IPs of its host pods and the cluster IPs (with ports) of
//! its host Services. The caches are the watches the syncer keeps anyway, so the answer is as
//! current as the host's own view and costs no request.

use std::net::IpAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Service;
use kube::Resource;
use tokio::sync::watch;

use super::Stores;
use super::host_pod::HostPod;
use crate::egress::{Owner, TenantAddresses, normalize};

/// The syncer's stores, published once they hold a complete list (before that, an address that
/// is the tenant's might look foreign).
#[derive(Clone)]
pub struct SharedStores(Arc<watch::Sender<Option<Stores>>>);

impl Default for SharedStores {
    fn default() -> Self {
        SharedStores(Arc::new(watch::Sender::new(None)))
    }
}

impl std::fmt::Debug for SharedStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.borrow().is_some() {
            "SharedStores(ready)"
        } else {
            "SharedStores(not ready)"
        })
    }
}

impl SharedStores {
    pub(crate) fn publish(&self, stores: Stores) {
        self.0.send_replace(Some(stores));
    }

    /// Whether every watch of the syncer has delivered its initial list.
    pub fn is_published(&self) -> bool {
        self.0.borrow().is_some()
    }

    /// The stores, once complete (the metrics API reads pods and nodes from them).
    pub fn current(&self) -> Option<Stores> {
        self.0.borrow().clone()
    }
}

impl TenantAddresses for SharedStores {
    fn ready(&self) -> BoxFuture<'_, bool> {
        let mut rx = self.0.subscribe();
        Box::pin(async move { rx.wait_for(|s| s.is_some()).await.is_ok() })
    }

    fn owner(&self, ip: IpAddr, port: u16) -> Option<Owner> {
        let stores = self.0.borrow();
        let stores = stores.as_ref()?;
        owner_in(
            &stores.host_pods.state(),
            &stores.host_services.state(),
            ip,
            port,
        )
    }
}

fn same_ip(text: &str, ip: IpAddr) -> bool {
    text.parse::<IpAddr>().is_ok_and(|i| normalize(i) == ip)
}

/// Whose address `ip` is among the tenant's host pods and Services. A pod counts while it can
/// hold its IP (not Succeeded or Failed: the address goes back to the pool, and another
/// tenant's pod may get it) and only with an address of its own (a host-network pod's IP is its
/// node's). A Service counts with the ports it declares: traffic to other ports of a cluster IP
/// is not the Service's (with IPVS the node itself answers there).
pub fn owner_in(
    pods: &[Arc<HostPod>],
    services: &[Arc<Service>],
    ip: IpAddr,
    port: u16,
) -> Option<Owner> {
    let ip = normalize(ip);
    let pod = pods.iter().find(|p| {
        if !p.pod_ips().iter().any(|i| same_ip(i, ip)) {
            return false;
        }
        let status = p.status();
        let terminal = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
        let host_network = status
            .host_ips
            .iter()
            .flatten()
            .map(|h| h.ip.as_str())
            .chain(status.host_ip.as_deref())
            .any(|h| same_ip(h, ip));
        !terminal && !host_network
    });
    if let Some(p) = pod {
        let o = crate::translate::origin(p.meta())?;
        return Some(Owner::Pod {
            namespace: o.namespace,
            name: o.name,
        });
    }
    let service = services.iter().find(|s| {
        let Some(spec) = s.spec.as_ref() else {
            return false;
        };
        let has_ip = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.as_ref())
            .any(|c| same_ip(c, ip));
        let has_port = spec
            .ports
            .iter()
            .flatten()
            .any(|p| u16::try_from(p.port).is_ok_and(|p| p == port));
        has_ip && has_port
    })?;
    let o = crate::translate::origin(service.meta())?;
    Some(Owner::Service {
        namespace: o.namespace,
        name: o.name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str) -> serde_json::Value {
        serde_json::json!({
            "name": format!("{name}-x-default-x-vc"),
            "namespace": "vkube-vc",
            "labels": {
                (crate::translate::MANAGED_BY): "vc",
                (crate::translate::VIRTUAL_NAMESPACE): "default",
            },
            "annotations": {(crate::translate::VIRTUAL_NAME): name},
        })
    }

    fn pod(name: &str, status: serde_json::Value) -> Arc<HostPod> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": meta(name),
                "spec": {"nodeName": "n1"},
                "status": status,
            }))
            .unwrap(),
        )
    }

    fn service(name: &str, ips: &[&str], ports: &[i32]) -> Arc<Service> {
        let ports: Vec<_> = ports
            .iter()
            .map(|p| serde_json::json!({"port": p}))
            .collect();
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": meta(name),
                "spec": {"clusterIP": ips.first(), "clusterIPs": ips, "ports": ports},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn pods_and_services_of_the_tenant_own_their_addresses() {
        let pods = vec![
            pod(
                "web",
                serde_json::json!({"phase": "Running", "podIP": "10.244.0.5", "podIPs": [{"ip": "10.244.0.5"}, {"ip": "fd00::5"}], "hostIP": "10.86.0.1"}),
            ),
            pod(
                "done",
                serde_json::json!({"phase": "Succeeded", "podIP": "10.244.0.6", "podIPs": [{"ip": "10.244.0.6"}]}),
            ),
            pod(
                "hostnet",
                serde_json::json!({"phase": "Running", "podIP": "10.86.0.1", "podIPs": [{"ip": "10.86.0.1"}], "hostIP": "10.86.0.1", "hostIPs": [{"ip": "10.86.0.1"}]}),
            ),
            pod("pending", serde_json::json!({"phase": "Pending"})),
        ];
        let services = vec![
            service("api", &["10.96.7.7"], &[443, 8443]),
            service("headless", &["None"], &[80]),
        ];
        let owner = |ip: &str, port| owner_in(&pods, &services, ip.parse().unwrap(), port);
        let web = Some(Owner::Pod {
            namespace: "default".into(),
            name: "web".into(),
        });
        assert_eq!(owner("10.244.0.5", 8080), web);
        assert_eq!(owner("fd00::5", 1), web);
        assert_eq!(owner("::ffff:10.244.0.5", 1), web);
        // The finished pod's address may be another tenant's by now; the host-network pod's is
        // its node's.
        assert_eq!(owner("10.244.0.6", 8080), None);
        assert_eq!(owner("10.86.0.1", 10250), None);
        let api = Some(Owner::Service {
            namespace: "default".into(),
            name: "api".into(),
        });
        assert_eq!(owner("10.96.7.7", 443), api);
        assert_eq!(owner("10.96.7.7", 8443), api);
        assert_eq!(
            owner("10.96.7.7", 22),
            None,
            "a port the Service does not declare"
        );
        assert_eq!(owner("10.96.0.1", 443), None);
    }
}
