//! Writes sample GGUF files with `GgufWriter`, each with a JSON manifest of
//! every key and tensor, for `tests/gguf_py_roundtrip.py` to check with the
//! Python `gguf` package.
//!
//! ```text
//! cargo run -p pesc-gguf --example gguf_sample -- OUT_DIR
//! ```
//!
//! Writes `OUT_DIR/{sample,align64}.{gguf,json}`. Floats appear in the JSON
//! as their bit patterns so the comparison is exact.

use pesc_gguf::{write_gguf, Array, GgmlType, GgufFile, Metadata, TensorSpec, Value};
use std::fmt::Write as _;
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args().nth(1).ok_or("usage: gguf_sample OUT_DIR")?;
    let out = Path::new(&out);
    std::fs::create_dir_all(out)?;
    for (name, alignment) in [("sample", None), ("align64", Some(64u32))] {
        let md = metadata(alignment)?;
        let tensors = tensors();
        let refs: Vec<(TensorSpec, &[u8])> = tensors.iter().map(|(s, b)| (s.clone(), b.as_slice())).collect();
        let gguf = out.join(format!("{name}.gguf"));
        let file = std::io::BufWriter::new(std::fs::File::create(&gguf)?);
        write_gguf(file, &md, &refs)?.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        // Read it back with our own reader for the offsets, and as a check.
        let g = GgufFile::open(&gguf)?;
        assert_eq!(g.metadata(), &md);
        std::fs::write(out.join(format!("{name}.json")), manifest(&format!("{name}.gguf"), &g, &tensors))?;
    }
    Ok(())
}

fn metadata(alignment: Option<u32>) -> Result<Metadata, pesc_gguf::MetadataError> {
    let mut m = Metadata::new();
    m.push("general.architecture", "llama")?;
    if let Some(a) = alignment {
        m.push("general.alignment", a)?;
    }
    m.push("general.name", "pesc tiny ✓ ünïcode \"quoted\" \\ tab\t")?;
    m.push("general.quantization_version", 2u32)?;
    m.push("general.file_type", 7u32)?;
    m.push("llama.block_count", 2u32)?;
    m.push("llama.rope.freq_base", 10_000.0f32)?;
    m.push("t.u8", 255u8)?;
    m.push("t.i8", -128i8)?;
    m.push("t.u16", 65_535u16)?;
    m.push("t.i16", -32_768i16)?;
    m.push("t.u32", 4_000_000_000u32)?;
    m.push("t.i32", i32::MIN)?;
    m.push("t.f32", 0.1f32)?;
    m.push("t.bool", true)?;
    m.push("t.bool.false", false)?;
    m.push("t.str.empty", "")?;
    m.push("t.u64", u64::MAX)?;
    m.push("t.i64", i64::MIN)?;
    m.push("t.f64", 1e-300f64)?;
    m.push("tokenizer.ggml.model", "llama")?;
    m.push("tokenizer.ggml.tokens", vec!["<unk>", "<s>", "</s>", "<0x0A>", "▁hello", "日本", ""])?;
    m.push("tokenizer.ggml.scores", vec![0.0f32, -1.5, f32::MIN_POSITIVE, -0.0, 1e30, f32::MAX, -3.25])?;
    m.push("tokenizer.ggml.token_type", vec![2i32, 3, 3, 6, 1, 1, 1])?;
    m.push("a.u8", vec![0u8, 1, 255])?;
    m.push("a.i8", vec![-1i8, 0, 127])?;
    m.push("a.u16", vec![1u16, 65_535])?;
    m.push("a.i16", vec![-1i16, i16::MAX])?;
    m.push("a.u32", vec![7u32, 8, u32::MAX])?;
    m.push("a.u64", vec![u64::MAX, 0])?;
    m.push("a.i64", vec![i64::MIN, 0, i64::MAX])?;
    m.push("a.f64", vec![0.5f64, -2.0, f64::MIN_POSITIVE])?;
    m.push("a.bool", vec![true, false, true])?;
    Ok(m)
}

#[allow(clippy::cast_possible_truncation)] // the pattern wraps on purpose
fn tensors() -> Vec<(TensorSpec, Vec<u8>)> {
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
        TensorSpec::new("j.4d", GgmlType::F32, &[2, 1, 3, 2]),
        TensorSpec::new("k.q4_0", GgmlType::Q4_0, &[32, 3]),
        TensorSpec::new("l.q4_1", GgmlType::Q4_1, &[32]),
        TensorSpec::new("blk.0.ffn_down.weight", GgmlType::F16, &[4, 4]),
    ];
    specs
        .into_iter()
        .enumerate()
        .map(|(k, s)| {
            let n = usize::try_from(s.nbytes().expect("valid sample spec")).expect("small");
            let seed = k as u32;
            let data = (0..n as u32).map(|i| (i.wrapping_mul(131).wrapping_add(seed * 17 + 7) % 256) as u8).collect();
            (s, data)
        })
        .collect()
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn list<T>(v: &[T], f: impl Fn(&T) -> String) -> String {
    let parts: Vec<String> = v.iter().map(f).collect();
    format!("[{}]", parts.join(", "))
}

/// The value as JSON: numbers, booleans, strings; floats as bit patterns.
fn json_value(v: &Value) -> String {
    match v {
        Value::U8(x) => x.to_string(),
        Value::I8(x) => x.to_string(),
        Value::U16(x) => x.to_string(),
        Value::I16(x) => x.to_string(),
        Value::U32(x) => x.to_string(),
        Value::I32(x) => x.to_string(),
        Value::F32(x) => x.to_bits().to_string(),
        Value::Bool(x) => x.to_string(),
        Value::String(s) => json_str(s),
        Value::U64(x) => x.to_string(),
        Value::I64(x) => x.to_string(),
        Value::F64(x) => x.to_bits().to_string(),
        Value::Array(a) => match a {
            Array::U8(v) => list(v, u8::to_string),
            Array::I8(v) => list(v, i8::to_string),
            Array::U16(v) => list(v, u16::to_string),
            Array::I16(v) => list(v, i16::to_string),
            Array::U32(v) => list(v, u32::to_string),
            Array::I32(v) => list(v, i32::to_string),
            Array::F32(v) => list(v, |x| x.to_bits().to_string()),
            Array::Bool(v) => list(v, bool::to_string),
            Array::String(v) => list(&v.iter().collect::<Vec<_>>(), |s| json_str(s)),
            Array::U64(v) => list(v, u64::to_string),
            Array::I64(v) => list(v, i64::to_string),
            Array::F64(v) => list(v, |x| x.to_bits().to_string()),
        },
    }
}

fn manifest(file: &str, g: &GgufFile, tensors: &[(TensorSpec, Vec<u8>)]) -> String {
    let kv = list(&g.metadata().iter().collect::<Vec<_>>(), |(k, v)| {
        let sub = match v {
            Value::Array(a) => a.element_type().id().to_string(),
            _ => "null".into(),
        };
        format!("{{\"key\": {}, \"type\": {}, \"sub_type\": {sub}, \"value\": {}}}", json_str(k), v.value_type().id(), json_value(v))
    });
    let ts = list(&g.tensors().iter().zip(tensors).collect::<Vec<_>>(), |(t, (_, data))| {
        let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{{\"name\": {}, \"type\": {}, \"ne\": {}, \"nbytes\": {}, \"offset\": {}, \"data_offset\": {}, \"hex\": \"{hex}\"}}",
            json_str(&t.name),
            t.ty.id(),
            list(&t.ne, u64::to_string),
            t.nbytes,
            t.offset,
            t.data_offset
        )
    });
    format!(
        "{{\"file\": {}, \"alignment\": {}, \"data_start\": {}, \"file_len\": {}, \"kv\": {kv}, \"tensors\": {ts}}}\n",
        json_str(file),
        g.alignment(),
        g.data_start(),
        g.file_len()
    )
}
