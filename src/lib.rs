//! vkube: virtual Kubernetes clusters. Each tenant gets a real control plane (etcd,
//! kube-apiserver, kube-controller-manager) supervised by `vkube serve` in one host namespace,
//! behind a TLS proxy that authenticates callers and hands their identity to the virtual API.

pub mod api;
pub mod bench;
pub mod controlplane;
pub mod credentials;
pub mod dns;
pub mod egress;
pub mod host;
pub mod kubeconfig;
pub mod manager;
pub mod metrics;
pub mod metrics_api;
pub mod names;
pub mod pki;
pub mod private_file;
pub mod proxy;
pub mod serve;
pub mod syncer;
pub mod tls;
pub mod translate;
