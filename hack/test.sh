#!/usr/bin/env bash
# The full test suite, as CI runs it: build the real Kubernetes components (cached), format
# check, clippy with warnings as errors, unit tests, then the e2e tests against a real host
# cluster started here and stopped afterwards.
set -euo pipefail
HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HACK_DIR/.." && pwd)"
source "$HACK_DIR/versions.sh"
cd "$ROOT"

step() { printf '\n==> %s\n' "$*" >&2; }
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }

step "building real Kubernetes components (first run: ~7 min, then cached in $VKUBE_BIN)"
BIN="$("$HACK_DIR/build-components.sh")"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

step "unit tests"
cargo test --locked --lib --bins

step "starting a host cluster for the e2e tests"
HOST_DIR="$(mktemp -d "${TMPDIR:-/tmp}/vkube-e2e-host.XXXXXX")"
cleanup() { "$HACK_DIR/host-cluster.sh" down --dir "$HOST_DIR" >/dev/null 2>&1 || true; rm -rf "$HOST_DIR"; }
trap cleanup EXIT
HOST_KUBECONFIG="$("$HACK_DIR/host-cluster.sh" up --dir "$HOST_DIR")"

step "e2e tests (real etcd, kube-apiserver, controller-manager, scheduler, kwok)"
VKUBE_E2E_HOST_KUBECONFIG="$HOST_KUBECONFIG" VKUBE_BIN_DIR="$BIN" \
  cargo test --locked --test e2e -- --test-threads "${VKUBE_E2E_THREADS:-4}"
