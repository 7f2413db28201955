//! End-to-end tests of vkube against real Kubernetes components (built by hack/). They need a
//! host cluster: run them with `hack/test.sh`, which starts one and sets
//! VKUBE_E2E_HOST_KUBECONFIG and VKUBE_BIN_DIR.

mod attack_classic;
mod attack_custom;
mod attack_egress;
mod attack_ingress;
mod attack_manager;
mod attack_network;
mod attack_pods;
mod cluster_read;
mod common;
mod custom_resources;
mod host_skew;
mod networking;
mod observability;
mod platform;
mod pod_streams;
mod real_node;
mod serve;
mod syncer;
mod tenant_metrics;
mod top;
mod upgrade;
mod versions;
