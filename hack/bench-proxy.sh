#!/usr/bin/env bash
# What vkube's API proxy costs: the same request mix (GET a pod, LIST 500 pods, a WATCH of 1000
# events, small creates) straight to the virtual kube-apiserver and through the proxy, and 100 MiB
# echoed through port-forward to a virtual pod vs its host pod directly, in the same run.
#
#   hack/bench-proxy.sh [-- extra `vkube bench proxy` flags, e.g. --concurrency 1]
#
# Starts its own host cluster (kwok nodes echo port-forwards) and one virtual cluster, prints a
# table and writes JSON to .cache/bench/proxy[-cN].json.
set -euo pipefail
HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HACK_DIR/.." && pwd)"
source "$HACK_DIR/versions.sh"
[[ "${1:-}" == "--" ]] && shift
EXTRA=("$@")
SUFFIX=""
for ((i = 0; i < ${#EXTRA[@]}; i++)); do
  [[ "${EXTRA[$i]}" == "--concurrency" ]] && SUFFIX="-c${EXTRA[$((i + 1))]:-}"
done
source "$HACK_DIR/bench-tenant.sh"
bench_start proxy 8
"$VKUBE" bench proxy --kubeconfig "$WORK/kubeconfig" --name bench --data-dir "$WORK/vc" \
  --host-kubeconfig "$HOST_KUBECONFIG" --output "$OUT_DIR/proxy$SUFFIX.json" "${EXTRA[@]}" > /dev/null
bench_keep_log "proxy$SUFFIX"
echo "JSON: $OUT_DIR/proxy$SUFFIX.json (vkube serve log: $OUT_DIR/serve-proxy$SUFFIX.log)" >&2
