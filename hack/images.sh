#!/usr/bin/env bash
# Container images for the real node (hack/real-node.sh), built without Docker or a registry:
# reproducible OCI image-layout tarballs (hack/oci-layout.py: fixed mtimes, owners and order, so
# the same inputs always give the same digest), imported with `ctr -n k8s.io images import`.
#
#   hack/images.sh build  [NAME]...                  build (default: all); prints the tarball paths
#   hack/images.sh import --address SOCK [NAME]...   build, then import into that containerd
#                                                    (default: pause testbox)
#   hack/images.sh ref NAME                          the reference pods use for NAME
#   hack/images.sh check                             the Dockerfile agrees with image-contents.txt
#
#   pause    the pod sandbox process: hack/pause.c, built with gcc -static
#   testbox  test workloads: Debian's busybox-static (sh, httpd for HTTP, nc for a TCP echo, wget), kubectl
#   vkube    vkube (cargo build --release; honours CARGO_TARGET_DIR) plus the pinned etcd,
#            kube-apiserver and kube-controller-manager: hack/image-contents.txt, the list the
#            Dockerfile follows too
#
# References live under localhost/: a pull attempted by mistake can only ever reach loopback.
# Tarballs are cached in $VKUBE_CACHE/images.
set -euo pipefail
HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HACK_DIR/.." && pwd)"
source "$HACK_DIR/versions.sh"

OUT="$VKUBE_CACHE/images"
PAUSE_REF="localhost/vkube/pause:1"
TESTBOX_REF="localhost/vkube/testbox:2"
ALL=(pause testbox vkube)

log() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[images] ERROR: %s\n' "$*" >&2; exit 1; }

ref() {
  case "$1" in
    pause) echo "$PAUSE_REF" ;;
    testbox) echo "$TESTBOX_REF" ;;
    vkube) python3 "$HACK_DIR/oci-layout.py" ref "$HACK_DIR/image-contents.txt" ;;
    *) die "unknown image $1 (known: ${ALL[*]})" ;;
  esac
}

# build_one NAME: writes $OUT/NAME.tar and $OUT/NAME.ref ("REF sha256:MANIFEST").
build_one() {
  local name="$1" work recipe
  mkdir -p "$OUT"
  work="$(mktemp -d)"
  recipe="$work/recipe"
  local srcs=()
  case "$name" in
    pause)
      command -v gcc >/dev/null || die "gcc is needed for the pause image (apt-get install gcc libc6-dev)"
      gcc -static -O2 -s -o "$work/pause" "$HACK_DIR/pause.c" \
        || die "gcc -static failed for hack/pause.c (is libc6-dev installed?)"
      srcs+=(--src "pause=$work/pause")
      # 65535 like the upstream pause image: the sandbox needs no privileges.
      printf '%s\n' "image $PAUSE_REF" "bin /pause pause" "user 65535:65535" "entrypoint /pause" > "$recipe"
      ;;
    testbox)
      local bb=/usr/bin/busybox
      [[ -x "$bb" ]] || die "$bb not found: apt-get install busybox-static"
      # Debian's dynamic `busybox` package installs the same path; only the static one runs alone.
      if ldd "$bb" >/dev/null 2>&1; then die "$bb is dynamically linked: apt-get install busybox-static"; fi
      srcs+=(--src "busybox=$bb")
      # kubectl, so tests can use the in-cluster API the way real workloads do (in-cluster
      # config: KUBERNETES_SERVICE_HOST/PORT, the mounted token and CA).
      srcs+=(--src "kubectl=$("$HACK_DIR/build-components.sh")/kubectl")
      {
        echo "image $TESTBOX_REF"
        echo "bin /bin/busybox busybox"
        echo "bin /usr/local/bin/kubectl kubectl"
        "$bb" --list | grep -vx busybox | sed 's#.*#symlink /bin/& busybox#'
        echo "dir /tmp 1777 0:0"
        echo "account nobody 65534 65534 /nonexistent"
        # Static glibc resolves through /etc/hosts and DNS only with this (no NSS modules to load).
        echo "line /etc/nsswitch.conf hosts: files dns"
        echo "entrypoint /bin/sh"
      } > "$recipe"
      ;;
    vkube)
      recipe="$HACK_DIR/image-contents.txt"
      python3 "$HACK_DIR/oci-layout.py" check-dockerfile "$recipe" "$ROOT/Dockerfile" || exit 1
      local bin target
      bin="$("$HACK_DIR/build-components.sh")"
      target="${CARGO_TARGET_DIR:-$ROOT/target}"
      log "cargo build --release --bin vkube (target dir $target)"
      (cd "$ROOT" && cargo build --release --locked --bin vkube) >&2 || die "cargo build --release failed"
      srcs+=(--src "vkube=$target/release/vkube")
      for b in etcd kube-apiserver kube-controller-manager; do srcs+=(--src "$b=$bin/$b"); done
      ;;
    *) die "unknown image $name (known: ${ALL[*]})" ;;
  esac
  local line
  line="$(python3 "$HACK_DIR/oci-layout.py" build "$recipe" "$OUT/$name.tar" "${srcs[@]}")" \
    || die "building the $name image failed"
  rm -rf "$work"
  echo "$line" > "$OUT/$name.ref"
  log "$name: $line ($(du -h "$OUT/$name.tar" | cut -f1))"
}

import() {
  local address="" names=()
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --address) address="$2"; shift 2 ;;
      *) names+=("$1"); shift ;;
    esac
  done
  [[ -n "$address" ]] || die "import needs --address (the containerd socket)"
  [[ ${#names[@]} -gt 0 ]] || names=(pause testbox)
  command -v ctr >/dev/null || die "ctr not found (apt-get install containerd)"
  local name r digest have
  for name in "${names[@]}"; do
    build_one "$name"
    read -r r digest < "$OUT/$name.ref"
    have="$(ctr --address "$address" -n k8s.io images ls 2>/dev/null | awk -v r="$r" '$1 == r {print $3}')"
    if [[ "$have" == "$digest" ]]; then
      log "$r already imported ($digest)"
      continue
    fi
    # k8s.io is the namespace containerd's CRI plugin (the kubelet's view) reads.
    ctr --address "$address" -n k8s.io images import "$OUT/$name.tar" >&2 \
      || die "ctr images import $OUT/$name.tar failed"
    have="$(ctr --address "$address" -n k8s.io images ls 2>/dev/null | awk -v r="$r" '$1 == r {print $3}')"
    [[ "$have" == "$digest" ]] || die "after import, containerd has $r as '${have:-nothing}', expected $digest"
    log "imported $r ($digest)"
  done
}

cmd="${1:-}"; shift || true
case "$cmd" in
  build)
    [[ $# -gt 0 ]] || set -- "${ALL[@]}"
    for n in "$@"; do build_one "$n"; echo "$OUT/$n.tar"; done ;;
  import) import "$@" ;;
  ref) [[ $# -eq 1 ]] || die "usage: $0 ref NAME"; ref "$1" ;;
  check)
    python3 "$HACK_DIR/oci-layout.py" check-dockerfile "$HACK_DIR/image-contents.txt" "$ROOT/Dockerfile" || exit 1
    log "Dockerfile and hack/image-contents.txt agree" ;;
  *) echo "usage: $0 build [NAME]... | import --address SOCK [NAME]... | ref NAME | check" >&2; exit 2 ;;
esac
