#!/usr/bin/env bash
# Builds the Consul pinned in deploy/consul/go.mod (the single source of its
# version) into ${FLOTILLA_CACHE:-$HOME/.cache/flotilla}/bin/consul.
# Idempotent: does nothing when that binary already reports the pinned version.
# Needs Go and the Go module proxy; takes about 4 minutes on 2 cores.
set -euo pipefail

module_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/../consul" && pwd)"
bin_dir="${FLOTILLA_CACHE:-$HOME/.cache/flotilla}/bin"
out="$bin_dir/consul"
version="$(awk '$1 == "require" && $2 == "github.com/hashicorp/consul" { print $3 }' "$module_dir/go.mod")"
[[ -n "$version" ]] || { echo "build-consul: no 'require github.com/hashicorp/consul vX.Y.Z' line in $module_dir/go.mod" >&2; exit 1; }

if [[ -x "$out" ]] && "$out" version 2>/dev/null | grep -qx "Consul $version"; then
  echo "build-consul: $out is already Consul $version"
  exit 0
fi

PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { echo "build-consul: Go is not installed; install Go >= 1.25 to build Consul $version" >&2; exit 1; }

# The checksum database does not answer for these two sub-modules; go.sum still pins them.
export GONOSUMDB="github.com/hashicorp/consul/envoyextensions,github.com/hashicorp/consul/troubleshoot"
export GOFLAGS="${GOFLAGS:-} -mod=readonly"
cd "$module_dir"

echo "build-consul: downloading Consul $version and its modules ($(go version | cut -d' ' -f3))"
go list -deps github.com/hashicorp/consul >/dev/null

echo "build-consul: compiling Consul $version (about 4 minutes on 2 cores)"
mkdir -p "$bin_dir"
go build -trimpath -o "$out.partial" github.com/hashicorp/consul
mv -f "$out.partial" "$out"
echo "build-consul: built $out ($("$out" version | head -n1))"
