#!/usr/bin/env bash
# A TinyLlama-1.1B-class model end to end (not in CI: about 5 minutes and 10 GB of disk, and the llama.cpp build
# of scripts/llama-cpp-check.sh): TinyLlama-1.1B's shapes (hidden 2048, FFN 5632, 22 layers, 32 heads, 4 KV
# heads, vocabulary 32000, bf16) with random N(0, 0.02) weights and the Llama SentencePiece vocabulary
# (fixtures/llama-vocab/, written as the `tokenizer.model` the Hub's folders carry, no tokenizer.json) and a
# Zephyr-style chat template as TinyLlama-Chat's. Then, timed (wall s, peak RSS):
#   craft (PESC 8x64 top-2) -> verify (exact) -> quantize dense q4_k_m and PESC nf4 -> run the PESC NF4 folder
#   and the dense q4_k_m file with the chat template -> llama.cpp loads the dense q4_k_m export, tokenizes
#   llama.cpp's own test strings as expected and as our runner does, and its logits on the chat prompt agree
#   with ours on the same file.
#
#   scripts/tinyllama-check.sh      # TINYLLAMA_WORK (default work/tinyllama) holds the models
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
VENV="$ROOT/.cache/llama-cpp-venv"
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "tinyllama-check: run scripts/llama-cpp-check.sh once first (it builds llama.cpp into .cache/)" >&2
    exit 2
fi
W="${TINYLLAMA_WORK:-$ROOT/work/tinyllama}"
rm -rf "$W"
mkdir -p "$W"
cargo build --release -q
BIN="$ROOT/target/release/pesc-convert"

measure() {
    python3 "$ROOT/scripts/measure.py" "$W" "$@"
}

echo "| command | seconds | peak RSS |"
echo "|---|--:|--:|"
measure "synthesize TinyLlama-1.1B shapes (scripts/make-synthetic.py)" python3 scripts/make-synthetic.py "$W/dense" --hidden 2048 \
    --intermediate 5632 --layers 22 --heads 32 --kv-heads 4 --vocab 32000 --dtype bf16 --values normal
# The tokenizer: Llama's SentencePiece model and TinyLlama-Chat's settings.
"$VENV/bin/python" - "$W/dense" <<'PY'
import json, sys
from pathlib import Path
sys.path.insert(0, "scripts")
import gguf
from llama_vocab import VOCABS, sentencepiece_model
out = Path(sys.argv[1])
r = gguf.GGUFReader(str(VOCABS / "ggml-vocab-llama-spm.gguf"))
field = lambda k: r.fields[k].contents()
(out / "tokenizer.model").write_bytes(sentencepiece_model(field("tokenizer.ggml.tokens"), field("tokenizer.ggml.scores"), field("tokenizer.ggml.token_type")))
template = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
(out / "tokenizer_config.json").write_text(json.dumps({
    "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
    "pad_token": "</s>", "legacy": False, "model_max_length": 2048, "tokenizer_class": "LlamaTokenizer", "chat_template": template,
}, indent=2))
(out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2, "max_length": 2048}))
PY
measure "craft --experts 8 --top-k 2 --adapter-dim 64" "$BIN" craft "$W/dense" -o "$W/pesc" --experts 8 --top-k 2 --adapter-dim 64
measure "verify PESC --against dense (built-in prompts)" "$BIN" verify "$W/pesc" --against "$W/dense" --json
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); assert r['exact'] and r['pass'], r; print(f\"|   exact over {r['tokens_compared']} tokens | | |\")" "$W/out.txt"
measure "quantize dense --to q4_k_m" "$BIN" quantize "$W/dense" --to q4_k_m -o "$W/dense.q4_k_m.gguf"
grep -q "SentencePiece from tokenizer.model" "$W/err.txt" || { echo "tinyllama-check: the export did not read tokenizer.model" >&2; exit 1; }
measure "quantize PESC --to nf4" "$BIN" quantize "$W/pesc" --to nf4 -o "$W/pesc-nf4"
measure "run PESC NF4 folder (chat template, 8 new tokens)" "$BIN" run "$W/pesc-nf4" --prompt "What is the capital of France?" --max-new-tokens 8
measure "run dense q4_k_m GGUF (chat template, 8 new tokens)" "$BIN" run "$W/dense.q4_k_m.gguf" --prompt "What is the capital of France?" --max-new-tokens 8

# llama.cpp on the dense q4_k_m export: tokenization and logits on the chat prompt against ours on the same file.
"$VENV/bin/python" - "$W" "$BIN" <<'PY'
import subprocess, sys
from pathlib import Path
sys.path.insert(0, "scripts")
import llama_cpp
import numpy as np
from llama_vocab import cases
from logits_util import llama_logits, read_logits
W, BIN = Path(sys.argv[1]), sys.argv[2]
failed = 0
def report(ok, name, detail):
    global failed
    failed += not ok
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
llm = llama_cpp.Llama(model_path=str(W / "dense.q4_k_m.gguf"), vocab_only=True, verbose=False)
texts, want = cases("llama-spm")
got = [llm.tokenize(t.encode(), add_bos=False, special=False) for t in texts]
bad = sum(g != w for g, w in zip(got, want))
report(bad == 0, "llama.cpp tokenizes the q4_k_m export (from tokenizer.model) as its own tests expect", f"{len(texts) - bad}/{len(texts)} strings")
# Our runner's ids for the chat prompt (`logits --prompt` is not a thing: take them from a tokenizer.json import).
subprocess.run([BIN, "import-gguf", str(W / "dense.q4_k_m.gguf"), "-o", str(W / "imported"), "--dtype", "bf16"], check=True, capture_output=True)
from tokenizers import Tokenizer
tok = Tokenizer.from_file(str(W / "imported" / "tokenizer.json"))
prompt = "<|user|>\nWhat is the capital of France?</s>\n<|assistant|>\n"
ours_ids = tok.encode(prompt, add_special_tokens=True).ids
theirs_ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
report(ours_ids == theirs_ids, "the chat prompt tokenizes alike (BOS, </s> as a special token)", f"{len(ours_ids)} tokens")
theirs = llama_logits(W / "dense.q4_k_m.gguf", theirs_ids)
subprocess.run([BIN, "logits", str(W / "dense.q4_k_m.gguf"), "--token-ids", ",".join(map(str, theirs_ids)), "-o", str(W / "ours.safetensors"), "--force"], check=True, capture_output=True)
ours = read_logits(W / "ours.safetensors")
d = np.abs(ours - theirs)
top1 = (ours.argmax(-1) == theirs.argmax(-1)).mean()
report(top1 >= 0.8, "llama.cpp runs the q4_k_m export: logits against ours on the same file",
       f"max |diff| {d.max():.3g} (mean {d.mean():.3g}, logits up to {np.abs(theirs).max():.2f}), top-1 agreement {top1:.2f}")
sys.exit(1 if failed else 0)
PY
echo "tinyllama-check: all passed (outputs in $W)"
