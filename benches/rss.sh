#!/usr/bin/env bash
# RSS of one node under a steady-state write load: starts `hub serve` on a
# fresh directory, fills its log to retention (`bench put --steady-state`),
# then runs load for MINUTES while printing the node's VmRSS every 10 s.
# LOAD=put (default): PUTs of distinct keys, so the data grows with time;
# LOAD=ingest: readings of 100 sensors, so only the log turns over (the
# log and trimming must not grow memory: this figure must stay flat).
#
#   cargo build --release && benches/rss.sh 10          # 10 minutes
#   LOAD=ingest HUB_RETENTION=100000 benches/rss.sh 2   # quicker look
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-10}
BIN=${HUB_BIN:-target/release/hub}
RETENTION=${HUB_RETENTION:-1000000}
DIR=$(mktemp -d)
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
"$BIN" serve --node-id rss --data-dir "$DIR/data" --http "127.0.0.1:$PORT" \
  --no-sensors --log-retention "$RETENTION" 2>"$DIR/node.log" &
NODE=$!
trap 'kill $NODE 2>/dev/null; wait $NODE 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 100); do
  curl -sf "$URL/health" >/dev/null && break
  sleep 0.1
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
"$BIN" bench put --url "$URL" --duration 5s --steady-state
LOAD=${LOAD:-put}
echo "steady state reached; RSS under ${MINUTES} min of $LOAD load:"
case $LOAD in
  ingest) "$BIN" bench ingest --url "$URL" --clients 4 --batch 100 --duration "${MINUTES}m" & ;;
  *) "$BIN" bench put --url "$URL" --duration "${MINUTES}m" & ;;
esac
LOAD=$!
while kill -0 $LOAD 2>/dev/null; do
  echo "$(date +%T) $(grep VmRSS /proc/$NODE/status)"
  sleep 10
done
wait $LOAD
echo "$(date +%T) $(grep VmRSS /proc/$NODE/status) (end)"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
