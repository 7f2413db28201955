#!/usr/bin/env bash
# Syncer throughput, latency, CPU and memory, against direct host creates in the same run, in
# the situations users meet: a burst, the same burst in an already-used tenant, one create at a
# time, a steady load at half the host's burst throughput, a 100-replica Deployment.
#
#   hack/bench-sync.sh [PODS] [--split-cpus] [-- extra `vkube bench sync` flags, e.g.
#                                                --scenarios burst,one --concurrency 32]
#   hack/bench-sync.sh --demo [PODS] [-- flags]   the same against hack/demo.sh's running tenant
#
# Starts its own host cluster (enough kwok nodes for 2 x PODS, with metrics-server like the demo)
# and one virtual cluster started like hack/demo.sh starts it, runs `vkube bench sync`, prints a
# table and writes JSON and a Markdown table to .cache/bench/sync-PODS[-split|-demo].{json,md}.
#
# fsync parity: the host's etcd syncs to disk here (host-cluster.sh --fsync), as every tenant's
# etcd does; the report states both (detected from the processes' command lines).
#
# --split-cpus pins the host control plane (etcd, kube-apiserver, scheduler, controller-manager,
# kwok) to CPU 0 and `vkube serve` with the virtual control plane to CPU 1, as in a real cluster
# where the host's control plane runs on its own machines and a tenant's in a pod on a worker.
# Without it everything shares every CPU (harsher on vkube: the baseline never pays for a
# second control plane).
set -euo pipefail
HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HACK_DIR/.." && pwd)"
source "$HACK_DIR/versions.sh"
DEMO=""
[[ "${1:-}" == "--demo" ]] && { DEMO=1; shift; }
PODS="${1:-1000}"; shift || true
SPLIT=""
[[ "${1:-}" == "--split-cpus" ]] && { SPLIT=1; shift; }
[[ "${1:-}" == "--" ]] && shift
EXTRA=("$@")
MODE=""
if [[ -n "$SPLIT" ]]; then
  (( $(nproc) >= 2 )) || { echo "--split-cpus needs at least 2 CPUs" >&2; exit 2; }
  command -v taskset >/dev/null || { echo "--split-cpus needs taskset (util-linux)" >&2; exit 2; }
  MODE="-split"
fi
if [[ -n "$DEMO" ]]; then
  # What a user of the demo gets: its tenant, its host, as they are (fsync as the demo runs it).
  source "$HACK_DIR/versions.sh"
  DEMO_DIR="$VKUBE_CACHE/demo"
  [[ -f "$DEMO_DIR/demo/kubeconfig" && -f "$DEMO_DIR/demo/serve.pid" ]] \
    || { echo "no demo running: start it with hack/demo.sh" >&2; exit 2; }
  (cd "$ROOT" && cargo build --release --locked --quiet)
  VKUBE="${CARGO_TARGET_DIR:-$ROOT/target}/release/vkube"
  mkdir -p "$ROOT/.cache/bench"
  "$VKUBE" bench sync --kubeconfig "$DEMO_DIR/demo/kubeconfig" --name demo \
    --host-kubeconfig "$DEMO_DIR/host/kubeconfig" --pods "$PODS" --serve-pid "$(cat "$DEMO_DIR/demo/serve.pid")" \
    --output "$ROOT/.cache/bench/sync-$PODS-demo.json" --markdown "$ROOT/.cache/bench/sync-$PODS-demo.md" \
    "${EXTRA[@]}" > /dev/null
  echo "JSON: $ROOT/.cache/bench/sync-$PODS-demo.json, table: $ROOT/.cache/bench/sync-$PODS-demo.md" >&2
  exit 0
fi
source "$HACK_DIR/bench-tenant.sh"
BENCH_HOST_FLAGS="--fsync --metrics-server"
SERVE_PREFIX=()
if [[ -n "$SPLIT" ]]; then
  pin_host() { for pid in $(bench_host_pids); do taskset -a -p -c 0 "$pid" >/dev/null; done; }
  BENCH_BEFORE_SERVE=pin_host
  SERVE_PREFIX=(taskset -c 1)
fi
bench_start sync $(( 2 * PODS / 100 + 3 )) "${SERVE_PREFIX[@]}"
"$VKUBE" bench sync --kubeconfig "$WORK/kubeconfig" --name bench \
  --host-kubeconfig "$HOST_KUBECONFIG" --pods "$PODS" --serve-pid "$SERVE_PID" \
  --output "$OUT_DIR/sync-$PODS$MODE.json" --markdown "$OUT_DIR/sync-$PODS$MODE.md" "${EXTRA[@]}" > /dev/null
bench_keep_log "sync-$PODS$MODE"
echo "JSON: $OUT_DIR/sync-$PODS$MODE.json, table: $OUT_DIR/sync-$PODS$MODE.md (vkube serve log: $OUT_DIR/serve-sync-$PODS$MODE.log)" >&2
if grep -v "vkube::child" "$WORK/serve.log" | grep -q "WARN\|ERROR"; then
  echo "vkube serve logged warnings during the run:" >&2
  grep "WARN\|ERROR" "$WORK/serve.log" | grep -v vkube::child | tail -n 5 >&2
fi
