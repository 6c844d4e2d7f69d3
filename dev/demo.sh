#!/usr/bin/env bash
# The demo: a computation server and a data holder as two processes on loopback, training the
# study's split model on the embedded mnist5k data set, then printing the accuracy.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
log=$(mktemp)
"$BIN/splitnn-server" --port 0 --model-dir models >"$log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 300); do
  grep -q '^listening on ' "$log" && break
  kill -0 $server 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
address=$(sed -n 's/^listening on //p' "$log")
echo "server listening on $address"
"$BIN/splitnn-client" --server "$address" --dataset mnist5k --noise "${NOISE:-0.5}" \
  --epochs "${EPOCHS:-5}" --batch-size 128 --lr 1e-4 --seed 0
