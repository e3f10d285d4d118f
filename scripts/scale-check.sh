#!/usr/bin/env bash
# The whole pipeline on synthetic checkpoints with real layouts and N(0, 0.02) weights (bf16):
# craft, verify (must be exact), quantize q8_0, q4_k_m and nf4, merge-lora of an r=16 adapter,
# import-gguf of the q8_0 file, run. Prints a markdown table of wall time and peak RSS per command
# (docs/benchmarks.md, "Scale").
#
#   scripts/scale-check.sh            # TinyLlama-1.1B shapes (2.2 GB; a few minutes; CI runs it)
#   scripts/scale-check.sh 7b         # Llama-2-7B shapes (13.5 GB; about 40 GB of disk at the peak, some minutes)
#   scripts/scale-check.sh 1.1b 7b    # both
#
# SCALE_WORK (default: work/scale) holds the models; each command's outputs are removed once measured.
# The 7B run also verifies a 2-layer model of the same widths, to show verify's memory is flat in depth.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
work="${SCALE_WORK:-$root/work/scale}"
mkdir -p "$work"
sizes=("$@")
[[ ${#sizes[@]} -gt 0 ]] || sizes=(1.1b)

cargo build --release --locked -q
bin="$root/target/release/pesc-convert"

# measure NAME CMD...: runs CMD, prints a table row (seconds, peak RSS), keeps its stdout in $work/out.txt.
measure() {
    python3 "$root/scripts/measure.py" "$work" "$@"
}

# verify_exact NAME CANDIDATE REFERENCE: measures verify --json and checks it is exact.
verify_exact() {
    measure "$1" "$bin" verify "$2" --against "$3" --json
    python3 - "$work/out.txt" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["exact"] and r["exact_required"] and r["pass"], r
print(f"|   exact over {r['tokens_compared']} tokens, {r['tokens_per_second']:.1f} tokens/s, verify's own peak {r['peak_rss_bytes'] / 2**30:.2f} GiB | | |")
PY
}

pipeline() {
    local label="$1" hidden="$2" ffn="$3" layers="$4" heads="$5" kv="$6" vocab="$7"
    local dense="$work/$label" pesc="$work/$label-pesc"
    echo
    echo "### $label: hidden $hidden, FFN $ffn, $layers layers, $heads heads ($kv KV), vocab $vocab, bf16"
    echo
    echo "| command | seconds | peak RSS |"
    echo "|---|--:|--:|"
    rm -rf "$dense" "$pesc"
    measure "synthesize (scripts/make-synthetic.py)" python3 scripts/make-synthetic.py "$dense" --hidden "$hidden" --intermediate "$ffn" \
        --layers "$layers" --heads "$heads" --kv-heads "$kv" --vocab "$vocab" --dtype bf16 --values normal --shard-size 2GB \
        --adapter "$work/$label-adapter" --adapter-r 16
    measure "craft --experts 8 --top-k 2 --adapter-dim 64" "$bin" craft "$dense" -o "$pesc" --experts 8 --top-k 2 --adapter-dim 64 --shard-size 2GB
    verify_exact "verify PESC --against dense" "$pesc" "$dense"
    rm -rf "$pesc"
    measure "quantize --to q8_0" "$bin" quantize "$dense" --to q8_0 -o "$work/$label.q8_0.gguf" --force
    measure "import-gguf (q8_0, --dtype bf16)" "$bin" import-gguf "$work/$label.q8_0.gguf" -o "$work/$label-imported" --dtype bf16 --shard-size 2GB
    rm -rf "$work/$label-imported" "$work/$label.q8_0.gguf"
    measure "quantize --to q4_k_m" "$bin" quantize "$dense" --to q4_k_m -o "$work/$label.q4_k_m.gguf" --force
    rm -f "$work/$label.q4_k_m.gguf"
    measure "quantize --to nf4" "$bin" quantize "$dense" --to nf4 -o "$work/$label-nf4"
    rm -rf "$work/$label-nf4"
    measure "merge-lora (r=16 on q,k,v,o,gate,up,down)" "$bin" merge-lora "$dense" "$work/$label-adapter" -o "$work/$label-merged" --onto original --shard-size 2GB
    rm -rf "$work/$label-merged"
    measure "run --token-ids (8 new tokens, greedy)" "$bin" run "$dense" --token-ids 1,306,4966,338,263 --max-new-tokens 8
    rm -rf "$dense" "$work/$label-adapter"
}

for size in "${sizes[@]}"; do
    case "$size" in
        1.1b) pipeline tinyllama-1.1b-shaped 2048 5632 22 32 4 32000 ;;
        7b)
            pipeline llama2-7b-shaped 4096 11008 32 32 32 32000
            # Memory flat in depth: the same widths with 2 layers.
            two="$work/llama2-7b-shaped-2l"
            rm -rf "$two" "$two-pesc"
            python3 scripts/make-synthetic.py "$two" --hidden 4096 --intermediate 11008 --layers 2 --heads 32 --vocab 32000 \
                --dtype bf16 --values normal >/dev/null
            "$bin" craft "$two" -o "$two-pesc" --experts 8 --top-k 2 --adapter-dim 64 >/dev/null 2>&1
            echo
            echo "| command | seconds | peak RSS |"
            echo "|---|--:|--:|"
            verify_exact "verify PESC --against dense (the same widths, 2 layers)" "$two-pesc" "$two"
            rm -rf "$two" "$two-pesc"
            ;;
        *) echo "scale-check: unknown size \`$size\` (1.1b or 7b)" >&2; exit 2 ;;
    esac
done
