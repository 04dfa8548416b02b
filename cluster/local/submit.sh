#!/usr/bin/env bash
# The exact `ray job submit` lines for each job, from the repository root, against the
# cluster started by start.sh. Run one with: cluster/local/submit.sh preprocess|train|label
set -euo pipefail
export RAY_AUTH_MODE=token
ADDRESS=${RAY_ADDRESS:-http://127.0.0.2:8266}
OUT=${AVFUSION_OUT:-/tmp/avfusion-cluster/out}   # shared storage on a real cluster (NFS, s3://)
PY=${AVFUSION_PYTHON:-python}                     # the interpreter with avfusion installed on the nodes
# Right after start.sh the head's job agent may still be starting; Ray then answers
# "No available agent to submit job, please try again later", so retry that (90 s at most).
ray() {
  local log rc
  log=$(mktemp)
  for _ in $(seq 30); do
    rc=0
    command ray "$@" 2>&1 | tee "$log" || rc=${PIPESTATUS[0]}
    grep -q "No available agent" "$log" || break
    sleep 3
  done
  rm -f "$log"
  return "$rc"
}

case "${1:-}" in
  preprocess)
    ray job submit --address "$ADDRESS" --working-dir . -- \
      "$PY" -m jobs.preprocess avfusion/sample_data/clips --labels avfusion/sample_data/labels.csv \
      --out "$OUT/shards" --shard-size 6 --frame-size 64 ;;
  train)
    ray job submit --address "$ADDRESS" --working-dir . -- \
      "$PY" -m jobs.train "$OUT/shards" --out "$OUT/run" --ray-workers 2 --epochs 5 --batch-size 8 ;;
  label)
    ray job submit --address "$ADDRESS" --working-dir . -- \
      "$PY" -m jobs.label avfusion/sample_data/clips "$OUT/labels" --checkpoint "$OUT/run/last.pt" ;;
  *) echo "usage: $0 preprocess|train|label" >&2; exit 2 ;;
esac
