//! NF4 quantization throughput on a raw little-endian f32 file, for
//! `scripts/bench-nf4.sh`:
//!
//! ```text
//! cargo run --release -p pesc-quant --example nf4_bench -- FILE BLOCKSIZE DOUBLE_QUANT(0|1) REPEATS
//! ```
//!
//! Prints one JSON line: element count, the best time of REPEATS runs, the
//! throughput, and an FNV-1a digest of the packed codes (to compare with
//! bitsandbytes' in the same run).

use pesc_quant::nf4::{quantize, Nf4Options};
use std::time::Instant;

#[allow(clippy::print_stdout, clippy::cast_precision_loss)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, file, blocksize, dq, repeats] = &args[..] else {
        return Err("usage: nf4_bench FILE BLOCKSIZE DOUBLE_QUANT REPEATS".into());
    };
    let bytes = std::fs::read(file)?;
    let x: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let opts = Nf4Options { blocksize: blocksize.parse()?, double_quant: dq == "1" };
    let mut best = f64::INFINITY;
    let mut packed = Vec::new();
    for _ in 0..repeats.parse::<usize>()?.max(1) {
        let t = Instant::now();
        let q = quantize(&x, opts)?;
        best = best.min(t.elapsed().as_secs_f64());
        packed = q.packed().to_vec();
    }
    let fnv = packed.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    println!(
        "{{\"elements\": {}, \"seconds\": {best:.6}, \"melem_per_s\": {:.1}, \"fnv\": \"{fnv:016x}\"}}",
        x.len(),
        x.len() as f64 / best / 1e6
    );
    Ok(())
}
