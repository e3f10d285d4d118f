#!/usr/bin/env python3
"""Training steps of `pesc-convert train` in float32 PyTorch, timed (scripts/bench-train.sh).

    .venv/bin/python scripts/bench_train_torch.py PESC RUN0 DATA.jsonl --steps N --batch-size B [--lr LR]

The step is scripts/train_step_torch.py's (the oracle CI checks the trainer against), in float32:
the frozen weights of PESC, LoRA and the adapters and routers of the `--steps 0` run folder RUN0
as parameters, cross-entropy plus the balancing loss, backward, `clip_grad_norm_(1.0)`, AdamW.
Micro-batches take the pre-tokenized records of DATA in file order. Prints one JSON line:
steps, tokens (non-padding), seconds (the steps only, not loading) and tokens_per_s.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from train_step_torch import ALPHA, COEF, batch, forward, load


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pesc", type=Path)
    ap.add_argument("run0", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--lora-r", type=int, default=64)
    a = ap.parse_args()
    records = [json.loads(l) for l in a.data.read_text().splitlines() if l.strip()]
    cfg, w, params = load(a.pesc, a.run0, torch.float32)
    opt = torch.optim.AdamW(list(params.values()), lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    tokens = 0
    start = time.perf_counter()
    for step in range(a.steps):
        chunk = [records[(step * a.batch_size + i) % len(records)] for i in range(a.batch_size)]
        ids, labels = batch(chunk)
        ce, aux = forward(cfg, w, params, ids, labels, r=a.lora_r, alpha=ALPHA, coef=COEF)
        opt.zero_grad()
        (ce + aux).backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()
        tokens += int((labels != -999).sum())
    seconds = time.perf_counter() - start
    print(json.dumps({"steps": a.steps, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
                      "threads": torch.get_num_threads(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
