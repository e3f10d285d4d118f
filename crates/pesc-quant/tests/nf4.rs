//! NF4 against bitsandbytes 0.50.2: the vectors in `fixtures/nf4`, made by
//! `fixtures/nf4/make_vectors.py` (`quantize_4bit` on the CPU, dequantized by
//! hand from its codebook and absmax).

use std::path::PathBuf;

use pesc_quant::nf4::{self, Absmax, Nf4Options, Nf4Tensor};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/nf4")
}

fn read(name: &str) -> Vec<u8> {
    let p = dir().join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

struct Case {
    name: String,
    numel: usize,
    opts: Nf4Options,
    offset: f32,
}

fn cases() -> Vec<Case> {
    let text = String::from_utf8(read("cases.txt")).unwrap();
    let cases: Vec<Case> = text
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Case {
                name: f[0].to_owned(),
                numel: f[1].parse().unwrap(),
                opts: Nf4Options { blocksize: f[2].parse().unwrap(), double_quant: f[3] == "1" },
                offset: f32::from_bits(u32::from_str_radix(f[4], 16).unwrap()),
            }
        })
        .collect();
    assert!(cases.len() >= 15);
    cases
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn quantize_is_byte_identical_to_bitsandbytes() {
    let map = f32s(&read("dynamic_map.f32"));
    assert_eq!(bits(&map), bits(&nf4::dynamic_map()));
    for c in cases() {
        let x = f32s(&read(&format!("{}.in.f32", c.name)));
        assert_eq!(x.len(), c.numel, "{}", c.name);
        let t = nf4::quantize(&x, c.opts).unwrap();
        let want = read(&format!("{}.weight.u8", c.name));
        if let Some(i) = t.packed().iter().zip(&want).position(|(a, b)| a != b) {
            panic!("{}: byte {i} is {:#04x}, want {:#04x}", c.name, t.packed()[i], want[i]);
        }
        assert_eq!(t.packed().len(), want.len(), "{}", c.name);
        let absmax = read(&format!("{}.absmax", c.name));
        match t.absmax() {
            Absmax::Plain(a) => {
                assert!(!c.opts.double_quant);
                assert_eq!(bits(a), bits(&f32s(&absmax)), "{}: absmax", c.name);
            }
            Absmax::Double(d) => {
                assert!(c.opts.double_quant);
                assert_eq!(d.offset.to_bits(), c.offset.to_bits(), "{}: offset", c.name);
                assert_eq!(d.codes, absmax, "{}: absmax codes", c.name);
                let nested = f32s(&read(&format!("{}.nested_absmax.f32", c.name)));
                assert_eq!(bits(&d.nested_absmax), bits(&nested), "{}: nested_absmax", c.name);
                assert_eq!(bits(&d.nested_quant_map), bits(&map));
            }
        }
    }
}

#[test]
fn dequantize_matches_bitsandbytes_bits() {
    for c in cases() {
        let x = f32s(&read(&format!("{}.in.f32", c.name)));
        let want = bits(&f32s(&read(&format!("{}.deq.f32", c.name))));
        assert_eq!(bits(&nf4::roundtrip(&x, c.opts).unwrap()), want, "{}: roundtrip", c.name);
        // and from the stored pieces, as a reader sees them
        let packed = read(&format!("{}.weight.u8", c.name));
        let absmax = read(&format!("{}.absmax", c.name));
        let absmax = if c.opts.double_quant {
            Absmax::Double(nf4::DoubleQuant {
                codes: absmax,
                offset: c.offset,
                nested_absmax: f32s(&read(&format!("{}.nested_absmax.f32", c.name))),
                nested_quant_map: f32s(&read("dynamic_map.f32")),
            })
        } else {
            Absmax::Plain(f32s(&absmax))
        };
        let t = Nf4Tensor::from_parts(c.numel, c.opts.blocksize, packed, absmax).unwrap();
        assert_eq!(bits(&t.dequantize()), want, "{}: from parts", c.name);
    }
}

#[test]
fn large_tensors_split_across_threads_give_the_same_bytes() {
    // 3 * 2^20 values: the parallel path, compared with quantizing block-aligned
    // pieces one at a time (NF4 blocks are independent without double quant).
    let n = 3 << 20;
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let x: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            #[allow(clippy::cast_precision_loss)]
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            (u - 0.5) * 0.1
        })
        .collect();
    let opts = Nf4Options { blocksize: 64, double_quant: false };
    let whole = nf4::quantize(&x, opts).unwrap();
    let mut pieces = Vec::new();
    for chunk in x.chunks(1 << 15) {
        pieces.extend_from_slice(nf4::quantize(chunk, opts).unwrap().packed());
    }
    assert_eq!(whole.packed(), &pieces[..]);
    let dq = nf4::quantize(&x, Nf4Options::default()).unwrap();
    assert_eq!(dq.packed(), whole.packed());
    assert_eq!(nf4::quantize(&x, Nf4Options::default()).unwrap(), dq);
}
