#!/usr/bin/env bash
# Qwen2 GGUF files against llama.cpp's `qwen2` architecture (not in CI: it needs the llama.cpp build that
# scripts/llama-cpp-check.sh makes, and runs at its end).
#
#   scripts/qwen2-check.sh [MODEL]     # MODEL: a dense llama folder, default work/smollm2
#
# The model: MODEL re-declared as Qwen2 (model_type qwen2, real weights, tied embeddings) with q/k/v biases
# drawn N(0, 0.02), so that every Qwen2 part is exercised on real activations. Then:
#  1. transformers' Qwen2ForCausalLM and `pesc-convert logits` agree on the folder (1e-3; logits up to 38);
#  2. llama.cpp on our f32 export equals `pesc-convert logits` of the folder (1e-3), and tokenizes as
#     tokenizer.json does;
#  3. on the q8_0 and q4_k_m exports llama.cpp and our runner on the same file: distance, top-1 agreement, and
#     mean KL(f32 || quantized) of each on the prompt;
#  4. PESC over the Qwen2 model: crafted, exported (`pesc`, base qwen2), imported back, and `verify` of the
#     imported PESC folder against the dense f32 GGUF is exact.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
MODEL="$(cd "${1:-work/smollm2}" && pwd)"
VENV="$ROOT/.cache/llama-cpp-venv"
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "qwen2-check: run scripts/llama-cpp-check.sh once first (it builds llama.cpp into .cache/)" >&2
    exit 2
fi
scripts/py-env.sh >/dev/null
cargo build --release -q
BIN="$ROOT/target/release/pesc-convert"
TMP="$(mktemp -d -t pesc-qwen2-XXXXXX)"
trap 'rm -rf "$TMP"' EXIT
Q="$TMP/qwen2"

# The Qwen2 model and transformers' logits on a prompt (ids from its tokenizer).
.venv/bin/python - "$MODEL" "$Q" "$TMP" <<'PY'
import json, shutil, sys
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

src, dst, tmp = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
shutil.copytree(src, dst, ignore=shutil.ignore_patterns("SHA256SUMS", "pesc-manifest.json", "README.md"))
config = json.loads((dst / "config.json").read_text())
config.update(model_type="qwen2", architectures=["Qwen2ForCausalLM"], use_sliding_window=False, sliding_window=None)
for key in ["attention_bias", "mlp_bias", "pretraining_tp"]:
    config.pop(key, None)
(dst / "config.json").write_text(json.dumps(config, indent=2))
weights = load_file(dst / "model.safetensors")
g = torch.Generator().manual_seed(0)
for name in list(weights):
    for proj in ["q_proj", "k_proj", "v_proj"]:
        if name.endswith(f"self_attn.{proj}.weight"):
            rows = weights[name].shape[0]
            weights[name.replace(".weight", ".bias")] = (torch.randn(rows, generator=g) * 0.02).to(weights[name].dtype)
save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
tok = AutoTokenizer.from_pretrained(dst)
messages = [{"role": "user", "content": "What is the capital of France? Answer in one word, then explain why in a sentence."}]
ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
model = AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32).eval()
assert type(model).__name__ == "Qwen2ForCausalLM", type(model).__name__
with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0].numpy()
import numpy as np
np.save(tmp / "transformers.npy", logits)
(tmp / "ids.json").write_text(json.dumps(ids))
PY
ids="$(python3 -c "import json,sys; print(','.join(map(str, json.load(open(sys.argv[1])))))" "$TMP/ids.json")"
"$BIN" logits "$Q" --token-ids "$ids" -o "$TMP/ours-folder.safetensors" 2>/dev/null
for to in f32 q8_0 q4_k_m; do
    "$BIN" quantize "$Q" --to "$to" -o "$TMP/qwen2-$to.gguf" 2>/dev/null
    "$BIN" logits "$TMP/qwen2-$to.gguf" --token-ids "$ids" -o "$TMP/ours-$to.safetensors" 2>/dev/null
done
"$BIN" craft "$Q" -o "$TMP/pesc" --experts 4 --top-k 2 --adapter-dim 16 2>/dev/null
"$BIN" quantize "$TMP/pesc" --to f32 -o "$TMP/pesc.gguf" 2>/dev/null
"$BIN" import-gguf "$TMP/pesc.gguf" -o "$TMP/pesc-back" 2>/dev/null
"$BIN" verify "$TMP/pesc-back" --against "$TMP/qwen2-f32.gguf" --json >"$TMP/verify.json" 2>/dev/null || true

"$VENV/bin/python" - "$Q" "$TMP" <<'PY'
import json, sys
from pathlib import Path
import gguf
import llama_cpp
import numpy as np
from tokenizers import Tokenizer
sys.path.insert(0, "scripts")
from logits_util import kl_rows, llama_logits, read_logits

Q, TMP = Path(sys.argv[1]), Path(sys.argv[2])
ids = json.loads((TMP / "ids.json").read_text())
failed = 0


def report(ok, name, detail):
    global failed
    failed += not ok
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)


def kl(p_logits, q_logits):
    return float(kl_rows(p_logits, q_logits).mean())


folder = read_logits(TMP / "ours-folder.safetensors")
hf = np.load(TMP / "transformers.npy")
d = np.abs(folder - hf).max()
report(d <= 1e-3, "Qwen2 folder: pesc-convert logits vs transformers' Qwen2ForCausalLM", f"{len(ids)} tokens, max |diff| {d:.3g}")

f32 = llama_logits(TMP / "qwen2-f32.gguf", ids)
llm = llama_cpp.Llama(model_path=str(TMP / "qwen2-f32.gguf"), vocab_only=True, verbose=False)
md = gguf.GGUFReader(str(TMP / "qwen2-f32.gguf"))
arch = md.fields["general.architecture"].contents()
d = np.abs(f32 - folder).max()
report(arch == "qwen2" and d <= 1e-3, "llama.cpp (qwen2) on our f32 export vs pesc-convert logits of the folder",
       f"arch {arch}, max |diff| {d:.3g} (logits up to {np.abs(folder).max():.1f}), top-1 agreement {(f32.argmax(-1) == folder.argmax(-1)).mean():.2f}")
ref = Tokenizer.from_file(str(Q / "tokenizer.json"))
texts = ["Hello world", " leading space", "digits 1234567 and 3.14", "naïve café 東京 🙂", "<|im_start|>user\nhi<|im_end|>", "tabs\tand\nnewlines  "]
bad = [t for t in texts if llm.tokenize(t.encode(), add_bos=False, special=True) != ref.encode(t, add_special_tokens=False).ids]
report(not bad, "llama.cpp tokenizes the qwen2 export as tokenizer.json", f"{len(texts) - len(bad)}/{len(texts)} strings" + (f"; differs: {bad}" if bad else ""))

for to in ["q8_0", "q4_k_m"]:
    theirs = llama_logits(TMP / f"qwen2-{to}.gguf", ids)
    ours = read_logits(TMP / f"ours-{to}.safetensors")
    d = np.abs(theirs - ours)
    top1 = (theirs.argmax(-1) == ours.argmax(-1)).mean()
    report(top1 >= 0.8, f"qwen2 {to}: our runner vs llama.cpp on the same file",
           f"max |diff| {d.max():.3g} (mean {d.mean():.3g}), top-1 agreement {top1:.2f}; mean KL(f32 || {to}): "
           f"ours {kl(folder, ours):.3g}, llama.cpp {kl(folder, theirs):.3g}")

v = json.loads((TMP / "verify.json").read_text() or "{}")
report(v.get("exact") is True, "PESC over Qwen2: exported (pesc, base qwen2), imported, verify against the dense f32 GGUF",
       f"exact {v.get('exact')}, max_abs_diff {v.get('max_abs_diff')}")
print("all passed" if failed == 0 else f"{failed} failed", flush=True)
sys.exit(1 if failed else 0)
PY
