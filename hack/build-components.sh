#!/usr/bin/env bash
# Builds (once) and caches the real Kubernetes components the harness runs:
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (k8s.io/kubernetes),
# etcd (go.etcd.io/etcd/server/v3), kwok (sigs.k8s.io/kwok) with its stage files, and helm
# (helm.sh/helm/v3, for the chart in charts/vkube).
# With --real-node also what hack/real-node.sh runs: kubelet and kube-proxy (k8s.io/kubernetes),
# CoreDNS (github.com/coredns/coredns), crictl (sigs.k8s.io/cri-tools) and kube-router
# (github.com/cloudnativelabs/kube-router/v2, its NetworkPolicy firewall only). The default path does
# not build them, so the host cluster alone stays quick to set up.
# With --control-plane VERSION only the control plane of another Kubernetes version
# (kube-apiserver, kube-controller-manager, kube-scheduler; etcd, kwok and kubectl stay pinned),
# into $VKUBE_CACHE/VERSION/bin: what `vkube serve --kubernetes-version` runs (the versions tested
# are VIRTUAL_K8S_VERSIONS in hack/versions.sh), and what `hack/host-cluster.sh up
# --kubernetes-version VERSION` runs as a host of another minor (it alone needs kube-scheduler).
# With --metrics-server also metrics-server (sigs.k8s.io/metrics-server) and kwok's resource
# metrics and usage configuration (hack/host-cluster.sh up --metrics-server).
# Idempotent: a binary already in the cache is not rebuilt. Prints the bin directory last.
#
#   hack/build-components.sh [--real-node] [--metrics-server]
#   hack/build-components.sh --control-plane v1.34.4
set -euo pipefail
HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HACK_DIR/versions.sh"

REAL_NODE=0
METRICS_SERVER=0
CONTROL_PLANE_ONLY=0
while (( $# )); do
  case "$1" in
    --real-node) REAL_NODE=1 ;;
    --metrics-server) METRICS_SERVER=1 ;;
    --control-plane)
      [[ "${2:-}" =~ ^v1\.[0-9]+\.[0-9]+$ ]] || { echo "usage: $0 --control-plane v1.MINOR.PATCH" >&2; exit 2; }
      CONTROL_PLANE_ONLY=1 K8S_VERSION="$2" VKUBE_BIN="$VKUBE_CACHE/$2/bin"
      shift ;;
    *) echo "usage: $0 [--real-node] [--metrics-server] | --control-plane VERSION" >&2; exit 2 ;;
  esac
  shift
done

log() { printf '[hack/build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[hack/build] ERROR: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null || die "go is not installed (needed to build Kubernetes from its Go module); install Go >= 1.25"
mkdir -p "$VKUBE_BIN"
SRC="$VKUBE_CACHE/$K8S_VERSION/src"
mkdir -p "$SRC"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"

need_build() { for b in "$@"; do [[ -x "$VKUBE_BIN/$b" ]] || return 0; done; return 1; }

build_kubernetes() {
  # Every command the harness may build is in tools.go, so one go.sum serves both paths.
  local all=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
  local bins=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
  (( REAL_NODE )) && bins+=(kubelet kube-proxy)
  (( CONTROL_PLANE_ONLY )) && bins=(kube-apiserver kube-controller-manager kube-scheduler)
  need_build "${bins[@]}" || { log "kubernetes $K8S_VERSION binaries cached"; return; }
  local dir="$SRC/kubernetes" staging_ver="v0.${K8S_VERSION#v1.}"
  mkdir -p "$dir"
  cd "$dir"
  local tools b
  tools="$(printf '//go:build tools\n\npackage tools\n\nimport (\n'
    for b in "${all[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$b"; done
    printf ')')"
  local fresh=0
  if [[ ! -f go.sum ]]; then
    fresh=1
    log "resolving k8s.io/kubernetes@$K8S_VERSION (downloads modules: a few minutes on a cold machine)"
    rm -f go.mod
    go mod init vkube.dev/hack/kubernetes >/dev/null 2>&1
    local upstream_mod
    upstream_mod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    [[ -f "$upstream_mod" ]] || die "could not download k8s.io/kubernetes@$K8S_VERSION from the Go module proxy"
    # kubernetes' go.mod replaces its staging modules with ./staging paths; point each at its release.
    {
      echo "require k8s.io/kubernetes $K8S_VERSION"
      grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$upstream_mod" | awk '{print $1}' | sort -u |
        while read -r m; do echo "replace $m => $m $staging_ver"; done
    } >> go.mod
  fi
  # A cache made before kubelet/kube-proxy were added has a shorter tools.go: tidy once more.
  if (( fresh )) || [[ "$(cat tools.go 2>/dev/null)" != "$tools" ]]; then
    (( fresh )) || log "adding the new commands to the k8s.io/kubernetes@$K8S_VERSION module (go mod tidy)"
    printf '%s\n' "$tools" > tools.go
    # On failure, forget the state so the next run starts over instead of building with a stale go.sum.
    go mod tidy || { rm -f go.sum tools.go; die "go mod tidy failed for k8s.io/kubernetes@$K8S_VERSION"; }
  fi
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  for b in "${bins[@]}"; do
    [[ -x "$VKUBE_BIN/$b" ]] && continue
    log "building $b $K8S_VERSION"
    go build -trimpath -ldflags "$ldflags" -o "$VKUBE_BIN/$b.tmp" "k8s.io/kubernetes/cmd/$b" || die "building $b failed"
    mv "$VKUBE_BIN/$b.tmp" "$VKUBE_BIN/$b"
  done
}

build_etcd() {
  need_build etcd || { log "etcd $ETCD_VERSION cached"; return; }
  local dir="$SRC/etcd"
  mkdir -p "$dir"; cd "$dir"
  if [[ ! -f go.sum ]]; then
    log "resolving go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    rm -f go.mod
    go mod init vkube.dev/hack/etcd >/dev/null 2>&1
    echo "require go.etcd.io/etcd/server/v3 $ETCD_VERSION" >> go.mod
    printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > tools.go
    go mod tidy || { rm -f go.sum; die "go mod tidy failed for etcd $ETCD_VERSION"; }
  fi
  log "building etcd $ETCD_VERSION"
  go build -trimpath -ldflags "-s -w" -o "$VKUBE_BIN/etcd.tmp" go.etcd.io/etcd/server/v3 || die "building etcd failed"
  mv "$VKUBE_BIN/etcd.tmp" "$VKUBE_BIN/etcd"
}

build_kwok() {
  if need_build kwok; then
    log "building kwok $KWOK_VERSION"
    GOBIN="$VKUBE_BIN" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" || die "building kwok failed"
  else
    log "kwok $KWOK_VERSION cached"
  fi
  # kwok needs stage definitions; its module ships them as YAML.
  local stages="$VKUBE_CACHE/$K8S_VERSION/kwok-stages"
  if [[ ! -f "$stages/.done" ]]; then
    local moddir
    moddir="$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
    [[ -d "$moddir/kustomize/stage" ]] || die "kwok stage files not found in the sigs.k8s.io/kwok@$KWOK_VERSION module"
    mkdir -p "$stages"
    cp "$moddir"/kustomize/stage/node/fast/*.yaml "$stages/" 2>/dev/null || true
    for d in node/heartbeat-with-lease pod/fast; do
      for f in "$moddir/kustomize/stage/$d"/*.yaml; do
        [[ "$(basename "$f")" == kustomization.yaml ]] && continue
        cp "$f" "$stages/$(echo "$d" | tr / -)-$(basename "$f")"
      done
    done
    rm -f "$stages/kustomization.yaml"
    chmod -R u+w "$stages"
    touch "$stages/.done"
  fi
}

build_coredns() {
  need_build coredns || { log "coredns $COREDNS_VERSION cached"; return; }
  # Built like etcd, from a throwaway module: the CoreDNS main package with its default plugin set
  # (core/plugin/zplugin.go in the module), which includes the kubernetes plugin.
  local dir="$SRC/coredns"
  mkdir -p "$dir"; cd "$dir"
  if [[ ! -f go.sum ]]; then
    log "resolving github.com/coredns/coredns@$COREDNS_VERSION"
    rm -f go.mod
    go mod init vkube.dev/hack/coredns >/dev/null 2>&1
    echo "require github.com/coredns/coredns $COREDNS_VERSION" >> go.mod
    printf '//go:build tools\n\npackage tools\n\nimport _ "github.com/coredns/coredns"\n' > tools.go
    go mod tidy || { rm -f go.sum; die "go mod tidy failed for coredns $COREDNS_VERSION"; }
  fi
  log "building coredns $COREDNS_VERSION"
  go build -trimpath -ldflags "-s -w" -o "$VKUBE_BIN/coredns.tmp" github.com/coredns/coredns || die "building coredns failed"
  mv "$VKUBE_BIN/coredns.tmp" "$VKUBE_BIN/coredns"
}

build_crictl() {
  need_build crictl || { log "crictl $CRICTL_VERSION cached"; return; }
  log "building crictl $CRICTL_VERSION"
  # No replace directives in its go.mod, so go install works directly (like kwok).
  GOBIN="$VKUBE_BIN" go install -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
    "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION" || die "building crictl failed"
}

build_helm() {
  need_build helm || { log "helm $HELM_VERSION cached"; return; }
  log "building helm $HELM_VERSION"
  # Like kwok: no relative replaces in its go.mod, so go install works directly.
  GOBIN="$VKUBE_BIN" go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" || die "building helm failed"
}

build_metrics_server() {
  if need_build metrics-server; then
    log "building metrics-server $METRICS_SERVER_VERSION"
    # Like kwok: no replace directives in its go.mod, so go install works directly.
    GOBIN="$VKUBE_BIN" go install -trimpath -ldflags "-s -w" \
      "sigs.k8s.io/metrics-server/cmd/metrics-server@$METRICS_SERVER_VERSION" || die "building metrics-server failed"
  else
    log "metrics-server $METRICS_SERVER_VERSION cached"
  fi
  # kwok emulates each fake node's kubelet /metrics/resource from these two files of its module:
  # the Metric (the endpoint's series) and a ClusterResourceUsage (per-container usage from the
  # pod annotations kwok.x-k8s.io/usage-cpu and usage-memory, 1m and 1Mi without them).
  local dir="$VKUBE_CACHE/$K8S_VERSION/kwok-metrics"
  if [[ ! -f "$dir/.done" ]]; then
    local moddir
    moddir="$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
    [[ -f "$moddir/kustomize/metrics/resource/metrics-resource.yaml" ]] \
      || die "kwok metrics files not found in the sigs.k8s.io/kwok@$KWOK_VERSION module"
    mkdir -p "$dir"
    cp "$moddir/kustomize/metrics/resource/metrics-resource.yaml" "$moddir/kustomize/metrics/usage/usage-from-annotation.yaml" "$dir/"
    chmod -R u+w "$dir"
    touch "$dir/.done"
  fi
}

build_kube_router() {
  need_build kube-router || { log "kube-router $KUBE_ROUTER_VERSION cached"; return; }
  log "building kube-router $KUBE_ROUTER_VERSION"
  # Like kwok: no replace directives in its go.mod, so go install works directly.
  GOBIN="$VKUBE_BIN" go install -trimpath \
    -ldflags "-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$KUBE_ROUTER_VERSION -X github.com/cloudnativelabs/kube-router/v2/pkg/version.BuildDate=1970-01-01T00:00:00Z" \
    "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$KUBE_ROUTER_VERSION" || die "building kube-router failed"
}

start=$(date +%s)
if (( CONTROL_PLANE_ONLY )); then
  build_kubernetes
  log "control plane $K8S_VERSION ready in $VKUBE_BIN ($(( $(date +%s) - start )) s)"
  echo "$VKUBE_BIN"
  exit 0
fi
build_etcd
build_kwok
build_helm
build_kubernetes
if (( REAL_NODE )); then
  build_coredns
  build_crictl
  build_kube_router
fi
(( METRICS_SERVER )) && build_metrics_server
log "all components ready in $VKUBE_BIN ($(( $(date +%s) - start )) s)"
echo "$VKUBE_BIN"
