#!/usr/bin/env bash
# A real Kubernetes host cluster on loopback: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler and kwok (fake nodes: scheduled pods become Running without containers).
#
#   hack/host-cluster.sh up   [--dir DIR] [--nodes N] [--metrics-server] [--fsync]
#                             [--kubernetes-version v1.MINOR.PATCH]
#                                                       start (idempotent); prints the kubeconfig path
#   hack/host-cluster.sh down [--dir DIR]               stop every process, leave nothing behind
#   hack/host-cluster.sh status [--dir DIR]
#
# Each DIR is an independent cluster on its own free ports, so several can run side by side.
# Default DIR: $VKUBE_CACHE/host-cluster. The admin kubeconfig is DIR/kubeconfig.
# --metrics-server: also metrics-server (the host's metrics.k8s.io API, as a process behind an
# APIService), fed by kwok's emulation of each fake node's kubelet /metrics/resource.
# --fsync: etcd syncs every write to disk, as a production host does (and as each tenant's etcd
# always does). Without it the host's etcd runs with --unsafe-no-fsync: faster tests, but a
# benchmark baseline that pays no fsync at all (hack/bench-sync.sh passes --fsync).
# --kubernetes-version: a host of another Kubernetes version than the pinned K8S_VERSION (a minor
# older or newer, to test the syncer against version skew): kube-apiserver,
# kube-controller-manager and kube-scheduler of that version (hack/build-components.sh
# --control-plane VERSION, cached); etcd, kwok and kubectl stay pinned. An `up` with another
# version than the running cluster's restarts it.
set -euo pipefail
HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HACK_DIR/versions.sh"

cmd="${1:-}"; shift || true
DIR="$VKUBE_CACHE/host-cluster"
NODES=3
METRICS_SERVER=0
FSYNC=0
HOST_VERSION="$K8S_VERSION"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --nodes) NODES="$2"; shift 2 ;;
    --metrics-server) METRICS_SERVER=1; shift ;;
    --fsync) FSYNC=1; shift ;;
    --kubernetes-version)
      [[ "${2:-}" =~ ^v1\.[0-9]+\.[0-9]+$ ]] || { echo "--kubernetes-version takes v1.MINOR.PATCH, not '${2:-}'" >&2; exit 2; }
      HOST_VERSION="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
PIDS="$DIR/pids"; LOGS="$DIR/logs"; PKI="$DIR/pki"

log() { printf '[host-cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[host-cluster] ERROR: %s\n' "$*" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

alive() { [[ -f "$PIDS/$1" ]] && kill -0 "$(cat "$PIDS/$1")" 2>/dev/null; }

start_proc() { # name binary args...
  local name="$1"; shift
  mkdir -p "$PIDS" "$LOGS"
  setsid "$@" >"$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! > "$PIDS/$name"
}

stop_all() {
  [[ -d "$PIDS" ]] || return 0
  local order=(metrics-server kwok kube-scheduler kube-controller-manager kube-apiserver etcd)
  for name in "${order[@]}"; do
    [[ -f "$PIDS/$name" ]] || continue
    local pid; pid="$(cat "$PIDS/$name")"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$PIDS/$name"
  done
}

# What kwok's kubelet endpoint serves for every fake pod, so logs, attach, exec and port-forward
# work end to end through the host API (and vkube's proxy): logs and attach read
# DIR/kwok-pods.log (CRI log format; tests append lines to it), exec runs the command here, in
# DIR/kwok-exec, as this user (a test harness only: never give kwok this config elsewhere), and
# port-forward echoes every port back (`cat`).
kwok_debugging_config() {
  mkdir -p "$DIR/kwok-exec"
  [[ -f "$DIR/kwok-pods.log" ]] || printf '%s stdout F %s\n' \
    "2026-01-01T00:00:00.000000000Z" "kwok pod log: first line" \
    "2026-01-01T00:00:01.000000000Z" "kwok pod log: second line" > "$DIR/kwok-pods.log"
  [[ -f "$DIR/kwok-pods-previous.log" ]] || printf '%s stdout F %s\n' \
    "2025-12-31T00:00:00.000000000Z" "kwok pod log: previous container" > "$DIR/kwok-pods-previous.log"
  cat > "$DIR/kwok-debugging.yaml" <<YAML
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterLogs
metadata: {name: every-pod}
spec:
  logs:
  - {logsFile: "$DIR/kwok-pods.log", previousLogsFile: "$DIR/kwok-pods-previous.log"}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterAttach
metadata: {name: every-pod}
spec:
  attaches:
  - {logsFile: "$DIR/kwok-pods.log"}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterExec
metadata: {name: every-pod}
spec:
  execs:
  - local: {workDir: "$DIR/kwok-exec"}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterPortForward
metadata: {name: every-pod}
spec:
  forwards:
  - command: [cat]
YAML
}

gen_pki() {
  [[ -f "$PKI/.done" ]] && return 0
  command -v openssl >/dev/null || die "openssl is needed to create the host cluster's certificates (apt-get install openssl)"
  mkdir -p "$PKI"; cd "$PKI"
  local days=3650
  ca() { openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$1.key" -out "$1.crt" -days $days -subj "/CN=$2" 2>/dev/null; }
  leaf() { # name ca subject ext
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$1.key" -out "$1.csr" -subj "$3" 2>/dev/null
    printf '%b' "$4" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA "$2.crt" -CAkey "$2.key" -CAcreateserial -out "$1.crt" -days $days -extfile "$1.ext" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
  }
  local client='extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n'
  ca ca host-cluster-ca
  ca front-proxy-ca host-cluster-front-proxy-ca
  leaf apiserver ca "/CN=kube-apiserver" 'extendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\nsubjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.96.0.1\n'
  leaf admin ca "/O=system:masters/CN=kubernetes-admin" "$client"
  leaf controller-manager ca "/CN=system:kube-controller-manager" "$client"
  leaf scheduler ca "/CN=system:kube-scheduler" "$client"
  leaf kwok ca "/O=system:masters/CN=kwok" "$client"
  leaf apiserver-kubelet-client ca "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
  leaf front-proxy-client front-proxy-ca "/CN=front-proxy-client" "$client"
  leaf kwok-kubelet ca "/CN=kwok-kubelet" 'extendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n'
  metrics_server_pki
  openssl ecparam -name prime256v1 -genkey -noout 2>/dev/null | openssl pkcs8 -topk8 -nocrypt -out sa.key
  openssl ec -in sa.key -pubout -out sa.pub 2>/dev/null
  chmod 600 ./*.key
  touch .done
  cd - >/dev/null
}

# metrics-server's serving certificate (the name the aggregator checks) and client identity;
# also made for a PKI directory created before they existed.
metrics_server_pki() {
  [[ -f "$PKI/metrics-server-serving.crt" ]] && return 0
  (
    cd "$PKI"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout metrics-server-serving.key -out ms.csr -subj "/CN=metrics-server" 2>/dev/null
    printf 'extendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\nsubjectAltName=DNS:metrics-server.kube-system.svc\n' > ms.ext
    openssl x509 -req -in ms.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out metrics-server-serving.crt -days 3650 -extfile ms.ext 2>/dev/null
    # A test harness identity: it reads nodes and pods and reviews tokens and access.
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout metrics-server.key -out ms.csr -subj "/O=system:masters/CN=system:metrics-server" 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n' > ms.ext
    openssl x509 -req -in ms.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out metrics-server.crt -days 3650 -extfile ms.ext 2>/dev/null
    rm -f ms.csr ms.ext
    chmod 600 ./*.key
  )
}

# metrics-server as a process on loopback behind the APIService v1beta1.metrics.k8s.io. The
# APIService names an ExternalName Service (localhost): the host API server resolves it to the
# name and dials localhost:PORT; there is no kube-proxy here to route a cluster IP, and Endpoints
# may not hold loopback addresses.
start_metrics_server() { # kubectl
  local kubectl="$1" port
  port=$(free_port)
  metrics_server_pki
  kubeconfig "$DIR/metrics-server.kubeconfig" metrics-server "https://127.0.0.1:$(cat "$DIR/apiserver-port")"
  log "starting metrics-server on https://127.0.0.1:$port"
  start_proc metrics-server "$VKUBE_BIN/metrics-server" \
    --kubeconfig "$DIR/metrics-server.kubeconfig" \
    --authentication-kubeconfig "$DIR/metrics-server.kubeconfig" --authorization-kubeconfig "$DIR/metrics-server.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$port" \
    --tls-cert-file "$PKI/metrics-server-serving.crt" --tls-private-key-file "$PKI/metrics-server-serving.key" \
    --kubelet-use-node-status-port --kubelet-preferred-address-types InternalIP \
    --kubelet-certificate-authority "$PKI/ca.crt" --metric-resolution 15s --kubelet-request-timeout 5s
  cat <<YAML | "$kubectl" --kubeconfig "$DIR/kubeconfig" apply -f - >/dev/null
apiVersion: v1
kind: Service
metadata: {name: metrics-server, namespace: kube-system}
spec: {type: ExternalName, externalName: localhost}
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.metrics.k8s.io}
spec:
  group: metrics.k8s.io
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  service: {name: metrics-server, namespace: kube-system, port: $port}
  caBundle: $(base64 -w0 < "$PKI/ca.crt")
YAML
  # Available once it answers. Numbers follow a pod's first two scrapes (kwok reports a node
  # as the sum of its pods, and metrics-server leaves out a node whose usage is zero).
  wait_for "the metrics API" 90 "$kubectl" --kubeconfig "$DIR/kubeconfig" get --raw /apis/metrics.k8s.io/v1beta1/nodes \
    || die "metrics-server does not answer (logs: $LOGS/metrics-server.log)"
}

kubeconfig() { # file user server
  local b64; b64() { base64 -w0 < "$1"; }
  cat > "$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: host
  cluster:
    server: $3
    certificate-authority-data: $(b64 "$PKI/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(b64 "$PKI/$2.crt")
    client-key-data: $(b64 "$PKI/$2.key")
contexts:
- name: host
  context: {cluster: host, user: $2}
current-context: host
KC
  chmod 600 "$1"
}

# The CSI snapshot CRDs, as a host with a CSI snapshot controller has them (for the
# VolumeSnapshot sync tests), from the external-snapshotter client Go module.
install_snapshot_crds() { # kubectl
  local dir
  dir="$(go mod download -json "github.com/kubernetes-csi/external-snapshotter/client/v8@$SNAPSHOTTER_CLIENT_VERSION" \
    | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')" || die "downloading the snapshot CRDs failed"
  [[ -d "$dir/config/crd" ]] || die "no config/crd in the external-snapshotter client module ($dir)"
  local f
  for f in volumesnapshotclasses volumesnapshotcontents volumesnapshots; do
    "$1" --kubeconfig "$DIR/kubeconfig" apply -f "$dir/config/crd/snapshot.storage.k8s.io_$f.yaml" >/dev/null \
      || die "installing the $f CRD failed"
  done
}

nodes_ready() { # kubectl count: true once `count` nodes report Ready
  local ready
  ready="$("$1" --kubeconfig "$DIR/kubeconfig" get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c '^True$')" || return 1
  (( ready >= $2 ))
}

wait_for() { # description seconds command...
  local what="$1" secs="$2"; shift 2
  local deadline=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    if (( $(date +%s) > deadline )); then
      log "timed out waiting for $what; last log lines:"
      tail -n 20 "$LOGS"/*.log >&2 || true
      return 1
    fi
    sleep 0.2
  done
}

up() {
  local bin build_flags=()
  (( METRICS_SERVER )) && build_flags+=(--metrics-server)
  bin="$("$HACK_DIR/build-components.sh" "${build_flags[@]}")"
  local kubectl="$bin/kubectl"
  # The host's own control plane: the pinned version's, or that of --kubernetes-version.
  local cp_bin="$bin"
  if [[ "$HOST_VERSION" != "$K8S_VERSION" ]]; then
    cp_bin="$("$HACK_DIR/build-components.sh" --control-plane "$HOST_VERSION")"
  fi
  if alive kube-apiserver && alive etcd && alive kwok && [[ -f "$DIR/kubeconfig" ]] \
     && [[ "$(cat "$DIR/kubernetes-version" 2>/dev/null)" == "$HOST_VERSION" ]] \
     && { (( ! METRICS_SERVER )) || alive metrics-server; } \
     && "$kubectl" --kubeconfig "$DIR/kubeconfig" get --raw /readyz >/dev/null 2>&1; then
    log "host cluster already running in $DIR"
    echo "$DIR/kubeconfig"; return 0
  fi
  stop_all
  # etcd keeps its data across restarts of the same DIR; a host of another version starts afresh
  # (an API server never reads objects a newer one stored).
  if [[ -d "$DIR/etcd" && "$(cat "$DIR/kubernetes-version" 2>/dev/null || echo "$K8S_VERSION")" != "$HOST_VERSION" ]]; then
    rm -rf "$DIR/etcd"
  fi
  echo "$HOST_VERSION" > "$DIR/kubernetes-version"
  gen_pki
  local t0; t0=$(date +%s.%N)
  local etcd_port peer_port api_port kwok_port
  etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port); kwok_port=$(free_port)
  echo "$api_port" > "$DIR/apiserver-port"
  mkdir -p "$DIR/etcd"
  local no_fsync=(--unsafe-no-fsync)
  (( FSYNC )) && no_fsync=()
  log "starting etcd on 127.0.0.1:$etcd_port$( (( FSYNC )) && echo ' (fsync on)')"
  start_proc etcd "$bin/etcd" --name host --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "host=http://127.0.0.1:$peer_port" --log-level warn "${no_fsync[@]}"
  log "starting kube-apiserver $HOST_VERSION on https://127.0.0.1:$api_port"
  start_proc kube-apiserver "$cp_bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --requestheader-client-ca-file "$PKI/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$PKI/front-proxy-client.crt" --proxy-client-key-file "$PKI/front-proxy-client.key" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$PKI/ca.crt" \
    --kubelet-preferred-address-types InternalIP \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction \
    --service-cluster-ip-range 10.96.0.0/16 \
    --allow-privileged=true --profiling=false
  kubeconfig "$DIR/kubeconfig" admin "https://127.0.0.1:$api_port"
  kubeconfig "$DIR/controller-manager.kubeconfig" controller-manager "https://127.0.0.1:$api_port"
  kubeconfig "$DIR/scheduler.kubeconfig" scheduler "https://127.0.0.1:$api_port"
  kubeconfig "$DIR/kwok.kubeconfig" kwok "https://127.0.0.1:$api_port"
  wait_for "kube-apiserver /readyz" 60 "$kubectl" --kubeconfig "$DIR/kubeconfig" get --raw /readyz \
    || die "kube-apiserver did not become ready (logs: $LOGS)"
  log "kube-apiserver ready after $(echo "$(date +%s.%N) - $t0" | bc 2>/dev/null || echo '?') s"
  start_proc kube-controller-manager "$cp_bin/kube-controller-manager" \
    --kubeconfig "$DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$DIR/controller-manager.kubeconfig" --authorization-kubeconfig "$DIR/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --controllers '*,-node-ipam-controller,-node-route-controller,-service-lb-controller,-cloud-node-lifecycle-controller' \
    --profiling=false
  start_proc kube-scheduler "$cp_bin/kube-scheduler" \
    --kubeconfig "$DIR/scheduler.kubeconfig" \
    --authentication-kubeconfig "$DIR/scheduler.kubeconfig" --authorization-kubeconfig "$DIR/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false --profiling=false
  local stages=() f
  for f in "$VKUBE_CACHE/$K8S_VERSION/kwok-stages"/*.yaml; do stages+=(--config "$f"); done
  kwok_debugging_config
  stages+=(--config "$DIR/kwok-debugging.yaml")
  if (( METRICS_SERVER )); then
    for f in "$VKUBE_CACHE/$K8S_VERSION/kwok-metrics"/*.yaml; do stages+=(--config "$f"); done
  fi
  start_proc kwok "$bin/kwok" --kubeconfig "$DIR/kwok.kubeconfig" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --node-lease-duration-seconds 40 \
    --cidr 10.244.0.0/16 --node-ip 127.0.0.1 \
    --server-address "127.0.0.1:$kwok_port" --node-port "$kwok_port" \
    --tls-cert-file "$PKI/kwok-kubelet.crt" --tls-private-key-file "$PKI/kwok-kubelet.key" \
    "${stages[@]}"
  local i
  for i in $(seq 0 $((NODES - 1))); do
    cat <<NODE
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations: {kwok.x-k8s.io/node: fake, metrics.k8s.io/resource-metrics-path: /metrics/nodes/kwok-node-$i/metrics/resource}
  labels: {type: kwok, kubernetes.io/hostname: kwok-node-$i, kubernetes.io/os: linux, kubernetes.io/arch: amd64}
status:
  capacity: {cpu: "32", memory: 256Gi, pods: "110"}
  allocatable: {cpu: "32", memory: 256Gi, pods: "110"}
---
NODE
  done | "$kubectl" --kubeconfig "$DIR/kubeconfig" apply -f - >/dev/null
  # Nodes kept from an earlier `up` of this DIR (etcd keeps its data) still name the kubelet port
  # of the kwok that ran then, and kwok does not correct it: logs, exec and metrics would dial a
  # dead port.
  for i in $(seq 0 $((NODES - 1))); do
    "$kubectl" --kubeconfig "$DIR/kubeconfig" patch node "kwok-node-$i" --subresource status --type merge \
      -p "{\"status\":{\"daemonEndpoints\":{\"kubeletEndpoint\":{\"Port\":$kwok_port}}}}" >/dev/null
  done
  wait_for "$NODES kwok nodes Ready" 60 nodes_ready "$kubectl" "$NODES" \
    || die "kwok nodes did not become Ready (logs: $LOGS)"
  wait_for "default service account" 30 "$kubectl" --kubeconfig "$DIR/kubeconfig" get serviceaccount default -n default \
    || die "controller-manager did not create the default ServiceAccount (logs: $LOGS)"
  install_snapshot_crds "$kubectl"
  (( METRICS_SERVER )) && start_metrics_server "$kubectl"
  local names=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
  (( METRICS_SERVER )) && names+=(metrics-server)
  for name in "${names[@]}"; do
    alive "$name" || die "$name exited (log: $LOGS/$name.log)"
  done
  log "host cluster (Kubernetes $HOST_VERSION) up in $(echo "$(date +%s.%N) - $t0" | bc 2>/dev/null || echo '?') s: $NODES nodes, kubeconfig $DIR/kubeconfig"
  echo "$DIR/kubeconfig"
}

case "$cmd" in
  up) up ;;
  down) stop_all; log "host cluster in $DIR stopped" ;;
  status)
    echo "kubernetes: $(cat "$DIR/kubernetes-version" 2>/dev/null || echo "$K8S_VERSION")"
    for name in etcd kube-apiserver kube-controller-manager kube-scheduler kwok metrics-server; do
      [[ "$name" == metrics-server && ! -f "$PIDS/$name" ]] && continue
      if alive "$name"; then echo "$name: running (pid $(cat "$PIDS/$name"))"; else echo "$name: stopped"; fi
    done ;;
  *) echo "usage: $0 up|down|status [--dir DIR] [--nodes N] [--metrics-server] [--fsync] [--kubernetes-version VERSION]" >&2; exit 2 ;;
esac
