#!/usr/bin/env python3
"""Writes a synthetic Llama checkpoint of any size, for I/O benchmarks.

    scripts/make-synthetic.py OUT_DIR --hidden 2048 --intermediate 5632 \
        --layers 8 --vocab 32000 [--dtype bf16] [--shard-size BYTES] [--seed 0] \
        [--values bytes|normal] [--adapter DIR --adapter-r 16]

OUT_DIR gets a Llama `config.json` and the tensors such a model has, with the
Hugging Face names and `[out, in]` shapes, as `model.safetensors` or, with
`--shard-size`, as `model-0000i-of-0000N.safetensors` shards plus
`model.safetensors.index.json`.

Only the Python standard library is used. The safetensors files are written
by hand (8-byte little-endian header length, JSON header padded with spaces
to a multiple of 8, then the data) and streamed, so Python's memory stays
small whatever the size. The tensor bytes are a 1 MiB block repeated:
with `--values bytes` (the default) from `random.Random(seed).randbytes`,
deterministic, incompressible enough for I/O measurements, and never meant
to be computed with (they may hold NaNs; they are only copied); with
`--values normal`, values of N(0, 0.02) (norm weights 1.0), a model that
computes finite logits at any depth (`scripts/scale-check.sh`).

`--adapter DIR --adapter-r R` also writes a PEFT LoRA adapter for the model
(rank R on q, k, v, o, gate, up and down; `A` and `B` of N(0, 0.02), f32).

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


def normal_block(seed: int, dtype: str) -> bytes:
    """BLOCK bytes of N(0, 0.02) values in `dtype` (bf16: the f32 value's upper half)."""
    rng = random.Random(seed)
    n = BLOCK // 4
    f32 = struct.pack(f"<{n}f", *(rng.gauss(0.0, 0.02) for _ in range(n)))
    if dtype == "f32":
        return f32
    if dtype == "bf16":
        return b"".join(f32[i + 2 : i + 4] for i in range(0, len(f32), 4)) * 2
    return struct.pack(f"<{2 * n}e", *(rng.gauss(0.0, 0.02) for _ in range(2 * n)))


def ones(dtype: str, count: int) -> bytes:
    """`count` values of 1.0 in `dtype`."""
    one = {"bf16": b"\x80\x3f", "f16": b"\x00\x3c", "f32": struct.pack("<f", 1.0)}[dtype]
    return one * count


class Source:
    """An endless deterministic byte stream: one block, repeated."""

    def __init__(self, block: bytes) -> None:
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


def write_adapter(out: str, base: str, tensors: list[tuple[str, list[int], int]], r: int, seed: int, elem: int) -> None:
    """A PEFT LoRA adapter of rank `r` on the seven projections of every layer."""
    os.makedirs(out, exist_ok=True)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": os.path.basename(os.path.normpath(base)),
        "r": r, "lora_alpha": 2 * r, "lora_dropout": 0.0, "bias": "none", "target_modules": targets,
        "fan_in_fan_out": False, "use_rslora": False, "inference_mode": True, "modules_to_save": None,
    }
    with open(os.path.join(out, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    entries = []
    for name, shape, _ in tensors:
        module = name[: -len(".weight")]
        if len(shape) == 2 and module.rsplit(".", 1)[-1] in targets:
            rows, cols = shape
            entries.append((f"base_model.model.{module}.lora_A.weight", [r, cols], r * cols * 4))
            entries.append((f"base_model.model.{module}.lora_B.weight", [rows, r], rows * r * 4))
    entries.sort()
    src = Source(normal_block(seed, "f32"))
    with open(os.path.join(out, "adapter_model.safetensors"), "wb") as f:
        f.write(encode_header(entries, "F32"))
        for _, _, nbytes in entries:
            src.write(f, nbytes)


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
    ap.add_argument("--values", choices=["bytes", "normal"], default="bytes", help="random bytes (I/O only) or N(0, 0.02) values a model can compute with")
    ap.add_argument("--adapter", help="also write a PEFT LoRA adapter for the model into this folder")
    ap.add_argument("--adapter-r", type=int, default=16)
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
    block = random.Random(args.seed).randbytes(BLOCK) if args.values == "bytes" else normal_block(args.seed, args.dtype)
    src = Source(block)
    files = []
    weight_map = {}
    for i, members in enumerate(shards):
        name = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        members = sorted(members, key=lambda t: t[0])
        with open(os.path.join(args.out_dir, name), "wb") as f:
            f.write(encode_header(members, st_dtype))
            for tname, shape, nbytes in members:
                if args.values == "normal" and len(shape) == 1:
                    f.write(ones(args.dtype, shape[0]))
                else:
                    src.write(f, nbytes)
                weight_map[tname] = name
        files.append(name)
    total = sum(t[2] for t in tensors)
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        with open(os.path.join(args.out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)
            f.write("\n")

    if args.adapter:
        write_adapter(args.adapter, args.out_dir, tensors, args.adapter_r, args.seed + 1, elem)

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
