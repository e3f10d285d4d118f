#!/usr/bin/env bash
# `craft` on synthetic checkpoints with 7B-like shapes (hidden 4096, FFN 11008,
# vocab 32000, bf16) at 2, 4 and 8 layers, against `cp -r` of the crafted
# output (the same bytes) followed by `sync` (craft fsyncs every file it
# writes, so the fair reference is a durable copy), in the same run.
# Camelidae's settings: 8 experts, top-2, adapter_dim 512. Prints the median
# wall time of REPS runs (default 3), the ratio to cp + sync and peak RSS;
# RSS should stay flat as layers grow (output is streamed tensor by tensor).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cargo build --release --locked -q
bin="$root/target/release/pesc-convert"
work="$(mktemp -d "${TMPDIR:-/tmp}/pesc-bench-craft.XXXXXX")"
trap 'rm -rf "$work"' EXIT

measure() { # prints "seconds max_rss_kib" for a command
  /usr/bin/time -f '%e %M' -o "$work/time" "$@" >/dev/null 2>&1
  cat "$work/time"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB, $(df -T "$work" | awk 'NR==2{print $2}')"
reps="${REPS:-3}"
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf '%-7s %10s %10s %12s %8s %11s %12s\n' layers out_GB craft_s cp+sync_s ratio rss_MiB largest_MiB
for layers in 2 4 8; do
  dense="$work/dense-$layers"
  python3 scripts/make-synthetic.py "$dense" --hidden 4096 --intermediate 11008 --layers "$layers" --vocab 32000 --dtype bf16 >/dev/null
  out="$work/pesc-$layers"
  # Warm the page cache for both sides alike.
  cat "$dense"/* >/dev/null
  : > "$work/craft.times"; : > "$work/cp.times"; rss=0
  for _ in $(seq "$reps"); do
    rm -rf "$out" "$work/copy-$layers"; sync
    read -r s r < <(measure "$bin" craft "$dense" -o "$out" --experts 8 --top-k 2 --adapter-dim 512)
    echo "$s" >> "$work/craft.times"; rss=$(( r > rss ? r : rss ))
    read -r s _ < <(measure sh -c "cp -r '$out' '$work/copy-$layers' && sync")
    echo "$s" >> "$work/cp.times"
  done
  craft_s=$(median < "$work/craft.times"); cp_s=$(median < "$work/cp.times")
  bytes=$(du -sb "$out" | cut -f1)
  largest=$(( 32000 * 4096 * 2 ))
  awk -v l="$layers" -v b="$bytes" -v c="$craft_s" -v p="$cp_s" -v r="$rss" -v g="$largest" \
    'BEGIN { printf "%-7s %10.2f %10.2f %12.2f %8.2f %11.1f %12.1f\n", l, b/1e9, c, p, (p > 0 ? c/p : 0), r/1024, g/1048576 }'
  rm -rf "$dense" "$out" "$work/copy-$layers"
done
