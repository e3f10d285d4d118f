#!/usr/bin/env bash
# Checkpoint I/O benchmark: `pesc-convert reshard` against `cp` of the same bytes.
#
#   scripts/bench-io.sh [SIZE_GB]        # default 1 (a 1.08 GB bf16 Llama)
#
# Figures, machine and a reading of them: docs/benchmarks.md. Needs bash,
# python3, GNU time (/usr/bin/time), coreutils and about 5x SIZE_GB free.
# Takes about 3.5 minutes for 1 GB on 2 cores (4.5 with SETTLE=3 REPS=3).
#
# Builds the release binary, writes a synthetic Llama checkpoint of at least
# SIZE_GB decimal gigabytes (hidden 2048, intermediate 5632, vocab 32000,
# bf16; layers added until the size is reached) into a temporary folder, and
# in the same run times each command below once to warm up and then REPS
# times, in interleaved rounds, and keeps the median:
#
#   cp -r                      the plain copy the aim is measured against
#   cp -r + sync               the copy made durable (pesc-convert fsyncs)
#   cp -r + sha256sum          the copy and one hash of its bytes
#   sha256sum                  hash only, coreutils (diagnostic)
#   verify-manifest            hash only, pesc-convert's SHA-256 (diagnostic)
#   reshard --dtype keep       one output file
#   reshard ... 500MB shards   sharded output
#   reshard --dtype f16        bf16 -> f16 conversion (same output size)
#   reshard --dtype f32        bf16 -> f32 conversion (output twice the size)
#
# The time aim applies to the two copying (--dtype keep) rows; the RSS aim is
# checked on every reshard row.
#
# Every command writes into a fresh folder beside its input (same
# filesystem); outputs are removed and `sync` is run between repetitions,
# outside the timed region, so no run pays for an earlier one's writeback.
# The page cache is not dropped: inputs are read warm, as `cp` reads them.
# Wall time, peak RSS and CPU time (user + system, median) come from
# `/usr/bin/time -f '%e %M %U %S'`.
#
# Aims (issue): reshard within 1.3x of `cp -r`'s time; peak RSS under
# 1.5 x the largest tensor + 100 MB.
#
# Environment: REPS (default 5), BENCH_TMP (parent of the temporary folder,
# default ${TMPDIR:-/tmp}), PESC_BIN (use this binary, skip the build),
# KEEP=1 (keep the temporary folder), SETTLE (seconds to wait after removing
# the previous output and syncing, before each timed command; default 0).
#
# SETTLE matters on VMs whose balloon reports free memory to the host: pages
# freed more than ~2 s earlier must be faulted back in by the hypervisor, and
# a buffered write() into them then costs several times more system time
# (`cp` itself, which copies in the kernel with copy_file_range, was not
# affected on the machine in docs/benchmarks.md). SETTLE=0 lets each command
# reuse the pages the previous output just freed (best case); SETTLE=3 makes
# every command write into cold memory, as a large conversion does.
set -euo pipefail

SIZE_GB=${1:-1}
SIZE_GB=${SIZE_GB%GB}
REPS=${REPS:-5}
SETTLE=${SETTLE:-0}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if ! [[ $SIZE_GB =~ ^[0-9]+([.][0-9]+)?$ ]]; then
    echo "usage: $0 [SIZE_GB]   (a decimal number of gigabytes, default 1)" >&2
    exit 2
fi
[[ -x /usr/bin/time ]] || { echo "needs GNU time at /usr/bin/time (apt-get install time)" >&2; exit 2; }

cpu_idle_pct() {   # share of CPU time idle over one second, whole machine
    local a b
    a=($(head -n1 /proc/stat)); sleep 1; b=($(head -n1 /proc/stat))
    local idle=$(( b[4] + b[5] - a[4] - a[5] )) total=0 i
    for (( i = 1; i < ${#a[@]}; i++ )); do total=$(( total + b[i] - a[i] )); done
    echo $(( total > 0 ? 100 * idle / total : 100 ))
}
IDLE_BEFORE=$(cpu_idle_pct)
if (( IDLE_BEFORE < 90 )); then
    echo "warning: the machine is only ${IDLE_BEFORE}% idle; other load will skew the figures" >&2
fi

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

# Input, the verify-manifest reference and the largest output (f32: twice the
# input) live at once; ask for 5x the size to be safe.
NEED_KB=$(awk -v s="$SIZE_GB" 'BEGIN { printf "%d", s * 5e9 / 1024 }')
FREE_KB=$(df -Pk "$WORK" | awk 'NR == 2 { print $4 }')
if (( FREE_KB < NEED_KB )); then
    echo "not enough space in $WORK: ${FREE_KB} KiB free, about ${NEED_KB} KiB needed (BENCH_TMP picks another place)" >&2
    exit 1
fi

echo "writing synthetic checkpoint: hidden $HIDDEN, intermediate $INTER, $LAYERS layers, vocab $VOCAB, bf16 ..." >&2
SUMMARY=$(python3 "$ROOT/scripts/make-synthetic.py" "$WORK/in" --hidden $HIDDEN --intermediate $INTER \
    --layers "$LAYERS" --vocab $VOCAB --dtype bf16)
BYTES=$(du -sb "$WORK/in" | cut -f1)
LARGEST=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["largest_tensor_bytes"])' "$SUMMARY")
if (( BYTES < 1000000000 )); then
    echo "warning: the checkpoint is only $BYTES bytes; the issue's aims are stated for at least 1 GB" >&2
fi
sync

# A verify-manifest target: one reshard output, kept for the hash-only row.
"$BIN" reshard "$WORK/in" -o "$WORK/ref" --dtype keep 2>/dev/null
sync

# --- timing -------------------------------------------------------------------
# Each case is a shell command that may use $IN, $BIN, $WORK and $OUT (a fresh
# output path). Rounds are interleaved (every case once per round) so that a
# drift in the machine's state (page reclaim, other load) hits all alike.
LABELS=(
    "cp -r"
    "cp -r + sync"
    "cp -r + sha256sum"
    "sha256sum (hash only)"
    "verify-manifest (hash only)"
    "reshard --dtype keep"
    "reshard --shard-size 500MB"
    "reshard --dtype f16"
    "reshard --dtype f32"
)
CMDS=(
    'cp -r "$IN" "$OUT"'
    'cp -r "$IN" "$OUT" && sync "$OUT"/*'
    'cp -r "$IN" "$OUT" && sha256sum "$OUT"/*'
    'sha256sum "$IN"/*'
    '"$BIN" verify-manifest "$WORK/ref"'
    '"$BIN" reshard "$IN" -o "$OUT" --dtype keep'
    '"$BIN" reshard "$IN" -o "$OUT" --dtype keep --shard-size 500MB'
    '"$BIN" reshard "$IN" -o "$OUT" --dtype f16'
    '"$BIN" reshard "$IN" -o "$OUT" --dtype f32'
)
declare -a SECS RSS CPU   # per case: "s1 s2 ...", "kib1 ...", "user+sys s ..."

IN=$WORK/in
export IN BIN WORK
echo "timing: 1 warm-up round + $REPS rounds of ${#CMDS[@]} commands ..." >&2
for (( r = 0; r <= REPS; r++ )); do
    for (( c = 0; c < ${#CMDS[@]}; c++ )); do
        OUT=$WORK/out
        rm -rf "$OUT" "$WORK"/.out.pesc-staging-*
        sync
        sleep "$SETTLE"
        OUT=$OUT /usr/bin/time -f '%e %M %U %S' -o "$WORK/time.txt" bash -c "${CMDS[c]}" >/dev/null 2>"$WORK/stderr.txt" || {
            echo "FAILED: ${LABELS[c]}" >&2; cat "$WORK/stderr.txt" >&2; exit 1; }
        (( r == 0 )) && continue   # warm-up
        read -r s m u k < <(tail -n1 "$WORK/time.txt")
        SECS[c]="${SECS[c]:-} $s"; RSS[c]="${RSS[c]:-} $m"; CPU[c]="${CPU[c]:-} $(awk -v u="$u" -v k="$k" 'BEGIN { print u + k }')"
    done
    (( r == 0 )) || echo "  round $r/$REPS done" >&2
done
rm -rf "$WORK/out"
IDLE_AFTER=$(cpu_idle_pct)

declare -a ROWS=()
for (( c = 0; c < ${#CMDS[@]}; c++ )); do
    med=$(printf '%s\n' ${SECS[c]} | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
    peak=$(printf '%s\n' ${RSS[c]} | sort -g | tail -n1)
    cpu=$(printf '%s\n' ${CPU[c]} | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
    ROWS+=("${LABELS[c]}|$med|$peak|${SECS[c]# }|$cpu")
done

# --- report -------------------------------------------------------------------
CP_SECS=$(echo "${ROWS[0]}" | cut -d'|' -f2)
CPSYNC_SECS=$(echo "${ROWS[1]}" | cut -d'|' -f2)
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(free -g | awk '/^Mem:/ { print $2 " GiB RAM" }'), $(df -T "$WORK" | awk 'NR == 2 { print $2 " on " $1 }')"
echo "checkpoint: $BYTES bytes ($LAYERS layers, bf16), largest tensor $LARGEST bytes; median of $REPS runs after 1 warm-up"
echo "CPU idle (whole machine, 1 s sample): ${IDLE_BEFORE}% before, ${IDLE_AFTER}% after; SETTLE=${SETTLE}s"
echo
printf '%s\n' "${ROWS[@]}" | awk -F'|' -v bytes="$BYTES" -v cp="$CP_SECS" -v cps="$CPSYNC_SECS" -v largest="$LARGEST" '
BEGIN {
    budget = 1.5 * largest + 100e6
    printf "| %-27s | %8s | %5s | %8s | %10s | %5s | %8s | %11s | %10s | %-22s |\n", "command", "median s", "GB/s", "vs cp -r", "vs cp+sync", "CPU s", "peak RSS", "largest", "RSS budget", "aims (1.3x cp, RSS)"
    printf "|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n", "-----------------------------", "---------:", "------:", "---------:", "-----------:", "------:", "---------:", "------------:", "-----------:", "------------------------"
}
{
    secs = $2; rss = $3 * 1024; ratio = secs / cp
    aims = "-"
    if ($1 ~ /^reshard/) aims = (rss < budget ? "RSS ok" : "RSS FAIL")
    if ($1 ~ /^reshard/ && $1 !~ /dtype f/) aims = (ratio <= 1.3 ? "time ok" : "time FAIL") ", " aims
    printf "| %-27s | %8.2f | %5.2f | %7.2fx | %9.2fx | %5.2f | %4.1f MiB | %7.1f MiB | %6.1f MiB | %-22s |\n", $1, secs, bytes / secs / 1e9, ratio, secs / cps, $5, rss / 1048576, largest / 1048576, budget / 1048576, aims
}'
echo
echo "all runs (s):"
printf '%s\n' "${ROWS[@]}" | awk -F'|' '{ printf "  %-29s %s\n", $1, $4 }'
