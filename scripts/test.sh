#!/usr/bin/env bash
# Installs every test dependency that is missing (idempotent), then runs the
# whole test suite. Safe to run again and again; installs only what is absent.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian packages: curl and kubectl for the end-to-end tests, node and npm
# for the OpenID provider.
missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# OpenLDAP for the LDAP tests (Debian's package does not start a daemon here).
[ -x /usr/sbin/slapd ] || missing+=(slapd)
command -v ldapwhoami >/dev/null 2>&1 || missing+=(ldap-utils)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

for tool in curl kubectl node npm /usr/sbin/slapd /usr/sbin/slapadd; do
  command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool is still missing after install" >&2; exit 1; }
done

# The OpenID provider's node packages, exactly as locked (reinstalled only
# when the lockfile changed since the last install).
oidc=tests/oidc
if [ ! -f "$oidc/node_modules/.package-lock.json" ] || ! cmp -s "$oidc/package-lock.json" "$oidc/node_modules/.installed-lock.json"; then
  (cd "$oidc" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$oidc/package-lock.json" "$oidc/node_modules/.installed-lock.json"
fi

# The suite: unit, property, doc and end-to-end tests of every crate.
cargo test --workspace --locked "$@"
