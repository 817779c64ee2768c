#!/usr/bin/env bash
# Durable PUT throughput, plain HTTP against HTTPS with auth, in the same run:
# two single nodes (no sensors) on this machine, 64 keep-alive clients each,
# measured one after the other by one `hub bench put` with two --url.
#
#   benches/secure_put.sh [DURATION] [CLIENTS]      (default 10s, 64)
#
# With wrk installed, the same pair is then measured with benches/wrk_put.lua.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10s}
CLIENTS=${2:-64}
# HUB=path/to/hub skips the build.
if [ -z "${HUB:-}" ]; then
  cargo build --release --bin hub >/dev/null
  HUB=target/release/hub
fi
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$W"' EXIT
$HUB certs init --dir "$W/certs" >/dev/null
$HUB certs issue --dir "$W/certs" --node-id secure --ip 127.0.0.1 >/dev/null
TOKEN=$($HUB keys create --data-dir "$W/secure" --node-id secure --role write 2>/dev/null)
start() { # name, extra args...; prints the node's base URL
  local name=$1; shift
  $HUB serve --node-id "$name" --data-dir "$W/$name" --http 127.0.0.1:0 --no-sensors "$@" \
    > "$W/$name.out" 2> "$W/$name.err" &
  for _ in $(seq 100); do
    grep -q serving "$W/$name.out" 2>/dev/null && break
    sleep 0.1
  done
  awk '{print $NF}' "$W/$name.out"
}
PLAIN=$(start plain)
SECURE=$(start secure --http-tls --auth --certs "$W/certs")
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
$HUB bench put --url "$PLAIN" --url "$SECURE" --cacert "$W/certs/ca.pem" --token "$TOKEN" \
  --clients "$CLIENTS" --duration "$DURATION"
if command -v wrk >/dev/null; then
  for url in "$PLAIN" "$SECURE"; do
    echo "== wrk $url"
    wrk -t2 -c"$CLIENTS" -d"$DURATION" -s benches/wrk_put.lua "$url" -- "$TOKEN" | grep -E "Requests/sec|Latency|Non-2xx"
  done
fi
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
