#!/usr/bin/env bash
# Removes what deploy/libvirt/install.sh put in place (run as root). Idempotent; lists every path.
#
#   /etc/libvirt/hooks/qemu.d/hbm-passthrough   removed when it is ours (a link to hbm-hook)
#   /usr/local/bin/hbm-qemu, /usr/local/bin/hbm-hook
#   /etc/hbm-passthrough/hook.yaml              removed when it equals the shipped default (or
#                                               with --purge); kept, and said so, when edited
#   /etc/hbm-passthrough/                       removed when empty
#
# libvirtd is restarted only when this run removed the hook, so that it stops looking for it.
# Region claims of running domains (under the hook's run directory) are left alone.
#
# Usage: deploy/libvirt/uninstall.sh [--purge] [--no-restart]
# Exit codes: 0 done, 1 a step failed, 2 bad usage / not root.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=deploy/libvirt/paths.sh
. "$here/paths.sh"

purge=0
restart=1
while [ $# -gt 0 ]; do
  case "$1" in
    --purge) purge=1; shift ;;
    --no-restart) restart=0; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) usage_error "unknown argument '$1'" ;;
  esac
done
require_root

echo "hbm-passthrough uninstall"

removed_hook=0
if [ -L "$HBM_HOOK" ]; then
  target=$(readlink "$HBM_HOOK")
  if [ "$target" = "$HBM_BIN" ] || [ "$(basename "$target")" = hbm-hook ]; then
    rm -f "$HBM_HOOK"
    report removed "$HBM_HOOK"
    removed_hook=1
  else
    report kept "$HBM_HOOK" "(links to $target, not to hbm-hook: not ours)"
  fi
elif [ -e "$HBM_HOOK" ]; then
  if [ -f "$HBM_BIN" ] && cmp -s "$HBM_HOOK" "$HBM_BIN"; then
    rm -f "$HBM_HOOK"
    report removed "$HBM_HOOK"
    removed_hook=1
  else
    report kept "$HBM_HOOK" "(a file that is not hbm-hook: not ours)"
  fi
else
  report absent "$HBM_HOOK"
fi
rmdir "$HBM_QEMU_D" 2>/dev/null && report removed "$HBM_QEMU_D/ (empty)" || true

if [ -L "$HBM_ADAPTER" ]; then
  rm -f "$HBM_ADAPTER"
  report removed "$HBM_ADAPTER"
else
  report absent "$HBM_ADAPTER"
fi

if [ -e "$HBM_BIN" ]; then
  rm -f "$HBM_BIN"
  report removed "$HBM_BIN"
else
  report absent "$HBM_BIN"
fi

if [ -e "$HBM_CONFIG" ]; then
  if [ "$purge" -eq 1 ] || cmp -s "$here/hook.yaml" "$HBM_CONFIG"; then
    rm -f "$HBM_CONFIG"
    report removed "$HBM_CONFIG"
  else
    report kept "$HBM_CONFIG" "(local changes; --purge removes it)"
  fi
else
  report absent "$HBM_CONFIG"
fi
if [ -d "$HBM_CONFDIR" ]; then
  if rmdir "$HBM_CONFDIR" 2>/dev/null; then report removed "$HBM_CONFDIR/"; else report kept "$HBM_CONFDIR/" "(not empty)"; fi
fi

if [ "$removed_hook" -eq 1 ]; then
  if [ "$restart" -eq 1 ]; then
    restart_libvirtd
  else
    echo "note: libvirtd was not restarted (--no-restart)"
  fi
else
  report unchanged libvirtd "(not restarted: no hook was removed)"
fi
echo "done."
