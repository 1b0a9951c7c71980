#!/usr/bin/env bash
# services.sh start|stop — the Docker Engine the e2e suite runs against.
#   start: reuses an engine that already answers; otherwise (as root) starts
#          dockerd in the background on the data root .run/docker-data
#          (FLOTILLA_DOCKER_DATA_ROOT), logging to .run/dockerd.log, records
#          its pid in .run/dockerd.pid and waits up to 60 s for it to answer.
#          dockerd starts its own containerd and stops it again.
#          FLOTILLA_FRESH_DOCKER=1 (set by .ci/run) starts it as a new machine
#          has it: an empty data root, and no docker0 left by an earlier
#          engine, so the engine's first start is what the suite runs on.
#   stop:  stops only the dockerd recorded in .run/dockerd.pid (TERM, then KILL);
#          with FLOTILLA_FRESH_DOCKER=1 it also removes that data root.
set -euo pipefail

run="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/.run"
pidfile="$run/dockerd.pid"
log="$run/dockerd.log"
data_root="${FLOTILLA_DOCKER_DATA_ROOT:-$run/docker-data}"
fresh="${FLOTILLA_FRESH_DOCKER:-0}"

answers() {
  docker info >/dev/null 2>&1 ||
    curl -fsS --max-time 2 --unix-socket /var/run/docker.sock http://localhost/_ping >/dev/null 2>&1
}

# True when the recorded pid is still our live dockerd (not a reused pid or a zombie).
ours_running() {
  local pid
  [[ -f "$pidfile" ]] && pid="$(cat "$pidfile")" &&
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == dockerd ]] &&
    ! grep -q '^State:.*zombie' "/proc/$pid/status" 2>/dev/null
}

start() {
  if answers; then
    echo "services: Docker Engine already answers; reusing it"
    return
  fi
  if [[ "$(id -u)" -ne 0 ]]; then
    echo "services: not root; skipping Docker Engine start"
    return
  fi
  command -v dockerd >/dev/null || { echo "services: dockerd is not installed; run 'make system' as root" >&2; exit 1; }
  mkdir -p "$run"
  if ! ours_running; then
    rm -f "$pidfile"
    if [[ "$fresh" == 1 ]]; then
      # What a machine that never ran Docker has: no data, no bridge yet.
      rm -rf --one-file-system "$data_root"
      if ip link show docker0 >/dev/null 2>&1; then ip link delete docker0 || true; fi
      echo "services: a fresh engine: empty data root $data_root, no docker0"
    fi
    mkdir -p "$data_root"
    nohup dockerd --data-root "$data_root" >>"$log" 2>&1 </dev/null &
    echo $! >"$pidfile"
  fi
  echo "services: started dockerd (pid $(cat "$pidfile"), data root $data_root), waiting for it to answer"
  for _ in $(seq 120); do
    if answers; then
      echo "services: Docker Engine answers"
      return
    fi
    ours_running || break
    sleep 0.5
  done
  echo "services: dockerd exited or did not answer within 60 s; last lines of $log:" >&2
  tail -n 20 "$log" >&2
  stop
  exit 1
}

stop() {
  if [[ ! -f "$pidfile" ]]; then
    echo "services: no dockerd started by services.sh; nothing to stop"
    return
  fi
  local pid
  pid="$(cat "$pidfile")"
  if ours_running; then
    kill -TERM "$pid"
    for _ in $(seq 60); do
      ours_running || break
      sleep 0.5
    done
    if ours_running; then
      echo "services: dockerd (pid $pid) ignored TERM for 30 s; killing it" >&2
      kill -KILL "$pid"
    fi
  fi
  rm -f "$pidfile"
  echo "services: stopped dockerd (pid $pid)"
  if [[ "$fresh" == 1 ]] && ! ours_running; then
    rm -rf --one-file-system "$data_root"
    echo "services: removed the fresh data root $data_root"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
