#!/usr/bin/env bash
# Cross-check pesc-convert's outputs against transformers, safetensors,
# sha256sum, jsonschema, the gguf package, bitsandbytes (NF4), PEFT (merge-lora) and PyTorch (one training
# step): set up .venv, build the release binary, run scripts/crosscheck.py. Extra arguments go to crosscheck.py (e.g. -k logits).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/py-env.sh
if [[ -f Cargo.lock ]]; then
    cargo build --release --locked
else
    cargo build --release
fi
# The project's Python package (transformers modeling code for PESC), installed as a user would.
.venv/bin/python -m pip install --quiet --no-deps --force-reinstall ./python
.venv/bin/python crates/pesc-gguf/tests/gguf_py_roundtrip.py
.venv/bin/python scripts/crosscheck_nf4.py --bin target/release/pesc-convert
.venv/bin/python scripts/crosscheck_lora.py --pesc-convert target/release/pesc-convert
# One training step against float64 PyTorch, on llama-gqa crafted 4x8 top-2 with pre-tokenized records.
step="$(mktemp -d)"
trap 'rm -rf "$step"' EXIT
target/release/pesc-convert craft fixtures/models/llama-gqa -o "$step/pesc" --experts 4 --top-k 2 --adapter-dim 8 >/dev/null
.venv/bin/python - "$step/step.jsonl" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(6):
        ids = [1, 10 + i % 4, 5] + [20 + (i % 4) * 10 + k for k in range(8)]
        f.write(json.dumps({"input_ids": ids, "labels": [-100] * 3 + ids[3:]}) + "\n")
PY
.venv/bin/python scripts/train_step_torch.py "$step/pesc" "$step/step.jsonl" --bin target/release/pesc-convert
.venv/bin/python scripts/crosscheck.py --bin target/release/pesc-convert "$@"
