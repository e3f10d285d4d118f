"""Logits helpers shared by the llama.cpp check scripts (bench-kl.sh, qwen2-check.sh, tinyllama-check.sh,
llama-cpp-check.sh): our `pesc-convert logits` files read with numpy, llama.cpp's logits for a token list, and
KL divergences between next-token distributions."""

import json
import struct

import numpy as np


def read_logits(path):
    """The `logits` tensor [T, vocab] f32 of a `pesc-convert logits` file (safetensors, read without torch)."""
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    info = json.loads(raw[8:8 + n])["logits"]
    start, end = info["data_offsets"]
    return np.frombuffer(raw[8 + n + start:8 + n + end], dtype=np.float32).reshape(info["shape"])


def llama_logits(path, ids, kv_f32=True, n_ctx=512):
    """llama.cpp's logits [T, vocab] for `ids` as one batch (KV cache f32, or llama.cpp's default f16)."""
    import llama_cpp

    kv = {"type_k": 0, "type_v": 0} if kv_f32 else {}
    n_ctx = max(n_ctx, len(ids))
    m = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True, verbose=False, **kv)
    m.eval(ids)
    return np.array(m.scores[:m.n_tokens], dtype=np.float32)


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def kl_rows(p_logits, q_logits):
    """KL(p || q) per position."""
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return (np.exp(lp) * (lp - lq)).sum(-1)
