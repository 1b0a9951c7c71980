#!/usr/bin/env bash
# `make demo`: start `flotilla dev` on the embedded defaults, apply the example
# mesh app, show what is stored, show how a bad manifest is refused, stop.
set -euo pipefail
VENV=${1:-.venv}
cd "$(dirname "$0")/../.."
FLOTILLA="$VENV/bin/flotilla"
# The process driver runs the example apps with this Python and these modules.
export PATH="$PWD/$VENV/bin:$PATH" PYTHONPATH="$PWD/deploy/apps${PYTHONPATH:+:$PYTHONPATH}"
# FLOTILLA_DEMO_PORT: the control plane's port; FLOTILLA_DEMO_INGRESS_PORT: the
# example gateway's listener (deploy/examples/ingress.yaml says 8000).
PORT=${FLOTILLA_DEMO_PORT:-7300}
INGRESS_PORT=${FLOTILLA_DEMO_INGRESS_PORT:-8000}
export FLOTILLA_SERVER="127.0.0.1:$PORT"
DATA=.run/demo
EXAMPLES=deploy/examples
mkdir -p .run && rm -rf "$DATA"
if [[ "$INGRESS_PORT" != 8000 ]]; then
  EXAMPLES=.run/demo-examples
  rm -rf "$EXAMPLES" && cp -r deploy/examples "$EXAMPLES"
  sed -i "s/port: 8000$/port: $INGRESS_PORT/" "$EXAMPLES/ingress.yaml"
fi

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

if "$FLOTILLA" get all >/dev/null 2>&1; then
  echo "something already answers on $FLOTILLA_SERVER; stop it or set FLOTILLA_DEMO_PORT" >&2
  exit 1
fi
if python3 -c 'import socket,sys; socket.create_server(("0.0.0.0", int(sys.argv[1]))).close()' \
    "$INGRESS_PORT" 2>/dev/null; then :; else
  echo "port $INGRESS_PORT (the example ingress) is taken; free it or set FLOTILLA_DEMO_INGRESS_PORT" >&2
  exit 1
fi

DRIVER=(--driver process)
if [[ "${FLOTILLA_DEMO_DRIVER:-}" != process ]] && docker info >/dev/null 2>&1 &&
  FLOTILLA_PYTHON="$VENV/bin/python" bash deploy/images/build.sh; then
  DRIVER=()  # docker for images, process for commands
else
  echo "(no usable Docker engine or images: the example apps run as local processes)"
fi

step "start flotilla dev (control plane, SQLite store, embedded catalog, one agent)"
"$FLOTILLA" dev --listen "$FLOTILLA_SERVER" --data-dir "$DATA" "${DRIVER[@]}" > .run/demo.log 2>&1 &
DEV_PID=$!
trap 'kill "$DEV_PID" 2>/dev/null; wait "$DEV_PID" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  "$FLOTILLA" get all >/dev/null 2>&1 && break
  kill -0 "$DEV_PID" 2>/dev/null || { cat .run/demo.log; exit 1; }
  sleep 0.1
done
head -2 .run/demo.log

step "apply the example mesh app: ingress -> frontend (HTTP) -> backend (gRPC, 3 replicas)"
show "$FLOTILLA" apply -f "$EXAMPLES/" --wait
step "apply it again: nothing changes"
show "$FLOTILLA" apply -f "$EXAMPLES/"

step "what is stored"
show "$FLOTILLA" get all

step "the scheduler placed every replica and the agent runs them (waiting for health checks)"
healthy() { "$FLOTILLA" get instances -o json | python3 -c 'import json,sys; print(sum(i.get("status",{}).get("state")=="healthy" for i in json.load(sys.stdin)["items"]))'; }
for _ in $(seq 1 240); do [[ "$(healthy)" -ge 5 ]] && break; sleep 0.5; done
show "$FLOTILLA" get nodes
show "$FLOTILLA" get instances

step "every instance runs with an Envoy sidecar configured by Flotilla's xDS"
show "$FLOTILLA" proxy-status

# Requests through the ingress: which frontend answered, which backend it called.
INGRESS="$("$FLOTILLA" get nodes -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["spec"]["address"])'):$INGRESS_PORT"
through_ingress() {
  python3 - "$1" "$INGRESS" <<'PY'
import collections, json, sys, time, urllib.request
count, ingress, seen = int(sys.argv[1]), sys.argv[2], collections.Counter()
direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
for i in range(count):
    for attempt in range(50):
        try:
            with direct.open(f"http://{ingress}/shop", timeout=5) as reply:
                body = json.loads(reply.read())
            break
        except OSError:
            time.sleep(0.2)
    else:
        sys.exit(f"the ingress does not answer on {ingress}")
    upstream = body.get("upstream", {})
    backend = upstream.get("answeredBy") or upstream.get("error")
    seen[backend] += 1
    if i < 6:
        print(f"  GET /shop -> {body['instance']} -> {backend}")
print(f"  ... {count} requests; backend instances answered: "
      + ", ".join(f"{name} x{n}" for name, n in sorted(seen.items())))
PY
}
step "requests through the ingress gateway ($INGRESS): frontend calls backend by name"
through_ingress 30

step "scale the backend to 5: the new instances get traffic as soon as they are healthy"
show "$FLOTILLA" scale backend 5
for _ in $(seq 1 120); do [[ "$(healthy)" -ge 7 ]] && break; sleep 0.5; done
show "$FLOTILLA" get instances backend
through_ingress 50
step "what the frontend's Envoy holds (from its admin API)"
FRONTEND=$("$FLOTILLA" get instances frontend -o name | head -1)
show "$FLOTILLA" proxy-config "${FRONTEND#*/}" endpoints
step "its output, from the agent"
show "$FLOTILLA" logs backend --tail 1
step "one object in detail (secret values are never shown)"
show "$FLOTILLA" describe secret frontend-session

step "a bad manifest is refused with the field and the fix, and changes nothing"
cat > .run/bad.yaml <<'YAML'
apiVersion: flotilla.dev/v1
kind: Service
metadata: {name: checkout}
spec:
  image: flotilla/example-http:dev
  replica: 2
  port: "8080"
  upstreams: [{name: payments}]
YAML
show "$FLOTILLA" apply -f .run/bad.yaml || echo "(exit code $?)"

step "done; stopping flotilla dev"
echo "run it yourself with:  $FLOTILLA dev   (then: $FLOTILLA apply -f deploy/examples/)"
