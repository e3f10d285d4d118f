#!/usr/bin/env bash
# Checkpoint I/O benchmark: `pesc-convert reshard` against `cp` of the same bytes.
#
#   scripts/bench-io.sh [SIZE_GB]        # default 1 (a 1.08 GB bf16 Llama)
#
# Builds the release binary, writes a synthetic Llama checkpoint of at least
# SIZE_GB decimal gigabytes (hidden 2048, intermediate 5632, vocab 32000,
# bf16; layers added until the size is reached) into a temporary folder, and
# in the same run times, once to warm up and then REPS times (median kept):
#
#   cp -r                      the plain copy the aim is measured against
#   cp -r + sync               the copy made durable (pesc-convert fsyncs)
#   cp -r + sha256sum          the copy and one hash of its bytes
#   sha256sum                  hash only, coreutils (diagnostic)
#   verify-manifest            hash only, pesc-convert's SHA-256 (diagnostic)
#   reshard --dtype keep       one output file
#   reshard ... 500MB shards   sharded output
#
# Every command writes into a fresh folder beside its input (same
# filesystem); outputs are removed and `sync` is run between repetitions,
# outside the timed region, so no run pays for an earlier one's writeback.
# The page cache is not dropped: inputs are read warm, as `cp` reads them.
# Wall time and peak RSS come from `/usr/bin/time -f '%e %M'`.
#
# Aims (issue): reshard within 1.3x of `cp -r`'s time; peak RSS under
# 1.5 x the largest tensor + 100 MB.
#
# Environment: REPS (default 3), BENCH_TMP (parent of the temporary folder,
# default ${TMPDIR:-/tmp}), PESC_BIN (use this binary, skip the build),
# KEEP=1 (keep the temporary folder).
set -euo pipefail

SIZE_GB=${1:-1}
SIZE_GB=${SIZE_GB%GB}
REPS=${REPS:-3}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if ! [[ $SIZE_GB =~ ^[0-9]+([.][0-9]+)?$ ]]; then
    echo "usage: $0 [SIZE_GB]   (a decimal number of gigabytes, default 1)" >&2
    exit 2
fi
[[ -x /usr/bin/time ]] || { echo "needs GNU time at /usr/bin/time (apt-get install time)" >&2; exit 2; }

if [[ -n ${PESC_BIN:-} ]]; then
    BIN=$PESC_BIN
else
    echo "building release binary ..." >&2
    (cd "$ROOT" && cargo build --release -q)
    BIN=$ROOT/target/release/pesc-convert
fi

WORK=$(mktemp -d "${BENCH_TMP:-${TMPDIR:-/tmp}}/pesc-bench-io.XXXXXX")
cleanup() { if [[ ${KEEP:-0} != 1 ]]; then rm -rf "$WORK"; else echo "kept $WORK" >&2; fi; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the checkpoint -----------------------------------------------------------
HIDDEN=2048 INTER=5632 VOCAB=32000
# bf16 bytes: embeddings + lm_head, and one layer (attention 4 h^2, MLP 3 h i, 2 norms).
FIXED=$(( 2 * VOCAB * HIDDEN * 2 + HIDDEN * 2 ))
PER_LAYER=$(( (4 * HIDDEN * HIDDEN + 3 * HIDDEN * INTER + 2 * HIDDEN) * 2 ))
LAYERS=$(awk -v s="$SIZE_GB" -v f=$FIXED -v l=$PER_LAYER 'BEGIN { n = (s * 1e9 - f) / l; k = int(n); if (k < n) k++; if (k < 1) k = 1; print k }')

echo "writing synthetic checkpoint: hidden $HIDDEN, intermediate $INTER, $LAYERS layers, vocab $VOCAB, bf16 ..." >&2
SUMMARY=$(python3 "$ROOT/scripts/make-synthetic.py" "$WORK/in" --hidden $HIDDEN --intermediate $INTER \
    --layers "$LAYERS" --vocab $VOCAB --dtype bf16)
BYTES=$(du -sb "$WORK/in" | cut -f1)
LARGEST=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["largest_tensor_bytes"])' "$SUMMARY")
if (( BYTES < 1000000000 )); then
    echo "checkpoint is only $BYTES bytes; the benchmark needs at least 1 GB" >&2
    exit 1
fi
sync

# A verify-manifest target: one reshard output, kept for the hash-only row.
"$BIN" reshard "$WORK/in" -o "$WORK/ref" --dtype keep 2>/dev/null
sync

# --- timing -------------------------------------------------------------------
# run_case LABEL COMMAND... : COMMAND may use $OUT (a fresh output path).
declare -a ROWS=()
run_case() {
    local label=$1; shift
    local cmd=$1
    local -a secs=() rss=()
    local i
    for (( i = 0; i <= REPS; i++ )); do
        local OUT=$WORK/out
        rm -rf "$OUT" "$WORK"/.out.pesc-staging-*
        sync
        OUT=$OUT /usr/bin/time -f '%e %M' -o "$WORK/time.txt" bash -c "$cmd" >/dev/null 2>"$WORK/stderr.txt" || {
            echo "FAILED: $label" >&2; cat "$WORK/stderr.txt" >&2; exit 1; }
        (( i == 0 )) && continue   # warm-up
        read -r s m < <(tail -n1 "$WORK/time.txt")
        secs+=("$s"); rss+=("$m")
    done
    local med peak
    med=$(printf '%s\n' "${secs[@]}" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
    peak=$(printf '%s\n' "${rss[@]}" | sort -g | tail -n1)
    ROWS+=("$label|$med|$peak|${secs[*]}")
    echo "  $label: ${secs[*]} s" >&2
}

IN=$WORK/in
export IN BIN WORK
echo "timing (1 warm-up + $REPS runs each) ..." >&2
run_case "cp -r"                          'cp -r "$IN" "$OUT"'
run_case "cp -r + sync"                   'cp -r "$IN" "$OUT" && sync "$OUT"/*'
run_case "cp -r + sha256sum"              'cp -r "$IN" "$OUT" && sha256sum "$OUT"/*'
run_case "sha256sum (hash only)"          'sha256sum "$IN"/*'
run_case "verify-manifest (hash only)"    '"$BIN" verify-manifest "$WORK/ref"'
run_case "reshard --dtype keep"           '"$BIN" reshard "$IN" -o "$OUT" --dtype keep'
run_case "reshard --shard-size 500MB"     '"$BIN" reshard "$IN" -o "$OUT" --dtype keep --shard-size 500MB'

# --- report -------------------------------------------------------------------
CP_SECS=$(echo "${ROWS[0]}" | cut -d'|' -f2)
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(df -T "$WORK" | awk 'NR == 2 { print $2 " on " $1 }')"
echo "checkpoint: $BYTES bytes ($LAYERS layers, bf16), largest tensor $LARGEST bytes; median of $REPS runs after 1 warm-up"
echo
printf '%s\n' "${ROWS[@]}" | awk -F'|' -v bytes="$BYTES" -v cp="$CP_SECS" -v largest="$LARGEST" '
BEGIN {
    budget = 1.5 * largest + 100e6
    printf "| %-29s | %7s | %6s | %8s | %8s | %11s | %10s | %-9s |\n", "command", "median s", "GB/s", "vs cp -r", "peak RSS MiB", "largest MiB", "budget MiB", "aims"
    printf "|%s|%s|%s|%s|%s|%s|%s|%s|\n", "-------------------------------", "---------:", "-------:", "---------:", "-------------:", "------------:", "-----------:", "-----------"
}
{
    secs = $2; rss = $3 * 1024; ratio = secs / cp
    aims = "-"
    if ($1 ~ /^reshard/) {
        aims = (ratio <= 1.3 ? "time ok" : "TIME FAIL") ", " (rss < budget ? "rss ok" : "RSS FAIL")
    }
    printf "| %-29s | %8.2f | %6.2f | %8.2fx | %12.1f | %11.1f | %10.1f | %-9s |\n", $1, secs, bytes / secs / 1e9, ratio, rss / 1048576, largest / 1048576, budget / 1048576, aims
}'
echo
echo "all runs (s):"
printf '%s\n' "${ROWS[@]}" | awk -F'|' '{ printf "  %-29s %s\n", $1, $4 }'
