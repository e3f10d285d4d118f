#!/usr/bin/env bash
# SentencePiece (`llama`) vocabularies against transformers, sentencepiece and llama.cpp (its converter and its
# tokenizer) on llama.cpp's own tokenizer test vocabularies and strings (fixtures/llama-vocab/): import, export
# from tokenizer.json alone and from tokenizer.model. Details in scripts/spm_check.py. Not in CI (llama.cpp
# compiles for minutes); needs the venvs scripts/llama-cpp-check.sh builds (it runs this script at its end).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
VENV="$ROOT/.cache/llama-cpp-venv"
CONVERTER="$ROOT/.cache/llama-cpp-sdist/llama_cpp_python-0.3.36/vendor/llama.cpp"
if [[ ! -x "$VENV/bin/python" || ! -f "$CONVERTER/convert_hf_to_gguf.py" ]]; then
    echo "spm-check: run scripts/llama-cpp-check.sh once first (it builds llama.cpp into .cache/)" >&2
    exit 2
fi
scripts/py-env.sh >/dev/null
cargo build --release -q
TMP="$(mktemp -d -t pesc-spm-XXXXXX)"
trap 'rm -rf "$TMP"' EXIT
"$VENV/bin/python" scripts/spm_check.py "$ROOT/target/release/pesc-convert" "$TMP" "$CONVERTER" "$ROOT/.cache/converter-extra"
