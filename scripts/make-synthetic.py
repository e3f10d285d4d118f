#!/usr/bin/env python3
"""Writes a synthetic Llama checkpoint of any size, for I/O benchmarks.

    scripts/make-synthetic.py OUT_DIR --hidden 2048 --intermediate 5632 \
        --layers 8 --vocab 32000 [--dtype bf16] [--shard-size BYTES] [--seed 0]

OUT_DIR gets a Llama `config.json` and the tensors such a model has, with the
Hugging Face names and `[out, in]` shapes, as `model.safetensors` or, with
`--shard-size`, as `model-0000i-of-0000N.safetensors` shards plus
`model.safetensors.index.json`.

Only the Python standard library is used. The safetensors files are written
by hand (8-byte little-endian header length, JSON header padded with spaces
to a multiple of 8, then the data) and streamed, so Python's memory stays
small whatever the size. The tensor bytes are a 1 MiB block from
`random.Random(seed).randbytes` repeated: deterministic, incompressible
enough for I/O measurements, and never meant to be computed with (they may
hold NaNs; they are only copied).

A one-line JSON summary (files, total bytes, largest tensor) goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import struct
import sys

DTYPES = {"bf16": ("BF16", 2, "bfloat16"), "f16": ("F16", 2, "float16"), "f32": ("F32", 4, "float32")}
BLOCK = 1 << 20


def parse_size(text: str) -> int:
    """`500MB`, `2GiB`, `1000000` -> bytes (the units pesc-convert accepts)."""
    t = text.strip().upper()
    units = {"KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    for unit, mult in units.items():
        if t.endswith(unit):
            return int(t[: -len(unit)]) * mult
    return int(t)


def llama_tensors(hidden: int, inter: int, layers: int, vocab: int, heads: int, kv_heads: int) -> list[tuple[str, list[int]]]:
    """Tensor names and shapes in the order transformers saves them."""
    head_dim = hidden // heads
    kv = kv_heads * head_dim
    out = [("model.embed_tokens.weight", [vocab, hidden])]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", [hidden]),
            (p + "mlp.down_proj.weight", [hidden, inter]),
            (p + "mlp.gate_proj.weight", [inter, hidden]),
            (p + "mlp.up_proj.weight", [inter, hidden]),
            (p + "post_attention_layernorm.weight", [hidden]),
            (p + "self_attn.k_proj.weight", [kv, hidden]),
            (p + "self_attn.o_proj.weight", [hidden, heads * head_dim]),
            (p + "self_attn.q_proj.weight", [heads * head_dim, hidden]),
            (p + "self_attn.v_proj.weight", [kv, hidden]),
        ]
    out += [("model.norm.weight", [hidden]), ("lm_head.weight", [vocab, hidden])]
    return out


def numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def encode_header(entries: list[tuple[str, list[int], int]], dtype: str) -> bytes:
    """The length prefix and the padded JSON header for tensors laid out in order."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, nbytes in entries:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


class Source:
    """An endless deterministic byte stream: one pseudo-random block, repeated."""

    def __init__(self, seed: int) -> None:
        block = random.Random(seed).randbytes(BLOCK)
        self.buf = memoryview(block * 4)  # 4 MiB so most writes are one call
        self.pos = 0

    def write(self, f, nbytes: int) -> None:
        while nbytes:
            n = min(nbytes, len(self.buf) - self.pos, 3 * BLOCK)
            f.write(self.buf[self.pos : self.pos + n])
            self.pos = (self.pos + n) % BLOCK  # stay inside the first block's phase
            nbytes -= n


def plan(tensors: list[tuple[str, list[int], int]], shard_size: int | None) -> list[list[tuple[str, list[int], int]]]:
    """Greedy shards of at most shard_size bytes; an oversized tensor stands alone."""
    if not shard_size:
        return [tensors]
    shards: list[list[tuple[str, list[int], int]]] = []
    current = 0
    for t in tensors:
        if shards and shards[-1] and current + t[2] <= shard_size:
            shards[-1].append(t)
            current += t[2]
        else:
            shards.append([t])
            current = t[2]
    return shards


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--hidden", type=int, required=True)
    ap.add_argument("--intermediate", type=int, required=True)
    ap.add_argument("--layers", type=int, required=True)
    ap.add_argument("--vocab", type=int, required=True)
    ap.add_argument("--heads", type=int, help="attention heads (default: hidden / 128)")
    ap.add_argument("--kv-heads", type=int, help="key/value heads (default: same as --heads)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--shard-size", type=parse_size, help="shard when the weights exceed this many bytes (500MB, 2GiB ...)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    heads = args.heads or args.hidden // 128
    kv_heads = args.kv_heads or heads
    if heads <= 0 or args.hidden % heads or heads % kv_heads:
        ap.error(f"--hidden {args.hidden} needs a head count that divides it (got {heads} heads, {kv_heads} kv heads); pass --heads")
    st_dtype, elem, torch_name = DTYPES[args.dtype]

    os.makedirs(args.out_dir, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": args.hidden,
        "initializer_range": 0.02,
        "intermediate_size": args.intermediate,
        "max_position_embeddings": 4096,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": heads,
        "num_hidden_layers": args.layers,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": torch_name,
        "vocab_size": args.vocab,
    }
    with open(os.path.join(args.out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")

    tensors = [(n, s, numel(s) * elem) for n, s in llama_tensors(args.hidden, args.intermediate, args.layers, args.vocab, heads, kv_heads)]
    shards = plan(tensors, args.shard_size)
    src = Source(args.seed)
    files = []
    weight_map = {}
    for i, members in enumerate(shards):
        name = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        members = sorted(members, key=lambda t: t[0])
        with open(os.path.join(args.out_dir, name), "wb") as f:
            f.write(encode_header(members, st_dtype))
            for tname, _, nbytes in members:
                src.write(f, nbytes)
                weight_map[tname] = name
        files.append(name)
    total = sum(t[2] for t in tensors)
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        with open(os.path.join(args.out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)
            f.write("\n")

    largest = max(tensors, key=lambda t: t[2])
    summary = {
        "files": files,
        "tensors": len(tensors),
        "total_bytes": total,
        "file_bytes": sum(os.path.getsize(os.path.join(args.out_dir, n)) for n in files),
        "largest_tensor": largest[0],
        "largest_tensor_bytes": largest[2],
    }
    json.dump(summary, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
