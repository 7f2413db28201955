#!/usr/bin/env bash
# Upstream Kubernetes conformance, host vs virtual cluster, in one run.
#
# Builds (once, cached in $VKUBE_CACHE/$K8S_VERSION/bin) the upstream e2e.test of the pinned
# Kubernetes version from its Go module, and the ginkgo CLI of the version that module requires;
# starts a host cluster (hack/host-cluster.sh, kwok nodes) and one virtual cluster on it (`vkube
# serve`, as hack/demo.sh does); runs the same [Conformance] specs against the host and then
# against the virtual cluster; compares the JUnit reports (hack/conformance-report.py) and writes
# .cache/conformance/results.{json,md}.
#
# Fails (exit 1) when a spec passes on the host but not in the virtual cluster and is not listed,
# with its reason, in hack/conformance-exceptions.txt.
#
#   hack/conformance.sh --quick        the API-level subset (QUICK_GROUPS below; ~8 min on 2 cores)
#   hack/conformance.sh                every [Conformance] spec (441 at v1.35.4; hours on 2 cores)
#   options: --focus REGEX (instead of the above), --procs N (parallel ginkgo processes, default 4),
#            --host-kubeconfig K (use that host cluster instead of starting one), --keep (leave the
#            clusters running; their directory is printed), --out DIR (default .cache/conformance),
#            --skip REGEX (also leave out the specs matching it),
#            --build-only
set -euo pipefail
HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HACK_DIR/.." && pwd)"
source "$HACK_DIR/versions.sh"

# Every run selects the specs labelled Conformance (ginkgo --label-filter); --quick narrows them
# to the ones that need nothing but the API and kwok's fake pods (no container really running, no
# logs, exec or network): groups of specs by their describe texts.
QUICK_GROUPS=(
  '\[sig-api-machinery\] (Watchers|Namespaces|ResourceQuota|CustomResourceDefinition resources|FieldValidation|Discovery|AggregatedDiscovery|server version|Garbage collector|OrderedNamespaceDeletion|ValidatingAdmissionPolicy)'
  '\[sig-node\] (PodTemplates|RuntimeClass|Lease)'
  '\[sig-apps\] (ControllerRevision|ReplicaSet|ReplicationController|Deployment|DisruptionController)'
  '\[sig-auth\] (Certificates|SubjectReview)'
  '\[sig-scheduling\] LimitRange'
  '\[sig-network\] (EndpointSlice |Ingress API|IngressClass API|ServiceCIDR)'
  '\[sig-storage\] (CSINodes|CSIStorageCapacity|StorageClasses|VolumeAttachment|VolumeAttributesClass)'
  '\[sig-instrumentation\] Events'
  '\[sig-architecture\]'
)
QUICK_FOCUS="$(IFS='|'; echo "${QUICK_GROUPS[*]}")"
# Of those, the ones that need a real container (an HTTP answer from the pod, a webhook server,
# an image that fails to pull) fail on kwok on both sides after long timeouts (2-5 min each), and
# one passes but waits 1-4 min for the quota controller's resync: left out of --quick, run by the
# full run.
QUICK_SKIP='should serve a basic image on each replica|EndpointSlice should support a Service with multiple|deployment should support proportional scaling|should apply changes to a resourcequota status'
FULL_FOCUS='.'
# Specs the upstream suite itself marks as unfit for a shared cluster (none are [Conformance] today).
SKIP='\[Disruptive\]|\[Flaky\]'

MODE=full FOCUS="" PROCS=4 HOST_KUBECONFIG="" KEEP=0 BUILD_ONLY=0 OUT="$ROOT/.cache/conformance" EXTRA_SKIP=""
while (( $# )); do
  case "$1" in
    --quick) MODE=quick ;;
    --focus) FOCUS="$2"; MODE=focus; shift ;;
    --procs) PROCS="$2"; shift ;;
    --host-kubeconfig) HOST_KUBECONFIG="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --skip) EXTRA_SKIP="$2"; shift ;;
    --keep) KEEP=1 ;;
    --build-only) BUILD_ONLY=1 ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
  shift
done
case "$MODE" in quick) FOCUS="$QUICK_FOCUS" SKIP="$SKIP|$QUICK_SKIP" ;; full) FOCUS="$FULL_FOCUS" ;; esac
[[ -n "$EXTRA_SKIP" ]] && SKIP="$SKIP|$EXTRA_SKIP"

log() { printf '[conformance %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[conformance] ERROR: %s\n' "$*" >&2; exit 1; }

# --- build (cached) --------------------------------------------------------------------------
BIN="$("$HACK_DIR/build-components.sh")"
E2E_TEST="$BIN/e2e.test"
GINKGO="$BIN/ginkgo"
build_e2e() {
  [[ -x "$E2E_TEST" && -x "$GINKGO" ]] && { log "e2e.test and ginkgo $K8S_VERSION cached"; return; }
  command -v go >/dev/null || die "go is not installed (needed to build e2e.test); install Go >= 1.25"
  export GOFLAGS="${GOFLAGS:--buildvcs=false}"
  # Its own throwaway module beside hack/build-components.sh's (same layout, started from that
  # module's resolved go.mod/go.sum): the e2e test dependencies never touch the components' build.
  local dir="$VKUBE_CACHE/$K8S_VERSION/src/e2e" components="$VKUBE_CACHE/$K8S_VERSION/src/kubernetes"
  mkdir -p "$dir"
  (
    cd "$dir"
    if [[ ! -f go.sum ]]; then
      log "resolving k8s.io/kubernetes/test/e2e@$K8S_VERSION (go get -t, go mod tidy)"
      [[ -f "$components/go.mod" ]] || die "$components/go.mod missing: hack/build-components.sh should have made it"
      sed 's#^module .*#module vkube.dev/hack/e2e#' "$components/go.mod" > go.mod
      cp "$components/go.sum" go.sum
      printf '//go:build tools\n\npackage tools\n\nimport _ "k8s.io/kubernetes/test/e2e"\n' > tools.go
      # A version is required: without one go tries the newest kubernetes and its staging modules.
      { go get -t "k8s.io/kubernetes/test/e2e@$K8S_VERSION" && go mod tidy; } \
        || { rm -f go.sum; die "resolving k8s.io/kubernetes/test/e2e@$K8S_VERSION failed"; }
    fi
    if [[ ! -x "$E2E_TEST" ]]; then
      log "building e2e.test $K8S_VERSION (~130 MB; ~5 min on 2 cores with the Go build cache warm from the components)"
      go test -c -trimpath -ldflags "-s -w" -o "$E2E_TEST.tmp" k8s.io/kubernetes/test/e2e || die "building e2e.test failed"
      mv "$E2E_TEST.tmp" "$E2E_TEST"
    fi
    if [[ ! -x "$GINKGO" ]]; then
      local v
      v="$(go list -m -f '{{.Version}}' github.com/onsi/ginkgo/v2)" || die "ginkgo is not in the e2e module"
      log "building the ginkgo CLI $v (the version e2e.test is built with)"
      GOBIN="$BIN" go install -trimpath -ldflags "-s -w" "github.com/onsi/ginkgo/v2/ginkgo@$v" || die "building ginkgo failed"
    fi
  )
}
build_e2e
(( BUILD_ONLY )) && { echo "$E2E_TEST"; exit 0; }

log "building vkube"
(cd "$ROOT" && cargo build --locked --quiet --bin vkube)
VKUBE="${CARGO_TARGET_DIR:-$ROOT/target}/debug/vkube"

# --- clusters ----------------------------------------------------------------------------------
RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/vkube-conformance.XXXXXX")"
HOST_DIR="$RUN_DIR/host" VC_DIR="$RUN_DIR/virtual"
OWN_HOST=0
SERVE_PID="" GINKGO_PID=""
cleanup() {
  # Interrupted mid-run: stop the suite first (its own process group: ginkgo and its e2e.test
  # processes), so nothing keeps talking to clusters that are about to go.
  if [[ -n "$GINKGO_PID" ]] && kill -0 "$GINKGO_PID" 2>/dev/null; then
    kill -TERM -- "-$GINKGO_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$GINKGO_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$GINKGO_PID" 2>/dev/null || true
  fi
  (( KEEP )) && { log "left running (--keep): $RUN_DIR (stop: kill $SERVE_PID; hack/host-cluster.sh down --dir $HOST_DIR)"; return; }
  if [[ -n "$SERVE_PID" ]]; then
    kill -TERM "$SERVE_PID" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$SERVE_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$SERVE_PID" 2>/dev/null || true
  fi
  if (( OWN_HOST )); then
    "$HACK_DIR/host-cluster.sh" down --dir "$HOST_DIR" >/dev/null 2>&1 || true
  elif [[ -n "$HOST_KUBECONFIG" ]]; then
    "$BIN/kubectl" --kubeconfig "$HOST_KUBECONFIG" delete namespace vkube-conformance --wait=false >/dev/null 2>&1 || true
  fi
  rm -rf "$RUN_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -z "$HOST_KUBECONFIG" ]]; then
  OWN_HOST=1
  HOST_KUBECONFIG="$("$HACK_DIR/host-cluster.sh" up --dir "$HOST_DIR" --nodes 3)"
fi

mkdir -p "$VC_DIR"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
log "starting virtual cluster 'conformance' (vkube serve, log: $VC_DIR/serve.log)"
# The tenant as an admin would run it, with the default policies: what conformance measures.
setsid "$VKUBE" serve --name conformance --host-kubeconfig "$HOST_KUBECONFIG" --create-namespace \
  --bin-dir "$BIN" --data-dir "$VC_DIR/data" --listen "127.0.0.1:$PORT" \
  --kubeconfig-out "$VC_DIR/kubeconfig" > "$VC_DIR/serve.log" 2>&1 < /dev/null &
SERVE_PID=$!
for _ in $(seq 1 1200); do
  [[ -f "$VC_DIR/kubeconfig" ]] && break
  kill -0 "$SERVE_PID" 2>/dev/null || { tail -n 20 "$VC_DIR/serve.log" >&2; die "vkube serve exited"; }
  sleep 0.1
done
[[ -f "$VC_DIR/kubeconfig" ]] || die "virtual cluster not ready after 120 s; see $VC_DIR/serve.log"
# A virtual cluster shows a host node only while one of its pods runs there (by design: a tenant
# sees the nodes it uses), and the e2e framework refuses to start without a schedulable node
# ("there are currently no ready, schedulable nodes"). So, as in any tenant cluster in use, one
# pod per schedulable host node (pinned with nodeName, which vkube turns into a node affinity)
# runs in the namespace conformance-nodes for the whole run. No spec looks at that namespace.
mapfile -t HOST_NODES < <("$BIN/kubectl" --kubeconfig "$HOST_KUBECONFIG" get nodes -o json | python3 -c '
import json, sys
for n in json.load(sys.stdin)["items"]:
    taints = [t for t in n["spec"].get("taints") or [] if t.get("effect") in ("NoSchedule", "NoExecute")]
    if not taints and not n["spec"].get("unschedulable"):
        print(n["metadata"]["name"])')
(( ${#HOST_NODES[@]} )) || die "the host cluster has no schedulable node"
"$BIN/kubectl" --kubeconfig "$VC_DIR/kubeconfig" create namespace conformance-nodes >/dev/null
for _ in $(seq 1 300); do
  "$BIN/kubectl" --kubeconfig "$VC_DIR/kubeconfig" get serviceaccount default -n conformance-nodes >/dev/null 2>&1 && break
  sleep 0.2
done
for node in "${HOST_NODES[@]}"; do
  cat <<POD
apiVersion: v1
kind: Pod
metadata: {name: "on-$node", namespace: conformance-nodes}
spec:
  nodeName: "$node"
  containers: [{name: pause, image: registry.k8s.io/pause:3.10, imagePullPolicy: IfNotPresent}]
---
POD
done | "$BIN/kubectl" --kubeconfig "$VC_DIR/kubeconfig" apply -f - >/dev/null
for _ in $(seq 1 600); do
  ready="$("$BIN/kubectl" --kubeconfig "$VC_DIR/kubeconfig" get nodes --no-headers 2>/dev/null | grep -c ' Ready ' || true)"
  (( ready >= ${#HOST_NODES[@]} )) && break
  sleep 0.2
done
(( ready >= ${#HOST_NODES[@]} )) || die "the virtual cluster shows $ready of ${#HOST_NODES[@]} nodes after 120 s (log: $VC_DIR/serve.log)"
log "the virtual cluster shows its $ready nodes"

# --- run -------------------------------------------------------------------------------------
rm -rf "$OUT/host" "$OUT/virtual"
mkdir -p "$OUT/host" "$OUT/virtual"
run_side() { # side kubeconfig
  local side="$1" kubeconfig="$2" t0 rc=0
  t0=$(date +%s)
  log "running the specs against the $side ($MODE, $PROCS processes; log: $OUT/$side/ginkgo.log)"
  # Nothing of the suite's own pods tolerates the real node's taint; it must not block the start.
  setsid "$GINKGO" --label-filter=Conformance --focus="$FOCUS" --skip="$SKIP" --silence-skips -p --procs="$PROCS" --no-color --timeout=24h \
    --output-dir="$OUT/$side" --junit-report=junit.xml \
    "$E2E_TEST" -- --kubeconfig="$kubeconfig" --provider=skeleton --kubectl-path="$BIN/kubectl" \
    --non-blocking-taints=node-role.kubernetes.io/control-plane,vkube.dev/real-node \
    > "$OUT/$side/ginkgo.log" 2>&1 < /dev/null &
  GINKGO_PID=$!
  wait "$GINKGO_PID" || rc=$?
  GINKGO_PID=""
  echo $(( $(date +%s) - t0 )) > "$OUT/$side/seconds"
  log "$side: ginkgo exited $rc after $(cat "$OUT/$side/seconds") s"
  [[ -f "$OUT/$side/junit.xml" ]] || { tail -n 40 "$OUT/$side/ginkgo.log" >&2; die "no JUnit report from the $side run"; }
}
run_side host "$HOST_KUBECONFIG"
run_side virtual "$VC_DIR/kubeconfig"

python3 "$HACK_DIR/conformance-report.py" --mode "$MODE" --focus "$FOCUS" --skip "$SKIP" \
  --k8s-version "$K8S_VERSION" --exceptions "$HACK_DIR/conformance-exceptions.txt" \
  --host "$OUT/host" --virtual "$OUT/virtual" --out "$OUT"
