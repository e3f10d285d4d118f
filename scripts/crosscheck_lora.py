#!/usr/bin/env python3
"""Live cross-check of `merge-lora` against the installed PEFT.

    scripts/py-env.sh && cargo build
    .venv/bin/python scripts/crosscheck_lora.py [--pesc-convert PATH]

Regenerates the adapters of fixtures/lora/make_adapters.py with the PEFT in
.venv into a temporary folder (new random weights, PEFT's merge as the
reference), merges each with `pesc-convert merge-lora --onto original`, and
checks every tensor: PEFT's merged value within 1e-5 where PEFT changed it,
the base's value elsewhere. Exits 1 on the first difference.
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parent.parent
ADAPTERS = ["plain", "rslora", "dora", "fifo", "qlora", "pesc"]
CRAFT = ["--experts", "2", "--top-k", "1", "--adapter-dim", "8", "--seed", "0"]


def main():
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pesc-convert", default=str(Path(target) / "debug/pesc-convert"))
    args = ap.parse_args()
    bin_ = args.pesc_convert
    dense = ROOT / "fixtures/models/llama-gqa"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([sys.executable, str(ROOT / "fixtures/lora/make_adapters.py"), "--pesc-convert", bin_, "--out", str(tmp / "lora")], check=True, capture_output=True)
        subprocess.run([bin_, "craft", str(dense), "-o", str(tmp / "pesc"), *CRAFT], check=True, capture_output=True)
        failed = False
        for name in ADAPTERS:
            base = tmp / "pesc" if name == "pesc" else dense
            out = tmp / f"out-{name}"
            subprocess.run([bin_, "merge-lora", str(base), str(tmp / "lora" / name), "-o", str(out), "--onto", "original"], check=True, capture_output=True)
            ours, original = load_file(str(out / "model.safetensors")), load_file(str(base / "model.safetensors"))
            peft = load_file(str(tmp / "lora" / f"{name}.merged.safetensors"))
            worst = 0.0
            for t, v in ours.items():
                want = peft.get(t, original[t])
                worst = max(worst, float(np.max(np.abs(v.astype(np.float32) - want.astype(np.float32)))))
            ok = worst <= 1e-5
            failed |= not ok
            print(f"{name:8} {len(peft):3} tensors merged by PEFT   max |ours - PEFT| = {worst:.2e}   {'ok' if ok else 'FAIL'}")
        sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
