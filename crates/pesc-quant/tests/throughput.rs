//! Quantization throughput on ~30M values (about a 30M-parameter slice of a
//! model). Ignored by default; it prints timings and asserts nothing about
//! them:
//!
//! ```text
//! cargo test --release -p pesc-quant --test throughput -- --ignored --nocapture
//! ```

use std::time::Instant;

use pesc_quant::{dequantize, quantize, GgmlType};

#[test]
#[ignore = "timing only; run in release mode with --ignored --nocapture"]
#[allow(clippy::print_stderr, clippy::cast_possible_truncation)]
fn quantize_throughput() {
    let n = 30 * (1 << 20); // 31,457,280 values, whole super-blocks
    let mut s = 0x1234_5678_9abc_def0u64;
    let x: Vec<f32> = (0..n)
        .map(|_| {
            // xorshift64*, then a roughly normal value with std ~0.02
            let mut u = 0.0f64;
            for _ in 0..4 {
                s ^= s >> 12;
                s ^= s << 25;
                s ^= s >> 27;
                u += (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 * 2f64.powi(-53);
            }
            ((u - 2.0) * 0.035) as f32
        })
        .collect();
    for t in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::F16] {
        let start = Instant::now();
        let q = quantize(t, &x).unwrap();
        let secs = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let back = dequantize(t, &q, n).unwrap();
        let dsecs = start.elapsed().as_secs_f64();
        assert_eq!(back.len(), n);
        eprintln!(
            "{t:>5}: quantize {n} values in {secs:.3} s ({:.1} M values/s), dequantize in {dsecs:.3} s ({:.0} M values/s)",
            n as f64 / secs / 1e6,
            n as f64 / dsecs / 1e6
        );
    }
}
