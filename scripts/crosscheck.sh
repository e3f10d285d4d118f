#!/usr/bin/env bash
# Cross-check pesc-convert's outputs against transformers, safetensors,
# sha256sum, jsonschema, the gguf package, bitsandbytes (NF4) and PEFT (merge-lora): set up .venv, build the release binary, run
# scripts/crosscheck.py. Extra arguments go to crosscheck.py (e.g. -k logits).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/py-env.sh
if [[ -f Cargo.lock ]]; then
    cargo build --release --locked
else
    cargo build --release
fi
.venv/bin/python crates/pesc-gguf/tests/gguf_py_roundtrip.py
.venv/bin/python scripts/crosscheck_nf4.py --bin target/release/pesc-convert
.venv/bin/python scripts/crosscheck_lora.py --pesc-convert target/release/pesc-convert
exec .venv/bin/python scripts/crosscheck.py --bin target/release/pesc-convert "$@"
