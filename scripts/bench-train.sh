#!/usr/bin/env bash
# Training throughput and peak memory on the default model (SmolLM2-135M-Instruct crafted into PESC
# 8x64 top-2), `pesc-convert train` against the same step in float32 PyTorch
# (scripts/bench_train_torch.py, the step CI checks the trainer against), in the same run, same
# records, same flags: LoRA r 64 alpha 16 on q/k/v/o/gate/up/down, adapters and routers trainable,
# batch B (default 4) of pre-tokenized records of T tokens (default 128; loss on all but the first
# 16), adapter dropout off (the PyTorch step has none), STEPS steps (default 8). Also, with
# pesc-convert: the dense LoRA baseline (LoRA alone on the dense model), --gradient-checkpointing,
# --base nf4 (QLoRA) and both. Tokens/s counts the steps only (not
# loading); peak RSS is /usr/bin/time's for the whole process.
#
#   scripts/py-env.sh && scripts/bench-train.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
STEPS="${STEPS:-8}" B="${B:-4}" T="${T:-128}"
cargo build --release --locked -q
bin="${CARGO_TARGET_DIR:-$root/target}/release/pesc-convert"
py="$root/.venv/bin/python"
work="${PESC_WORK:-$root/work}"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/pesc-bench-train.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

gguf="$(scripts/fetch-smollm2.sh "$work")"
"$bin" import-gguf "$gguf" -o "$tmp/dense" 2>/dev/null
"$bin" craft "$tmp/dense" -o "$tmp/pesc" --experts 8 --top-k 2 --adapter-dim 64 --seed 0 >/dev/null 2>&1
python3 - "$tmp/data.jsonl" "$B" "$T" <<'PY'
import json, random, sys
path, b, t = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(0)
with open(path, "w") as f:
    for _ in range(4 * b):
        ids = [rng.randrange(49152) for _ in range(t)]
        f.write(json.dumps({"input_ids": ids, "labels": [-100] * 16 + ids[16:]}) + "\n")
PY
flags=(--data "$tmp/data.jsonl" --batch-size "$B" --seq-len "$T" --lora-r 64 --lora-alpha 16 --adapter-dropout 0 --seed 0)
echo "== $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $STEPS steps of $B x $T tokens"
printf '%-44s %10s %12s\n' run tokens/s "peak RSS"
ours() {  # label model run-folder [flags]
  /usr/bin/time -f "%M" -o "$tmp/rss" "$bin" train "$2" -o "$tmp/$3" --steps "$STEPS" "${flags[@]}" "${@:4}" 2>"$tmp/log"
  rate="$(grep -o '[0-9]* tokens/s' "$tmp/log" | tail -1 | cut -d' ' -f1)"
  printf '%-44s %10s %9s MiB\n' "$1" "$rate" "$(( $(cat "$tmp/rss") / 1024 ))"
}
ours "pesc-convert train, PESC" "$tmp/pesc" run-pesc
# The PyTorch step starts from the same initial LoRA (seeded A, zero B) and adapters: a --steps 0 run.
"$bin" train "$tmp/pesc" -o "$tmp/run0" --steps 0 "${flags[@]}" 2>/dev/null
/usr/bin/time -f "%M" -o "$tmp/rss" "$py" scripts/bench_train_torch.py "$tmp/pesc" "$tmp/run0" "$tmp/data.jsonl" \
  --steps "$STEPS" --batch-size "$B" >"$tmp/torch.json"
"$py" - "$tmp/torch.json" "$tmp/rss" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
label = f"PyTorch {r['torch']} ({r['threads']} threads), PESC"
print(f"{label:<44} {r['tokens_per_s']:10.0f} {int(open(sys.argv[2]).read()) // 1024:9d} MiB")
PY
ours "pesc-convert train, dense LoRA baseline" "$tmp/dense" run-dense
ours "pesc-convert train --gradient-checkpointing" "$tmp/pesc" run-gc --gradient-checkpointing
ours "pesc-convert train --base nf4" "$tmp/pesc" run-nf4 --base nf4
ours "  ... --base nf4 --gradient-checkpointing" "$tmp/pesc" run-nf4-gc --base nf4 --gradient-checkpointing
