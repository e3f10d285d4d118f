#!/usr/bin/env python3
"""An independent PyTorch implementation of a PESC model, used as the oracle.

    from pesc_oracle import pesc_logits
    logits = pesc_logits("path/to/pesc-folder", [1, 5, 17])   # [T, vocab] f32

or from the command line:

    .venv/bin/python scripts/pesc_oracle.py FOLDER --token-ids 1,5,17 [-o OUT.safetensors]

The dense base model is built by `transformers` (Llama, Mistral or Qwen2, in
float32 with eager attention) from the folder's config.json with the PESC keys
removed, and loaded from the folder's safetensors files; every tensor that is
not a dense one must be one of the PESC tensors of docs/format.md section 4.1.
Each layer's `mlp` is then wrapped by `PescMlp`, which computes the layer of
section 4.3 written out plainly:

    f = mlp(h)                                   the shared dense FFN
    r = W_r h                                    router logits [N]
    (v, idx) = topk(r, k); w = softmax(v)        softmax over the k selected only
    A_j(f) = up_j(gelu_erf(down_j(f)))
    y = f + s * sum_t w_t * A_{idx_t}(f)

Nothing here comes from the Rust side: this file reads only the folder.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

# config.json keys that belong to the PESC layer, not to the dense base model.
PESC_KEYS = (
    "pesc_base_model_type",
    "num_experts",
    "topk",
    "adapter_dim",
    "moe_scaling",
    "moe_dtype",
    "output_router_logits",
)
# Base family when `pesc_base_model_type` is absent (docs/format.md 4.2).
BASE_OF = {"camelidae": "llama", "qwen2idae": "qwen2", "sparsetral": "mistral"}
DENSE_TYPES = ("llama", "mistral", "qwen2")
PREFIX = "model.layers.{i}.mlp.moe_adapter."


def read_folder_tensors(folder):
    """All tensors of the checkpoint (index-aware), as stored: {name: tensor}."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors = {}
    for name in files:
        with safe_open(str(folder / name), framework="pt") as f:
            for key in f.keys():
                if key in tensors:
                    raise ValueError(f"tensor {key} is in two files")
                tensors[key] = f.get_tensor(key)
    return tensors


def pesc_config(folder):
    """(base config dict, PESC settings) from FOLDER/config.json."""
    cfg = json.loads((Path(folder) / "config.json").read_text())
    base = cfg.get("pesc_base_model_type") or BASE_OF.get(cfg.get("model_type"))
    if base is None and cfg.get("model_type") in DENSE_TYPES and ("num_experts" in cfg or "adapter_dim" in cfg):
        base = cfg["model_type"]
    if base not in DENSE_TYPES:
        raise ValueError(f"{folder}: not a PESC model (model_type {cfg.get('model_type')!r})")
    pesc = {
        "num_experts": int(cfg["num_experts"]),
        "topk": int(cfg["topk"]),
        "adapter_dim": int(cfg["adapter_dim"]),
        "moe_scaling": float(cfg.get("moe_scaling", 1.0)),  # missing reads as 1
    }
    dense = {k: v for k, v in cfg.items() if k not in PESC_KEYS and k != "architectures"}
    dense["model_type"] = base
    return dense, pesc


class PescMlp(torch.nn.Module):
    """The PESC layer of docs/format.md 4.3 around a dense FFN `mlp`."""

    def __init__(self, mlp, router, downs, ups, topk, scaling):
        super().__init__()
        self.mlp = mlp
        self.router = torch.nn.Parameter(router, requires_grad=False)  # [N, H]
        self.downs = torch.nn.ParameterList([torch.nn.Parameter(d, requires_grad=False) for d in downs])  # [A, H]
        self.ups = torch.nn.ParameterList([torch.nn.Parameter(u, requires_grad=False) for u in ups])  # [H, A]
        self.topk = topk
        self.scaling = scaling
        self.last_idx = None  # [tokens, k] experts chosen in the last forward

    def adapter(self, j, f):
        return F.linear(F.gelu(F.linear(f, self.downs[j]), approximate="none"), self.ups[j])

    def forward(self, h):
        shape = h.shape
        h = h.reshape(-1, shape[-1])
        f = self.mlp(h)  # [T, H]
        r = F.linear(h, self.router)  # [T, N]
        v, idx = torch.topk(r, self.topk, dim=-1)  # [T, k]
        w = torch.softmax(v, dim=-1)  # over the k selected logits only
        mix = torch.zeros_like(f)
        for t in range(h.shape[0]):  # token by token, expert by expert: nothing clever
            for slot in range(self.topk):
                j = int(idx[t, slot])
                mix[t] += w[t, slot] * self.adapter(j, f[t : t + 1])[0]
        self.last_idx = idx
        return (f + self.scaling * mix).reshape(shape)


def pesc_model(folder):
    """The PESC model in FOLDER as a float32 torch module (eval mode)."""
    folder = Path(folder)
    dense_cfg, pesc = pesc_config(folder)
    base_type = dense_cfg.pop("model_type")
    config = AutoConfig.for_model(base_type, **dense_cfg)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32).float()
    model.eval()

    tensors = {k: v.to(torch.float32) for k, v in read_folder_tensors(folder).items()}
    layers = model.model.layers
    n, k, a, s = pesc["num_experts"], pesc["topk"], pesc["adapter_dim"], pesc["moe_scaling"]
    hidden = config.hidden_size
    if not 1 <= k <= n:
        raise ValueError(f"topk {k} not in 1..{n}")

    # Pull out the PESC tensors, checking names and shapes.
    pesc_tensors = []
    naming = None
    for i in range(len(layers)):
        p = PREFIX.format(i=i)
        if naming is None:  # expert_{j} (Camelidae) or {j} (sparsetral), consistently
            naming = "experts.expert_{j}." if f"{p}experts.expert_0.adapter_down.weight" in tensors else "experts.{j}."
        router = tensors.pop(f"{p}router.weight")
        downs = [tensors.pop(f"{p}{naming.format(j=j)}adapter_down.weight") for j in range(n)]
        ups = [tensors.pop(f"{p}{naming.format(j=j)}adapter_up.weight") for j in range(n)]
        assert router.shape == (n, hidden), f"layer {i} router {list(router.shape)}"
        for j in range(n):
            assert downs[j].shape == (a, hidden), f"layer {i} expert {j} down {list(downs[j].shape)}"
            assert ups[j].shape == (hidden, a), f"layer {i} expert {j} up {list(ups[j].shape)}"
        pesc_tensors.append((router, downs, ups))

    # The rest is the dense model, loaded strictly.
    tensors = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}
    result = model.load_state_dict(tensors, strict=False)
    missing = set(result.missing_keys)
    if config.tie_word_embeddings and "lm_head.weight" not in tensors:
        missing.discard("lm_head.weight")
        model.lm_head.weight = model.model.embed_tokens.weight
    if missing or result.unexpected_keys:
        raise ValueError(f"{folder}: missing {sorted(missing)}, unexpected {sorted(result.unexpected_keys)}")
    if config.tie_word_embeddings:
        assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight), "tied lm_head differs"

    for layer, (router, downs, ups) in zip(layers, pesc_tensors):
        layer.mlp = PescMlp(layer.mlp, router, downs, ups, k, s)
    return model


@torch.no_grad()
def pesc_logits(folder, token_ids, model=None):
    """Logits [T, vocab] (float32) of the PESC model in FOLDER over TOKEN_IDS."""
    model = model or pesc_model(folder)
    ids = torch.as_tensor(list(map(int, token_ids)), dtype=torch.long)[None]
    return model(input_ids=ids, use_cache=False).logits[0].to(torch.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--token-ids", required=True, help="e.g. 1,5,17")
    parser.add_argument("-o", "--output", type=Path, help="write tensor `logits` to this .safetensors file")
    args = parser.parse_args()
    logits = pesc_logits(args.folder, [int(t) for t in args.token_ids.split(",")])
    if args.output:
        save_file({"logits": logits.contiguous()}, str(args.output), metadata={"format": "pt"})
    else:
        print(logits)


if __name__ == "__main__":
    main()
