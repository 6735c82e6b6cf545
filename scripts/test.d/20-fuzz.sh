#!/usr/bin/env bash
# Fuzzes the domain-XML rewriter (fuzz/fuzz_targets/rewrite.rs) for a bounded time: any input
# must give a typed error or an idempotent, removable rewrite, never a panic.
#
#   scripts/test.d/20-fuzz.sh              at most 60 s / 600000 runs, seed 1
#   HBM_FUZZ_SECONDS=600 HBM_FUZZ_RUNS=-1 HBM_FUZZ_SEED=0 scripts/test.d/20-fuzz.sh
#                                          exploratory: longer, unbounded runs, random seed
#
# CI's run is reproducible: a fixed seed and run count over the same seeds give the same inputs
# (the time bound only cuts it short on a slow machine).
#
# Installs cargo-fuzz with `cargo install --locked` when missing (crates.io). The toolchain is
# stable, so RUSTC_BOOTSTRAP=1 lets cargo-fuzz use the sanitizer flags. Seeds: every corpus
# definition and the sample domain, each behind one option byte. A crash fails the script and
# leaves the input in fuzz/artifacts/rewrite/.
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds="${HBM_FUZZ_SECONDS:-60}"
runs="${HBM_FUZZ_RUNS:-600000}"
seed="${HBM_FUZZ_SEED:-1}"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "20-fuzz: installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1

seeds="$(mktemp -d)"
trap 'rm -rf "$seeds"' EXIT
n=0
for f in tests/corpus/libvirt/*.xml tests/corpus/kubevirt/*.xml examples/domains/*.xml; do
  [ -e "$f" ] || continue
  for sel in 00 01 03 04 14 a4 44; do
    { printf "\\x$sel"; cat "$f"; } > "$seeds/$(basename "$f").$sel"
    n=$((n + 1))
  done
done
echo "20-fuzz: $n seeds, ${seconds}s" >&2

cd fuzz
# --debug-assertions: overflow checks, and the rewriter's own check that the record digests taken
# from the additions as written equal those read back from the whole definition.
cargo fuzz build --sanitizer none --debug-assertions rewrite
cargo fuzz run --sanitizer none --debug-assertions rewrite "$seeds" -- \
  -seed="$seed" -runs="$runs" -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 \
  -print_final_stats=1
echo "20-fuzz: no crash (seed $seed, at most $runs runs / ${seconds}s)"
