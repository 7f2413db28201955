#!/usr/bin/env bash
# Syncer throughput, latency, CPU and memory, against direct host creates in the same run.
#
#   hack/bench-sync.sh [PODS] [--split-cpus] [-- extra `vkube bench sync` flags, e.g. --rate 200]
#
# Starts its own host cluster (enough kwok nodes for PODS) and one virtual cluster, runs
# `vkube bench sync`, prints a table and writes JSON to .cache/bench/sync-PODS-MODE[-split].json.
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
PODS="${1:-1000}"; shift || true
SPLIT=""
[[ "${1:-}" == "--split-cpus" ]] && { SPLIT=1; shift; }
[[ "${1:-}" == "--" ]] && shift
EXTRA=("$@")
MODE=burst; for a in "${EXTRA[@]}"; do [[ "$a" == "--rate" ]] && MODE=paced; done
if [[ -n "$SPLIT" ]]; then
  (( $(nproc) >= 2 )) || { echo "--split-cpus needs at least 2 CPUs" >&2; exit 2; }
  command -v taskset >/dev/null || { echo "--split-cpus needs taskset (util-linux)" >&2; exit 2; }
  MODE="$MODE-split"
fi
source "$HACK_DIR/bench-tenant.sh"
SERVE_PREFIX=()
if [[ -n "$SPLIT" ]]; then
  pin_host() { for pid in $(bench_host_pids); do taskset -a -p -c 0 "$pid" >/dev/null; done; }
  BENCH_BEFORE_SERVE=pin_host
  SERVE_PREFIX=(taskset -c 1)
fi
bench_start sync $(( PODS / 100 + 3 )) "${SERVE_PREFIX[@]}"
"$VKUBE" bench sync --kubeconfig "$WORK/kubeconfig" --name bench \
  --host-kubeconfig "$HOST_KUBECONFIG" --pods "$PODS" --serve-pid "$SERVE_PID" \
  --output "$OUT_DIR/sync-$PODS-$MODE.json" "${EXTRA[@]}" > /dev/null
bench_keep_log "sync-$PODS-$MODE"
echo "JSON: $OUT_DIR/sync-$PODS-$MODE.json (vkube serve log: $OUT_DIR/serve-sync-$PODS-$MODE.log)" >&2
if grep -v "vkube::child" "$WORK/serve.log" | grep -q "WARN\|ERROR"; then
  echo "vkube serve logged warnings during the run:" >&2
  grep "WARN\|ERROR" "$WORK/serve.log" | grep -v vkube::child | tail -n 5 >&2
fi
