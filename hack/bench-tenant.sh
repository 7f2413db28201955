# Sourced by hack/bench-*.sh: one throw-away host cluster and one virtual cluster "bench" for a
# benchmark, removed on exit. Needs HACK_DIR and ROOT.
#
#   bench_start KIND NODES [PREFIX...]   builds what is needed, starts the host cluster (NODES kwok
#                                        nodes, plus the flags in BENCH_HOST_FLAGS) and
#                                        `PREFIX... vkube serve` with the flags hack/demo.sh uses;
#                                        sets WORK, OUT_DIR, BIN, VKUBE, HOST_KUBECONFIG, SERVE_PID
#   bench_host_pids                      pids of the host cluster's processes
#   bench_keep_log NAME                  copies the serve log to .cache/bench/serve-NAME.log

OUT_DIR="$ROOT/.cache/bench"

bench_cleanup() {
  [[ -n "${SERVE_PID:-}" ]] && kill -TERM "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null || true
  [[ -n "${WORK:-}" ]] || return 0
  "$HACK_DIR/host-cluster.sh" down --dir "$WORK/host" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}

bench_host_pids() { pgrep -f -- "$WORK/host"; }

bench_start() {
  local kind="$1" nodes="$2"; shift 2
  mkdir -p "$OUT_DIR"
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/vkube-bench-$kind.XXXXXX")"
  trap bench_cleanup EXIT
  BIN="$("$HACK_DIR/build-components.sh")"
  # VKUBE_BENCH_BIN benches a given build (an A/B of two commits) instead of this tree's.
  if [[ -n "${VKUBE_BENCH_BIN:-}" ]]; then
    VKUBE="$VKUBE_BENCH_BIN"
  else
    (cd "$ROOT" && cargo build --release --locked --quiet)
    VKUBE="${CARGO_TARGET_DIR:-$ROOT/target}/release/vkube"
  fi
  HOST_KUBECONFIG="$("$HACK_DIR/host-cluster.sh" up --dir "$WORK/host" --nodes "$nodes" ${BENCH_HOST_FLAGS:-})"
  if [[ -n "${BENCH_BEFORE_SERVE:-}" ]]; then "$BENCH_BEFORE_SERVE"; fi
  local port
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  "$@" "$VKUBE" serve --name bench --host-kubeconfig "$HOST_KUBECONFIG" --create-namespace \
    --bin-dir "$BIN" --data-dir "$WORK/vc" --listen "127.0.0.1:$port" \
    --kubeconfig-out "$WORK/kubeconfig" > "$WORK/serve.log" 2>&1 &
  SERVE_PID=$!
  until [[ -f "$WORK/kubeconfig" ]]; do
    kill -0 "$SERVE_PID" 2>/dev/null || { tail -n 20 "$WORK/serve.log" >&2; exit 1; }
    sleep 0.1
  done
}

bench_keep_log() { cp "$WORK/serve.log" "$OUT_DIR/serve-$1.log"; }
