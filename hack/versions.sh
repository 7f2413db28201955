# Pinned versions of every real component the harness runs. Sourced by the other hack/ scripts.
# v1.35: the last release whose kubelet still runs on cgroup v1 and supports containerd 1.x.
K8S_VERSION="${K8S_VERSION:-v1.35.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.8}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
VKUBE_CACHE="${VKUBE_CACHE:-$HOME/.cache/vkube}"
VKUBE_BIN="${VKUBE_BIN:-$VKUBE_CACHE/$K8S_VERSION/bin}"
