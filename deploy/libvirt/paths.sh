# Paths and helpers shared by deploy/libvirt/install.sh and uninstall.sh (sourced, not run).
# The fixed names of a plain libvirt host install; HBM_* variables override them (tests, packaging).

HBM_BINDIR=${HBM_BINDIR:-/usr/local/bin}
HBM_BIN=$HBM_BINDIR/hbm-hook
HBM_ADAPTER=$HBM_BINDIR/hbm-qemu
HBM_QEMU_D=${HBM_QEMU_D:-/etc/libvirt/hooks/qemu.d}
HBM_HOOK=$HBM_QEMU_D/hbm-passthrough
HBM_CONFDIR=${HBM_CONFDIR:-/etc/hbm-passthrough}
HBM_CONFIG=$HBM_CONFDIR/hook.yaml
HBM_LIBVIRT_URI=${HBM_LIBVIRT_URI:-qemu:///system}

usage_error() {
  echo "$(basename "$0"): $1" >&2
  exit 2
}

require_root() {
  [ "$(id -u)" -eq 0 ] || usage_error "must run as root (it writes $HBM_BINDIR, $HBM_QEMU_D and $HBM_CONFDIR)"
}

# report WHAT PATH [NOTE]: one line per path, e.g. "added   /usr/local/bin/hbm-hook".
report() {
  printf '%-9s %s%s\n' "$1" "$2" "${3:+ $3}"
}

# link PATH TARGET: makes PATH a symlink to TARGET (atomically: new link, then rename over).
link() {
  local path=$1 target=$2 state
  if [ -L "$path" ] && [ "$(readlink "$path")" = "$target" ]; then
    report unchanged "$path -> $target"
    return
  fi
  if [ -e "$path" ] || [ -L "$path" ]; then state=updated; else state=added; fi
  if [ -d "$path" ] && [ ! -L "$path" ]; then
    echo "$(basename "$0"): $path is a directory; remove it and run again" >&2
    exit 1
  fi
  local tmp
  tmp="$(dirname "$path")/.$(basename "$path").$$"
  ln -sfn "$target" "$tmp"
  mv -fT "$tmp" "$path"
  report "$state" "$path -> $target"
}

# The running libvirtd's pid (from its pid file, checked against /proc), or nothing.
libvirtd_pid() {
  local pid
  for f in /run/libvirtd.pid /var/run/libvirtd.pid; do
    [ -r "$f" ] || continue
    pid=$(tr -dc '0-9' < "$f")
    if [ -n "$pid" ] && [ "$(basename "$(readlink "/proc/$pid/exe" 2>/dev/null)")" = libvirtd ]; then
      echo "$pid"
      return
    fi
  done
}

wait_for_libvirt() {
  for _ in $(seq 1 100); do
    virsh -c "$HBM_LIBVIRT_URI" version >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$(basename "$0"): libvirtd does not answer on $HBM_LIBVIRT_URI after the restart" >&2
  return 1
}

# Restarts libvirtd (or virtqemud) so that it rescans /etc/libvirt/hooks: through systemd when it
# manages the daemon, else by its pid file, started again with the same command line.
restart_libvirtd() {
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    local unit
    for unit in libvirtd.service virtqemud.service; do
      if systemctl is-active --quiet "$unit"; then
        systemctl restart "$unit"
        report restarted "$unit"
        wait_for_libvirt
        return
      fi
    done
    report unchanged libvirtd "(not running: it finds the hook when it starts)"
    return
  fi
  local pid
  pid=$(libvirtd_pid)
  if [ -z "$pid" ]; then
    report unchanged libvirtd "(not running: it finds the hook when it starts)"
    return
  fi
  local -a argv
  mapfile -d '' -t argv < "/proc/$pid/cmdline"
  kill -TERM "$pid"
  for _ in $(seq 1 300); do
    [ -d "/proc/$pid" ] || break
    sleep 0.1
  done
  if [ -d "/proc/$pid" ]; then
    echo "$(basename "$0"): libvirtd (pid $pid) did not stop within 30 s; restart it by hand" >&2
    exit 1
  fi
  # A daemonizing start (-d) returns at once; otherwise run it in the background.
  if printf '%s\n' "${argv[@]}" | grep -qxE -- '-d|--daemon'; then
    "${argv[@]}"
  else
    setsid "${argv[@]}" </dev/null >/dev/null 2>&1 &
  fi
  wait_for_libvirt
  report restarted "libvirtd (was pid $pid, now pid $(libvirtd_pid))"
}
