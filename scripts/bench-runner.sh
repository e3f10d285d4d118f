#!/usr/bin/env bash
# Runner throughput against transformers on PyTorch CPU, same machine, same run.
#
# The model has SmolLM2-135M-Instruct's exact shapes (30 layers, hidden 576,
# 9 heads / 3 KV heads, FFN 1536, vocab 49152, tied embeddings) with random
# weights: speed does not depend on the values. Prints prefill (128-token
# prompt) and decode (64 tokens) tokens/s, f32 and bf16, median of 3 runs.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/py-env.sh >&2
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
py="$root/.venv/bin/python"

"$py" - "$work/smollm2-shaped" <<'PY'
import sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
torch.manual_seed(0)
cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                  num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rms_norm_eps=1e-5,
                  rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, max_position_embeddings=8192)
LlamaForCausalLM(cfg).save_pretrained(sys.argv[1])
PY

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
PESC_BENCH_MODEL="$work/smollm2-shaped" cargo bench -q -p pesc-runner --bench runner 2>/dev/null

"$py" - "$work/smollm2-shaped" <<'PY'
import sys, time, statistics, torch
from transformers import AutoModelForCausalLM
torch.manual_seed(0)
for name, dtype in [("f32", torch.float32), ("bf16", torch.bfloat16)]:
    m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=dtype, attn_implementation="eager").eval()
    prompt = torch.tensor([[(i * 7919 + 13) % 49152 for i in range(128)]])
    pre, dec = [], []
    with torch.no_grad():
        for _ in range(3):
            t = time.perf_counter()
            out = m(prompt, use_cache=True)
            pre.append(128 / (time.perf_counter() - t))
            past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
            t = time.perf_counter()
            for _ in range(64):
                out = m(nxt, past_key_values=past, use_cache=True)
                past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
            dec.append(64 / (time.perf_counter() - t))
    print(f"transformers {name} (torch {torch.__version__}, {torch.get_num_threads()} threads): "
          f"prefill {statistics.median(pre):.1f} tokens/s, decode {statistics.median(dec):.1f} tokens/s")
PY
