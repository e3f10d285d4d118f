#!/usr/bin/env bash
# The worked training validation of docs/training.md, on the default model (CPU).
#
#   STEPS=300 scripts/validate-training.sh
#
# Needs work/smollm2 (scripts/quickstart.sh). Generates the mixed instruction set
# (scripts/make-instruct-data.py: 600 training and 90 held-out math/code/general records), crafts
# SmolLM2 into PESC 8x64 top-2, and trains with the same data, steps and flags:
#   1. PESC: adapters, routers and LoRA (r 64, alpha 16) on the frozen base;
#   2. the dense LoRA baseline: the same LoRA on the dense model.
# Each run writes eval.json (held-out loss before and after) and metrics.jsonl; then route-stats of
# the merged PESC model on the held-out records per source, as a table and docs/training-routes.svg.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
STEPS="${STEPS:-300}"
OUT="${OUT:-work/validation}"
cargo build --release --locked -q
BIN="$PWD/target/release/pesc-convert"
rm -rf "$OUT"
mkdir -p "$OUT"
python3 scripts/make-instruct-data.py "$OUT/data"
"$BIN" craft work/smollm2 -o "$OUT/pesc" --experts 8 --top-k 2 --adapter-dim 64 --seed 0 >/dev/null
FLAGS=(--steps "$STEPS" --batch-size 4 --seq-len 128 --lr 2e-4 --seed 0 --data "$OUT/data/train.jsonl" --eval-data "$OUT/data/heldout.jsonl")
for run in pesc dense; do
    model="$OUT/pesc"; [[ $run == dense ]] && model=work/smollm2
    /usr/bin/time -f "$run: %e s wall, %M KiB peak RSS" "$BIN" train "$model" -o "$OUT/run-$run" "${FLAGS[@]}"
done
"$BIN" merge-lora "$OUT/pesc" "$OUT/run-pesc" -o "$OUT/pesc-trained" >/dev/null
"$BIN" route-stats "$OUT/pesc-trained" --data "$OUT/data/heldout.jsonl" --svg docs/training-routes.svg --force
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
for run in ["pesc", "dense"]:
    e = json.load(open(f"{out}/run-{run}/eval.json"))
    m = [json.loads(l) for l in open(f"{out}/run-{run}/metrics.jsonl")]
    aux = [r["aux_loss"] for r in m]
    print(f"{run:<6} held-out loss {e['loss_before']:.4f} -> {e['loss_after']:.4f} over {e['response_tokens']} tokens; "
          f"train loss {m[0]['loss']:.4f} -> {sum(r['loss'] for r in m[-10:]) / 10:.4f} (last 10 steps); "
          f"aux {min(aux):.4f}..{max(aux):.4f}; {m[-1]['step']} steps")
PY
