//! `quantize --to nf4`: a folder in transformers' bitsandbytes 4-bit layout.
//!
//! The linear layers transformers quantizes by default become NF4 (q, k, v, o
//! and the dense or shared FFN's gate, up and down; in a Mixtral only the
//! attention, since transformers 5 keeps its fused experts and router in
//! float); embeddings, norms, `lm_head`, biases and the PESC routers and
//! adapters keep their stored dtype, as the reference implementation keeps
//! them. `config.json` gains transformers' `quantization_config`.

use crate::folder::write_config;
use crate::CraftError;
use pesc_arch::{Model, Moe, QUANT_STATE};
use pesc_io::{write_weights, OutputDir, TensorSpec};
use pesc_quant::nf4::{self, Absmax, Nf4Options, Nf4Tensor};
use pesc_tensor::DType;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The weights `quantize --to nf4` stores as NF4.
#[must_use]
pub fn nf4_targets(model: &Model) -> Vec<String> {
    let mut out = Vec::new();
    for l in 0..model.config.num_layers {
        for p in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            out.push(format!("model.layers.{l}.self_attn.{p}.weight"));
        }
        if !matches!(model.config.moe, Moe::Mixtral { .. }) {
            for p in ["gate_proj", "up_proj", "down_proj"] {
                out.push(pesc_arch::dense_mlp(l, p));
            }
        }
    }
    out
}

/// The dtype name transformers records for `model`'s weights: config.json's
/// `dtype` / `torch_dtype` when it is a float type, else the embedding's.
fn model_dtype(model: &Model) -> &'static str {
    match model.config.dtype.as_deref() {
        Some("float32") => "float32",
        Some("float16") => "float16",
        Some("bfloat16") => "bfloat16",
        _ => crate::StoreDType::torch_name(model.weights.get("model.embed_tokens.weight").map_or(DType::F32, |t| t.dtype)),
    }
}

/// `config.json` of the NF4 folder: the input's, plus `quantization_config`
/// with the keys and order transformers 5 writes for bitsandbytes 4-bit,
/// placed where transformers' sorted keys put it.
#[must_use]
pub fn nf4_config(model: &Model, opts: Nf4Options) -> Map<String, Value> {
    let q = json!({
        "_load_in_4bit": true,
        "_load_in_8bit": false,
        "bnb_4bit_compute_dtype": model_dtype(model),
        "bnb_4bit_quant_storage": "uint8",
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": opts.double_quant,
        "llm_int8_enable_fp32_cpu_offload": false,
        "llm_int8_has_fp16_weight": false,
        "llm_int8_skip_modules": null,
        "llm_int8_threshold": 6.0,
        "load_in_4bit": true,
        "load_in_8bit": false,
        "quant_method": "bitsandbytes",
    });
    let key = "quantization_config";
    let mut out = Map::new();
    for (k, v) in &model.config.raw {
        if k.as_str() > key && !out.contains_key(key) {
            out.insert(key.into(), q.clone());
        }
        out.insert(k.clone(), v.clone());
    }
    if !out.contains_key(key) {
        out.insert(key.into(), q);
    }
    out
}

/// Checks that `model` can be quantized with `opts` before anything is written.
pub fn validate_nf4(model: &Model, opts: Nf4Options) -> Result<(), CraftError> {
    opts.check().map_err(|e| CraftError::Invalid(format!("--blocksize: {e}")))?;
    if model.quantization.is_some() {
        return Err(CraftError::Invalid(format!("`{}` is already an NF4 folder", model.dir.display())));
    }
    Ok(())
}

/// Python's `repr` of a float, as `json.dumps` writes it (shortest digits;
/// exponent form below 1e-4 and from 1e16).
fn py_float(x: f64) -> String {
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    let sci = format!("{:e}", x.abs());
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mant.chars().filter(char::is_ascii_digit).collect();
    let sign = if x < 0.0 { "-" } else { "" };
    let body = if (-4..16).contains(&exp) {
        if exp < 0 {
            format!("0.{}{digits}", "0".repeat(usize::try_from(-exp - 1).unwrap_or(0)))
        } else {
            let point = usize::try_from(exp + 1).unwrap_or(0);
            if digits.len() <= point {
                format!("{digits}{}.0", "0".repeat(point - digits.len()))
            } else {
                format!("{}.{}", &digits[..point], &digits[point..])
            }
        }
    } else {
        let (head, tail) = digits.split_at(1);
        let frac = if tail.is_empty() { String::new() } else { format!(".{tail}") };
        format!("{head}{frac}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    };
    format!("{sign}{body}")
}

/// The quant-state JSON bitsandbytes packs into `P.weight.quant_state.bitsandbytes__nf4`.
fn quant_state_json(t: &Nf4Tensor, dtype: DType, shape: &[u64]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    let mut s = format!(
        "{{\"quant_type\": \"nf4\", \"blocksize\": {}, \"dtype\": \"{}\", \"shape\": [{}]",
        t.blocksize(),
        crate::StoreDType::torch_name(dtype),
        dims.join(", ")
    );
    if let Absmax::Double(d) = t.absmax() {
        s.push_str(&format!(
            ", \"nested_blocksize\": {}, \"nested_dtype\": \"float32\", \"nested_offset\": {}",
            nf4::NESTED_BLOCKSIZE,
            py_float(f64::from(d.offset))
        ));
    }
    s.push('}');
    s.into_bytes()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes `model` with its linear layers in NF4, and its `config.json`, into `out`.
pub fn quantize_nf4(
    model: &Model,
    out: &mut OutputDir,
    opts: Nf4Options,
    shard_size: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), CraftError> {
    validate_nf4(model, opts)?;
    let targets = nf4_targets(model);
    let mut specs: Vec<TensorSpec> = model
        .weights
        .tensors()
        .filter(|t| !t.name.ends_with(".rotary_emb.inv_freq") && !targets.contains(&t.name))
        .map(|t| TensorSpec { name: t.name.clone(), dtype: t.dtype, shape: t.shape.clone() })
        .collect();
    // Quantized up front (the quant-state JSON's length depends on the offset);
    // each is dropped once its last piece is written.
    let mut pending: BTreeMap<String, (Nf4Tensor, usize)> = BTreeMap::new();
    let mut state_json: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let piece_count = if opts.double_quant { 6 } else { 4 };
    let quantize = |name: &str| -> Result<Nf4Tensor, CraftError> {
        let values = model.read_f32(name)?;
        nf4::quantize(&values, opts).map_err(|e| CraftError::Invalid(format!("tensor `{name}`: {e}")))
    };
    for name in &targets {
        let t = model.weights.get(name).ok_or_else(|| CraftError::Invalid(format!("no tensor `{name}`")))?;
        let numel = t.numel();
        let blocks = numel.div_ceil(opts.blocksize as u64);
        let q = quantize(name)?;
        let json = quant_state_json(&q, t.dtype, &t.shape);
        let spec = |suffix: &str, dtype: DType, shape: Vec<u64>| TensorSpec {
            name: if suffix.is_empty() { name.clone() } else { format!("{name}.{suffix}") },
            dtype,
            shape,
        };
        specs.push(spec("", DType::U8, vec![numel.div_ceil(2), 1]));
        specs.push(spec("absmax", if opts.double_quant { DType::U8 } else { DType::F32 }, vec![blocks]));
        specs.push(spec("quant_map", DType::F32, vec![16]));
        if opts.double_quant {
            specs.push(spec("nested_absmax", DType::F32, vec![blocks.div_ceil(nf4::NESTED_BLOCKSIZE as u64)]));
            specs.push(spec("nested_quant_map", DType::F32, vec![256]));
        }
        specs.push(spec(QUANT_STATE, DType::U8, vec![json.len() as u64]));
        state_json.insert(name.clone(), json);
        pending.insert(name.clone(), (q, 0));
    }
    write_config(out, &nf4_config(model, opts))?;
    write_weights::<CraftError>(
        out,
        specs,
        shard_size,
        &mut |spec, w| {
            let Some((base, piece)) = targets.iter().find_map(|t| {
                if &spec.name == t {
                    Some((t, ""))
                } else {
                    spec.name.strip_prefix(t.as_str()).and_then(|r| r.strip_prefix('.')).map(|p| (t, p))
                }
            }) else {
                return crate::folder::emit_tensor(model, &spec.name, spec.dtype, w);
            };
            let (q, written) = pending.get_mut(base).ok_or_else(|| CraftError::Invalid(format!("tensor `{base}` was not quantized")))?;
            let bytes = match (piece, q.absmax()) {
                ("", _) => q.packed().to_vec(),
                ("absmax", Absmax::Plain(a)) => f32_bytes(a),
                ("absmax", Absmax::Double(d)) => d.codes.clone(),
                ("quant_map", _) => f32_bytes(&nf4::NF4_CODE),
                ("nested_absmax", Absmax::Double(d)) => f32_bytes(&d.nested_absmax),
                ("nested_quant_map", Absmax::Double(d)) => f32_bytes(&d.nested_quant_map),
                (p, _) if p == QUANT_STATE => state_json.get(base).cloned().unwrap_or_default(),
                (p, _) => return Err(CraftError::Invalid(format!("tensor `{base}`: no NF4 piece `{p}`"))),
            };
            w.write_all(&bytes).map_err(|e| pesc_io::Error::Io { path: "<output>".into(), source: e })?;
            *written += 1;
            if *written == piece_count {
                pending.remove(base);
            }
            Ok(())
        },
        progress,
    )
}

#[cfg(test)]
mod tests {
    use super::py_float;

    #[test]
    fn floats_print_as_python_repr() {
        for (x, want) in [
            (0.269_893_378_019_332_9, "0.2698933780193329"),
            (0.052_149_564_027_786_255, "0.052149564027786255"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1.5e-7, "1.5e-07"),
            (6.0, "6.0"),
            (123_456.5, "123456.5"),
            (1e16, "1e+16"),
            (2.5e20, "2.5e+20"),
            (-0.25, "-0.25"),
            (0.0, "0.0"),
        ] {
            assert_eq!(py_float(x), want, "{x}");
        }
    }
}
