#!/usr/bin/env bash
# Generates the Python stubs of proto/flotilla/v1 into controlplane/api/flotilla/v1.
# The generated modules are committed, so installing Flotilla needs no codegen.
set -euo pipefail
PY=${1:-python3}
cd "$(dirname "$0")/../.."
OUT=controlplane/api
"$PY" -m grpc_tools.protoc -I proto \
  --python_out="$OUT" --pyi_out="$OUT" --grpc_python_out="$OUT" \
  proto/flotilla/v1/*.proto
# protoc imports siblings as `flotilla.v1`; they live inside our package.
sed -i 's/^from flotilla\.v1 import/from controlplane.api.flotilla.v1 import/' \
  "$OUT"/flotilla/v1/*_pb2*.py "$OUT"/flotilla/v1/*.pyi
echo "generated: $(ls "$OUT"/flotilla/v1/*_pb2*.py | wc -l) modules"
