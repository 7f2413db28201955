# Pinned versions of every real component the harness runs. Sourced by the other hack/ scripts.
# v1.35: the last release whose kubelet still runs on cgroup v1 and supports containerd 1.x.
K8S_VERSION="${K8S_VERSION:-v1.35.4}"
# The virtual control plane in every minor vkube supports (src/controlplane/version.rs SUPPORTED):
# hack/test.sh builds kube-apiserver and kube-controller-manager of each (cached per version,
# ~4 min per extra minor on a cold 2-core machine) for the e2e matrix `versions::`. The main host
# cluster runs K8S_VERSION.
VIRTUAL_K8S_VERSIONS="${VIRTUAL_K8S_VERSIONS:-v1.34.4 v1.35.4 v1.36.3}"
# Hosts one minor newer and one older than K8S_VERSION (and than vkube's k8s-openapi types):
# hack/test.sh runs a subset of the e2e tests against a host cluster of each, one after the other
# (hack/host-cluster.sh up --kubernetes-version; control plane binaries built like the virtual
# ones above, plus kube-scheduler).
HOST_SKEW_VERSIONS="${HOST_SKEW_VERSIONS:-v1.36.3 v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.8}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
# Real node only (hack/build-components.sh --real-node). CoreDNS v1.14.7: its go.mod needs Go 1.25
# (v1.15 needs 1.26) and uses client-go v0.35.4, the same as K8S_VERSION.
COREDNS_VERSION="${COREDNS_VERSION:-v1.14.7}"
# crictl: Debian has no cri-tools package; hack/real-node.sh uses it to stop pod sandboxes through
# CRI on `down` (so CNI DEL runs and nothing of the pods' network stays behind).
CRICTL_VERSION="${CRICTL_VERSION:-v1.34.0}"
# Helm, for the chart (charts/vkube): lint, template and the e2e install. Built from its Go module.
HELM_VERSION="${HELM_VERSION:-v3.20.2}"
# kube-router, run by hack/real-node.sh with only its NetworkPolicy firewall (iptables + ipset):
# the harness's CNI bridge enforces no NetworkPolicy, and kube-network-policies needs NFT_QUEUE,
# which this kernel lacks. v2.1.0 is the only v2 release the Go module proxy serves; it has known
# security reports (in its BGP/service-proxy parts and dependencies), acceptable in a throwaway
# test node that only enforces policies and is never exposed.
KUBE_ROUTER_VERSION="${KUBE_ROUTER_VERSION:-v2.1.0}"
# The CSI snapshot CRDs (VolumeSnapshot, VolumeSnapshotClass, VolumeSnapshotContent) installed on
# the host cluster for vkube's VolumeSnapshot sync, read from this Go module's config/crd/ as
# upstream ships them (no snapshot controller runs: the tests play its part).
SNAPSHOTTER_CLIENT_VERSION="${SNAPSHOTTER_CLIENT_VERSION:-v8.7.0}"
# metrics-server, the host's metrics.k8s.io for `kubectl top` and HPAs in virtual clusters
# (hack/host-cluster.sh up --metrics-server); v0.8.0 has the node annotation
# metrics.k8s.io/resource-metrics-path that points it at kwok's emulated kubelet metrics.
METRICS_SERVER_VERSION="${METRICS_SERVER_VERSION:-v0.8.0}"
VKUBE_CACHE="${VKUBE_CACHE:-$HOME/.cache/vkube}"
VKUBE_BIN="${VKUBE_BIN:-$VKUBE_CACHE/$K8S_VERSION/bin}"
