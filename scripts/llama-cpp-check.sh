#!/usr/bin/env bash
# llama.cpp itself as the oracle for `pesc-convert quantize` (GGUF export). Not run in CI: the first run
# builds llama-cpp-python 0.3.36 from its PyPI sdist (it compiles llama.cpp: about 8 minutes on 2 cores).
#
#   scripts/llama-cpp-check.sh [MODEL]      # MODEL: a dense llama folder, default work/smollm2
#
# work/smollm2 is SmolLM2-135M-Instruct as scripts/quickstart.sh imports it. The checks, on MODEL:
#
#  1. converter: llama.cpp's own convert_hf_to_gguf.py (the copy vendored in the sdist, llama.cpp 0c1e57098)
#     with --outtype f32/f16/bf16/q8_0 gives the same metadata (keys, order, types, values; only general.name
#     differs, which the converter title-cases) and the same tensors (names, types, bytes) as our export;
#     only the tensor order differs (ours is llama-quantize's).
#  2. llama-quantize: llama_model_quantize() of our f32 export to Q8_0, Q4_0, Q4_1, Q4_K_S, Q6_K, Q4_K_M (and
#     Q4_K_M --pure) gives exactly our exports' tensors: same order, types and bytes; the metadata differs only
#     in that ggml moves general.quantization_version and general.file_type to the end when it sets them.
#  3. tokenizer: llama.cpp's tokenizer, loaded from our GGUF, encodes a set of strings (digits, code,
#     punctuation, non-Latin scripts, emoji, special tokens) as MODEL's tokenizer.json does (the `tokenizers`
#     library, which pesc-convert uses).
#  5. Mixtral: the converter on MODEL upcycled to 4 experts gives our f32 file; llama_model_quantize of our 8-expert
#     f32 file (the llama-chat fixture upcycled) gives our q8_0, q4_0 and q4_k_m files (its n_expert == 8 rules).
#  6. the runner on GGUF files: on the llama-chat fixture's dense and Mixtral exports its logits equal llama.cpp's on the
#     same files within 1e-4 (measured: 0 for q8_0, q4_0, q4_k_m; 2.4e-7 for f32) but 1e-2 where Q5_1 meets Q8_1
#     activations (4.8e-3); on MODEL's q8_0/q4_k_m files it reports the distance and greedy agreement (top-1 >= 0.8).
#  7. SentencePiece vocabularies: scripts/spm-check.sh (import, export from tokenizer.json and from tokenizer.model,
#     against transformers, sentencepiece, the converter and llama.cpp's tokenizer on its own test strings).
#  8. Qwen2: scripts/qwen2-check.sh (MODEL re-declared as Qwen2 with q/k/v biases: llama.cpp's qwen2 on our exports).
#  4. logits on a chat prompt: llama.cpp (KV cache in f32) on our f32 export equals `pesc-convert logits` of
#     MODEL within 1e-3 (measured 1.4e-4 on SmolLM2, logits up to 35). On q8_0 (and q4_k_m) exports the
#     reference is `pesc-convert logits` of the export imported back (the same dequantized weights): ggml's CPU
#     matmul also rounds the activations to 8 bits, so its distance to that reference is bounded by 3x the
#     weight-rounding distance itself (|import - MODEL|): measured 1.16 vs 0.88 max, 0.20 vs 0.12 mean for q8_0.
#
# Needs: the release binary (built here), .venv (scripts/py-env.sh: torch and transformers, for the converter),
# a C/C++ compiler, PyPI. Installs into .cache/ (git-ignored): llama-cpp-venv (llama-cpp-python, gguf, tokenizers,
# numpy) and converter-extra (sentencepiece, which the converter imports). Prints the figures; exit 1 on a failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
MODEL="$(cd "${1:-work/smollm2}" && pwd)"
LLAMA_CPP_PYTHON=0.3.36
VENV="$ROOT/.cache/llama-cpp-venv"
EXTRA="$ROOT/.cache/converter-extra"
SDIST_DIR="$ROOT/.cache/llama-cpp-sdist"
log() { echo "llama-cpp-check: $*" >&2; }

scripts/py-env.sh
cargo build --release
BIN="$ROOT/target/release/pesc-convert"

if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
# The sdist holds llama.cpp for the build and, under vendor/, the converter this script compares with.
SDIST="$SDIST_DIR/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz"
CONVERTER="$SDIST_DIR/llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp"
if [[ ! -f "$SDIST" ]]; then
    mkdir -p "$SDIST_DIR"
    "$VENV/bin/python" -m pip download --quiet --no-deps -d "$SDIST_DIR" "llama-cpp-python==$LLAMA_CPP_PYTHON" >&2
fi
if [[ ! -f "$CONVERTER/convert_hf_to_gguf.py" ]]; then
    tar -xzf "$SDIST" -C "$SDIST_DIR"
fi
if ! "$VENV/bin/python" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$LLAMA_CPP_PYTHON')" 2>/dev/null; then
    log "building llama-cpp-python $LLAMA_CPP_PYTHON (compiles llama.cpp; about 8 minutes on 2 cores)"
    # No -march=native: ggml's AMX kernels crash in some VMs that advertise AMX (seen here as a segfault in
    # llama_decode on any quantized model). AVX2 works everywhere this runs.
    CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" \
        CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$VENV/bin/python" -m pip install --progress-bar off "$SDIST" >&2
fi
"$VENV/bin/python" -m pip install --quiet --progress-bar off numpy gguf==0.19.0 tokenizers >&2
if [[ ! -d "$EXTRA/sentencepiece" ]]; then
    .venv/bin/python -m pip install --quiet --target "$EXTRA" sentencepiece >&2
fi

TMP="$(mktemp -d -t pesc-llama-cpp-XXXXXX)"
trap 'rm -rf "$TMP"' EXIT
log "outputs in $TMP"
for to in f32 f16 bf16 q8_0; do
    PYTHONPATH="$CONVERTER/gguf-py:$EXTRA" .venv/bin/python "$CONVERTER/convert_hf_to_gguf.py" "$MODEL" \
        --outtype "$to" --outfile "$TMP/converter-$to.gguf" >"$TMP/converter-$to.log" 2>&1 \
        || { log "convert_hf_to_gguf.py --outtype $to failed:"; tail -20 "$TMP/converter-$to.log" >&2; exit 1; }
done
for to in f32 f16 bf16 q8_0 q4_0 q4_1 q4_k q6_k q4_k_m; do
    "$BIN" quantize "$MODEL" --to "$to" -o "$TMP/ours-$to.gguf" 2>/dev/null
done
"$BIN" quantize "$MODEL" --to q4_k_m --pure -o "$TMP/ours-q4_k_m-pure.gguf" 2>/dev/null
# Mixtral: MODEL upcycled to 4 experts (converter comparison) and the llama-chat fixture upcycled to 8 (llama-quantize's
# n_expert == 8 rules, logits); the fixture's own dense exports for the bit-exactness of the quantized runner.
"$BIN" upcycle "$MODEL" -o "$TMP/mixtral" --experts 4 --top-k 2 2>/dev/null
"$BIN" upcycle fixtures/models/llama-chat -o "$TMP/mixtral-chat" --experts 8 --top-k 2 2>/dev/null
PYTHONPATH="$CONVERTER/gguf-py:$EXTRA" .venv/bin/python "$CONVERTER/convert_hf_to_gguf.py" "$TMP/mixtral" \
    --outtype f32 --outfile "$TMP/converter-mixtral-f32.gguf" >"$TMP/converter-mixtral.log" 2>&1 \
    || { log "convert_hf_to_gguf.py on the Mixtral model failed:"; tail -20 "$TMP/converter-mixtral.log" >&2; exit 1; }
"$BIN" quantize "$TMP/mixtral" --to f32 -o "$TMP/ours-mixtral-f32.gguf" 2>/dev/null
for to in f32 q8_0 q4_0 q4_k_m; do
    "$BIN" quantize "$TMP/mixtral-chat" --to "$to" -o "$TMP/ours-mixtral-chat-$to.gguf" 2>/dev/null
    "$BIN" quantize fixtures/models/llama-chat --to "$to" -o "$TMP/ours-chat-$to.gguf" 2>/dev/null
done

"$VENV/bin/python" - "$MODEL" "$BIN" "$TMP" <<'PY'
import ctypes
import json
import struct
import subprocess
import sys
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
from tokenizers import Tokenizer

MODEL, BIN, TMP = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
failed = 0


def report(ok, name, detail):
    global failed
    failed += not ok
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)


def fields(reader):
    return {k: (tuple(int(t) for t in f.types), f.contents()) for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def tensors(reader):
    return [(t.name, t.tensor_type.name, np.asarray(t.data).view(np.uint8).tobytes()) for t in reader.tensors]


# 1. The converter.
for to in ["f32", "f16", "bf16", "q8_0"]:
    ours, conv = gguf.GGUFReader(str(TMP / f"ours-{to}.gguf")), gguf.GGUFReader(str(TMP / f"converter-{to}.gguf"))
    fo, fc = fields(ours), fields(conv)
    diffs = [k for k in set(fo) | set(fc) if fo.get(k) != fc.get(k)]
    order_ok = list(fo) == list(fc)
    to_, tc_ = sorted(tensors(ours)), sorted(tensors(conv))
    same = to_ == tc_
    bad = [k for k in diffs if k != "general.name"]
    report(order_ok and not bad and same, f"converter --outtype {to}",
           f"{len(fo)} keys in the same order, differing only in {diffs} ({fo['general.name'][1]!r} vs {fc['general.name'][1]!r}); "
           f"{len(to_)} tensors {'identical in type and bytes' if same else 'DIFFER'}" + (f"; other differences: {bad}" if bad else ""))

# 2. llama-quantize of our f32 export.
FTYPES = {"q8_0": 7, "q4_0": 2, "q4_1": 3, "q4_k": 14, "q6_k": 18, "q4_k_m": 15, "q4_k_m-pure": 15}
for to, ftype in FTYPES.items():
    out = TMP / f"llama-quantize-{to}.gguf"
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype, p.pure = ftype, to.endswith("-pure")
    rc = llama_cpp.llama_model_quantize(str(TMP / "ours-f32.gguf").encode(), str(out).encode(), ctypes.byref(p))
    if rc != 0:
        report(False, f"llama-quantize {to}", f"llama_model_quantize returned {rc}")
        continue
    ours, theirs = gguf.GGUFReader(str(TMP / f"ours-{to}.gguf")), gguf.GGUFReader(str(out))
    a, b = tensors(ours), tensors(theirs)
    fo, ft = fields(ours), fields(theirs)
    moved = ["general.file_type", "general.quantization_version"]
    order_ok = [k for k in fo if k not in moved] + moved == list(ft) or [k for k in fo if k not in moved] + moved[::-1] == list(ft)
    kinds = {}
    for _, ty, _ in b:
        kinds[ty] = kinds.get(ty, 0) + 1
    report(a == b and fo == ft and order_ok, f"llama-quantize {to}",
           f"{len(b)} tensors {'identical (order, types, bytes)' if a == b else 'DIFFER'}: "
           f"{', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}; metadata {'equal' if fo == ft and order_ok else 'DIFFERS'}")

# 3. Tokenization.
STRINGS = [
    "Hello, world!", "12345", "Call 555-0199 before 9:30, or pay $1,000,000.", "def add(a, b):\n    return a + b  # two spaces\n",
    "for (int i = 0; i < n; ++i) { x[i] *= 2; }", "\u00c7a va? \u65e5\u672c\u8a9e \u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac \U0001f917 na\u00efve caf\u00e9",
    "  leading spaces and\ttabs\n\nnewlines  ", "I'M HERE, it's fine; they'll see.", "<|im_start|>user\nhi<|im_end|>",
    "don't 3.14159 e=mc^2 ~~~ \u2014 \u00bd", "",
]
ref = Tokenizer.from_file(str(MODEL / "tokenizer.json"))
llm = llama_cpp.Llama(model_path=str(TMP / "ours-q8_0.gguf"), n_ctx=512, n_batch=512, logits_all=True, verbose=False, type_k=0, type_v=0)
bad = [(s, llm.tokenize(s.encode(), add_bos=False, special=True), ref.encode(s, add_special_tokens=False).ids) for s in STRINGS]
bad = [x for x in bad if x[1] != x[2]]
report(not bad, "tokenizer", f"{len(STRINGS) - len(bad)}/{len(STRINGS)} strings encoded alike" + (f"; first difference {bad[0]}" if bad else ""))


def with_pre(src, dst, pre):
    """SRC rewritten by the gguf package with tokenizer.ggml.pre = PRE."""
    reader = gguf.GGUFReader(str(src))
    writer = gguf.GGUFWriter(str(dst), reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, pre if key == "tokenizer.ggml.pre" else field.contents(), kind, sub_type=sub)
    for t in reader.tensors:
        writer.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    writer.write_header_to_file(); writer.write_kv_data_to_file(); writer.write_tensors_to_file(); writer.close()


# 3b. The pre-tokenizers import-gguf rebuilds, against llama.cpp's own for the same name.
for pre in ["default", "gpt-2", "llama-bpe", "qwen2", "smollm"]:
    variant = TMP / f"pre-{pre}.gguf"
    with_pre(TMP / "ours-q8_0.gguf", variant, pre)
    folder = TMP / f"pre-{pre}"
    done = subprocess.run([BIN, "import-gguf", str(variant), "-o", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        report(False, f"tokenizer.ggml.pre {pre}", f"import-gguf failed: {done.stderr.strip()}")
        continue
    mine = Tokenizer.from_file(str(folder / "tokenizer.json"))
    m = llama_cpp.Llama(model_path=str(variant), n_ctx=64, verbose=False, vocab_only=True)
    bad = [(s, m.tokenize(s.encode(), add_bos=False, special=True), mine.encode(s, add_special_tokens=False).ids) for s in STRINGS]
    bad = [x for x in bad if x[1] != x[2]]
    report(not bad, f"tokenizer.ggml.pre {pre}", f"{len(STRINGS) - len(bad)}/{len(STRINGS)} strings encoded alike by llama.cpp and the imported tokenizer.json" + (f"; first difference {bad[0]}" if bad else ""))


# 4. Logits.
def pesc_logits(folder, ids):
    """`pesc-convert logits` of a folder or a GGUF file."""
    out = TMP / f"logits-{folder.name}.safetensors"
    subprocess.run([BIN, "logits", str(folder), "--token-ids", ",".join(map(str, ids)), "-o", str(out), "--force"], check=True, capture_output=True)
    raw = out.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    t = json.loads(raw[8:8 + n])["logits"]
    start, end = t["data_offsets"]
    return np.frombuffer(raw[8 + n + start:8 + n + end], dtype=np.float32).reshape(t["shape"])


sys.path.insert(0, "scripts")
from logits_util import llama_logits  # noqa: E402


def stats(a, b):
    d = np.abs(a - b)
    return d.max(), d.mean(), (a.argmax(-1) == b.argmax(-1)).mean()


prompt = "<|im_start|>user\nWhat is the capital of France? Answer in one word.<|im_end|>\n<|im_start|>assistant\n"
ids = ref.encode(prompt, add_special_tokens=False).ids
reference = pesc_logits(MODEL, ids)
mx, mean, top1 = stats(llama_logits(TMP / "ours-f32.gguf", ids), reference)
report(mx <= 1e-3, "logits f32", f"{len(ids)} tokens: max |llama.cpp - pesc-convert| {mx:.3g} (mean {mean:.3g}, top-1 agreement {top1:.2f}, logits up to {np.abs(reference).max():.3g})")
for to in ["q8_0", "q4_k_m"]:
    folder = TMP / f"imported-{to}"
    subprocess.run([BIN, "import-gguf", str(TMP / f"ours-{to}.gguf"), "-o", str(folder)], check=True, capture_output=True)
    same_weights = pesc_logits(folder, ids)
    w_max, w_mean, _ = stats(same_weights, reference)
    mx, mean, top1 = stats(llama_logits(TMP / f"ours-{to}.gguf", ids), same_weights)
    ok = mx <= 3 * w_max and mean <= 3 * w_mean
    report(ok, f"logits {to}", f"max |llama.cpp - pesc-convert on the imported export| {mx:.3g} (mean {mean:.3g}, top-1 agreement {top1:.2f}); "
           f"the weight rounding alone moves pesc-convert's logits by max {w_max:.3g} (mean {w_mean:.3g}); bound 3x")


# 5. Mixtral: the converter's file equals ours (but for the order); llama-quantize's MoE rules equal ours.
ours, conv = gguf.GGUFReader(str(TMP / "ours-mixtral-f32.gguf")), gguf.GGUFReader(str(TMP / "converter-mixtral-f32.gguf"))
fo, fc = fields(ours), fields(conv)
# The converter also copies the model card's `base_model` and `tags` (the card upcycle writes) into
# general.base_model.* and general.tags; pesc-convert does not read model cards.
card = lambda k: k.startswith("general.base_model.") or k == "general.tags"  # noqa: E731
bad = [k for k in set(fo) | set(fc) if fo.get(k) != fc.get(k) and k != "general.name" and not card(k)]
same = sorted(tensors(ours)) == sorted(tensors(conv))
report(not bad and [k for k in fc if not card(k)] == list(fo) and same, "converter Mixtral f32",
       f"{len(fo)} keys in the same order (size label {fo['general.size_label'][1]!r}), the converter adding the card's "
       f"{[k for k in fc if card(k)]}; {len(tensors(ours))} tensors {'identical' if same else 'DIFFER'}" + (f"; differences: {bad}" if bad else ""))
for to, ftype in {"q8_0": 7, "q4_0": 2, "q4_k_m": 15}.items():
    out = TMP / f"llama-quantize-mixtral-{to}.gguf"
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = ftype
    rc = llama_cpp.llama_model_quantize(str(TMP / "ours-mixtral-chat-f32.gguf").encode(), str(out).encode(), ctypes.byref(p))
    a, b = tensors(gguf.GGUFReader(str(TMP / f"ours-mixtral-chat-{to}.gguf"))), tensors(gguf.GGUFReader(str(out))) if rc == 0 else []
    kinds = {}
    for _, ty, _ in b:
        kinds[ty] = kinds.get(ty, 0) + 1
    report(rc == 0 and a == b, f"llama-quantize Mixtral 8x {to}",
           f"{len(b)} tensors {'identical (order, types, bytes)' if a == b else 'DIFFER'}: {', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}")


# 6. The runner on GGUF files against llama.cpp on the same files. Below 16 tokens (decoding) the runner multiplies
#    block-quantized matrices as stored, with 8-bit activations as ggml does: llama.cpp's logits. From 16 tokens on
#    (a prefill) it multiplies f32 activations by the dequantized matrices: llama.cpp's logits on the f32 GGUF of the
#    dequantized model (imported, then exported).
chat_ids = Tokenizer.from_file("fixtures/models/llama-chat/tokenizer.json").encode("<|im_start|>user\nhello there, 12 + 30?<|im_end|>\n").ids
assert len(chat_ids) >= 16, len(chat_ids)
for name in ["chat-f32", "chat-q8_0", "chat-q4_0", "chat-q4_k_m", "mixtral-chat-f32", "mixtral-chat-q8_0", "mixtral-chat-q4_k_m"]:
    path = TMP / f"ours-{name}.gguf"
    few = chat_ids[:15]
    mx, mean, top1 = stats(pesc_logits(path, few), llama_logits(path, few))
    # Q5_1 (the Mixtral q4_k_m's attn_output) multiplies against Q8_1 activations, whose block sums candle and ggml
    # round differently: close, not equal.
    bound = 1e-2 if name == "mixtral-chat-q4_k_m" else 1e-4
    report(mx <= bound and top1 == 1.0, f"runner on {name}.gguf, decoding",
           f"{len(few)} tokens: max |pesc-convert - llama.cpp| {mx:.3g} (mean {mean:.3g}, top-1 agreement {top1:.2f})")
    if name.endswith("f32"):
        continue
    dequantized = TMP / f"dequantized-{name}"
    subprocess.run([BIN, "import-gguf", str(path), "-o", str(dequantized), "--dtype", "f32"], check=True, capture_output=True)
    subprocess.run([BIN, "quantize", str(dequantized), "--to", "f32", "-o", f"{dequantized}.gguf"], check=True, capture_output=True)
    mx, mean, top1 = stats(pesc_logits(path, chat_ids), llama_logits(f"{dequantized}.gguf", chat_ids))
    report(mx <= 1e-4 and top1 == 1.0, f"runner on {name}.gguf, prefill",
           f"{len(chat_ids)} tokens: max |pesc-convert - llama.cpp on the dequantized f32 export| {mx:.3g} (mean {mean:.3g})")
for to in ["q8_0", "q4_k_m"]:
    path = TMP / f"ours-{to}.gguf"
    mx, mean, top1 = stats(pesc_logits(path, ids), llama_logits(path, ids))
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, verbose=False, type_k=0, type_v=0)
    theirs = []
    for t in llm.generate(ids, temp=0.0, top_k=1):
        if t == llm.token_eos() or len(theirs) >= 24:
            break
        theirs.append(t)
    mine = []
    for _ in range(len(theirs)):
        mine.append(int(pesc_logits(path, ids + mine)[-1].argmax()))
    agree = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), len(theirs))
    # Not equal: the runner's prefill keeps f32 activations where llama.cpp rounds them to 8 bits, and SmolLM2's
    # large activations carry the difference through 30 layers. A wrong layout would drop top-1 agreement to chance.
    report(top1 >= 0.8, f"runner on the default model {to}",
           f"{len(ids)}-token prompt: max |pesc-convert - llama.cpp| {mx:.3g} (mean {mean:.3g}, top-1 agreement {top1:.2f}); "
           f"greedy continuations agree on {agree}/{len(theirs)} tokens")

print(f"{'all passed' if not failed else f'{failed} failed'}")
sys.exit(1 if failed else 0)
PY

# 7. SentencePiece vocabularies (llama.cpp's own test vocabularies and strings): scripts/spm-check.sh.
bash scripts/spm-check.sh

# 8. Qwen2 against llama.cpp's qwen2 architecture: scripts/qwen2-check.sh.
bash scripts/qwen2-check.sh "$MODEL"
