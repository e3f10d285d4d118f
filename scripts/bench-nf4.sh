#!/usr/bin/env bash
# NF4 quantization throughput, pesc-quant vs bitsandbytes on the CPU (same tensors, same run):
#   scripts/bench-nf4.sh [--repeats N]
# Builds the `nf4_bench` example in release mode, then runs scripts/bench_nf4.py with the
# project venv (scripts/py-env.sh). Prints a Markdown table.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/py-env.sh
cargo build --release --locked -p pesc-quant --example nf4_bench >&2
TARGET="${CARGO_TARGET_DIR:-target}"
exec .venv/bin/python scripts/bench_nf4.py --example "$TARGET/release/examples/nf4_bench" "$@"
