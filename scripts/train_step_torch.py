#!/usr/bin/env python3
"""One training step of `pesc-convert train` redone in PyTorch, and compared.

    .venv/bin/python scripts/train_step_torch.py PESC DATA.jsonl [--bin target/debug/pesc-convert]

PESC is a crafted llama-family PESC folder (f32), DATA pre-tokenized records
(`input_ids`, `labels`). The script runs the trainer twice: `--steps 0` (the
initial LoRA: seeded A, zero B) and `--steps 1` (one step on a batch of every
record, no warmup, dropout off). It then computes the same step in float64
PyTorch from the folder's tensors and the initial LoRA, written out plainly:
RMSNorm, RoPE (rotate_half), grouped-query attention, the PESC layer of
docs/format.md section 4.3 with LoRA on the base linears, the mean
cross-entropy over response tokens plus coef * sum over layers of
n * sum_i f_i p_i (f_i: share of the top-k assignments, p_i: mean router
probability), `clip_grad_norm_(1.0)` and `torch.optim.AdamW`. It compares the
loss, the gradient norm and every updated tensor; exit 1 beyond tolerance.
"""

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

LR, R, ALPHA, COEF = 1e-3, 8, 16.0, 0.01


def load(pesc, run0, dtype):
    """The frozen weights of PESC and the trainable tensors of a `--steps 0` run folder, as `dtype`."""
    cfg = json.loads((pesc / "config.json").read_text())
    w = {}
    for f in sorted(pesc.glob("*.safetensors")):
        w.update({k: v.to(dtype) for k, v in load_file(f).items()})
    init = {k: v.to(dtype) for k, v in load_file(run0 / "adapter_model.safetensors").items()}
    moe = {k: v.to(dtype) for k, v in load_file(run0 / "moe_model.safetensors").items()}
    params = {k: torch.nn.Parameter(v.clone()) for k, v in {**init, **moe}.items()}
    return cfg, w, params


def forward(cfg, w, params, ids, labels, r=R, alpha=ALPHA, coef=COEF):
    """Mean cross-entropy over the response tokens and the balancing loss; padding is labelled -999."""
    dt = w["model.embed_tokens.weight"].dtype
    H, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or H // nh
    E, K, S = cfg["num_experts"], cfg["topk"], cfg.get("moe_scaling", 1.0)
    eps = cfg["rms_norm_eps"]
    theta = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 10000.0))

    def lin(x, name):
        y = x @ w[name + ".weight"].T
        a_, b_ = f"base_model.model.{name}.lora_A.weight", f"base_model.model.{name}.lora_B.weight"
        if a_ in params:
            y = y + (x @ params[a_].T @ params[b_].T) * (alpha / r)
        return y

    def rms(x, wt):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * wt

    B, T = ids.shape
    x = w["model.embed_tokens.weight"][ids]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None]
    cos, sin = torch.cat([ang.cos()] * 2, -1).to(dt), torch.cat([ang.sin()] * 2, -1).to(dt)
    rot = lambda t: t * cos + torch.cat([-t[..., d // 2:], t[..., : d // 2]], -1) * sin
    mask = torch.full((T, T), float("-inf"), dtype=dt).triu(1)
    valid = (labels != -999).reshape(-1)
    aux = 0.0
    for l in range(L):
        p = f"model.layers.{l}"
        h = rms(x, w[f"{p}.input_layernorm.weight"])
        q = rot(lin(h, f"{p}.self_attn.q_proj").view(B, T, nh, d).transpose(1, 2))
        k = rot(lin(h, f"{p}.self_attn.k_proj").view(B, T, nkv, d).transpose(1, 2)).repeat_interleave(nh // nkv, 1)
        v = lin(h, f"{p}.self_attn.v_proj").view(B, T, nkv, d).transpose(1, 2).repeat_interleave(nh // nkv, 1)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + mask, -1) @ v
        x = x + lin(att.transpose(1, 2).reshape(B, T, nh * d), f"{p}.self_attn.o_proj")
        h = rms(x, w[f"{p}.post_attention_layernorm.weight"]).reshape(B * T, H)
        f = lin(torch.nn.functional.silu(lin(h, f"{p}.mlp.gate_proj")) * lin(h, f"{p}.mlp.up_proj"), f"{p}.mlp.down_proj")
        logits = h @ params[f"{p}.mlp.moe_adapter.router.weight"].T
        top_v, top_i = torch.topk(logits, K, -1)
        gates = torch.softmax(top_v, -1)
        mix = torch.zeros_like(f)
        for j in range(E):
            # Only the tokens routed to expert j (as Mixtral's implementation in transformers dispatches).
            rows, slot = torch.where(top_i == j)
            if rows.numel() == 0:
                continue
            e = f"{p}.mlp.moe_adapter.experts.expert_{j}"
            a_out = torch.nn.functional.gelu(f[rows] @ params[f"{e}.adapter_down.weight"].T) @ params[f"{e}.adapter_up.weight"].T
            mix = mix.index_add(0, rows, a_out * gates[rows, slot, None])
        y = f + S * mix
        share = torch.nn.functional.one_hot(top_i[valid], E).sum(1).to(dt).mean(0) / K
        prob = torch.softmax(logits[valid], -1).mean(0)
        aux = aux + E * (share * prob).sum()
        x = x + y.view(B, T, H)
    x = rms(x, w["model.norm.weight"])
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    tgt = labels[:, 1:].reshape(-1)
    logit = (x[:, :-1] @ head.T).reshape(-1, head.shape[0])
    keep = tgt >= 0
    ce = torch.nn.functional.cross_entropy(logit[keep], tgt[keep])
    return ce, coef * aux


def batch(records):
    """Right-padded ids and labels (padding -999) of pre-tokenized records."""
    T = max(len(r["input_ids"]) for r in records)
    ids = torch.zeros(len(records), T, dtype=torch.long)
    labels = torch.full((len(records), T), -999, dtype=torch.long)
    for i, r in enumerate(records):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        labels[i, :n] = torch.tensor(r.get("labels", r["input_ids"]))
    return ids, labels


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pesc", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--bin", default="target/debug/pesc-convert")
    a = ap.parse_args()
    records = [json.loads(l) for l in a.data.read_text().splitlines() if l.strip()]
    tmp = Path(tempfile.mkdtemp())
    common = ["--data", str(a.data), "--batch-size", str(len(records)), "--lr", str(LR), "--lora-r", str(R),
              "--lora-alpha", str(ALPHA), "--aux-loss-coef", str(COEF), "--warmup-ratio", "0", "--adapter-dropout", "0"]
    for steps in ("0", "1"):
        subprocess.run([a.bin, "train", str(a.pesc), "-o", str(tmp / f"run{steps}"), "--steps", steps, *common], check=True)

    cfg, w, params = load(a.pesc, tmp / "run0", torch.float64)
    ids, labels = batch(records)
    ce, aux = forward(cfg, w, params, ids, labels)
    opt = torch.optim.AdamW(list(params.values()), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    (ce + aux).backward()
    norm = float(torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0))
    opt.step()

    ours = json.loads((tmp / "run1/metrics.jsonl").read_text().splitlines()[0])
    after = {**load_file(tmp / "run1/adapter_model.safetensors"), **load_file(tmp / "run1/moe_model.safetensors")}
    diffs = {k: float((after[k].double() - v.detach()).abs().max()) for k, v in params.items()}
    worst = max(diffs.values())
    # Adam's first update is lr * g / (|g| + eps): elementwise it magnifies the f32 rounding of
    # gradients near eps, so the updated tensors are compared relative to one step's size (lr).
    smallest = {k: float(v.grad.abs().min()) for k, v in params.items()}
    for k in sorted(diffs, key=diffs.get)[-3:]:
        print(f"{k}: max diff {diffs[k]:.3g}, smallest |grad| {smallest[k]:.3g}", file=sys.stderr)
    report = {
        "loss": [ours["loss"], ce.item()], "aux_loss": [ours["aux_loss"], aux.item()],
        "grad_norm": [ours["grad_norm"], norm], "max_abs_param_diff": worst, "max_diff_in_steps": worst / LR, "tensors": len(params),
    }
    print(json.dumps(report, indent=1))
    rel = lambda a_, b_: abs(a_ - b_) / max(abs(b_), 1e-12)
    ok = rel(ours["loss"], ce.item()) < 1e-5 and rel(ours["aux_loss"], aux.item()) < 1e-5 \
        and rel(ours["grad_norm"], norm) < 1e-4 and worst < 0.05 * LR
    print("OK" if ok else "MISMATCH", file=sys.stderr)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
