#!/usr/bin/env bash
# GGUF export against llama.cpp, same machine, same run (not in CI). GGUF inference speed: scripts/bench-runner.sh.
#
#   scripts/bench-gguf.sh [MODEL]      # MODEL: a dense llama folder, default work/smollm2 (scripts/quickstart.sh)
#
# 1. `pesc-convert quantize MODEL --to q8_0` against llama.cpp's `convert_hf_to_gguf.py --outtype q8_0`, and
#    `--to q4_k_m` against llama.cpp's only route to it: `convert_hf_to_gguf.py --outtype f32` then
#    `llama-quantize` (llama_model_quantize, Q4_K_M). Wall time, best of REPS (default 3), page cache warm.
#
# Uses what scripts/llama-cpp-check.sh installs into .cache/ (run it once first).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
MODEL="$(cd "${1:-work/smollm2}" && pwd)"
REPS="${REPS:-3}"
VENV="$ROOT/.cache/llama-cpp-venv"
EXTRA="$ROOT/.cache/converter-extra"
CONVERTER="$ROOT/.cache/llama-cpp-sdist/llama_cpp_python-0.3.36/vendor/llama.cpp"
[[ -x "$VENV/bin/python" && -f "$CONVERTER/convert_hf_to_gguf.py" ]] || { echo "run scripts/llama-cpp-check.sh first" >&2; exit 1; }
cargo build --release -q
BIN="$ROOT/target/release/pesc-convert"
TMP="$(mktemp -d -t pesc-bench-gguf-XXXXXX)"
trap 'rm -rf "$TMP"' EXIT

best() { # best wall seconds of REPS runs of "$@"
    local b=""
    for _ in $(seq "$REPS"); do
        local s e
        s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N)
        b=$(python3 -c "import sys; t=float(sys.argv[2])-float(sys.argv[1]); b=sys.argv[3]; print(t if not b or t < float(b) else b)" "$s" "$e" "$b")
    done
    printf '%.2f' "$b"
}
converter() { PYTHONPATH="$CONVERTER/gguf-py:$EXTRA" .venv/bin/python "$CONVERTER/convert_hf_to_gguf.py" "$MODEL" --outtype "$1" --outfile "$2"; }
llama_quantize() {
    "$VENV/bin/python" -c "
import ctypes, sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params(); p.ftype = 15
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))" "$1" "$2"
}
convert_then_quantize() { converter f32 "$TMP/conv-f32.gguf" && llama_quantize "$TMP/conv-f32.gguf" "$TMP/conv-q4_k_m.gguf"; }

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); model $(basename "$MODEL") ($(du -sh "$MODEL" | cut -f1)); best of $REPS"
ours_q8=$(best "$BIN" quantize "$MODEL" --to q8_0 -o "$TMP/ours-q8_0.gguf" --force)
conv_q8=$(best converter q8_0 "$TMP/conv-q8_0.gguf")
ours_q4=$(best "$BIN" quantize "$MODEL" --to q4_k_m -o "$TMP/ours-q4_k_m.gguf" --force)
conv_q4=$(best convert_then_quantize)
converter f32 "$TMP/conv-f32.gguf" >/dev/null 2>&1
lq_q4=$(best llama_quantize "$TMP/conv-f32.gguf" "$TMP/lq.gguf")
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.1f}x')" "$1" "$2"; }
echo "quantize --to q8_0:   pesc-convert ${ours_q8}s, convert_hf_to_gguf.py --outtype q8_0 ${conv_q8}s ($(ratio "$conv_q8" "$ours_q8") faster)"
echo "quantize --to q4_k_m: pesc-convert ${ours_q4}s, convert_hf_to_gguf.py f32 + llama-quantize ${conv_q4}s ($(ratio "$conv_q4" "$ours_q4") faster); llama-quantize alone ${lq_q4}s"

