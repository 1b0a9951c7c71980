#!/usr/bin/env bash
# Installs the real system parts the e2e suite runs against, as root on
# Debian: Docker Engine (docker.io), busybox-static (for tiny test images made
# by `docker import`), iproute2, and the pinned Consul (built by
# build-consul.sh, which keeps a cached binary of the pinned version, unless a
# consul is already on PATH). Idempotent.
set -euo pipefail

scripts="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [[ "$(id -u)" -ne 0 ]]; then
  echo "install-system: not root; skipping docker.io, busybox-static, iproute2 and Consul (make consul builds Consul without root)"
  exit 0
fi

# Runs a command with its output shown only when it fails.
quietly() {
  local log status=0
  log="$(mktemp)"
  "$@" >"$log" 2>&1 || status=$?
  [[ $status -eq 0 ]] || cat "$log" >&2
  rm -f "$log"
  return "$status"
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

packages=()
command -v dockerd >/dev/null || packages+=(docker.io iproute2)
installed busybox-static || packages+=(busybox-static)
if ((${#packages[@]})); then
  echo "install-system: apt-get install ${packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  quietly apt-get update
  quietly apt-get install -y "${packages[@]}"
else
  echo "install-system: docker.io and busybox-static already installed"
fi

if command -v consul >/dev/null; then
  echo "install-system: using $(command -v consul) ($(consul version | head -n1))"
else
  bash "$scripts/build-consul.sh"
fi
