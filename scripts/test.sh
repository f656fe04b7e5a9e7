#!/usr/bin/env bash
# Installs every test dependency that is missing (idempotent), then runs the
# whole test suite. Safe to run again and again; installs only what is absent.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian packages: curl for the end-to-end tests, node and npm for the OpenID
# provider. kubectl is built below, matching the API server.
missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# OpenLDAP for the LDAP tests (Debian's package does not start a daemon here).
[ -x /usr/sbin/slapd ] || missing+=(slapd)
command -v ldapwhoami >/dev/null 2>&1 || missing+=(ldap-utils)
# `ip netns` for the agent tests (the proxy in a network namespace of its own).
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
# openssl for the README's quickstart (run as written), `script` for kubectl exec -it.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v script >/dev/null 2>&1 || missing+=(bsdutils)
# unshare and mount: a session recording on a small disk (a tmpfs in the
# proxy's own mount namespace).
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
command -v mount >/dev/null 2>&1 || missing+=(mount)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

for tool in curl node npm openssl script ip unshare setsid mount /usr/sbin/slapd /usr/sbin/slapadd; do
  command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool is still missing after install" >&2; exit 1; }
done

# The OpenID provider's node packages, exactly as locked (reinstalled only
# when the lockfile changed since the last install).
oidc=tests/oidc
if [ ! -f "$oidc/node_modules/.package-lock.json" ] || ! cmp -s "$oidc/package-lock.json" "$oidc/node_modules/.installed-lock.json"; then
  (cd "$oidc" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$oidc/package-lock.json" "$oidc/node_modules/.installed-lock.json"
fi

# The real Kubernetes parts: kube-apiserver, kubectl, etcd and the test
# kubelet (kube's streaming code behind a node), built from the pinned Go
# module tests/kube/ once into target/kube/<key>/ (key: the module's go.mod,
# go.sum, the sources of etcd/ and kubelet/, the build flags and the Go
# version) and reused while those are unchanged.
go_required=1.26
go_ok() {
  command -v go >/dev/null 2>&1 || return 1
  local v
  v=$(go env GOVERSION 2>/dev/null | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')
  [ "$(printf '%s\n%s\n' "$go_required" "$v" | sort -V | head -n1)" = "$go_required" ]
}
[ -x /usr/local/go/bin/go ] && PATH="/usr/local/go/bin:$PATH"
if ! go_ok; then
  echo "error: Go $go_required or newer is required to build kube-apiserver, kubectl and etcd for the tests (found: $(go version 2>/dev/null || echo none)); install it from https://go.dev/dl/ and put it on PATH" >&2
  exit 1
fi
kube_module=tests/kube
kube_version=$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$kube_module/go.mod")
kube_minor=$(echo "$kube_version" | cut -d. -f2)
kube_ldflags="-s"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$kube_minor -X $pkg.gitTreeState=clean"
done
kube_key=$( { cat "$kube_module/go.mod" "$kube_module/go.sum" "$kube_module"/etcd/*.go "$kube_module"/kubelet/*.go; echo "$kube_ldflags"; go env GOVERSION; } | sha256sum | cut -c1-16)
target=$(realpath -m "${CARGO_TARGET_DIR:-target}")
kube_bin="$target/kube/$kube_key"
if [ ! -x "$kube_bin/kube-apiserver" ] || [ ! -x "$kube_bin/kubectl" ] || [ ! -x "$kube_bin/etcd" ] || [ ! -x "$kube_bin/kubelet" ]; then
  echo "building kube-apiserver, kubectl, etcd and the test kubelet $kube_version from $kube_module (first run only: several minutes)"
  rm -rf "$kube_bin.partial"
  mkdir -p "$kube_bin.partial"
  (cd "$kube_module" && GOFLAGS=-buildvcs=false go build -trimpath -ldflags="$kube_ldflags" -o "$kube_bin.partial/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl ./etcd ./kubelet)
  rm -rf "$kube_bin"
  mv "$kube_bin.partial" "$kube_bin"
  # Builds of other keys: the two most recent stay (another branch's pins),
  # older ones go (each is some 400 MB).
  ls -1t "$target/kube" | grep -vx -e current -e "$kube_key" -e '.*\.partial' | tail -n +3 |
    while read -r old; do rm -rf "${target:?}/kube/$old"; done || true
fi
ln -sfn "$kube_key" "$target/kube/current"
export AUTHPROXY_KUBE_BIN="$kube_bin"
# Tests and people running them use this kubectl, matching the server.
export PATH="$kube_bin:$PATH"

# helm, for the chart tests (lint, template), built the same way from the
# pinned Go module tests/helm/ into target/helm/<key>/.
helm_module=tests/helm
helm_version=$(awk '$1 == "require" && $2 == "helm.sh/helm/v3" {print $3}' "$helm_module/go.mod")
# As helm's own Makefile: its version, and the Kubernetes version that
# `helm lint` and `helm template` assume (from the client-go it is built with).
helm_k8s_minor=$(awk '$1 == "k8s.io/client-go" {print $2}' "$helm_module/go.mod" | cut -d. -f2)
helm_ldflags="-s -X helm.sh/helm/v3/internal/version.version=$helm_version -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  helm_ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$helm_k8s_minor"
done
helm_key=$( { cat "$helm_module/go.mod" "$helm_module/go.sum"; echo "$helm_ldflags"; go env GOVERSION; } | sha256sum | cut -c1-16)
helm_bin="$target/helm/$helm_key"
if [ ! -x "$helm_bin/helm" ]; then
  echo "building helm $helm_version from $helm_module (first run only: a few minutes)"
  rm -rf "$helm_bin.partial"
  mkdir -p "$helm_bin.partial"
  (cd "$helm_module" && GOFLAGS=-buildvcs=false go build -trimpath -ldflags="$helm_ldflags" -o "$helm_bin.partial/" \
    helm.sh/helm/v3/cmd/helm)
  rm -rf "$helm_bin"
  mv "$helm_bin.partial" "$helm_bin"
  ls -1t "$target/helm" | grep -vx -e current -e "$helm_key" -e '.*\.partial' | tail -n +3 |
    while read -r old; do rm -rf "${target:?}/helm/$old"; done || true
fi
ln -sfn "$helm_key" "$target/helm/current"
export AUTHPROXY_HELM_BIN="$helm_bin"

# The suite: unit, property, doc and end-to-end tests of every crate, several
# test binaries at once (scripts/suite.sh). With arguments, plain `cargo test`
# with them, e.g. `scripts/test.sh -p authproxy-tests --test shared_kube ldap::`.
if [ "$#" -eq 0 ]; then
  scripts/suite.sh
else
  cargo test --workspace --locked "$@"
fi
