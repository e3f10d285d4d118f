#!/usr/bin/env bash
# How faithful quantized inference is: mean KL(f32 || quantized) over real text, our runner against llama.cpp
# on the same q8_0, q4_0 and q4_k_m files (not in CI; needs the llama.cpp build of scripts/llama-cpp-check.sh).
#
#   scripts/bench-kl.sh [MODEL]     # MODEL: a dense llama folder, default work/smollm2
#
# Text: the README's prose (its first paragraphs, English, about 400 tokens), tokenized by MODEL's tokenizer.
# Reference: `pesc-convert logits` of MODEL in f32. Ours: `pesc-convert logits FILE.gguf` (a gate's path: the
# whole text as one prefill). llama.cpp: the same file, all logits of one batch, with its default f16 KV cache
# and with an f32 one. Prints mean KL, max KL and top-1 agreement with the f32 model, per file.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
MODEL="$(cd "${1:-work/smollm2}" && pwd)"
VENV="$ROOT/.cache/llama-cpp-venv"
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "bench-kl: run scripts/llama-cpp-check.sh once first (it builds llama.cpp into .cache/)" >&2
    exit 2
fi
cargo build --release -q
BIN="$ROOT/target/release/pesc-convert"
TMP="$(mktemp -d -t pesc-kl-XXXXXX)"
trap 'rm -rf "$TMP"' EXIT
TYPES=(q8_0 q4_0 q4_k_m)

"$VENV/bin/python" - "$MODEL" "$TMP" <<'PY'
import json, re, sys
from pathlib import Path
from tokenizers import Tokenizer
model, tmp = Path(sys.argv[1]), Path(sys.argv[2])
readme = Path("README.md").read_text()
# The prose paragraphs before the first code block, markdown links reduced to their text.
prose = readme.split("```")[0].split("\n", 1)[1]
prose = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", prose).replace("`", "").replace("**", "")
ids = Tokenizer.from_file(str(model / "tokenizer.json")).encode(prose.strip(), add_special_tokens=False).ids[:400]
(tmp / "ids.txt").write_text(",".join(map(str, ids)))
PY
ids="$(cat "$TMP/ids.txt")"
"$BIN" logits "$MODEL" --token-ids "$ids" -o "$TMP/f32.safetensors" 2>/dev/null
for q in "${TYPES[@]}"; do
    "$BIN" quantize "$MODEL" --to "$q" -o "$TMP/$q.gguf" 2>/dev/null
    "$BIN" logits "$TMP/$q.gguf" --token-ids "$ids" -o "$TMP/ours-$q.safetensors" 2>/dev/null
done

"$VENV/bin/python" - "$TMP" "${TYPES[@]}" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "scripts")
from logits_util import kl_rows, llama_logits, read_logits

tmp, types = Path(sys.argv[1]), sys.argv[2:]
ids = [int(t) for t in (tmp / "ids.txt").read_text().split(",")]
ref = read_logits(tmp / "f32.safetensors")


def row(name, logits):
    kl = kl_rows(ref, logits)
    top1 = (ref.argmax(-1) == logits.argmax(-1)).mean()
    print(f"| {name} | {kl.mean():.3e} | {kl.max():.3e} | {top1:.3f} |", flush=True)


print(f"{len(ids)} tokens of the README's prose; reference: pesc-convert logits of the f32 folder\n")
print("| file, runner | mean KL(f32 ‖ q) | max KL | top-1 = f32 |")
print("|---|--:|--:|--:|")
for q in types:
    row(f"{q}, pesc-convert", read_logits(tmp / f"ours-{q}.safetensors"))
    row(f"{q}, llama.cpp (f16 KV cache, its default)", llama_logits(tmp / f"{q}.gguf", ids, kv_f32=False, n_ctx=1024))
    row(f"{q}, llama.cpp (f32 KV cache)", llama_logits(tmp / f"{q}.gguf", ids, kv_f32=True, n_ctx=1024))
PY
