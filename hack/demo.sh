#!/usr/bin/env bash
# Brings up a local host cluster and one virtual cluster, then prints how to use it.
#
#   hack/demo.sh [NAME]     start (idempotent); NAME defaults to "demo"
#   hack/demo.sh down       stop the virtual cluster(s) and the host cluster (their data is kept:
#                           the next start shows the same objects)
#   hack/demo.sh reset      stop everything and delete its data, so the next start is empty
set -euo pipefail
HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HACK_DIR/.." && pwd)"
source "$HACK_DIR/versions.sh"
DEMO_DIR="$VKUBE_CACHE/demo"
HOST_DIR="$DEMO_DIR/host"
log() { printf '[demo %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [[ "${1:-}" == "down" || "${1:-}" == "reset" ]]; then
  for pidfile in "$DEMO_DIR"/*/serve.pid; do
    [[ -f "$pidfile" ]] || continue
    pid="$(cat "$pidfile")"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$pidfile"
  done
  "$HACK_DIR/host-cluster.sh" down --dir "$HOST_DIR"
  if [[ "$1" == "reset" ]]; then
    rm -rf "$DEMO_DIR"
    log "deleted the demo's data ($DEMO_DIR)"
  fi
  exit 0
fi

NAME="${1:-demo}"
VC_DIR="$DEMO_DIR/$NAME"
mkdir -p "$VC_DIR"
BIN="$("$HACK_DIR/build-components.sh")"
log "building vkube (release)"
(cd "$ROOT" && cargo build --release --locked --quiet)
# Where cargo put it: CARGO_TARGET_DIR when the user sets one (as .ci/run does), else target/.
VKUBE="${CARGO_TARGET_DIR:-$ROOT/target}/release/vkube"
# fsync on, as on a real host and as every tenant etcd runs: what the demo shows is not flattered.
HOST_KUBECONFIG="$("$HACK_DIR/host-cluster.sh" up --dir "$HOST_DIR" --metrics-server --fsync)"

if [[ -f "$VC_DIR/serve.pid" ]] && kill -0 "$(cat "$VC_DIR/serve.pid")" 2>/dev/null; then
  log "virtual cluster $NAME already running"
else
  PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  [[ -f "$VC_DIR/port" ]] && PORT="$(cat "$VC_DIR/port")"
  echo "$PORT" > "$VC_DIR/port"
  rm -f "$VC_DIR/kubeconfig"
  log "starting virtual cluster $NAME (vkube serve, log: $VC_DIR/serve.log)"
  setsid "$VKUBE" serve --name "$NAME" --host-kubeconfig "$HOST_KUBECONFIG" --create-namespace \
    --bin-dir "$BIN" --data-dir "$VC_DIR/data" --listen "127.0.0.1:$PORT" \
    --kubeconfig-out "$VC_DIR/kubeconfig" > "$VC_DIR/serve.log" 2>&1 < /dev/null &
  echo $! > "$VC_DIR/serve.pid"
  for _ in $(seq 1 1200); do
    [[ -f "$VC_DIR/kubeconfig" ]] && break
    if ! kill -0 "$(cat "$VC_DIR/serve.pid")" 2>/dev/null; then
      echo "vkube serve exited; its log:" >&2; tail -n 20 "$VC_DIR/serve.log" >&2; exit 1
    fi
    sleep 0.1
  done
  [[ -f "$VC_DIR/kubeconfig" ]] || { echo "virtual cluster not ready after 120 s; see $VC_DIR/serve.log" >&2; exit 1; }
fi

# A demo started again keeps its objects: suggest creating the example only when it is not there.
TRY="kubectl create deployment web --image=nginx --replicas=2"
if "$BIN/kubectl" --kubeconfig "$VC_DIR/kubeconfig" get deployment web -n default >/dev/null 2>&1; then
  TRY="kubectl get deployment web    # made by an earlier run; hack/demo.sh reset starts empty"
fi

cat <<MSG

Virtual cluster "$NAME" is ready (host namespace vkube-$NAME on the local host cluster).

  export KUBECONFIG=$VC_DIR/kubeconfig
  export PATH=$BIN:\$PATH        # kubectl $K8S_VERSION

  kubectl get namespaces
  $TRY

The host cluster:  kubectl --kubeconfig $HOST_KUBECONFIG get all -n vkube-$NAME
Stop everything:   hack/demo.sh down     (hack/demo.sh reset also deletes the demo's data)
MSG
