#!/usr/bin/env bash
# Startup time and idle memory of one tenant's control plane, with the host cluster's own
# kube-apiserver (started the same way, on the same machine, in the same run) as baseline.
#
#   hack/bench-serve.sh [RUNS]     default 5; writes JSON to .cache/bench/serve.json
set -euo pipefail
HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HACK_DIR/.." && pwd)"
source "$HACK_DIR/versions.sh"
RUNS="${1:-5}"
IDLE_SECONDS="${IDLE_SECONDS:-60}"
OUT_DIR="$ROOT/.cache/bench"; mkdir -p "$OUT_DIR"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/vkube-bench.XXXXXX")"
cleanup() { pkill -TERM -f "$WORK/vc" 2>/dev/null || true; sleep 1; "$HACK_DIR/host-cluster.sh" down --dir "$WORK/host" >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT

BIN="$("$HACK_DIR/build-components.sh")"
(cd "$ROOT" && cargo build --release --locked --quiet)
VKUBE="${CARGO_TARGET_DIR:-$ROOT/target}/release/vkube"
HOST_KUBECONFIG="$("$HACK_DIR/host-cluster.sh" up --dir "$WORK/host" 2> "$WORK/host-up.log")"
host_ready_s="$(sed -n 's/.*kube-apiserver ready after \([0-9.]*\) s/\1/p' "$WORK/host-up.log")"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

start_ms=()
for i in $(seq 1 "$RUNS"); do
  dir="$WORK/vc$i"; mkdir -p "$dir"; port="$(free_port)"
  t0=$(date +%s%N)
  "$VKUBE" serve --name "bench$i" --host-kubeconfig "$HOST_KUBECONFIG" --create-namespace \
    --bin-dir "$BIN" --data-dir "$dir/data" --listen "127.0.0.1:$port" \
    --kubeconfig-out "$dir/kubeconfig" > "$dir/serve.log" 2>&1 &
  echo $! > "$dir/pid"
  until [[ -f "$dir/kubeconfig" ]]; do
    kill -0 "$(cat "$dir/pid")" 2>/dev/null || { tail "$dir/serve.log" >&2; exit 1; }
    sleep 0.02
  done
  # Ready as a client sees it: an authenticated request through the proxy succeeds.
  until "$BIN/kubectl" --kubeconfig "$dir/kubeconfig" get --raw /readyz >/dev/null 2>&1; do sleep 0.02; done
  t1=$(date +%s%N)
  start_ms+=($(( (t1 - t0) / 1000000 )))
  echo "run $i: ready in ${start_ms[-1]} ms" >&2
  if (( i < RUNS )); then kill -TERM "$(cat "$dir/pid")"; wait "$(cat "$dir/pid")" 2>/dev/null || true; fi
done

# Warm restart of the last tenant (existing credentials and datastore).
dir="$WORK/vc$RUNS"; kill -TERM "$(cat "$dir/pid")"; wait "$(cat "$dir/pid")" 2>/dev/null || true
rm -f "$dir/kubeconfig"; port="$(free_port)"
t0=$(date +%s%N)
"$VKUBE" serve --name "bench$RUNS" --host-kubeconfig "$HOST_KUBECONFIG" \
  --bin-dir "$BIN" --data-dir "$dir/data" --listen "127.0.0.1:$port" \
  --kubeconfig-out "$dir/kubeconfig" > "$dir/serve.log" 2>&1 &
echo $! > "$dir/pid"
until [[ -f "$dir/kubeconfig" ]] && "$BIN/kubectl" --kubeconfig "$dir/kubeconfig" get --raw /readyz >/dev/null 2>&1; do sleep 0.02; done
restart_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
echo "warm restart: ready in $restart_ms ms; idling ${IDLE_SECONDS}s for memory" >&2
sleep "$IDLE_SECONDS"

serve_pid="$(cat "$dir/pid")"
declare -A rss
rss[vkube-serve]="$(rss_kib "$serve_pid")"
for child in $(pgrep -P "$serve_pid"); do
  name="$(cat /proc/$child/comm)"
  rss[$name]="$(rss_kib "$child")"
done
host_api_pid="$(cat "$WORK/host/pids/kube-apiserver")"
rss[host-kube-apiserver]="$(rss_kib "$host_api_pid")"

python3 - "$OUT_DIR/serve.json" "$host_ready_s" "$restart_ms" "${start_ms[@]}" <<PY
import json, statistics, sys
out, host_ready, restart = sys.argv[1], float(sys.argv[2] or 0), int(sys.argv[3])
runs = [int(x) for x in sys.argv[4:]]
rss = {k: int(v) // 1024 for k, v in {$(for k in "${!rss[@]}"; do printf '"%s": "%s", ' "$k" "${rss[$k]}"; done)}.items()}
tenant = sum(v for k, v in rss.items() if k != "host-kube-apiserver")
res = {
  "runs_ms": runs,
  "median_start_to_ready_ms": statistics.median(runs),
  "warm_restart_ms": restart,
  "baseline_host_apiserver_ready_ms": round(host_ready * 1000),
  "ratio_median_vs_baseline": round(statistics.median(runs) / (host_ready * 1000), 2) if host_ready else None,
  "idle_rss_mib": rss,
  "tenant_total_rss_mib": tenant,
}
json.dump(res, open(out, "w"), indent=2)
print(json.dumps(res, indent=2))
PY
