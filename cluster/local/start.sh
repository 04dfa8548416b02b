#!/usr/bin/env bash
# Start a Ray head and one worker node on this machine, loopback only, token auth on.
# Usage: cluster/local/start.sh [STATE_DIR]   (default /tmp/avfusion-cluster)
# Prints the exports to use; stop with cluster/local/stop.sh STATE_DIR.
#
# Nodes advertise 127.0.0.2, not 127.0.0.1: Ray rewrites 127.0.0.1 to the machine's
# routable address, but keeps other loopback addresses, so nothing leaves loopback.
set -euo pipefail
STATE=${1:-/tmp/avfusion-cluster}
HOST=${AVFUSION_RAY_HOST:-127.0.0.2}
PORT=${AVFUSION_RAY_PORT:-6380}
DASHBOARD_PORT=${AVFUSION_DASHBOARD_PORT:-8266}
CLIENT_PORT=${AVFUSION_CLIENT_PORT:-10002}
CPUS=${AVFUSION_CPUS_PER_NODE:-1}
# Each node's dashboard agent needs its own port (Ray's default, 52365, is one per machine).
HEAD_AGENT_PORT=${AVFUSION_HEAD_AGENT_PORT:-52366}
WORKER_AGENT_PORT=${AVFUSION_WORKER_AGENT_PORT:-52367}
export RAY_AUTH_MODE=token
mkdir -p "$STATE"
RAY=${RAY:-ray}

# Each `ray start` in its own session; its process group id is recorded so stop.sh
# signals exactly these processes (never `ray stop`, which stops every Ray on the host).
setsid "$RAY" start --head --disable-usage-stats --node-ip-address "$HOST" --port "$PORT" \
  --dashboard-host "$HOST" --dashboard-port "$DASHBOARD_PORT" --ray-client-server-port "$CLIENT_PORT" \
  --num-cpus "$CPUS" --dashboard-agent-listen-port "$HEAD_AGENT_PORT" --temp-dir "$STATE/ray" \
  > "$STATE/head.log" 2>&1 &
echo $! > "$STATE/head.pgid"
wait $! || { cat "$STATE/head.log"; exit 1; }
setsid "$RAY" start --disable-usage-stats --address "$HOST:$PORT" --node-ip-address "$HOST" \
  --num-cpus "$CPUS" --dashboard-agent-listen-port "$WORKER_AGENT_PORT" > "$STATE/worker.log" 2>&1 &
echo $! > "$STATE/worker.pgid"
wait $! || { cat "$STATE/worker.log"; exit 1; }

cat <<MSG
Ray head at $HOST:$PORT (dashboard http://$HOST:$DASHBOARD_PORT) with one worker node.
  export RAY_AUTH_MODE=token
  export RAY_ADDRESS=http://$HOST:$DASHBOARD_PORT
Submit jobs with the lines in cluster/local/submit.sh; stop with cluster/local/stop.sh $STATE
MSG
