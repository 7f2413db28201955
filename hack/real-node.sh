#!/usr/bin/env bash
# A real node for a host cluster of hack/host-cluster.sh: containerd + runc, a kubelet, kube-proxy
# (iptables mode), CoreDNS and kube-router's NetworkPolicy firewall, so tests can run real
# containers beside the kwok nodes and see NetworkPolicies stop real packets.
#
#   hack/real-node.sh up     --dir DIR [--with-vkube-image]   start; prints the path of an env file
#                                                             for the e2e tests
#   hack/real-node.sh down   --dir DIR                        stop; leave nothing of ours behind
#   hack/real-node.sh status --dir DIR
#
# DIR is the host cluster's directory (its kubeconfig and PKI are used); the node's own files live
# in DIR/real-node. `up` exits with 3 when this machine cannot run containers (not root, no apt to
# install the runtime, kernel features missing, runc cannot start a container), and with 4 when
# another DIR's real node is running here: the reason is on stderr and in DIR/real-node/unsupported.
# Any other failure exits 1.
#
# The node is labelled vkube.dev/node-type=real and tainted vkube.dev/real-node=true:NoSchedule, so
# only pods that tolerate the taint land on it; kwok nodes stay untainted.
#
# One real node per machine: its address, bridges and kube-proxy's iptables rules are
# machine-wide. Machine-wide state (which DIR owns the node, what existed before it started) is
# kept in $STATE so `down` removes exactly what `up` added.
set -euo pipefail
HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HACK_DIR/versions.sh"

cmd="${1:-}"; shift || true
DIR="" WITH_VKUBE=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --with-vkube-image) WITH_VKUBE=1; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[[ -n "$DIR" ]] || { echo "usage: $0 up|down|status --dir DIR (the host cluster's dir)" >&2; exit 2; }
DIR="$(cd "$DIR" 2>/dev/null && pwd)" || { echo "no such directory: $DIR" >&2; exit 2; }
STATE=/run/vkube-real-node
# The paths of one DIR's node (also used to clean up after another DIR's stale node).
use_dir() {
  DIR="$1" ND="$1/real-node"
  PIDS="$ND/pids" LOGS="$ND/logs" PKI="$ND/pki" CTR_SOCK="$ND/containerd/containerd.sock"
}
use_dir "$DIR"

NODE_NAME=vkube-real-node
# The node's address: a bridge with no ports and a /32 address. The kernel has no `dummy` module
# (no loadable modules at all); an empty bridge is the one always-there device that can own an
# address. Loopback cannot serve: the apiserver reaches kubelets at their InternalIP, and pods
# could not reach a 127.x address of the host.
NODE_DEV=vkube-node0
NODE_IP=10.86.0.1
# Pods: their own bridge and range, clear of kwok's 10.244.0.0/16 and the services' 10.96.0.0/16.
CNI_DEV=vkube-cni0
CNI_NET=vkube-real-node
POD_CIDR=10.85.0.0/24
POD_GW=10.85.0.1
# The cluster DNS Service: the conventional kube-dns ClusterIP of the host's 10.96.0.0/16 range.
DNS_IP=10.96.0.10
# The `kubernetes` Service: how in-cluster clients (the vkube manager, `vkube serve`) reach the API.
API_SERVICE_IP=10.96.0.1
TAINT_KEY=vkube.dev/real-node
LABEL=vkube.dev/node-type=real
PACKAGES=(containerd runc containernetworking-plugins busybox-static iptables ipset gcc libc6-dev)
# Kernel settings the kubelet (protectKernelDefaults=false makes it set its preferred values),
# the CNI bridge plugin (ip_forward) and kube-proxy may change: saved by `up`, restored by `down`.
SYSCTLS=(net/ipv4/ip_forward net/ipv4/conf/all/route_localnet vm/overcommit_memory vm/panic_on_oom
  kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys kernel/keys/root_maxbytes
  net/bridge/bridge-nf-call-iptables)
# Host paths outside DIR that containerd 1.6, libcni and the kubelet create no matter how they are
# configured; `down` removes them when they did not exist before `up`.
HOST_DIRS=(/run/containerd /run/netns /var/lib/cni /var/log/containers /var/lib/kubelet)

log() { printf '[real-node %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[real-node] ERROR: %s\n' "$*" >&2; exit 1; }
# This machine cannot run containers: exit 3 so hack/test.sh can tell it from a broken setup.
unsupported() {
  mkdir -p "$ND"; printf '%s\n' "$*" > "$ND/unsupported"
  printf '[real-node] CANNOT RUN CONTAINERS ON THIS MACHINE: %s\n' "$*" >&2
  exit 3
}

alive() { [[ -f "$PIDS/$1" ]] && kill -0 "$(cat "$PIDS/$1")" 2>/dev/null; }
any_alive() { local f; for f in "$PIDS"/*; do [[ -f "$f" ]] && kill -0 "$(cat "$f")" 2>/dev/null && return 0; done; return 1; }

start_proc() { # name binary args...
  local name="$1"; shift
  mkdir -p "$PIDS" "$LOGS"
  setsid "$@" >"$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! > "$PIDS/$name"
}

stop_proc() { # name [seconds]
  local name="$1" secs="${2:-10}" pid
  [[ -f "$PIDS/$name" ]] || return 0
  pid="$(cat "$PIDS/$name")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((secs * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDS/$name"
}

wait_for() { # description seconds command...
  local what="$1" secs="$2"; shift 2
  local deadline=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    if (( $(date +%s) > deadline )); then
      log "timed out waiting for $what; last log lines:"
      for f in "$LOGS"/*.log; do [[ -f "$f" ]] && { echo "--- $f" >&2; tail -n 15 "$f" >&2; }; done
      return 1
    fi
    sleep 0.2
  done
}

kubectl_host() { "$VKUBE_BIN/kubectl" --kubeconfig "$DIR/kubeconfig" --request-timeout 10s "$@"; }

# ---------------------------------------------------------------------------------------------
# Preflight and packages

preflight() {
  [[ "$(uname -s)" == Linux ]] || unsupported "not Linux"
  [[ "$(id -u)" == 0 ]] || unsupported "not root (containerd, the kubelet and kube-proxy need root)"
  grep -qw overlay /proc/filesystems || unsupported "the kernel has no overlay filesystem (containerd's snapshotter)"
  [[ -d /sys/fs/cgroup/memory && -d /sys/fs/cgroup/cpu && -d /sys/fs/cgroup/pids ]] \
    || unsupported "cgroup v1 with the cpu, memory and pids controllers is needed (this harness configures the kubelet for cgroup v1)"
  unshare --net true 2>/dev/null || unsupported "cannot create network namespaces (unshare --net failed)"
  [[ -f "$DIR/kubeconfig" && -f "$DIR/pki/ca.key" ]] \
    || die "$DIR is not a host cluster dir of hack/host-cluster.sh (no kubeconfig or pki/ca.key); run hack/host-cluster.sh up --dir $DIR first"
  check_disk "$DIR"
}

# Near a full disk the kubelet reports DiskPressure and taints the node (evictionHard above is
# 1 %): no test pod starts and every real-node test times out with nothing in its message to say
# why (seen: 6 of 9 failed with 3.7 GiB free of 252 GiB). Say so before starting anything.
check_disk() {
  local size_kb avail_kb
  read -r size_kb avail_kb < <(df -Pk "$1" | awk 'NR == 2 {print $2, $4}')
  if (( avail_kb < 4 * 1024 * 1024 || avail_kb * 100 < 3 * size_kb )); then
    die "only $((avail_kb / 1024)) MiB free of $((size_kb / 1024 / 1024)) GiB on the disk holding $1: the kubelet would report DiskPressure and no pod would start; free some space (old cargo target dirs, /tmp) and run again (at least 4 GiB and 3 % are needed)"
  fi
}

install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  command -v apt-get >/dev/null \
    || unsupported "packages missing (${missing[*]}) and no apt-get to install them: this harness needs Debian/Ubuntu packages"
  log "installing ${missing[*]} (apt)"
  local out="$ND/logs/apt.log"
  mkdir -p "$ND/logs"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >"$out" 2>&1; then
    log "apt-get install failed; running apt-get update once and retrying"
    apt-get update >>"$out" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >>"$out" 2>&1 \
      || unsupported "apt-get install ${missing[*]} failed: $(tail -n 3 "$out" | tr '\n' ' ')"
  fi
  # Debian's postinst would start a system containerd under systemd; ours is separate either way.
}

# ---------------------------------------------------------------------------------------------
# Certificates, signed by the host cluster's CA (DIR/pki), made with openssl like its own.

leaf() { # name subject extensions
  [[ -f "$PKI/$1.crt" ]] && return 0
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$PKI/$1.key" \
    -out "$PKI/$1.csr" -subj "$2" 2>/dev/null
  printf '%b' "$3" > "$PKI/$1.ext"
  openssl x509 -req -in "$PKI/$1.csr" -CA "$DIR/pki/ca.crt" -CAkey "$DIR/pki/ca.key" -CAcreateserial \
    -out "$PKI/$1.crt" -days 3650 -extfile "$PKI/$1.ext" 2>/dev/null
  rm -f "$PKI/$1.csr" "$PKI/$1.ext"
  chmod 600 "$PKI/$1.key"
}

gen_pki() {
  mkdir -p "$PKI"
  local client='extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n'
  # The Node authorizer and NodeRestriction recognise a kubelet by exactly this identity.
  leaf kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME" "$client"
  # The apiserver verifies kubelets against the CA (--kubelet-certificate-authority) at the node IP.
  leaf kubelet-serving "/O=system:nodes/CN=system:node:$NODE_NAME" \
    "extendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\nsubjectAltName=DNS:$NODE_NAME,IP:$NODE_IP\n"
  # system:kube-proxy is bound to the built-in system:node-proxier ClusterRole.
  leaf kube-proxy "/CN=system:kube-proxy" "$client"
  leaf coredns "/CN=vkube-real-node:coredns" "$client"
  leaf kube-router "/CN=vkube-real-node:kube-router" "$client"
}

kubeconfig() { # file cert-name
  local server; server="$(sed -n 's/^ *server: //p' "$DIR/kubeconfig" | head -n1)"
  cat > "$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: host
  cluster: {server: "$server", certificate-authority: "$DIR/pki/ca.crt"}
users:
- name: $2
  user: {client-certificate: "$PKI/$2.crt", client-key: "$PKI/$2.key"}
contexts:
- name: host
  context: {cluster: host, user: $2}
current-context: host
KC
  chmod 600 "$1"
}

# ---------------------------------------------------------------------------------------------
# Machine-wide state: ownership and what existed before us.

snapshot_chains() { # family -> "table chain" lines
  local t
  for t in filter nat mangle raw; do
    "$1" -w 5 -t "$t" -S 2>/dev/null | awk -v t="$t" '$1 == "-N" {print t, $2}'
  done
}

record_before() {
  mkdir -p "$STATE"
  snapshot_chains iptables > "$STATE/chains.iptables"
  snapshot_chains ip6tables > "$STATE/chains.ip6tables"
  local s
  : > "$STATE/sysctl"
  for s in "${SYSCTLS[@]}"; do
    [[ -f "/proc/sys/$s" ]] && printf '%s %s\n' "$s" "$(cat "/proc/sys/$s")" >> "$STATE/sysctl"
  done
  : > "$STATE/host-dirs"
  for s in "${HOST_DIRS[@]}"; do [[ -e "$s" ]] && echo "$s" >> "$STATE/host-dirs"; done
  ls /run/netns 2>/dev/null > "$STATE/netns" || : > "$STATE/netns"
  ipset list -n 2>/dev/null | sort > "$STATE/ipsets" || : > "$STATE/ipsets"
  echo "$DIR" > "$STATE/dir"
}

# ---------------------------------------------------------------------------------------------
# Network: node address, CNI, egress guard

setup_network() {
  ip link show "$NODE_DEV" >/dev/null 2>&1 || ip link add "$NODE_DEV" type bridge
  ip addr replace "$NODE_IP/32" dev "$NODE_DEV"
  ip link set "$NODE_DEV" up
  mkdir -p "$ND/cni/net.d" "$ND/cni/ipam"
  # The loopback plugin is not listed: containerd's CRI runs it for every pod itself (from bin_dir).
  # ipMasq off and the FORWARD guard below: pod traffic never leaves the machine.
  cat > "$ND/cni/net.d/10-vkube.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NET",
  "plugins": [
    {
      "type": "bridge", "bridge": "$CNI_DEV", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$ND/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GW"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
  # Pods may talk to each other, to the node and to Services, but nothing they send is routed off
  # the machine (the test network rule): reject what leaves the pod bridge for another interface.
  iptables -w 5 -N VKUBE-REAL-NODE-EGRESS 2>/dev/null || iptables -w 5 -F VKUBE-REAL-NODE-EGRESS
  iptables -w 5 -A VKUBE-REAL-NODE-EGRESS -i "$CNI_DEV" ! -o "$CNI_DEV" -j REJECT
  iptables -w 5 -C FORWARD -j VKUBE-REAL-NODE-EGRESS 2>/dev/null || iptables -w 5 -I FORWARD -j VKUBE-REAL-NODE-EGRESS
  # The same in the mangle table, which every forwarded packet passes before filter: kube-router
  # keeps its own jump first in filter FORWARD and ACCEPTs what a NetworkPolicy allows there, so
  # the filter rule alone would let allowed "internet" traffic through.
  iptables -w 5 -t mangle -N VKUBE-REAL-NODE-EGRESS 2>/dev/null || iptables -w 5 -t mangle -F VKUBE-REAL-NODE-EGRESS
  iptables -w 5 -t mangle -A VKUBE-REAL-NODE-EGRESS -i "$CNI_DEV" ! -o "$CNI_DEV" -j DROP
  iptables -w 5 -t mangle -C FORWARD -j VKUBE-REAL-NODE-EGRESS 2>/dev/null \
    || iptables -w 5 -t mangle -I FORWARD -j VKUBE-REAL-NODE-EGRESS
  # Pods on the one bridge talk at layer 2: br_netfilter passes those frames through iptables
  # (FORWARD, physdev) so that NetworkPolicies apply to them too. Restored by down.
  sysctl -qw net.bridge.bridge-nf-call-iptables=1
}

# Pods reach the host API as in-cluster clients do: through the `kubernetes` Service. The API
# server of hack/host-cluster.sh listens on loopback only and advertises 127.0.0.1, so it
# publishes no endpoints for that Service; pod traffic to its ClusterIP is DNATed straight to the
# loopback port instead (its serving certificate names 10.96.0.1). Routing a pod's packet to
# 127.0.0.1 needs route_localnet: set on the pod bridge only, not machine-wide, so it goes away
# with the bridge on `down`; the nat chain is one of ours and `down` removes it too. The bridge is
# made here, before the first pod (the CNI bridge plugin adopts an existing bridge of its name).
host_api_for_pods() {
  local port; port="$(cat "$DIR/apiserver-port" 2>/dev/null)" || die "no $DIR/apiserver-port: is the host cluster up?"
  ip link show "$CNI_DEV" >/dev/null 2>&1 || ip link add "$CNI_DEV" type bridge
  ip link set "$CNI_DEV" up
  iptables -w 5 -t nat -N VKUBE-REAL-NODE-API 2>/dev/null || iptables -w 5 -t nat -F VKUBE-REAL-NODE-API
  iptables -w 5 -t nat -A VKUBE-REAL-NODE-API -i "$CNI_DEV" -d "$API_SERVICE_IP/32" -p tcp --dport 443 \
    -j DNAT --to-destination "127.0.0.1:$port"
  iptables -w 5 -t nat -C PREROUTING -j VKUBE-REAL-NODE-API 2>/dev/null \
    || iptables -w 5 -t nat -I PREROUTING -j VKUBE-REAL-NODE-API
  sysctl -qw "net.ipv4.conf.$CNI_DEV.route_localnet=1"
}

# ---------------------------------------------------------------------------------------------
# containerd

start_containerd() {
  local pause; pause="$("$HACK_DIR/images.sh" ref pause)"
  mkdir -p "$ND/containerd"
  # Own root, state, sockets and runc root under DIR: coexists with any system containerd.
  cat > "$ND/containerd/config.toml" <<TOML
version = 2
root = "$ND/containerd/root"
state = "$ND/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "$CTR_SOCK"
[ttrpc]
  address = "$CTR_SOCK.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "$ND/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  # Our pause image, imported by hack/images.sh: nothing is ever pulled.
  sandbox_image = "$pause"
  # This VM withholds CAP_SYS_RESOURCE even from root, so lowering a process's oom_score_adj fails;
  # the kubelet asks for negative values (e.g. -998 for sandboxes) and every sandbox would die with
  # "can't get final child's PID from pipe: EOF". This clamps requests to containerd's own score.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # cgroup v1 without systemd as init: cgroupfs, matching the kubelet's cgroupDriver.
        SystemdCgroup = false
        Root = "$ND/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    # Debian's containernetworking-plugins live in /usr/lib/cni, not containerd's /opt/cni/bin.
    bin_dir = "/usr/lib/cni"
    conf_dir = "$ND/cni/net.d"
    max_conf_num = 1
TOML
  log "starting containerd ($(containerd --version | awk '{print $3}'))"
  start_proc containerd containerd --config "$ND/containerd/config.toml"
  wait_for "containerd" 30 ctr --address "$CTR_SOCK" version || die "containerd did not start (log: $LOGS/containerd.log)"
}

import_images() {
  local names=(pause testbox)
  (( WITH_VKUBE )) && names+=(vkube)
  "$HACK_DIR/images.sh" import --address "$CTR_SOCK" "${names[@]}" || die "importing images failed"
}

# Can runc start a container here at all? Run one outside CRI and the kubelet, so a failure
# means the machine, not our node configuration.
smoke_test() {
  local ref id="vkube-smoke-$$" out
  ref="$("$HACK_DIR/images.sh" ref testbox)"
  if ! out="$(ctr --address "$CTR_SOCK" -n k8s.io run --rm --cgroup "/vkube-smoke/$id" "$ref" "$id" /bin/sh -c 'echo ok' 2>&1)" \
     || [[ "$out" != *ok* ]]; then
    ctr --address "$CTR_SOCK" -n k8s.io tasks kill -s KILL "$id" >/dev/null 2>&1 || true
    ctr --address "$CTR_SOCK" -n k8s.io containers rm "$id" >/dev/null 2>&1 || true
    remove_cgroups vkube-smoke
    unsupported "runc could not run a container: $out"
  fi
  remove_cgroups vkube-smoke
}

# ---------------------------------------------------------------------------------------------
# kubelet, kube-proxy, CoreDNS

start_kubelet() {
  mkdir -p "$ND/kubelet" "$ND/pod-logs" "$ND/volume-plugins"
  kubeconfig "$ND/kubelet.kubeconfig" kubelet-client
  cat > "$ND/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This VM has cgroup v1 only; kubelet 1.35 refuses to start on v1 unless told not to.
failCgroupV1: false
# No systemd as init here: the cgroupfs driver (containerd's runc runtime uses cgroupfs too).
cgroupDriver: cgroupfs
# Harmless here (no swap is configured); keeps the kubelet from refusing to start on a host that has some.
failSwapOn: false
containerRuntimeEndpoint: unix://$CTR_SOCK
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: $NODE_IP
healthzPort: 10248
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
rotateCertificates: false
serverTLSBootstrap: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $DIR/pki/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: [$DNS_IP]
# No host resolver for pods: names outside cluster.local are never looked up off the machine.
resolvConf: ""
registerWithTaints:
- {key: $TAINT_KEY, value: "true", effect: NoSchedule}
# Images cannot be pulled again (no registry): never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# A shared test VM's disk and memory use is not this node's business: evict only when nearly out.
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, nodefs.inodesFree: 1%, imagefs.available: 1%}
podLogsDir: $ND/pod-logs
volumePluginDir: $ND/volume-plugins
# The kubelet sets its preferred kernel.panic, vm.overcommit_memory, ... (restored by down).
protectKernelDefaults: false
YAML
  log "starting kubelet $NODE_NAME at $NODE_IP"
  # Expected, harmless errors in its log on this VM: "RuntimeConfig ... Unimplemented" (containerd
  # 1.6 predates that CRI call; the kubelet uses cgroupDriver from its config), "Failed to set
  # rlimit on max file handles" and "Failed to ensure process in container with oom score" (no
  # CAP_SYS_RESOURCE: it cannot raise its rlimit or lower its own oom_score_adj to -999).
  start_proc kubelet "$VKUBE_BIN/kubelet" --config "$ND/kubelet.yaml" --kubeconfig "$ND/kubelet.kubeconfig" \
    --root-dir "$ND/kubelet" --cert-dir "$ND/kubelet/pki" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --node-labels "$LABEL"
}

start_kube_proxy() {
  kubeconfig "$ND/kube-proxy.kubeconfig" kube-proxy
  cat > "$ND/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $ND/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
# NodePorts and health/metrics endpoints only on the node's own address, not on the VM's eth0.
nodePortAddresses: [$NODE_IP/32]
healthzBindAddress: $NODE_IP:10256
metricsBindAddress: $NODE_IP:10249
iptables:
  # Masquerade all Service traffic: a pod reaching a Service backed by a pod on the same bridge
  # gets its reply through the host, whether or not br_netfilter passes bridged frames to iptables.
  masqueradeAll: true
  # Would set net.ipv4.conf.all.route_localnet=1 machine-wide; NodePorts on 127.0.0.1 are not needed.
  localhostNodePorts: false
# 0 = leave the machine's conntrack table size and timeouts alone (/proc/sys/net/netfilter and
# the nf_conntrack hashsize are machine-wide, and not ours to tune on a shared VM).
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
  log "starting kube-proxy (iptables)"
  start_proc kube-proxy "$VKUBE_BIN/kube-proxy" --config "$ND/kube-proxy.yaml"
}

# CoreDNS runs as a host process bound to the node address, and the kube-dns Service (ClusterIP
# $DNS_IP, the kubelet's clusterDNS) reaches it through an EndpointSlice made here. Why not a pod:
# no image or Deployment to wait for, and DNS works as soon as the node is up. Why not clusterDNS
# = the node address: pods see the conventional resolver address and every lookup also goes through
# kube-proxy's Service routing, as in a real cluster.
start_coredns() {
  kubeconfig "$ND/coredns.kubeconfig" coredns
  kubectl_host apply -f - >/dev/null <<YAML || die "could not create the DNS Service and RBAC in the host cluster"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "vkube-real-node:coredns"}
rules:
- {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "vkube-real-node:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "vkube-real-node:coredns"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "vkube-real-node:coredns"}]
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: $DNS_IP
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-real-node
  namespace: kube-system
  labels: {kubernetes.io/service-name: kube-dns, endpointslice.kubernetes.io/managed-by: real-node.vkube.dev}
addressType: IPv4
endpoints: [{addresses: [$NODE_IP], conditions: {ready: true}, nodeName: $NODE_NAME}]
ports:
- {name: dns, port: 53, protocol: UDP}
- {name: dns-tcp, port: 53, protocol: TCP}
YAML
  # No `forward`: a name outside cluster.local gets SERVFAIL instead of a look-up off the machine.
  cat > "$ND/Corefile" <<COREFILE
.:53 {
    bind $NODE_IP
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $ND/coredns.kubeconfig host
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    cache 5
    loadbalance
}
COREFILE
  log "starting CoreDNS on $NODE_IP:53 (Service kube-system/kube-dns $DNS_IP)"
  start_proc coredns "$VKUBE_BIN/coredns" -conf "$ND/Corefile"
}

# kube-router with only its NetworkPolicy firewall (no routing, no service proxy: the CNI bridge
# and kube-proxy do those): per-pod iptables chains and ipsets in the filter table, through the
# same `iptables` command (and so the same legacy or nf_tables backend) as kube-proxy and the
# kubelet. Why kube-router: kube-network-policies queues packets through nftables (NFT_QUEUE),
# which this kernel lacks; Calico and Cilium need far more (their own dataplane, eBPF or BGP).
# kube-router v2.1.0 has known security reports (see hack/versions.sh); it is acceptable for a
# throwaway test node that is never exposed.
start_kube_router() {
  kubeconfig "$ND/kube-router.kubeconfig" kube-router
  kubectl_host apply -f - >/dev/null <<YAML || die "could not create kube-router's RBAC in the host cluster"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "vkube-real-node:kube-router"}
rules:
- {apiGroups: [""], resources: [pods, namespaces, nodes, services, endpoints], verbs: [get, list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [get, list, watch]}
- {apiGroups: [networking.k8s.io], resources: [networkpolicies], verbs: [get, list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "vkube-real-node:kube-router"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "vkube-real-node:kube-router"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "vkube-real-node:kube-router"}]
YAML
  log "starting kube-router $KUBE_ROUTER_VERSION (NetworkPolicy firewall only; $(iptables -V))"
  # Health and metrics listeners off: nothing of it listens on the machine's addresses.
  start_proc kube-router "$VKUBE_BIN/kube-router" --kubeconfig "$ND/kube-router.kubeconfig" \
    --hostname-override "$NODE_NAME" --run-firewall=true --run-router=false --run-service-proxy=false \
    --enable-cni=false --health-port 0 --metrics-port 0 --service-cluster-ip-range 10.96.0.0/16 -v 1
}

dns_answers() { busybox nslookup "kubernetes.default.svc.cluster.local" "$DNS_IP" 2>/dev/null | grep -q '10\.96\.0\.1$'; }
node_ready() { kubectl_host wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s; }

write_env() {
  {
    echo "VKUBE_E2E_REAL_NODE=1"
    echo "VKUBE_E2E_REAL_NODE_NAME=$NODE_NAME"
    echo "VKUBE_E2E_REAL_NODE_IP=$NODE_IP"
    echo "VKUBE_E2E_REAL_NODE_TAINT=$TAINT_KEY"
    echo "VKUBE_E2E_TESTBOX_IMAGE=$("$HACK_DIR/images.sh" ref testbox)"
    if (( WITH_VKUBE )); then echo "VKUBE_E2E_VKUBE_IMAGE=$("$HACK_DIR/images.sh" ref vkube)"; fi
  } > "$ND/e2e.env"
  echo "$ND/e2e.env"
}

up() {
  local t0; t0=$(date +%s.%N)
  if [[ -f "$STATE/dir" ]]; then
    local owner; owner="$(cat "$STATE/dir")"
    if [[ "$owner" == "$DIR" ]] && alive containerd && alive kubelet && alive kube-proxy && alive coredns \
       && alive kube-router && node_ready >/dev/null 2>&1; then
      log "real node already running for $DIR"
      VKUBE_BIN="$("$HACK_DIR/build-components.sh" --real-node)"
      import_images
      write_env; return 0
    fi
    local me="$DIR"
    use_dir "$owner"
    if [[ "$owner" != "$me" ]] && any_alive; then
      use_dir "$me"; mkdir -p "$ND"
      echo "this machine's real node is in use by $owner (one per machine)" > "$ND/unsupported"
      printf '[real-node] BUSY: a real node for %s is running (one per machine): hack/real-node.sh down --dir %s\n' "$owner" "$owner" >&2
      exit 4
    fi
    log "cleaning up what a previous real node (for $owner) left behind"
    teardown
    use_dir "$me"
  fi
  rm -f "$ND/unsupported"
  preflight
  install_packages
  VKUBE_BIN="$("$HACK_DIR/build-components.sh" --real-node)"
  record_before
  gen_pki
  setup_network
  start_containerd
  import_images
  smoke_test
  host_api_for_pods
  start_kube_proxy
  start_kubelet
  start_coredns
  wait_for "node $NODE_NAME Ready" 90 node_ready || die "the kubelet did not make $NODE_NAME Ready (log: $LOGS/kubelet.log)"
  wait_for "kube-proxy rules for $DNS_IP" 60 sh -c "iptables -w 5 -t nat -S KUBE-SERVICES | grep -q '$DNS_IP/32'" \
    || die "kube-proxy did not program the kube-dns Service (log: $LOGS/kube-proxy.log)"
  wait_for "cluster DNS" 60 dns_answers || die "CoreDNS does not answer through $DNS_IP (log: $LOGS/coredns.log)"
  # kube-router reads its node's address from the Node object: started once the node exists.
  start_kube_router
  wait_for "kube-router's firewall chains" 60 iptables -w 5 -S KUBE-ROUTER-FORWARD \
    || die "kube-router did not set up its NetworkPolicy chains (log: $LOGS/kube-router.log)"
  local name
  for name in containerd kubelet kube-proxy coredns kube-router; do alive "$name" || die "$name exited (log: $LOGS/$name.log)"; done
  log "real node $NODE_NAME ready in $(echo "$(date +%s.%N) - $t0" | bc) s (node IP $NODE_IP, pods $POD_CIDR, DNS $DNS_IP)"
  write_env
}

# ---------------------------------------------------------------------------------------------
# Teardown: everything of ours, in an order where each step can still clean up after itself.

remove_cgroups() { # name under each cgroup v1 hierarchy root; deepest first (rmdir only works on empty cgroups)
  local root d pid
  for root in /sys/fs/cgroup/*/; do
    [[ -d "$root$1" ]] || continue
    while read -r d; do
      # Processes a crashed shim left behind: kill them so the cgroup can go.
      if [[ -f "$d/cgroup.procs" ]]; then
        while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done < "$d/cgroup.procs"
      fi
    done < <(find "$root$1" -type d)
  done
  for root in /sys/fs/cgroup/*/; do
    [[ -d "$root$1" ]] || continue
    local _
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      find "$root$1" -depth -type d -exec rmdir {} \; 2>/dev/null || true
      [[ -d "$root$1" ]] || break
      sleep 0.2
    done
    [[ -d "$root$1" ]] && log "warning: could not remove cgroup $root$1"
  done
  return 0
}

remove_chains() { # family: delete KUBE-*/CNI-*/VKUBE-* chains that were not there before up
  local fam="$1" before="$STATE/chains.$1" t c
  command -v "$fam" >/dev/null || return 0
  # Without the snapshot we cannot tell our chains from anyone else's: leave them all.
  [[ -f "$before" ]] || { log "warning: no record of $fam chains before up; not removing any"; return 0; }
  local ours=()
  while read -r t c; do
    [[ "$c" =~ ^(KUBE-|CNI-|VKUBE-) ]] || continue
    grep -qx "$t $c" "$before" 2>/dev/null && continue
    ours+=("$t $c")
  done < <(snapshot_chains "$fam")
  [[ ${#ours[@]} -eq 0 ]] && return 0
  local entry rule
  for entry in "${ours[@]}"; do read -r t c <<<"$entry"; "$fam" -w 5 -t "$t" -F "$c" 2>/dev/null || true; done
  # Jumps into our chains from chains that are not ours (PREROUTING, FORWARD, ...).
  for entry in "${ours[@]}"; do
    read -r t c <<<"$entry"
    while read -r rule; do
      # `-S` prints rules in a form the shell can re-read; turn -A into -D.
      eval "$fam -w 5 -t $t -D ${rule#-A }" 2>/dev/null || true
    done < <("$fam" -w 5 -t "$t" -S 2>/dev/null | grep -E -- "-[jg] $c( |\$)" | grep '^-A ')
  done
  for entry in "${ours[@]}"; do read -r t c <<<"$entry"; "$fam" -w 5 -t "$t" -X "$c" 2>/dev/null || true; done
}

unmount_under() { # path prefix: every mount at or below it, deepest first (stacked mounts: repeat)
  local p _
  for _ in 1 2 3; do
    awk -v pre="$1" '$5 == pre || index($5, pre "/") == 1 {print $5}' /proc/self/mountinfo | sort -r |
      while read -r p; do umount "$p" 2>/dev/null || umount -l "$p" 2>/dev/null || true; done
  done
  awk -v pre="$1" '$5 == pre || index($5, pre "/") == 1 {print "[real-node] warning: still mounted: " $5}' /proc/self/mountinfo >&2
}

teardown() {
  local crictl="$VKUBE_BIN/crictl" ep="unix://$CTR_SOCK" id
  # 1. The kubelet first, so it does not restart what we remove; kube-router, so it does not put
  #    back the chains removed below.
  stop_proc kubelet 20
  stop_proc kube-router
  # 2. Pod sandboxes through CRI: StopPodSandbox runs CNI DEL (veth, IPAM, portmap rules), removes
  #    the netns and unmounts /dev/shm; RemovePodSandbox removes the containers.
  local netns=()
  if alive containerd && [[ -x "$crictl" ]]; then
    for id in $("$crictl" -r "$ep" pods -q 2>/dev/null); do
      netns+=("$("$crictl" -r "$ep" inspectp "$id" 2>/dev/null | sed -n 's/.*"path": "\(\/var\/run\/netns\/[^"]*\)".*/\1/p' | head -n1)")
      "$crictl" -r "$ep" stopp "$id" >/dev/null 2>&1 || log "warning: crictl stopp $id failed"
      "$crictl" -r "$ep" rmp -f "$id" >/dev/null 2>&1 || log "warning: crictl rmp $id failed"
    done
  fi
  # 3. The node's processes; kube-proxy then removes its own rules (both IP families).
  stop_proc coredns
  stop_proc kube-proxy
  if [[ -x "$VKUBE_BIN/kube-proxy" && -f "$ND/kube-proxy.yaml" ]]; then
    "$VKUBE_BIN/kube-proxy" --config "$ND/kube-proxy.yaml" --cleanup >"$LOGS/kube-proxy-cleanup.log" 2>&1 || true
  fi
  stop_proc containerd 20
  # Shims of our containerd (found by its socket on their command line), then what they ran.
  local pid
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $CTR_SOCK( |\$)" 2>/dev/null || true); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  remove_cgroups kubepods
  remove_cgroups vkube-smoke
  # 4. Mounts: the kubelet's rshared bind of its root dir, pod volumes, rootfs overlays, shm.
  unmount_under "$ND"
  local ns
  for ns in "${netns[@]}"; do
    [[ -n "$ns" && -e "$ns" ]] || continue
    umount "$ns" 2>/dev/null || true; rm -f "$ns"
  done
  # Netns that appeared after up and are still there (a pod whose sandbox could not be stopped).
  # Like the kubepods cgroups above, this assumes no other container runtime runs on the machine.
  if [[ -f "$STATE/netns" ]]; then
    for ns in /run/netns/cni-*; do
      [[ -e "$ns" ]] || continue
      grep -qx "${ns##*/}" "$STATE/netns" && continue
      umount "$ns" 2>/dev/null || true; rm -f "$ns"
    done
  fi
  # 5. Interfaces: veths left on the pod bridge, the pod bridge, the node address.
  local dev
  for dev in $(ip -o link show master "$CNI_DEV" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link del "$dev" 2>/dev/null || true
  done
  ip link del "$CNI_DEV" 2>/dev/null || true
  ip link del "$NODE_DEV" 2>/dev/null || true
  # libcni's result cache for sandboxes whose CNI DEL never ran (containerd was already gone).
  local f cid
  for f in /var/lib/cni/results/"$CNI_NET"-*; do
    [[ -f "$f" ]] || continue
    cid="${f#/var/lib/cni/results/"$CNI_NET"-}"; cid="${cid%-*}"
    rm -f "$f" "/var/lib/cni/results/cni-loopback-$cid-lo"
  done
  # 6. iptables chains of ours (kubelet's KUBE-FIREWALL/KUBE-KUBELET-CANARY, CNI portmap chains,
  #    our egress guard, anything kube-proxy --cleanup missed), both IP families.
  remove_chains iptables
  remove_chains ip6tables
  # kube-router's ipsets, once no rule refers to them: those that were not there before up.
  if [[ -f "$STATE/ipsets" ]] && command -v ipset >/dev/null; then
    local set
    for set in $(ipset list -n 2>/dev/null); do
      grep -qx "$set" "$STATE/ipsets" && continue
      ipset destroy "$set" 2>/dev/null || log "warning: could not destroy ipset $set"
    done
  fi
  # 7. Kernel settings and host paths as they were.
  if [[ -f "$STATE/sysctl" ]]; then
    local s v
    while read -r s v; do echo "$v" > "/proc/sys/$s" 2>/dev/null || log "warning: could not restore $s=$v"; done < "$STATE/sysctl"
  fi
  local link
  for link in /var/log/containers/*; do
    [[ -L "$link" && "$(readlink "$link")" == "$ND/"* ]] && rm -f "$link"
  done
  if [[ -f "$STATE/host-dirs" ]]; then
    for s in "${HOST_DIRS[@]}"; do
      grep -qx "$s" "$STATE/host-dirs" && continue
      # Sockets and fifos of stopped processes (the kubelet's device-plugin socket, shim sockets),
      # then empty directories; any other file is not ours to delete.
      [[ -d "$s" ]] || continue
      find "$s" \( -type s -o -type p \) -delete 2>/dev/null || true
      find "$s" -depth -type d -empty -delete 2>/dev/null || true
    done
  fi
  rm -rf "$STATE"
}

down() {
  local owner=""
  [[ -f "$STATE/dir" ]] && owner="$(cat "$STATE/dir")"
  if [[ "$owner" != "$DIR" ]]; then
    # The machine-wide part is not ours (another DIR's node, or none was started): only stop
    # processes this DIR may still have and release its mounts.
    local f; for f in "$PIDS"/*; do if [[ -f "$f" ]]; then stop_proc "$(basename "$f")"; fi; done
    [[ -d "$ND" ]] && unmount_under "$ND"
    log "no real node of $DIR on this machine${owner:+ (it belongs to $owner)}; nothing else to do"
    return 0
  fi
  # Remove the node and its DNS objects from the host cluster while it still answers.
  if [[ -f "$DIR/kubeconfig" ]] && [[ -x "$VKUBE_BIN/kubectl" ]]; then
    kubectl_host delete node "$NODE_NAME" --ignore-not-found --wait=false >/dev/null 2>&1 || true
    kubectl_host -n kube-system delete service kube-dns --ignore-not-found >/dev/null 2>&1 || true
    kubectl_host -n kube-system delete endpointslice kube-dns-real-node --ignore-not-found >/dev/null 2>&1 || true
    kubectl_host delete clusterrolebinding,clusterrole "vkube-real-node:coredns" --ignore-not-found >/dev/null 2>&1 || true
    kubectl_host delete clusterrolebinding,clusterrole "vkube-real-node:kube-router" --ignore-not-found >/dev/null 2>&1 || true
  fi
  teardown
  log "real node of $DIR stopped and removed"
}

status() {
  local name
  for name in containerd kubelet kube-proxy coredns kube-router; do
    if alive "$name"; then echo "$name: running (pid $(cat "$PIDS/$name"))"; else echo "$name: stopped"; fi
  done
  [[ -f "$STATE/dir" ]] && echo "machine's real node belongs to: $(cat "$STATE/dir")"
  return 0
}

case "$cmd" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status --dir DIR [--with-vkube-image]" >&2; exit 2 ;;
esac
