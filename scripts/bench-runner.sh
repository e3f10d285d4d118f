#!/usr/bin/env bash
# Runner throughput against transformers (folders) and llama.cpp (GGUF files), same machine, same run, same
# thread count, same token ids (not in CI): prefill of N=256 tokens (what a gate, `verify` or `logits`, spends
# its compute on) and greedy decoding of 64 tokens after it (what `run` spends it on), medians of 3.
#
#   scripts/bench-runner.sh [MODEL]     # MODEL: a dense llama folder, default work/smollm2 (scripts/quickstart.sh)
#
# 1. Folders (MODEL as stored, and resharded to bf16): `pesc-convert logits` end to end (streamed: reads the
#    weights, converts, computes) against transformers' from_pretrained + first forward (f32 and bf16 compute),
#    then prefill and decode alone: the `runner` bench (resident) against transformers (eager attention, KV cache).
# 2. GGUF (MODEL quantized to q8_0 and q4_k_m by pesc-convert): the `runner` bench against llama.cpp
#    (llama-cpp-python, the build scripts/llama-cpp-check.sh installs into .cache/).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
MODEL="$(cd "${1:-work/smollm2}" && pwd)"
N="${N:-256}"
THREADS="${THREADS:-$(nproc)}"
export RAYON_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS"
scripts/py-env.sh
cargo build --release -q
BIN="$ROOT/target/release/pesc-convert"
TMP="$(mktemp -d -t pesc-bench-runner-XXXXXX)"
trap 'rm -rf "$TMP"' EXIT
ids=$(python3 -c "import json,sys; v=json.load(open(sys.argv[1]))['vocab_size']; print(','.join(str((i*7919+13)%v) for i in range($N)))" "$MODEL/config.json")
"$BIN" reshard "$MODEL" -o "$TMP/bf16" --dtype bf16 >/dev/null 2>&1
"$BIN" quantize "$MODEL" --to q8_0 -o "$TMP/q8_0.gguf" >/dev/null 2>&1
"$BIN" quantize "$MODEL" --to q4_k_m -o "$TMP/q4_k_m.gguf" >/dev/null 2>&1
echo "== $(nproc) cores ($THREADS threads), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(basename "$MODEL"); $N tokens"

wall() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); python3 -c "import sys; print(f'{float(sys.argv[2])-float(sys.argv[1]):.2f}')" "$s" "$e"; }
for folder in "$MODEL" "$TMP/bf16"; do
    for dtype in f32 bf16; do
        echo "pesc-convert logits ($(basename "$folder") folder, $dtype compute), end to end: $(wall "$BIN" logits "$folder" --token-ids "$ids" -o "$TMP/l.st" --force --dtype "$dtype") s"
    done
    PESC_BENCH_MODEL="$folder" PESC_BENCH_PROMPT="$N" cargo bench -q -p pesc-runner --bench runner 2>/dev/null | sed "s/^/($(basename "$folder") folder) /"
    .venv/bin/python - "$folder" "$N" "$THREADS" <<'PY'
import statistics, sys, time, torch
from transformers import AutoModelForCausalLM
path, n, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
for name, dtype in [("f32", torch.float32), ("bf16", torch.bfloat16)]:
    t0 = time.perf_counter()
    m = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager").eval()
    ids = torch.tensor([[(i * 7919 + 13) % m.config.vocab_size for i in range(n)]])
    pre, dec = [], []
    with torch.no_grad():
        for _ in range(3):
            t = time.perf_counter()
            out = m(ids, use_cache=True)
            pre.append(n / (time.perf_counter() - t))
            if len(pre) == 1:
                end_to_end = time.perf_counter() - t0
            past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
            t = time.perf_counter()
            for _ in range(64):
                out = m(nxt, past_key_values=past, use_cache=True)
                past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
            dec.append(64 / (time.perf_counter() - t))
    print(f"transformers {name} ({path.rsplit('/', 1)[-1]} folder): end to end {end_to_end:.2f} s; "
          f"prefill {statistics.median(pre):.1f} tokens/s, decode {statistics.median(dec):.1f} tokens/s")
PY
done

VENV="$ROOT/.cache/llama-cpp-venv"
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "(llama.cpp: run scripts/llama-cpp-check.sh once to install it)"
    exit 0
fi
for q in q8_0 q4_k_m; do
    PESC_BENCH_MODEL="$TMP/$q.gguf" PESC_BENCH_DTYPES=f32 PESC_BENCH_PROMPT="$N" cargo bench -q -p pesc-runner --bench runner 2>/dev/null | sed "s/^/($q) /"
    "$VENV/bin/python" - "$TMP/$q.gguf" "$N" "$THREADS" <<'PY'
import statistics, sys, time
import llama_cpp
import numpy as np
path, n, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llm = llama_cpp.Llama(model_path=path, n_ctx=max(512, 2 * n), n_batch=n, n_ubatch=n, n_threads=threads, n_threads_batch=threads, verbose=False, type_k=0, type_v=0)
prompt = [(i * 7919 + 13) % llm.n_vocab() for i in range(n)]
# Without logits_all, llama.cpp keeps the last token's logits only.
last = lambda: int(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).argmax())
pre, dec = [], []
for _ in range(3):
    llm.reset()
    t = time.perf_counter()
    llm.eval(prompt)
    pre.append(n / (time.perf_counter() - t))
    t = time.perf_counter()
    for _ in range(64):
        llm.eval([last()])
    dec.append(64 / (time.perf_counter() - t))
print(f"({path.rsplit('/', 1)[-1].split('.')[0]}) llama.cpp: prefill {statistics.median(pre):.1f} tokens/s, decode {statistics.median(dec):.1f} tokens/s")
PY
done
