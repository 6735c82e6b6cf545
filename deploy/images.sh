#!/usr/bin/env bash
# Builds the three container images from this checkout with podman, without a network: the static
# binaries first (deploy/build-static.sh), then `FROM scratch` images holding one binary each.
#
#   deploy/images.sh [VERSION]     VERSION defaults to the workspace version (Cargo.toml)
#
# Tags hbm-passthrough/hbm-device-plugin:VERSION, hbm-passthrough/hbm-hook-sidecar:VERSION and
# hbm-passthrough/hbm-dra-driver:VERSION (the chart's default repositories) and prints the three
# references as its last three lines, in that order.
# Environment: PODMAN (default podman), PODMAN_RUNTIME (default runc: crun refuses the hybrid
# cgroup layout of some hosts).
set -euo pipefail
cd "$(dirname "$0")/.."

version=${1:-$(awk -F'"' '/^\[workspace.package\]/{p=1} p && /^version *=/{print $2; exit}' Cargo.toml)}
podman=${PODMAN:-podman}
runtime=${PODMAN_RUNTIME:-runc}
command -v "$podman" >/dev/null || { echo "deploy/images.sh: $podman not found (Debian package podman)" >&2; exit 1; }

bin_dir=$(deploy/build-static.sh | tail -n 1)
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$bin_dir/hbm-device-plugin" "$bin_dir/hbm-hook" "$bin_dir/hbm-dra-driver" "$context/"
# Symbols are not needed at run time (panic messages keep file and line).
strip "$context/hbm-device-plugin" "$context/hbm-hook" "$context/hbm-dra-driver"

build() { # target repository
  "$podman" build --runtime "$runtime" --quiet --file deploy/Containerfile --target "$1" \
    --build-arg "VERSION=$version" --tag "$2:$version" "$context" >/dev/null
  local size
  size=$("$podman" image inspect --format '{{.Size}}' "$2:$version")
  echo "image $2:$version: $size bytes" >&2
}
build plugin hbm-passthrough/hbm-device-plugin
build sidecar hbm-passthrough/hbm-hook-sidecar
build dra hbm-passthrough/hbm-dra-driver
echo "hbm-passthrough/hbm-device-plugin:$version"
echo "hbm-passthrough/hbm-hook-sidecar:$version"
echo "hbm-passthrough/hbm-dra-driver:$version"
