#!/usr/bin/env bash
# Builds the `hub` image offline: the binary is built on this host (or taken
# from $HUB_BINARY), the base comes from deploy/base-image.sh, and nothing is
# pulled. Usage: deploy/build-image.sh [TAG]   (default hub:latest)
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-hub:latest}
bin=${HUB_BINARY:-}
if [ -z "$bin" ]; then
  cargo build --release --locked --bin hub
  bin=target/release/hub
fi
deploy/base-image.sh "$bin" >/dev/null
mkdir -p .prebuilt
# Debug info is for profiling on the host; the image carries none.
strip -o .prebuilt/hub "$bin" 2>/dev/null || cp "$bin" .prebuilt/hub
docker build -q -t "$tag" --build-arg BUILDER=hub-base:local --build-arg BASE=hub-base:local . >/dev/null
rm -rf .prebuilt
echo "$tag"
