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
OUT_DIR="$ROOT/.cache/bench"; mkdir -p "$OUT_DIR"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/vkube-bench-proxy.XXXXXX")"
cleanup() {
  [[ -n "${SERVE_PID:-}" ]] && kill -TERM "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null || true
  "$HACK_DIR/host-cluster.sh" down --dir "$WORK/host" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

BIN="$("$HACK_DIR/build-components.sh")"
(cd "$ROOT" && cargo build --release --locked --quiet)
VKUBE="${CARGO_TARGET_DIR:-$ROOT/target}/release/vkube"
HOST_KUBECONFIG="$("$HACK_DIR/host-cluster.sh" up --dir "$WORK/host" --nodes 8)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$VKUBE" serve --name bench --host-kubeconfig "$HOST_KUBECONFIG" --create-namespace \
  --bin-dir "$BIN" --data-dir "$WORK/vc" --listen "127.0.0.1:$PORT" \
  --kubeconfig-out "$WORK/kubeconfig" > "$WORK/serve.log" 2>&1 &
SERVE_PID=$!
until [[ -f "$WORK/kubeconfig" ]]; do
  kill -0 "$SERVE_PID" 2>/dev/null || { tail -n 20 "$WORK/serve.log" >&2; exit 1; }
  sleep 0.1
done
"$VKUBE" bench proxy --kubeconfig "$WORK/kubeconfig" --name bench --data-dir "$WORK/vc" \
  --host-kubeconfig "$HOST_KUBECONFIG" --output "$OUT_DIR/proxy$SUFFIX.json" "${EXTRA[@]}" > /dev/null
cp "$WORK/serve.log" "$OUT_DIR/serve-proxy$SUFFIX.log"
echo "JSON: $OUT_DIR/proxy$SUFFIX.json (vkube serve log: $OUT_DIR/serve-proxy$SUFFIX.log)" >&2
