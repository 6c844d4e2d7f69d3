#!/usr/bin/env bash
# Generates splitnn/proto/*_pb2.py, *_pb2_grpc.py and *.pyi from proto/splitnn/v1/*.proto.
# With --check, generates into a temporary folder and fails if the committed files differ.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
out=splitnn/proto
if [ "${1:-}" = "--check" ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
"$PY" -m grpc_tools.protoc -Iproto/splitnn/v1 \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" proto/splitnn/v1/*.proto
# protoc writes "import splitnn_pb2"; the package imports it as splitnn.proto.splitnn_pb2.
sed -i -E 's/^import (\w+_pb2) as /from splitnn.proto import \1 as /' "$out"/*_pb2_grpc.py
if [ "${1:-}" = "--check" ]; then
  for f in "$out"/*.py "$out"/*.pyi; do
    if ! cmp -s "$f" "splitnn/proto/$(basename "$f")"; then
      echo "generated code is stale: $(basename "$f") differs; run 'make proto' and commit" >&2
      exit 1
    fi
  done
  echo "generated protobuf code is up to date"
fi
