#!/usr/bin/env bash
# The exact `ray job submit` lines for each job, from the repository root, against the
# cluster started by start.sh. Run one with: cluster/local/submit.sh preprocess|train|label
set -euo pipefail
export RAY_AUTH_MODE=token
ADDRESS=${RAY_ADDRESS:-http://127.0.0.2:8266}
OUT=${AVFUSION_OUT:-/tmp/avfusion-cluster/out}   # shared storage on a real cluster (NFS, s3://)
PY=${AVFUSION_PYTHON:-python}                     # the interpreter with avfusion installed on the nodes
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
