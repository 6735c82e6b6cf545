#!/usr/bin/env bash
# deploy/libvirt/install.sh and uninstall.sh on this machine's real libvirtd (run as root):
# install twice (the second changes nothing and does not restart libvirtd), libvirt really runs
# the installed qemu.d hook for a domain's life cycle, an upgrade replaces only the binary, an
# edited config survives, uninstall twice leaves nothing behind, bad arguments exit 2.
# Needs: libvirtd + virtlogd (scripts/start-services), qemu-system-x86, inotify-tools.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "$(id -u)" -ne 0 ]; then
  echo "40-libvirt-install.sh: must run as root (installs into /usr/local/bin and /etc)" >&2
  exit 1
fi
uri=qemu:///system
virsh -c "$uri" version >/dev/null 2>&1 || scripts/start-services >/dev/null

work=$(mktemp -d)
trap 'virsh -c "$uri" destroy hbm-install-check >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
cargo build -q -p hook --bin hbm-hook
# A private copy: a concurrent cargo build may relink target/debug/hbm-hook at any moment.
cp "${CARGO_TARGET_DIR:-target}/debug/hbm-hook" "$work/hbm-hook"
binary=$work/hbm-hook

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1"; }
# expect NAME ACTUAL EXPECTED
expect() {
  if [ "$2" = "$3" ]; then ok "$1"; else fail "$1"; diff <(echo "$3") <(echo "$2") | sed 's/^/     /' || true; fi
}
libvirtd_pid() { tr -dc '0-9' < /run/libvirtd.pid; }

# Start from a machine without the install (a previous run or another suite may have left it).
if [ -e /usr/local/bin/hbm-hook ] || [ -L /etc/libvirt/hooks/qemu.d/hbm-passthrough ] || [ -e /etc/hbm-passthrough ]; then
  echo "-- removing an earlier install first"
  deploy/libvirt/uninstall.sh --purge
fi

echo "-- install (first time)"
pid_before=$(libvirtd_pid)
out=$(deploy/libvirt/install.sh --binary "$binary")
echo "$out"
pid_after=$(libvirtd_pid)
expect "first install lists every path it added" "$(echo "$out" | grep -E '^(added|updated|unchanged|kept) ')" \
"added     /usr/local/bin/hbm-hook
added     /usr/local/bin/hbm-qemu -> hbm-hook
added     /etc/libvirt/hooks/qemu.d/hbm-passthrough -> /usr/local/bin/hbm-hook
added     /etc/hbm-passthrough/hook.yaml"
expect "first install restarted libvirtd" "$(echo "$out" | grep -c '^restarted libvirtd')" 1
[ "$pid_before" != "$pid_after" ] && ok "libvirtd runs with a new pid ($pid_before -> $pid_after)" || fail "libvirtd pid unchanged"
cmp -s "$binary" /usr/local/bin/hbm-hook && ok "binary installed byte for byte" || fail "binary differs"
expect "adapter symlink" "$(readlink /usr/local/bin/hbm-qemu)" hbm-hook
expect "qemu.d hook symlink" "$(readlink /etc/libvirt/hooks/qemu.d/hbm-passthrough)" /usr/local/bin/hbm-hook
expect "binary mode" "$(stat -c %a /usr/local/bin/hbm-hook)" 755
cmp -s deploy/libvirt/hook.yaml /etc/hbm-passthrough/hook.yaml && ok "default config installed" || fail "config differs"
[ -x /etc/libvirt/hooks/qemu.d/hbm-passthrough ] && ok "hook is executable" || fail "hook not executable"
virsh -c "$uri" version >/dev/null && ok "libvirtd answers after the restart" || fail "libvirtd does not answer"

echo "-- libvirt runs the hook over a domain's life cycle"
cat > "$work/dom.xml" <<'XML'
<domain type='qemu'>
  <name>hbm-install-check</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <features><acpi/></features>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>
</domain>
XML
inotifywait -m -q -e open --format '%e' /usr/local/bin/hbm-hook > "$work/opens" 2>/dev/null &
watcher=$!
sleep 0.5
if virsh -c "$uri" create --paused "$work/dom.xml" >/dev/null && virsh -c "$uri" destroy hbm-install-check >/dev/null; then
  ok "a domain starts and stops with the hook installed"
else
  fail "domain start/stop with the hook installed"
fi
sleep 0.5
kill "$watcher"
wait "$watcher" 2>/dev/null || true
# libvirt 9 calls the qemu hook for: prepare begin, start begin, started begin, stopped end,
# release end; each call executes /usr/local/bin/hbm-hook once (through the qemu.d symlink).
expect "libvirt executed the hook once per life-cycle call (5)" "$(grep -c '^OPEN' "$work/opens" || true)" 5

echo "-- install again (idempotent)"
out=$(deploy/libvirt/install.sh --binary "$binary")
echo "$out"
expect "second install changes nothing" "$(echo "$out" | grep -cE '^(added|updated|removed|restarted) ' || true)" 0
expect "second install reports every path unchanged" "$(echo "$out" | grep -c '^unchanged /')" 4
expect "second install did not restart libvirtd" "$(libvirtd_pid)" "$pid_after"

echo "-- upgrade: a different binary replaces only the binary"
cp "$binary" "$work/hbm-hook-new"
printf 'upgrade' >> "$work/hbm-hook-new"
chmod 0755 "$work/hbm-hook-new"
out=$(deploy/libvirt/install.sh --binary "$work/hbm-hook-new")
echo "$out"
expect "upgrade updates the binary only" "$(echo "$out" | grep -E '^(added|updated|removed|restarted) ')" \
"updated   /usr/local/bin/hbm-hook"
cmp -s "$work/hbm-hook-new" /usr/local/bin/hbm-hook && ok "new binary in place" || fail "new binary not in place"
expect "upgrade did not restart libvirtd" "$(libvirtd_pid)" "$pid_after"

echo "-- an edited config is kept"
echo "# local edit" >> /etc/hbm-passthrough/hook.yaml
out=$(deploy/libvirt/install.sh --binary "$binary")
expect "install keeps an edited config" "$(echo "$out" | grep '^kept ')" \
"kept      /etc/hbm-passthrough/hook.yaml (local changes; the shipped default is $PWD/deploy/libvirt/hook.yaml)"
tail -n 1 /etc/hbm-passthrough/hook.yaml | grep -qx '# local edit' && ok "edit survived the install" || fail "edit lost"

echo "-- bad arguments"
set +e
err=$(deploy/libvirt/install.sh --binary "$work/missing" 2>&1 >/dev/null); rc=$?
set -e
expect "missing binary: exit 2" "$rc" 2
expect "missing binary: one clear line" "$err" "install.sh: --binary $work/missing is not an executable file"
set +e
err=$(deploy/libvirt/uninstall.sh --frobnicate 2>&1 >/dev/null); rc=$?
set -e
expect "unknown argument: exit 2" "$rc" 2
expect "unknown argument: one clear line" "$err" "uninstall.sh: unknown argument '--frobnicate'"

echo "-- uninstall"
pid_before=$(libvirtd_pid)
# qemu.d itself goes only when nothing else (another project's hook) lives in it.
others=$(find /etc/libvirt/hooks/qemu.d -mindepth 1 -maxdepth 1 ! -name hbm-passthrough | wc -l)
removed_hook_lines="removed   /etc/libvirt/hooks/qemu.d/hbm-passthrough"
if [ "$others" -eq 0 ]; then
  removed_hook_lines="$removed_hook_lines
removed   /etc/libvirt/hooks/qemu.d/ (empty)"
fi
out=$(deploy/libvirt/uninstall.sh)
echo "$out"
expect "uninstall lists what it removed and kept" "$(echo "$out" | grep -E '^(removed|kept|absent) ')" \
"$removed_hook_lines
removed   /usr/local/bin/hbm-qemu
removed   /usr/local/bin/hbm-hook
kept      /etc/hbm-passthrough/hook.yaml (local changes; --purge removes it)
kept      /etc/hbm-passthrough/ (not empty)"
[ "$(libvirtd_pid)" != "$pid_before" ] && ok "uninstall restarted libvirtd (hook removed)" || fail "libvirtd not restarted"
out=$(deploy/libvirt/uninstall.sh --purge)
echo "$out"
expect "uninstall --purge removes the edited config" "$(echo "$out" | grep -E '^(removed|kept) ')" \
"removed   /etc/hbm-passthrough/hook.yaml
removed   /etc/hbm-passthrough/"
pid_before=$(libvirtd_pid)
out=$(deploy/libvirt/uninstall.sh)
expect "third uninstall finds nothing" "$(echo "$out" | grep -cE '^absent ' || true)" 4
expect "uninstall without a hook does not restart libvirtd" "$(libvirtd_pid)" "$pid_before"
left=$(ls -d /usr/local/bin/hbm-hook /usr/local/bin/hbm-qemu /etc/libvirt/hooks/qemu.d/hbm-passthrough /etc/hbm-passthrough 2>/dev/null || true)
expect "nothing left behind" "$left" ""
if virsh -c "$uri" create --paused "$work/dom.xml" >/dev/null && virsh -c "$uri" destroy hbm-install-check >/dev/null; then
  ok "domains start after the uninstall"
else
  fail "domain start after the uninstall"
fi

echo "40-libvirt-install: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
