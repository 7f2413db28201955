#!/usr/bin/env bash
# The full test suite, as CI runs it: build the real Kubernetes components (cached), format
# check, clippy with warnings as errors, unit tests, then the e2e tests against a real host
# cluster started here and stopped afterwards, with a real node (hack/real-node.sh) in it.
#
# VKUBE_E2E_SKIP_VKUBE_IMAGE=1 skips building the vkube image (a release build) for the real node.
set -euo pipefail
HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HACK_DIR/.." && pwd)"
source "$HACK_DIR/versions.sh"
cd "$ROOT"

step() { printf '\n==> %s\n' "$*" >&2; }
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }

step "building real Kubernetes components (first run: ~7 min, then cached in $VKUBE_BIN)"
BIN="$("$HACK_DIR/build-components.sh")"
for v in $VIRTUAL_K8S_VERSIONS; do
  [[ "$v" == "$K8S_VERSION" ]] && continue
  step "building the virtual control plane of Kubernetes $v (first run: ~4 min, then cached)"
  "$HACK_DIR/build-components.sh" --control-plane "$v" >/dev/null
done

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

step "the Dockerfile agrees with hack/image-contents.txt"
"$HACK_DIR/images.sh" check

step "README and docs/ link only to files inside the repository"
"$HACK_DIR/check-docs.sh"

step "helm lint and helm template of charts/vkube"
"$BIN/helm" lint --strict "$ROOT/charts/vkube"
"$BIN/helm" template vkube "$ROOT/charts/vkube" --namespace vkube-system --kube-version "$K8S_VERSION" >/dev/null
# Offline, without --kube-version, with every optional object (ServiceMonitor, dashboard).
"$BIN/helm" template vkube "$ROOT/charts/vkube" --namespace vkube-system \
  --set metrics.serviceMonitor.enabled=true --set metrics.dashboard.enabled=true \
  --set metrics.tenants.enabled=true --set metrics.tenants.podMonitor.enabled=true \
  --set 'metrics.allowedNamespaces={monitoring}' | python3 "$HACK_DIR/check-chart-names.py"
# The chart's CRD is the one the Rust types generate (a unit test checks the same).
cmp -s "$ROOT/charts/vkube/crds/virtualclusters.yaml" "$ROOT/manifests/crd.yaml" \
  || { echo "charts/vkube/crds/virtualclusters.yaml differs from manifests/crd.yaml: regenerate both with \`cargo run -- crd\`" >&2; exit 1; }

step "unit tests"
cargo test --locked --lib --bins

step "starting a host cluster for the e2e tests"
HOST_DIR="$(mktemp -d "${TMPDIR:-/tmp}/vkube-e2e-host.XXXXXX")"
cleanup() {
  # The real node first: it removes its Node object through the host API before that stops.
  "$HACK_DIR/real-node.sh" down --dir "$HOST_DIR" || echo "WARNING: hack/real-node.sh down failed" >&2
  "$HACK_DIR/host-cluster.sh" down --dir "$HOST_DIR" >/dev/null 2>&1 || true
  rm -rf "$HOST_DIR"
}
trap cleanup EXIT
# --metrics-server: `kubectl top` and HPAs in virtual clusters (e2e/top.rs), usage metering.
HOST_KUBECONFIG="$("$HACK_DIR/host-cluster.sh" up --dir "$HOST_DIR" --nodes 5 --metrics-server)"

step "starting a real node in the host cluster (containerd, kubelet, kube-proxy, CoreDNS)"
# Exit 3: this machine cannot run containers; exit 4: another run's real node is using it. Then
# the rest of the suite still runs and the real-node tests print SKIPPED with the reason. Any
# other failure of the real node fails the suite.
real_node_args=(--dir "$HOST_DIR")
[[ "${VKUBE_E2E_SKIP_VKUBE_IMAGE:-0}" == 1 ]] || real_node_args+=(--with-vkube-image)
rc=0
REAL_NODE_ENV="$("$HACK_DIR/real-node.sh" up "${real_node_args[@]}")" || rc=$?
case "$rc" in
  0) set -a; source "$REAL_NODE_ENV"; set +a ;;
  3|4)
    reason="$(cat "$HOST_DIR/real-node/unsupported" 2>/dev/null || echo "hack/real-node.sh up exited $rc")"
    printf '\n%s\n!!! NO REAL NODE: %s\n!!! The real-node e2e tests will be SKIPPED.\n%s\n\n' \
      "$(printf '!%.0s' {1..100})" "$reason" "$(printf '!%.0s' {1..100})" >&2
    export VKUBE_E2E_REAL_NODE=0 VKUBE_E2E_REAL_NODE_SKIP="$reason" ;;
  *)
    for f in "$HOST_DIR"/real-node/logs/*.log; do [[ -f "$f" ]] && { echo "--- $f" >&2; tail -n 30 "$f" >&2; }; done
    echo "hack/real-node.sh up failed (exit $rc)" >&2
    exit 1 ;;
esac

export VKUBE_E2E_HOST_KUBECONFIG="$HOST_KUBECONFIG" VKUBE_BIN_DIR="$BIN" VKUBE_VERSIONS_DIR="$VKUBE_CACHE"
# The real-node tests first and on their own: their timings (pod start latency) are not skewed by
# the other tests, and they do not slow the timing-sensitive syncer tests on a 2-core machine.
step "e2e tests on the real node (real containers, logs, exec, Services, cluster DNS, NetworkPolicies)"
cargo test --locked --test e2e -- real_node:: attack_network:: --test-threads "${VKUBE_E2E_THREADS:-4}"

# The platform as its users meet it (helm install, vkube create/pause/resume/delete): alone too,
# since it measures create and resume times.
step "e2e tests of the self-service platform on the real node (helm chart, manager, vkube CLI)"
cargo test --locked --test e2e platform:: -- --test-threads 1

step "e2e tests (real etcd, kube-apiserver, controller-manager, scheduler, kwok)"
cargo test --locked --test e2e -- --skip real_node:: --skip attack_network:: --skip platform:: --test-threads "${VKUBE_E2E_THREADS:-4}"

# Its own kwok host cluster and virtual cluster; fails when a spec passes on the host but not in
# the virtual cluster and hack/conformance-exceptions.txt does not explain it (docs/conformance.md).
step "upstream Kubernetes conformance, quick subset: host vs virtual cluster (~8 min; the first run also builds e2e.test: ~5-10 min)"
"$HACK_DIR/conformance.sh" --quick
