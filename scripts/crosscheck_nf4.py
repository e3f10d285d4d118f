#!/usr/bin/env python3
"""Cross-check `pesc-convert quantize --to nf4` against bitsandbytes 0.50.2 and transformers 5.

For each fixture model (and a crafted PESC and an upcycled Mixtral model):

1. every NF4 weight in our folder equals bitsandbytes' `quantize_4bit` of the
   source weight byte for byte: packed codes, absmax, quant_map, nested
   absmax/map, and the quant-state JSON (`QuantState.as_dict(packed=True)`);
   the tensors we keep in float are the source's bytes;
2. transformers loads our folder (`from_pretrained`, bitsandbytes on the CPU; a
   PESC folder through the modeling code it carries) with no missing or
   unexpected keys, and its Linear4bit weights hold our bytes;
3. our runner on the NF4 folder (`pesc-convert logits`) equals a float32 run of
   the dense model whose quantized weights are replaced by bitsandbytes'
   dequantization (of the flattened 1-D tensor: its CPU dequantize_4bit is wrong
   for 2-D tensors) within 1e-4.

torch runs on one thread, so bitsandbytes' double-quant offset (a torch mean)
does not depend on the thread count.

    .venv/bin/python scripts/crosscheck_nf4.py --bin target/release/pesc-convert
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import bitsandbytes.functional as F
from bitsandbytes.utils import pack_dict_to_tensor

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUFFIX = ".quant_state.bitsandbytes__nf4"
TOKENS = "1,5,17,42,99,123,200,255,3,7,311,64"


def tensors(folder):
    out = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(folder, f)))
    return out


def run(bin_, *args):
    subprocess.run([bin_, *args], check=True, stderr=subprocess.DEVNULL)


def check_bytes(src, ours, name, blocksize, dq):
    w = src[name]
    q, st = F.quantize_4bit(w, blocksize=blocksize, compress_statistics=dq, quant_type="nf4")
    want = {name: q}
    for k, v in st.as_dict(packed=True).items():
        want[f"{name}.{k}"] = v
    got = {k: v for k, v in ours.items() if k == name or k.startswith(name + ".")}
    assert sorted(got) == sorted(want), (name, sorted(got), sorted(want))
    for k in want:
        a, b = got[k], want[k]
        assert a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape), (k, a.dtype, a.shape, b.dtype, b.shape)
        assert torch.equal(a.view(torch.uint8) if a.dtype == torch.uint8 else a.view(torch.int32),
                           b.view(torch.uint8) if b.dtype == torch.uint8 else b.view(torch.int32)), k
    # bitsandbytes' correct dequantization: the flattened tensor
    q1, st1 = F.quantize_4bit(w.reshape(-1), blocksize=blocksize, compress_statistics=dq, quant_type="nf4")
    assert torch.equal(q1, q)
    return F.dequantize_4bit(q1, st1).reshape(w.shape).float()


def logits_of_dense(folder, replaced):
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=True)
    sd = m.state_dict()
    for k, v in replaced.items():
        sd[k].copy_(v)
    ids = torch.tensor([[int(x) for x in TOKENS.split(",")]])
    with torch.no_grad():
        return m(ids).logits[0].float()


def check_model(bin_, src_dir, tmp, label, flags):
    out = os.path.join(tmp, label + ".nf4")
    run(bin_, "quantize", src_dir, "--to", "nf4", "-o", out, *flags)
    cfg = json.load(open(os.path.join(out, "config.json")))["quantization_config"]
    blocksize = int(flags[flags.index("--blocksize") + 1]) if "--blocksize" in flags else 64
    dq = "--no-double-quant" not in flags
    assert cfg["bnb_4bit_use_double_quant"] == dq
    src, ours = tensors(src_dir), tensors(out)
    quantized = sorted(k[: -len(SUFFIX)] for k in ours if k.endswith(SUFFIX))
    assert quantized, label
    replaced = {name: check_bytes(src, ours, name, blocksize, dq) for name in quantized}
    pieces = {k for k in ours if any(k == n or k.startswith(n + ".") for n in quantized)}
    for k in set(ours) - pieces:
        assert torch.equal(ours[k], src[k]), k
    msg = f"{label}: {len(quantized)} NF4 weights byte-identical to bitsandbytes"
    from transformers import AutoModelForCausalLM
    m, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True, trust_remote_code=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    for name in quantized:
        mod = m.get_submodule(name[: -len(".weight")])
        assert torch.equal(mod.weight.data.view(torch.uint8).reshape(-1), ours[name].reshape(-1)), name
    msg += "; transformers loads it"
    logits_path = os.path.join(tmp, label + ".logits.safetensors")
    run(bin_, "logits", out, "--token-ids", TOKENS, "-o", logits_path)
    with safe_open(logits_path, "pt") as f:
        got = f.get_tensor("logits")
    want = logits_of_dense(src_dir, replaced)
    diff = (got - want).abs().max().item()
    assert diff <= 1e-4, (label, diff)
    msg += f"; runner logits vs dequantized dense: max |diff| {diff:.2e}"
    print(msg)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/pesc-convert"))
    a = ap.parse_args()
    models = os.path.join(ROOT, "fixtures/models")
    with tempfile.TemporaryDirectory() as tmp:
        for name in ["llama-gqa", "qwen2-bias", "mistral", "llama-sharded", "llama-tied"]:
            check_model(a.bin, os.path.join(models, name), tmp, name, [])
        check_model(a.bin, os.path.join(models, "llama-sharded"), tmp, "llama-sharded-b128", ["--blocksize", "128", "--no-double-quant"])
        check_model(a.bin, os.path.join(models, "llama-gqa"), tmp, "llama-gqa-b4096", ["--blocksize", "4096"])
        pesc = os.path.join(tmp, "pesc")
        run(a.bin, "craft", os.path.join(models, "llama-gqa"), "-o", pesc, "--experts", "4", "--top-k", "2", "--adapter-dim", "8", "--dtype", "bf16")
        check_model(a.bin, pesc, tmp, "pesc", [])
        up = os.path.join(tmp, "mixtral")
        run(a.bin, "upcycle", os.path.join(models, "mistral"), "-o", up, "--experts", "4", "--top-k", "2")
        check_model(a.bin, up, tmp, "mixtral-upcycled", [])
    print("crosscheck_nf4: all checks passed")


if __name__ == "__main__":
    sys.exit(main())
