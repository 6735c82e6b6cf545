#!/usr/bin/env bash
# Builds the project's executables as static binaries (glibc linked in with crt-static on the
# host's gnu target; no musl toolchain needed) and checks each with `file` and `ldd`.
#
#   deploy/build-static.sh            build; print the folder holding the binaries (last line)
#
# Output: target/static/x86_64-unknown-linux-gnu/release/{hbm-hook,hbm-device-plugin,hbm-dra-driver}.
# A binary that still names a dynamic loader fails the script. Static glibc cannot load NSS
# modules: host names resolve only through /etc/hosts and the numeric forms; the binaries reach
# the API server by the IP in KUBERNETES_SERVICE_HOST and everything else by unix socket.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-gnu
target_dir=target/static
bins=(hbm-hook hbm-device-plugin hbm-dra-driver)
packages=(-p hook -p plugin -p hbm-dra-driver)

# Called from inside `cargo test` too: the caller's CARGO_* variables (package name, manifest dir,
# ...) would change the fingerprints and relink every binary; keep only CARGO_HOME.
for var in $(compgen -e); do
  case "$var" in
    CARGO_HOME) ;;
    CARGO_*|RUSTC_WRAPPER|RUSTC_WORKSPACE_WRAPPER|__CARGO_*) unset "$var" ;;
  esac
done

bin_args=()
for b in "${bins[@]}"; do bin_args+=(--bin "$b"); done
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked --target "$target" --target-dir "$target_dir" \
  "${packages[@]}" "${bin_args[@]}" >&2

out="$target_dir/$target/release"
for b in "${bins[@]}"; do
  path="$out/$b"
  desc=$(file -b "$path")
  case "$desc" in
    *"statically linked"*|*"static-pie linked"*) ;;
    *) echo "deploy/build-static.sh: $path is not static: $desc" >&2; exit 1 ;;
  esac
  libs=$(ldd "$path" 2>&1 || true)
  case "$libs" in
    *"statically linked"*|*"not a dynamic executable"*) ;;
    *) echo "deploy/build-static.sh: ldd lists shared libraries for $path: $libs" >&2; exit 1 ;;
  esac
  echo "static: $b ($(stat -c %s "$path") bytes): $desc" >&2
done
echo "$out"
