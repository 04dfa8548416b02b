#!/usr/bin/env bash
# Stop the cluster started by start.sh: signal only its recorded process groups.
set -uo pipefail
STATE=${1:-/tmp/avfusion-cluster}
for sig in TERM KILL; do
  for f in "$STATE"/head.pgid "$STATE"/worker.pgid; do
    [ -f "$f" ] && kill -s "$sig" -- "-$(cat "$f")" 2>/dev/null
  done
  [ "$sig" = TERM ] && sleep 2
done
rm -f "$STATE"/head.pgid "$STATE"/worker.pgid
echo "stopped the cluster in $STATE"
