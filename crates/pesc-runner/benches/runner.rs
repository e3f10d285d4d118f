//! Prefill and decode throughput of the runner on a model folder or GGUF file.
//!
//! `PESC_BENCH_MODEL=DIR|FILE.gguf cargo bench -p pesc-runner --bench runner`
//! prints, for f32 and bf16 (or those `PESC_BENCH_DTYPES=f32,bf16` names):
//! prefill tokens/s for a prompt of `PESC_BENCH_PROMPT` tokens (default 128) and decode
//! tokens/s for 64 tokens after it (median of 3 runs). `scripts/bench-runner.sh` runs
//! it next to transformers and llama.cpp on the same model.

#![allow(clippy::print_stdout, missing_docs)]

use pesc_runner::{Cache, ComputeDType, Runner};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let Ok(dir) = std::env::var("PESC_BENCH_MODEL") else {
        println!("set PESC_BENCH_MODEL to a model folder or GGUF file (scripts/bench-runner.sh does)");
        return;
    };
    let model = pesc_model::Weights::open(std::path::Path::new(&dir)).expect("model folder or GGUF file");
    let vocab = u32::try_from(model.config().vocab_size).unwrap();
    let len: u32 = std::env::var("PESC_BENCH_PROMPT").ok().and_then(|v| v.parse().ok()).unwrap_or(128);
    let prompt: Vec<u32> = (0..len).map(|i| (i * 7919 + 13) % vocab).collect();
    let wanted = std::env::var("PESC_BENCH_DTYPES").unwrap_or_else(|_| "f32,bf16".into());
    for (name, dtype) in [("f32", ComputeDType::F32), ("bf16", ComputeDType::BF16)] {
        if !wanted.split(',').any(|w| w == name) {
            continue;
        }
        let runner = Runner::load(&model, dtype, &candle_core::Device::Cpu).expect("load");
        let (mut prefill, mut decode) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let mut cache = Cache::default();
            let t = Instant::now();
            let out = runner.forward(&prompt, &mut cache).expect("prefill");
            prefill.push(prompt.len() as f64 / t.elapsed().as_secs_f64());
            let mut next = out.logits.get(prompt.len() - 1).unwrap().argmax(0).unwrap().to_scalar::<u32>().unwrap();
            let t = Instant::now();
            for _ in 0..64 {
                let out = runner.forward(&[next], &mut cache).expect("decode");
                next = out.logits.get(0).unwrap().argmax(0).unwrap().to_scalar::<u32>().unwrap();
            }
            decode.push(64.0 / t.elapsed().as_secs_f64());
        }
        println!("pesc-convert {name}: prefill {:.1} tokens/s, decode {:.1} tokens/s", median(prefill), median(decode));
    }
}
