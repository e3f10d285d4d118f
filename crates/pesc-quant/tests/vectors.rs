//! Byte- and bit-exactness against the vectors in `fixtures/quant`, made by
//! `fixtures/quant/make_vectors.py` from gguf-py 0.19.0 and ggml's C
//! reference quantizers (llama.cpp 0c1e57098). See that folder's README.md.

use std::path::PathBuf;

use pesc_quant::{dequantize, dequantize_into, quantize, quantize_into, GgmlType, QuantError};

/// Types with reference bytes for quantization.
const QUANTIZED: [GgmlType; 10] = [
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// Types with reference dequantized values.
const DEQUANTIZED: [GgmlType; 12] = [
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/quant")
}

fn read(name: &str) -> Vec<u8> {
    let p = dir().join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn read_f32(name: &str) -> Vec<f32> {
    read(name).chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn first_diff<T: PartialEq>(a: &[T], b: &[T]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

#[test]
fn quantize_is_byte_identical_to_the_reference() {
    let x = read_f32("input.f32");
    assert_eq!(x.len(), 2048);
    for t in QUANTIZED {
        let want = read(&format!("{t}.bin"));
        let got = quantize(t, &x).unwrap();
        assert_eq!(got.len(), want.len(), "{t}");
        if let Some(i) = first_diff(&got, &want) {
            let bs = usize::try_from(t.type_size()).unwrap();
            panic!("{t}: byte {i} (block {}, offset {}) is {:#04x}, want {:#04x}", i / bs, i % bs, got[i], want[i]);
        }
    }
}

#[test]
fn quantize_edge_values_like_ggml() {
    // subnormal inputs (1/d overflows), fp16 scale overflow, constant tiny
    // blocks, values near the fp16 maximum: bytes from ggml's C code
    let x = read_f32("special.f32");
    for t in QUANTIZED {
        let want = read(&format!("special.{t}.bin"));
        let got = quantize(t, &x).unwrap();
        assert_eq!(first_diff(&got, &want), None, "{t}");
    }
    // NaN, infinities, signalling NaNs, rounding ties for the float encodings
    let x = read_f32("nonfinite.f32");
    for t in [GgmlType::F16, GgmlType::BF16] {
        let want = read(&format!("nonfinite.{t}.bin"));
        assert_eq!(quantize(t, &x).unwrap(), want, "{t}");
    }
}

#[test]
fn dequantize_is_bit_identical_to_gguf_py() {
    let n = 2048;
    for t in DEQUANTIZED {
        let bytes = read(&format!("{t}.bin"));
        let want: Vec<u32> = read_f32(&format!("{t}.deq.f32")).iter().map(|v| v.to_bits()).collect();
        let got: Vec<u32> = dequantize(t, &bytes, n).unwrap().iter().map(|v| v.to_bits()).collect();
        if let Some(i) = first_diff(&got, &want) {
            panic!("{t}: value {i} is {:e}, want {:e}", f32::from_bits(got[i]), f32::from_bits(want[i]));
        }
    }
}

#[test]
fn f32_round_trips_exactly() {
    let x = read_f32("input.f32");
    let bytes = quantize(GgmlType::F32, &x).unwrap();
    assert_eq!(bytes, read("input.f32"));
    assert_eq!(dequantize(GgmlType::F32, &bytes, x.len()).unwrap(), x);
}

// ---------------------------------------------------------------- large input

fn splitmix64(i: u64) -> u64 {
    let mut z = i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generator of `make_vectors.py::large_input`, bit for bit.
#[allow(clippy::cast_possible_truncation)] // f64 -> f32 rounding is the point
fn large_input(n: usize) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let unit = |k: u64| (splitmix64(i * 4 + k) >> 11) as f64 * 2f64.powi(-53);
            let g = unit(0) + unit(1) + unit(2) + unit(3) - 2.0;
            let h = splitmix64((i / 32) ^ 0xA5A5_A5A5_A5A5_A5A5);
            let scale = 2f64.powi(i32::try_from(h % 24).unwrap() - 16);
            let mode = (h >> 8) % 8;
            let lane = i % 32;
            let v = g * scale;
            let v = match mode {
                1 if lane == (h >> 16) % 32 => v * 50.0,
                2 => v.abs(),
                3 => -v.abs(),
                4 => 0.0,
                5 => scale * 0.75,
                6 if lane % 2 == 0 => 0.0,
                _ => v,
            };
            v as f32
        })
        .collect()
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3))
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn large_input_matches_reference_digests() {
    let text = String::from_utf8(read("large.digests")).unwrap();
    let n: usize = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("# n="))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("large.digests header");
    let x = large_input(n);
    let mut checked = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let hex = |s: &str| u64::from_str_radix(s, 16).unwrap();
        if fields[0] == "input" {
            assert_eq!(fnv1a64(&f32_bytes(&x)), hex(fields[1]), "the generator drifted from make_vectors.py");
            continue;
        }
        let t = GgmlType::ALL.into_iter().find(|t| t.name() == fields[0]).unwrap();
        if !t.can_quantize() {
            continue; // Q2_K / Q3_K: no quantizer here; dequantize is checked on the small input
        }
        let bytes = quantize(t, &x).unwrap();
        assert_eq!(format!("{:016x}", fnv1a64(&bytes)), fields[1], "{t} bytes");
        let back = dequantize(t, &bytes, n).unwrap();
        assert_eq!(format!("{:016x}", fnv1a64(&f32_bytes(&back))), fields[2], "{t} dequantized");
        checked += 1;
    }
    assert_eq!(checked, 10);
}

// ------------------------------------------------------------------ sanity

#[test]
fn round_trip_error_is_bounded() {
    let x = read_f32("input.f32");
    // Legacy types and floats: per block, half a step (a whole step where the
    // top code is capped), measured against the block's largest magnitude.
    // K-quants: per super-block, since a sub-block far smaller than its
    // neighbours legitimately loses everything to the 6-bit scales. Row 1
    // (hand-made edge blocks) holds blocks below f16's normal range, so only
    // the k-quant check runs on it.
    let cases = [
        (GgmlType::Q8_0, 32, 0.5 / 127.0),
        (GgmlType::Q4_0, 32, 1.0 / 8.0),
        (GgmlType::Q4_1, 32, 1.0 / 15.0),
        (GgmlType::Q5_0, 32, 1.0 / 16.0),
        (GgmlType::Q5_1, 32, 1.0 / 31.0),
        (GgmlType::F16, 1, 1.0 / 2048.0),
        (GgmlType::BF16, 1, 1.0 / 256.0),
        (GgmlType::Q4_K, 256, 1.0 / 10.0),
        (GgmlType::Q5_K, 256, 1.0 / 20.0),
        (GgmlType::Q6_K, 256, 1.0 / 40.0),
    ];
    for row in 0..4 {
        let x = &x[512 * row..512 * (row + 1)];
        for (t, block, max_err_per_absmax) in cases {
            if row == 1 && block <= 32 {
                continue;
            }
            let back = dequantize(t, &quantize(t, x).unwrap(), x.len()).unwrap();
            for (xb, yb) in x.chunks(block).zip(back.chunks(block)) {
                let absmax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                let err = xb.iter().zip(yb).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                // slack of 2^-10 * absmax for the f16 rounding of the scales and mins
                let bound = absmax * (max_err_per_absmax + 1.0 / 1024.0);
                assert!(err <= bound, "{t} row {row}: error {err} vs absmax {absmax}");
            }
        }
    }
}

#[test]
fn quantizing_rows_separately_equals_the_whole() {
    let x = read_f32("input.f32");
    for t in QUANTIZED {
        let whole = quantize(t, &x).unwrap();
        let rows: Vec<u8> = x.chunks(512).flat_map(|r| quantize(t, r).unwrap()).collect();
        assert_eq!(whole, rows, "{t}");
    }
}

#[test]
fn zero_input_gives_zero_output() {
    let x = vec![0f32; 512];
    for t in QUANTIZED {
        let back = dequantize(t, &quantize(t, &x).unwrap(), 512).unwrap();
        assert!(back.iter().all(|v| *v == 0.0), "{t}");
    }
}

// ------------------------------------------------------------------ errors

#[test]
fn bad_lengths_are_errors() {
    let e = quantize(GgmlType::Q4_K, &[0.0; 300]).unwrap_err();
    assert_eq!(e, QuantError::PartialBlock { ty: GgmlType::Q4_K, len: 300, block_size: 256 });
    assert_eq!(e.to_string(), "300 elements is not a whole number of `Q4_K` blocks (256 elements each)");
    assert!(matches!(quantize(GgmlType::Q8_0, &[0.0; 33]), Err(QuantError::PartialBlock { len: 33, block_size: 32, .. })));
    assert_eq!(quantize(GgmlType::Q8_0, &[]).unwrap(), Vec::<u8>::new());

    let e = dequantize(GgmlType::Q8_0, &[0; 33], 32).unwrap_err();
    assert_eq!(e, QuantError::ByteLength { ty: GgmlType::Q8_0, n: 32, expected: 34, actual: 33 });
    assert_eq!(e.to_string(), "`Q8_0` data for 32 elements must be 34 bytes, got 33");
    assert!(matches!(dequantize(GgmlType::Q6_K, &[0; 210], 128), Err(QuantError::PartialBlock { .. })));
    assert!(matches!(dequantize(GgmlType::F16, &[0; 5], 2), Err(QuantError::ByteLength { .. })));

    let mut dst = [0u8; 10];
    assert!(matches!(quantize_into(GgmlType::Q4_0, &[0.0; 32], &mut dst), Err(QuantError::ByteLength { expected: 18, .. })));
    let mut out = [0f32; 31];
    assert!(matches!(dequantize_into(GgmlType::Q4_0, &[0; 18], &mut out), Err(QuantError::PartialBlock { .. })));
}

#[test]
fn unsupported_types_are_errors() {
    for t in [GgmlType::I8, GgmlType::I16, GgmlType::I32, GgmlType::I64] {
        let e = dequantize(t, &[0; 8], 1).unwrap_err();
        assert_eq!(e, QuantError::NotFloat { ty: t });
        assert!(quantize(t, &[0.0]).is_err());
    }
    assert_eq!(dequantize(GgmlType::I8, &[0], 1).unwrap_err().to_string(), "`I8` holds integers, not floats, so it has no f32 encoding");
    let e = quantize(GgmlType::Q2_K, &[0.0; 256]).unwrap_err();
    assert_eq!(e.to_string(), "cannot quantize `Q2_K`: this tool has no quantizer for it");
    for t in [GgmlType::Q8_1, GgmlType::Q8_K, GgmlType::F64] {
        assert!(matches!(dequantize(t, &[], 0), Err(QuantError::Unsupported { .. })), "{t}");
    }
    for t in GgmlType::ALL {
        assert_eq!(quantize(t, &[]).is_ok(), t.can_quantize(), "{t}");
        assert_eq!(dequantize(t, &[], 0).is_ok(), t.can_dequantize(), "{t}");
    }
}

#[test]
fn non_finite_input_is_refused_by_block_types() {
    let mut x = vec![0.5f32; 256];
    x[77] = f32::NAN;
    for t in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q5_1, GgmlType::Q4_K, GgmlType::Q6_K] {
        let e = quantize(t, &x).unwrap_err();
        assert!(matches!(e, QuantError::NonFinite { index: 77, .. }), "{t}: {e}");
    }
    x[77] = f32::NEG_INFINITY;
    let e = quantize(GgmlType::Q5_K, &x).unwrap_err();
    assert_eq!(e.to_string(), "element 77 is -inf; `Q5_K` blocks cannot encode NaN or infinity");
    // float encodings pass them through
    let h = quantize(GgmlType::F16, &x).unwrap();
    assert_eq!(dequantize(GgmlType::F16, &h, 256).unwrap()[77], f32::NEG_INFINITY);
}
