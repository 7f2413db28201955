#!/usr/bin/env bash
# Sleep and wake on the real node: `vkube bench wake` against a tenant of the platform (the chart
# installed with helm, the vkube image on the node), with resume-from-pause as the baseline in
# the same run, a sleeping tenant's footprint against an idle one's, and the density that
# follows. Needs the real node (hack/real-node.sh: exclusive on the machine; exit 4 = someone
# else has it, try later) and builds the vkube image (a release build) if it is not current.
#
#   hack/bench-wake.sh [RUNS] [--host-dir DIR]
#     RUNS: default 20; writes JSON to .cache/bench/wake.json
#     --host-dir: a host cluster of hack/host-cluster.sh that already has the real node (e.g. left
#     by an e2e run): used as it is and left running; without it both are started and stopped.
set -euo pipefail
HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HACK_DIR/.." && pwd)"
source "$HACK_DIR/versions.sh"
RUNS=20 REUSE=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --host-dir) REUSE="$(cd "$2" && pwd)"; shift 2 ;;
    [0-9]*) RUNS="$1"; shift ;;
    *) echo "usage: $0 [RUNS] [--host-dir DIR]" >&2; exit 2 ;;
  esac
done
OUT_DIR="$ROOT/.cache/bench"; mkdir -p "$OUT_DIR"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/vkube-bench-wake.XXXXXX")"
log() { printf '[bench-wake %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
HOST_DIR="${REUSE:-$WORK/host}"
cleanup() {
  if [[ -z "$REUSE" ]]; then
    "$HACK_DIR/real-node.sh" down --dir "$HOST_DIR" >/dev/null 2>&1 || log "WARNING: real-node.sh down failed"
    "$HACK_DIR/host-cluster.sh" down --dir "$HOST_DIR" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK" /tmp/vkube-bench-wake-volume
}
trap cleanup EXIT

BIN="$("$HACK_DIR/build-components.sh")"
if [[ -n "$REUSE" ]]; then
  HOST_KUBECONFIG="$HOST_DIR/kubeconfig"
else
  HOST_KUBECONFIG="$("$HACK_DIR/host-cluster.sh" up --dir "$HOST_DIR" --nodes 1)"
fi
rc=0
# Idempotent for a DIR whose real node runs (the vkube image is imported again if it changed).
ENV_FILE="$("$HACK_DIR/real-node.sh" up --dir "$HOST_DIR" --with-vkube-image)" || rc=$?
case "$rc" in
  0) ;;
  3) log "this machine cannot run containers: no real node, no benchmark"; exit 3 ;;
  4) log "another run has the real node (exit 4): try again later"; exit 4 ;;
  *) log "hack/real-node.sh up failed (exit $rc)"; exit 1 ;;
esac
set -a; source "$ENV_FILE"; set +a
VKUBE="${CARGO_TARGET_DIR:-$ROOT/target}/release/vkube"
kubectl() { "$BIN/kubectl" --kubeconfig "$HOST_KUBECONFIG" "$@"; }

image="$VKUBE_E2E_VKUBE_IMAGE"
placement='{nodeSelector: {vkube.dev/node-type: real}, tolerations: [{key: vkube.dev/real-node, operator: Exists, effect: NoSchedule}]}'
cat > "$WORK/values.yaml" <<EOF
image: {repository: ${image%:*}, tag: ${image##*:}, pullPolicy: Never}
manager: $placement
policy:
  controlPlane: {cpuRequest: 100m, memoryRequest: 256Mi, memoryLimit: 1Gi, storage: 1Gi, storageClassName: vkube-bench-local}
  placement: $placement
EOF
log "helm install (image $image)"
"$BIN/helm" --kubeconfig "$HOST_KUBECONFIG" upgrade --install vkube "$ROOT/charts/vkube" \
  --namespace vkube-system --create-namespace -f "$WORK/values.yaml" --wait --timeout 3m >/dev/null

# The datastore volume: a host directory (the harness has no provisioner).
NAME=wake
mkdir -p /tmp/vkube-bench-wake-volume && chmod 0777 /tmp/vkube-bench-wake-volume
kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: vkube-bench-wake}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Delete
  storageClassName: vkube-bench-local
  claimRef: {namespace: vkube-$NAME, name: data-vkube-0}
  hostPath: {path: /tmp/vkube-bench-wake-volume, type: Directory}
EOF
log "vkube create $NAME"
HOME="$WORK" KUBECONFIG="$HOST_KUBECONFIG" "$VKUBE" create "$NAME" --no-switch --wait 300 >&2

log "vkube bench wake: $RUNS wakes and $RUNS resumes"
"$VKUBE" bench wake --kubeconfig "$HOST_KUBECONFIG" --name "$NAME" --node "$VKUBE_E2E_REAL_NODE_NAME" \
  --runs "$RUNS" --output "$OUT_DIR/wake.json" > /dev/null
log "wrote $OUT_DIR/wake.json"
HOME="$WORK" KUBECONFIG="$HOST_KUBECONFIG" "$VKUBE" delete "$NAME" --wait 120 >&2 || true
