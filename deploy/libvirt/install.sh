#!/usr/bin/env bash
# Installs hbm-passthrough on a plain libvirt host (run as root). Idempotent: run it again after
# an upgrade; every path it touches is listed with what happened to it.
#
#   /usr/local/bin/hbm-hook                          the binary (replaced when it differs)
#   /usr/local/bin/hbm-qemu -> hbm-hook              QEMU argv adapter (argv[0] dispatch)
#   /etc/libvirt/hooks/qemu.d/hbm-passthrough -> /usr/local/bin/hbm-hook
#                                                    libvirt qemu hook (argv[0] dispatch)
#   /etc/hbm-passthrough/hook.yaml                   default config, only when absent (a local
#                                                    config is never overwritten)
#
# libvirtd is restarted only when this run added the qemu.d hook (libvirt looks for hook scripts
# when it starts); running domains are not affected by a libvirtd restart.
#
# Usage: deploy/libvirt/install.sh [--binary PATH] [--no-restart]
#   --binary PATH   hbm-hook to install (default: target/release/hbm-hook, else target/debug/hbm-hook
#                   of this source tree; build it with `cargo build --release -p hook`)
#   --no-restart    never restart libvirtd (say so when it would have been needed)
# Exit codes: 0 done (changed or not), 1 a step failed, 2 bad usage / missing binary / not root.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=deploy/libvirt/paths.sh
. "$here/paths.sh"

binary=""
restart=1
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) [ $# -ge 2 ] || usage_error "--binary needs a path"; binary=$2; shift 2 ;;
    --binary=*) binary=${1#--binary=}; shift ;;
    --no-restart) restart=0; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) usage_error "unknown argument '$1'" ;;
  esac
done

require_root
if [ -z "$binary" ]; then
  for candidate in "$repo/target/release/hbm-hook" "$repo/target/debug/hbm-hook"; do
    if [ -x "$candidate" ]; then binary=$candidate; break; fi
  done
  [ -n "$binary" ] || usage_error "no hbm-hook binary found under $repo/target: run 'cargo build --release -p hook' or pass --binary PATH"
fi
[ -f "$binary" ] && [ -x "$binary" ] || usage_error "--binary $binary is not an executable file"

echo "hbm-passthrough install (binary: $binary)"

# 1. The binary: copied to a temp file beside the target, then renamed (atomic; a running hook
#    keeps its old inode).
mkdir -p "$HBM_BINDIR"
if [ -f "$HBM_BIN" ] && [ ! -L "$HBM_BIN" ] && cmp -s "$binary" "$HBM_BIN"; then
  report unchanged "$HBM_BIN"
else
  existed=0; [ -e "$HBM_BIN" ] || [ -L "$HBM_BIN" ] && existed=1
  tmp=$(mktemp "$HBM_BINDIR/.hbm-hook.XXXXXX")
  install -m 0755 "$binary" "$tmp"
  mv -f "$tmp" "$HBM_BIN"
  if [ "$existed" -eq 1 ]; then report updated "$HBM_BIN"; else report added "$HBM_BIN"; fi
fi

# 2. Symlinks: the adapter and the libvirt hook.
mkdir -p "$HBM_QEMU_D"
link "$HBM_ADAPTER" hbm-hook
hook_state=$(link "$HBM_HOOK" "$HBM_BIN")
echo "$hook_state"

# 3. The default config, only when there is none.
mkdir -p "$HBM_CONFDIR"
if [ ! -e "$HBM_CONFIG" ]; then
  tmp=$(mktemp "$HBM_CONFDIR/.hook.yaml.XXXXXX")
  install -m 0644 "$here/hook.yaml" "$tmp"
  mv -f "$tmp" "$HBM_CONFIG"
  report added "$HBM_CONFIG"
elif cmp -s "$here/hook.yaml" "$HBM_CONFIG"; then
  report unchanged "$HBM_CONFIG"
else
  report kept "$HBM_CONFIG" "(local changes; the shipped default is $here/hook.yaml)"
fi

# 4. libvirtd sees a new hook only after a restart.
case "$hook_state" in
  added*|updated*)
    if [ "$restart" -eq 1 ]; then
      restart_libvirtd
    else
      echo "note: libvirtd was not restarted (--no-restart); restart it so that it runs the hook"
    fi
    ;;
  *) report unchanged libvirtd "(not restarted: the hook was already in place)" ;;
esac
echo "done. Check the host with: $HBM_BIN doctor"
