#!/usr/bin/env bash
# Builds the local base image `hub-base:local` without any registry: a root
# file system holding busybox (a shell and coreutils for the Dockerfile's RUN
# steps and the compose certificate job) and the shared libraries a
# hub binary links, taken from this host, imported with `docker import`.
#
#   deploy/base-image.sh [BINARY]     (default target/release/hub)
set -euo pipefail
bin=${1:-target/release/hub}
[ -x "$bin" ] || { echo "no binary at $bin: run cargo build --release first" >&2; exit 1; }
if ! command -v busybox >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq busybox-static >/dev/null
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,etc,tmp,lib,lib64,usr/local/bin}
chmod 1777 "$root/tmp"
cp "$(command -v busybox)" "$root/bin/busybox"
for applet in sh mkdir chown chmod ls cat cp rm test echo sleep id; do
  ln -s busybox "$root/bin/$applet"
done
# The dynamic loader and every library the binary needs, at the same paths.
ldd "$bin" | awk '/=> \//{print $3} /^\t\/lib/{print $1}' | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
printf 'root:x:0:0:root:/root:/bin/sh\nhub:x:10001:10001:hub:/var/lib/hub:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\nhub:x:10001:\n' >"$root/etc/group"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
tar -C "$root" -c . | docker import -c 'ENV PATH=/usr/local/bin:/bin' - hub-base:local >/dev/null
echo "hub-base:local"
