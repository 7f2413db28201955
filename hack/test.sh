#!/usr/bin/env bash
# The full test suite, as CI runs it: build the real Kubernetes components (cached), format
# check, clippy with warnings as errors, unit tests, then the e2e tests against a real host
# cluster started here and stopped afterwards, with a real node (hack/real-node.sh) in it, then a
# subset of them against hosts one minor newer and older (HOST_SKEW_VERSIONS).
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
  step "building the control plane of Kubernetes $v (first run: ~4 min, then cached)"
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
SKEW_DIR=""
cleanup() {
  if [[ -n "$SKEW_DIR" ]]; then
    "$HACK_DIR/host-cluster.sh" down --dir "$SKEW_DIR" >/dev/null 2>&1 || true
    rm -rf "$SKEW_DIR"
  fi
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
cargo test --locked --test e2e -- --skip real_node:: --skip attack_network:: --skip platform:: \
  --skip host_skew:: --test-threads "${VKUBE_E2E_THREADS:-4}"

# Version skew: the syncer (k8s-openapi v1_35 types) against a host one minor newer and one older,
# each its own kwok host cluster (control plane of that version, etcd/kwok pinned), one after the
# other. The tests that lean most on the host API: pods down and status up (the Deployment),
# Services and Endpoints, ConfigMaps and Secrets, tokens, PDBs, Ingresses, nodes, logs, a few
# isolation tests, and host_skew:: (fields of a newer host unknown to vkube's types).
SKEW_TESTS=(
  syncer::a_deployment_runs_on_the_host_scales_and_rolls
  syncer::services_and_endpoints_are_true_on_both_sides
  syncer::referenced_configmaps_and_secrets_follow_their_pods
  syncer::pods_carry_a_token_of_their_virtual_service_account
  syncer::conflicts_and_policy_violations_become_events_and_nothing_foreign_is_touched
  attack_classic::virtual_names_never_take_over_host_objects_vkube_did_not_create
  attack_pods::pod_security_escapes_never_reach_the_host
  attack_pods::host_acting_labels_and_annotations_are_renamed_and_selectors_still_match
  networking::ingresses_reach_translated_backends_with_their_tls_secret
  custom_resources::a_disruption_budget_protects_the_tenants_pods_and_nothing_else
  cluster_read::real_nodes_mirror_their_host_node_and_follow_it
  pod_streams::logs_follow_and_attach_come_from_the_host_pod
  host_skew::
)
for v in $HOST_SKEW_VERSIONS; do
  step "e2e tests against a Kubernetes $v HOST (vkube's types: $K8S_VERSION): ${#SKEW_TESTS[@]} tests"
  SKEW_DIR="$(mktemp -d "${TMPDIR:-/tmp}/vkube-e2e-host-$v.XXXXXX")"
  skew_kubeconfig="$("$HACK_DIR/host-cluster.sh" up --dir "$SKEW_DIR" --nodes 3 --kubernetes-version "$v")"
  VKUBE_E2E_HOST_KUBECONFIG="$skew_kubeconfig" VKUBE_E2E_REAL_NODE=0 \
    VKUBE_E2E_REAL_NODE_SKIP="no real node in the $v host cluster" \
    cargo test --locked --test e2e -- "${SKEW_TESTS[@]}" --test-threads "${VKUBE_E2E_THREADS:-4}" \
    || { echo "e2e tests against the Kubernetes $v host failed" >&2; exit 1; }
  "$HACK_DIR/host-cluster.sh" down --dir "$SKEW_DIR" >/dev/null
  rm -rf "$SKEW_DIR"; SKEW_DIR=""
done

# Its own kwok host cluster and virtual cluster; fails when a spec passes on the host but not in
# the virtual cluster and hack/conformance-exceptions.txt does not explain it (docs/conformance.md).
step "upstream Kubernetes conformance, quick subset: host vs virtual cluster (~8 min; the first run also builds e2e.test: ~5-10 min)"
"$HACK_DIR/conformance.sh" --quick
