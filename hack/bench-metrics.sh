#!/usr/bin/env bash
# What Prometheus scraping costs the syncer: `vkube bench sync` bursts against one `vkube serve`
# with its metrics listener on, alternately with nobody scraping it and with a scrape every
# second (as an aggressive Prometheus would), in the same run on the same host cluster.
#
#   hack/bench-metrics.sh [PODS] [ROUNDS]        defaults: 300 pods, 3 rounds of each
#
# Writes .cache/bench/metrics-PODS.json: every round, the medians of each mode, and the ratios
# scraped / quiet of throughput and of vkube serve's CPU seconds (1.0 = no cost).
set -euo pipefail
HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HACK_DIR/.." && pwd)"
source "$HACK_DIR/versions.sh"
PODS="${1:-300}"
ROUNDS="${2:-3}"
source "$HACK_DIR/bench-tenant.sh"
METRICS_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
bench_start metrics $(( PODS / 100 + 3 )) env "VKUBE_METRICS_BIND_ADDRESS=127.0.0.1:$METRICS_PORT"
KUBECTL="$BIN/kubectl --kubeconfig $WORK/kubeconfig"

# One scrape a second until killed; counts scrapes and bytes in $1. `exec`, so that the pid of
# the background job is the scraper's own and killing it stops the scraping.
scraper() {
  exec python3 - "$METRICS_PORT" "$1" <<'PY'
import sys, time, urllib.request
port, out = sys.argv[1], sys.argv[2]
n = size = 0
while True:
    try:
        size += len(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read())
        n += 1
        with open(out, "w") as f:
            f.write(f"{n} {size}\n")
    except Exception:
        pass
    time.sleep(1)
PY
}

# One burst per round; `vkube bench sync` runs several scenarios by default where it has them.
SCENARIO=()
if "$VKUBE" bench sync --help | grep -q -- --scenarios; then SCENARIO=(--scenarios burst); fi
# The syncer's phase of the burst (the report lists scenarios, or is the one burst itself).
SYNCER_OF='import json,sys; r=json.load(open(sys.argv[1])); s=(r["scenarios"][0] if "scenarios" in r else r)["syncer"]; print(s["pods_per_second"], "pods/s,", r["serve_cpu_seconds"], "CPU s")'

for (( r = 1; r <= ROUNDS; r++ )); do
  for mode in quiet scraped; do
    SCRAPER=""
    if [[ "$mode" == scraped ]]; then
      scraper "$WORK/scrapes-$r" & SCRAPER=$!
    fi
    "$VKUBE" bench sync --kubeconfig "$WORK/kubeconfig" --name bench \
      --host-kubeconfig "$HOST_KUBECONFIG" --pods "$PODS" --serve-pid "$SERVE_PID" \
      --skip-baseline "${SCENARIO[@]}" --output "$WORK/$mode-$r.json" > /dev/null
    if [[ -n "$SCRAPER" ]]; then kill "$SCRAPER"; wait "$SCRAPER" 2>/dev/null || true; fi
    # The next round creates the benchmark namespace again: wait until this one's is gone.
    $KUBECTL wait --for=delete namespace/vkube-bench --timeout=300s >/dev/null 2>&1 || true
    echo "round $r $mode: $(python3 -c "$SYNCER_OF" "$WORK/$mode-$r.json")" >&2
  done
done

python3 - "$WORK" "$ROUNDS" "$PODS" "$OUT_DIR/metrics-$PODS.json" <<'PY'
import json, statistics, sys
work, rounds, pods, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def load(mode):
    return [json.load(open(f"{work}/{mode}-{r}.json")) for r in range(1, rounds + 1)]
runs = {m: load(m) for m in ("quiet", "scraped")}
def median(mode, f):
    return statistics.median(f(r) for r in runs[mode])
def syncer(r):
    return (r["scenarios"][0] if "scenarios" in r else r)["syncer"]
pps = {m: median(m, lambda r: syncer(r)["pods_per_second"]) for m in runs}
cpu = {m: median(m, lambda r: r["serve_cpu_seconds"] or 0.0) for m in runs}
scrapes = []
for r in range(1, rounds + 1):
    try:
        n, size = open(f"{work}/scrapes-{r}").read().split()
        scrapes.append({"scrapes": int(n), "bytes": int(size)})
    except (OSError, ValueError):
        scrapes.append(None)
report = {
    "pods": pods,
    "rounds": rounds,
    "median_pods_per_second": pps,
    "median_serve_cpu_seconds": cpu,
    "throughput_ratio_scraped_to_quiet": round(pps["scraped"] / pps["quiet"], 3),
    "serve_cpu_ratio_scraped_to_quiet": round(cpu["scraped"] / cpu["quiet"], 3) if cpu["quiet"] else None,
    "scrapes_per_round": scrapes,
    "runs": runs,
}
json.dump(report, open(out, "w"), indent=2)
print(f"throughput scraped/quiet: {report['throughput_ratio_scraped_to_quiet']}  "
      f"serve CPU scraped/quiet: {report['serve_cpu_ratio_scraped_to_quiet']}  ({rounds} rounds of {pods} pods)")
print(f"JSON: {out}", file=sys.stderr)
PY
