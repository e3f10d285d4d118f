//! Writer → reader round trips, determinism, the writer's own checks, and
//! the writer's bytes against a file built by hand from the spec.

mod common;

use common::*;
use pesc_gguf::{write_gguf, Array, GgmlType, GgufError, GgufFile, GgufWriter, Metadata, StringArray, TensorError, TensorSpec, Value};
use std::io::Write;

#[allow(clippy::cast_possible_truncation)] // the pattern wraps on purpose
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(131).wrapping_add(seed.wrapping_mul(17)).wrapping_add(7)).collect()
}

fn sample_metadata() -> Metadata {
    let mut m = Metadata::new();
    m.push("general.architecture", "llama").unwrap();
    m.push("general.name", "pesc tiny ✓ ünïcode").unwrap();
    m.push("t.u8", 255u8).unwrap();
    m.push("t.i8", -128i8).unwrap();
    m.push("t.u16", 65_535u16).unwrap();
    m.push("t.i16", -32_768i16).unwrap();
    m.push("t.u32", 4_000_000_000u32).unwrap();
    m.push("t.i32", i32::MIN).unwrap();
    m.push("t.f32", 0.1f32).unwrap();
    m.push("t.bool", true).unwrap();
    m.push("t.str.empty", "").unwrap();
    m.push("t.u64", u64::MAX).unwrap();
    m.push("t.i64", i64::MIN).unwrap();
    m.push("t.f64", 1e-300f64).unwrap();
    m.push("tokenizer.ggml.tokens", vec!["<unk>", "", "<0x0A>", "▁hello", "日本"]).unwrap();
    m.push("tokenizer.ggml.scores", vec![0.0f32, -1.5, f32::MIN_POSITIVE, -0.0, 1e30]).unwrap();
    m.push("tokenizer.ggml.token_type", vec![2i32, 1, 6, 1, 1]).unwrap();
    m.push("a.u8", vec![0u8, 1, 255]).unwrap();
    m.push("a.i8", vec![-1i8, 0, 127]).unwrap();
    m.push("a.u16", vec![1u16, 65_535]).unwrap();
    m.push("a.i16", vec![-1i16]).unwrap();
    m.push("a.u32", vec![7u32, 8, 9]).unwrap();
    m.push("a.u64", vec![u64::MAX]).unwrap();
    m.push("a.i64", vec![i64::MIN, 0]).unwrap();
    m.push("a.f64", vec![0.5f64, -2.0]).unwrap();
    m.push("a.bool", vec![true, false, true]).unwrap();
    m.push("a.empty.u32", Vec::<u32>::new()).unwrap();
    m.push("a.empty.str", StringArray::new()).unwrap();
    m
}

fn sample_tensors() -> Vec<(TensorSpec, Vec<u8>)> {
    let specs = [
        TensorSpec::new("a.f32", GgmlType::F32, &[3]),
        TensorSpec::new("b.f16", GgmlType::F16, &[8, 2]),
        TensorSpec::new("c.bf16", GgmlType::BF16, &[16]),
        TensorSpec::new("d.q8_0", GgmlType::Q8_0, &[64, 2]),
        TensorSpec::new("e.q4_k", GgmlType::Q4_K, &[256, 2]),
        TensorSpec::new("f.q6_k", GgmlType::Q6_K, &[256]),
        TensorSpec::new("g.i8", GgmlType::I8, &[5]),
        TensorSpec::new("h.i32", GgmlType::I32, &[3, 1, 2]),
        TensorSpec::new("i.f64", GgmlType::F64, &[2]),
        TensorSpec::from_shape("j.4d", GgmlType::F32, &[2, 3, 1, 2]),
    ];
    specs
        .into_iter()
        .enumerate()
        .map(|(k, s)| {
            let n = usize::try_from(s.nbytes().unwrap()).unwrap();
            (s, pattern(n, u8::try_from(k).unwrap()))
        })
        .collect()
}

fn write_sample(metadata: &Metadata) -> Vec<u8> {
    let tensors = sample_tensors();
    let refs: Vec<(TensorSpec, &[u8])> = tensors.iter().map(|(s, b)| (s.clone(), b.as_slice())).collect();
    write_gguf(Vec::new(), metadata, &refs).unwrap()
}

fn reopen(bytes: &[u8]) -> (tempfile::NamedTempFile, GgufFile) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    let g = GgufFile::open(f.path()).unwrap();
    (f, g)
}

#[test]
fn round_trip_metadata_and_tensors() {
    let md = sample_metadata();
    let bytes = write_sample(&md);
    let (_f, g) = reopen(&bytes);
    assert_eq!(g.version(), 3);
    assert_eq!(g.alignment(), 32);
    assert!(!g.metadata().contains("general.alignment"), "the writer adds no key of its own");
    assert_eq!(g.metadata(), &md);
    let expected_keys: Vec<&str> = md.iter().map(|(k, _)| k).collect();
    let keys: Vec<&str> = g.metadata().iter().map(|(k, _)| k).collect();
    assert_eq!(keys, expected_keys);
    assert_eq!(g.get_str_array("tokenizer.ggml.tokens").unwrap().get(4), Some("日本"));
    assert_eq!(g.get_f32_array("tokenizer.ggml.scores").unwrap()[3].to_bits(), (-0.0f32).to_bits());

    let tensors = sample_tensors();
    assert_eq!(g.tensors().len(), tensors.len());
    let mut end = g.data_start();
    for (t, (spec, data)) in g.tensors().iter().zip(&tensors) {
        assert_eq!(t.name, spec.name);
        assert_eq!(t.ty, spec.ty);
        assert_eq!(t.ne, spec.ne);
        assert_eq!(t.nbytes, data.len() as u64);
        assert_eq!(t.data_offset, end, "{}: contiguous, padded to 32", t.name);
        assert_eq!(t.data_offset % 32, 0);
        assert_eq!(&g.read(t).unwrap(), data, "{}", t.name);
        let mut copied = Vec::new();
        g.copy_to(t, &mut copied).unwrap();
        assert_eq!(&copied, data);
        end = t.data_offset + t.nbytes.div_ceil(32) * 32;
    }
    assert_eq!(end, bytes.len() as u64, "the last tensor is padded too");
    assert_eq!(g.tensor("j.4d").unwrap().ne, [2, 1, 3, 2]);
    assert_eq!(g.tensor("j.4d").unwrap().shape(), [2, 3, 1, 2]);
    assert_eq!(g.tensor("e.q4_k").unwrap().nbytes, 2 * 144);
    assert_eq!(g.tensor("h.i32").unwrap().n_elements(), 6);
}

#[test]
fn writes_are_deterministic() {
    let a = write_sample(&sample_metadata());
    let b = write_sample(&sample_metadata());
    assert_eq!(a, b);
    // And rewriting what was read gives the same bytes again.
    let (_f, g) = reopen(&a);
    let data: Vec<Vec<u8>> = g.tensors().iter().map(|t| g.read(t).unwrap()).collect();
    let specs: Vec<(TensorSpec, &[u8])> =
        g.tensors().iter().zip(&data).map(|(t, d)| (TensorSpec::new(t.name.clone(), t.ty, &t.ne), d.as_slice())).collect();
    let c = write_gguf(Vec::new(), g.metadata(), &specs).unwrap();
    assert_eq!(a, c);
}

#[test]
fn writer_matches_hand_built_bytes() {
    let mut md = Metadata::new();
    md.push("general.architecture", "llama").unwrap();
    md.push("llama.block_count", 2u32).unwrap();
    md.push("tokenizer.ggml.scores", vec![1.0f32, -1.0]).unwrap();
    let w = [1u8; 12];
    let q = [2u8; 34];
    let out = write_gguf(
        Vec::new(),
        &md,
        &[(TensorSpec::new("w", GgmlType::F32, &[3]), &w[..]), (TensorSpec::new("q", GgmlType::Q8_0, &[32]), &q[..])],
    )
    .unwrap();
    let scores = [1.0f32.to_le_bytes(), (-1.0f32).to_le_bytes()].concat();
    let expected = file(
        &[kv_string("general.architecture", "llama"), kv_u32("llama.block_count", 2), kv_array("tokenizer.ggml.scores", T_F32, 2, &scores)],
        &[tensor_info(b"w", &[3], F32, 0), tensor_info(b"q", &[32], Q8_0, 32)],
        &[&w[..], &[0; 20], &q[..], &[0; 30]].concat(),
    );
    assert_eq!(out, expected);
}

#[test]
fn alignment_from_metadata_is_used() {
    let mut md = Metadata::new();
    md.push("general.architecture", "llama").unwrap();
    md.push("general.alignment", 64u32).unwrap();
    let data = [3u8; 8];
    let specs = [TensorSpec::new("a", GgmlType::F32, &[2]), TensorSpec::new("b", GgmlType::F32, &[2])];
    let mut w = GgufWriter::new(Vec::new(), &md, &specs).unwrap();
    assert_eq!(w.alignment(), 64);
    assert_eq!(w.header_len() % 64, 0);
    let total = w.total_len();
    w.write_tensor("a", &data).unwrap();
    w.write_tensor("b", &data).unwrap();
    let out = w.finish().unwrap();
    assert_eq!(out.len() as u64, total);
    let (_f, g) = reopen(&out);
    assert_eq!(g.alignment(), 64);
    assert_eq!(g.tensor("b").unwrap().offset, 64);
    assert_eq!(g.read(g.tensor("b").unwrap()).unwrap(), data);
}

#[test]
fn writer_refuses_bad_alignment() {
    for (value, needle) in [
        (Value::U32(0), "non-zero power of two"),
        (Value::U32(24), "power of two"),
        (Value::U32(1 << 21), "at most 1048576"),
        (Value::I32(32), "of type INT32"),
    ] {
        let mut md = Metadata::new();
        md.push("general.alignment", value).unwrap();
        let e = GgufWriter::new(Vec::new(), &md, &[]).unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
    }
}

#[test]
fn chunked_tensor_writes() {
    let md = sample_metadata();
    let tensors = sample_tensors();
    let specs: Vec<TensorSpec> = tensors.iter().map(|(s, _)| s.clone()).collect();
    let mut w = GgufWriter::new(Vec::new(), &md, &specs).unwrap();
    for (s, data) in &tensors {
        assert_eq!(w.next_tensor(), Some(s.name.as_str()));
        w.begin_tensor(&s.name).unwrap();
        for chunk in data.chunks(7) {
            w.write_data(chunk).unwrap();
        }
        w.end_tensor().unwrap();
    }
    assert_eq!(w.next_tensor(), None);
    let out = w.finish().unwrap();
    assert_eq!(out, write_sample(&md));
}

#[test]
fn writer_checks_order_and_sizes() {
    let md = Metadata::new();
    let specs = [TensorSpec::new("a", GgmlType::F32, &[2]), TensorSpec::new("b", GgmlType::F32, &[2])];
    let mut w = GgufWriter::new(Vec::new(), &md, &specs).unwrap();
    let e = w.write_tensor("b", &[0; 8]).unwrap_err().to_string();
    assert!(e.contains("expected tensor `a` next, got tensor `b`"), "{e}");
    let e = w.write_tensor("a", &[0; 7]).unwrap_err().to_string();
    assert!(e.contains("tensor `a` was given 7 bytes but needs 8"), "{e}");
    // Neither error changed anything.
    w.write_tensor("a", &[0; 8]).unwrap();
    w.begin_tensor("b").unwrap();
    let e = w.write_data(&[0; 9]).unwrap_err().to_string();
    assert!(e.contains("tensor `b` was given 9 bytes but needs 8"), "{e}");
    w.write_data(&[0; 5]).unwrap();
    let e = w.end_tensor().unwrap_err().to_string();
    assert!(e.contains("given 5 bytes but needs 8"), "{e}");
    let e = w.write_tensor("b", &[0; 8]).unwrap_err().to_string();
    assert!(e.contains("expected the rest of tensor `b`"), "{e}");
    w.write_data(&[0; 3]).unwrap();
    w.end_tensor().unwrap();
    let e = w.write_tensor("c", &[]).unwrap_err().to_string();
    assert!(e.contains("expected no more tensors"), "{e}");
    w.finish().unwrap();

    let w = GgufWriter::new(Vec::new(), &md, &specs).unwrap();
    let e = w.finish().unwrap_err().to_string();
    assert!(e.contains("finished after 0 of 2 tensors; `a` and later were never written"), "{e}");
}

#[test]
fn writer_refuses_what_the_reader_refuses() {
    let md = Metadata::new();
    let cases: Vec<(TensorSpec, &str)> = vec![
        (TensorSpec::new("", GgmlType::F32, &[1]), "the name is empty"),
        (TensorSpec::new("x".repeat(64), GgmlType::F32, &[1]), "the name is 64 bytes; ggml allows at most 63"),
        (TensorSpec::new("t", GgmlType::F32, &[]), "n_dims is 0"),
        (TensorSpec::new("t", GgmlType::F32, &[1, 1, 1, 1, 1]), "n_dims is 5"),
        (TensorSpec::new("t", GgmlType::F32, &[4, 0]), "ne[1] is 0"),
        (TensorSpec::new("t", GgmlType::Q4_K, &[576]), "not a multiple of the Q4_K block size 256"),
        (TensorSpec::new("t", GgmlType::F32, &[1 << 32, 1 << 32]), "elements"),
        (TensorSpec::new("t", GgmlType::Q8_0, &[1 << 58, 31]), "needs more than"),
    ];
    for (spec, needle) in cases {
        let e = GgufWriter::new(Vec::new(), &md, std::slice::from_ref(&spec)).unwrap_err();
        assert!(matches!(e, GgufError::WriterTensor { .. }), "{e}");
        assert!(e.to_string().contains(needle), "{e}");
    }
    let dup = [TensorSpec::new("t", GgmlType::F32, &[1]), TensorSpec::new("t", GgmlType::F32, &[1])];
    let e = GgufWriter::new(Vec::new(), &md, &dup).unwrap_err();
    assert!(matches!(e, GgufError::WriterTensor { source: TensorError::Duplicate, .. }), "{e}");
}

#[test]
fn metadata_refuses_bad_keys() {
    let mut md = Metadata::new();
    assert!(md.push("", 1u32).unwrap_err().to_string().contains("empty key"));
    md.push("k", 1u32).unwrap();
    assert!(md.push("k", "again").unwrap_err().to_string().contains("key `k` appears more than once"));
    assert!(md.push("x".repeat(65_536), 1u32).unwrap_err().to_string().contains("65536 bytes"));
    md.push("x".repeat(65_535), 1u32).unwrap();
    assert_eq!(md.len(), 2);
}

#[test]
fn write_errors_poison_the_writer() {
    #[derive(Debug)]
    struct Failing(usize);
    impl Write for Failing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.0 < buf.len() {
                return Err(std::io::Error::other("disk full"));
            }
            self.0 -= buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let specs = [TensorSpec::new("a", GgmlType::F32, &[2])];
    let e = GgufWriter::new(Failing(10), &Metadata::new(), &specs).unwrap_err().to_string();
    assert!(e.contains("writing GGUF: disk full"), "{e}");
    let mut w = GgufWriter::new(Failing(64), &Metadata::new(), &specs).unwrap();
    assert!(w.write_tensor("a", &[0; 8]).unwrap_err().to_string().contains("disk full"));
    assert!(matches!(w.write_tensor("a", &[0; 8]), Err(GgufError::Poisoned)));
    assert!(matches!(w.finish(), Err(GgufError::Poisoned)));
}

#[test]
fn large_vocabulary_round_trips() {
    let tokens: StringArray = (0..50_000).map(|i| format!("tok{i}")).collect();
    let scores: Vec<f32> = (0..50_000).map(|i| -(i as f32)).collect();
    let mut md = Metadata::new();
    md.push("tokenizer.ggml.tokens", tokens.clone()).unwrap();
    md.push("tokenizer.ggml.scores", scores.clone()).unwrap();
    let out = write_gguf(Vec::new(), &md, &[]).unwrap();
    let (_f, g) = reopen(&out);
    let t = g.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(t, &tokens);
    assert_eq!(t.get(49_999), Some("tok49999"));
    assert_eq!(g.get_f32_array("tokenizer.ggml.scores").unwrap(), scores.as_slice());
    match g.metadata().get("tokenizer.ggml.tokens") {
        Some(Value::Array(Array::String(a))) => assert_eq!(a.len(), 50_000),
        other => panic!("{other:?}"),
    }
}
