//! NF4 folders: the layout transformers' `save_pretrained` writes for a
//! bitsandbytes 4-bit model, validated piece by piece when read and written
//! byte for byte as transformers writes it ([`nf4_config`], [`stored_pieces`]).
//!
//! A quantized weight `P.weight` is stored as the packed codes (U8
//! `[(numel+1)/2, 1]`) plus `P.weight.absmax`, `P.weight.quant_map`,
//! (double quantization) `P.weight.nested_absmax` and
//! `P.weight.nested_quant_map`, and `P.weight.quant_state.bitsandbytes__nf4`,
//! the UTF-8 JSON of its quant state (shape, dtype, blocksize, offset).

use crate::{HfError, Model, StoreDType};
use pesc_io::Checkpoint;
use pesc_quant::nf4::{Absmax, DoubleQuant, Nf4Tensor, BLOCKSIZES, NESTED_BLOCKSIZE, NF4_CODE};
use pesc_tensor::{shape_str, DType};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// Suffix of the quant-state tensor after the weight's name.
pub const QUANT_STATE: &str = "quant_state.bitsandbytes__nf4";
/// Largest quant-state JSON accepted.
const MAX_QUANT_STATE_BYTES: u64 = 64 << 10;

/// `quantization_config` of a bitsandbytes 4-bit NF4 folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nf4Config {
    /// `bnb_4bit_use_double_quant`.
    pub double_quant: bool,
    /// `bnb_4bit_compute_dtype` (`float32`, `float16` or `bfloat16`).
    pub compute_dtype: String,
}

/// The values of an NF4 weight as bitsandbytes' `dequantize_4bit` gives them: `code * absmax` in f32,
/// then rounded to the weight's original `dtype`.
#[must_use]
pub fn dequantize_as(q: &Nf4Tensor, dtype: DType) -> Vec<f32> {
    let values = q.dequantize();
    if dtype == DType::F32 {
        return values;
    }
    let rounded = pesc_tensor::from_f32(dtype, &values).and_then(|b| pesc_tensor::to_f32(dtype, &b));
    rounded.unwrap_or(values)
}

/// One NF4 weight, as its quant state describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Info {
    /// The original shape.
    pub shape: Vec<u64>,
    /// The original dtype (`dtype` of the quant state).
    pub dtype: DType,
    /// Elements per absmax block.
    pub blocksize: usize,
    /// `nested_offset`, when the absmax is double-quantized.
    pub offset: Option<f32>,
}

impl Nf4Info {
    /// Elements of the original tensor.
    #[must_use]
    pub fn numel(&self) -> u64 {
        pesc_tensor::numel(&self.shape).unwrap_or(0)
    }
}

fn dtype_of_name(s: &str) -> Option<DType> {
    match s {
        "float32" => Some(DType::F32),
        "float16" => Some(DType::F16),
        "bfloat16" => Some(DType::BF16),
        _ => None,
    }
}

impl Nf4Config {
    /// Reads `quantization_config` from a config; `None` when there is none.
    pub(crate) fn parse(path: &Path, raw: &Map<String, Value>) -> Result<Option<Self>, HfError> {
        let err = |key: &str, problem: String| HfError::Config { path: path.into(), key: format!("quantization_config.{key}"), problem };
        let q = match raw.get("quantization_config") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Object(q)) => q,
            Some(v) => {
                return Err(HfError::Config {
                    path: path.into(),
                    key: "quantization_config".into(),
                    problem: format!("must be an object, found {v}"),
                })
            }
        };
        let text = |key: &str| -> Result<Option<&str>, HfError> {
            match q.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(v) => Err(err(key, format!("must be a string, found {v}"))),
            }
        };
        let flag = |key: &str| -> Result<bool, HfError> {
            match q.get(key) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(v) => Err(err(key, format!("must be true or false, found {v}"))),
            }
        };
        match text("quant_method")? {
            Some("bitsandbytes") => {}
            other => {
                return Err(err(
                    "quant_method",
                    format!("is {other:?}; this tool reads only bitsandbytes NF4 folders (`quantize --to nf4`)"),
                ))
            }
        }
        if !flag("load_in_4bit")? || flag("load_in_8bit")? {
            return Err(err("load_in_4bit", "must be true (8-bit bitsandbytes folders are not supported)".into()));
        }
        if text("bnb_4bit_quant_type")? != Some("nf4") {
            return Err(err("bnb_4bit_quant_type", format!("is {:?}; only \"nf4\" is supported", text("bnb_4bit_quant_type")?)));
        }
        if let Some(s) = text("bnb_4bit_quant_storage")? {
            if s != "uint8" {
                return Err(err("bnb_4bit_quant_storage", format!("is \"{s}\"; only \"uint8\" is supported")));
            }
        }
        let compute_dtype = text("bnb_4bit_compute_dtype")?.unwrap_or("float32").to_owned();
        if dtype_of_name(&compute_dtype).is_none() {
            return Err(err("bnb_4bit_compute_dtype", format!("is \"{compute_dtype}\"; expected float32, float16 or bfloat16")));
        }
        Ok(Some(Nf4Config { double_quant: flag("bnb_4bit_use_double_quant")?, compute_dtype }))
    }
}

/// The pieces stored beside `P.weight`, for a weight with or without double quantization.
pub(crate) fn pieces(double_quant: bool) -> &'static [&'static str] {
    if double_quant {
        &["absmax", "quant_map", "nested_absmax", "nested_quant_map", QUANT_STATE]
    } else {
        &["absmax", "quant_map", QUANT_STATE]
    }
}

/// Checks the NF4 weight `name`, implied by the config to have `shape`.
pub(crate) fn check_weight(dir: &Path, w: &Checkpoint, cfg: &Nf4Config, name: &str, shape: &[u64]) -> Result<Nf4Info, HfError> {
    let file = |t: &str| w.file_of(t).map_or_else(|| dir.to_path_buf(), Path::to_path_buf);
    let bad = |field: &str, problem: String| HfError::Nf4 {
        path: file(&format!("{name}.{QUANT_STATE}")),
        tensor: name.to_owned(),
        field: field.to_owned(),
        problem,
    };
    let info = parse_state(w, name, &bad)?;
    if info.shape != shape {
        return Err(bad("quant_state.shape", format!("is {} but config.json implies {}", shape_str(&info.shape), shape_str(shape))));
    }
    let dq = info.offset.is_some();
    if dq != cfg.double_quant {
        return Err(bad(
            "quant_state",
            format!(
                "{} double quantization but config.json has bnb_4bit_use_double_quant {}",
                if dq { "uses" } else { "lacks" },
                cfg.double_quant
            ),
        ));
    }
    let numel = info.numel();
    let blocks = numel.div_ceil(info.blocksize as u64);
    let piece = |field: &str, dtype: DType, want: Vec<u64>| -> Result<(), HfError> {
        let t_name = if field == "weight" { name.to_owned() } else { format!("{name}.{field}") };
        let Some(t) = w.get(&t_name) else {
            return Err(HfError::Nf4 {
                path: dir.to_path_buf(),
                tensor: name.to_owned(),
                field: field.into(),
                problem: format!("is missing (`{t_name}`)"),
            });
        };
        if t.dtype != dtype || t.shape != want {
            return Err(HfError::Nf4 {
                path: file(&t_name),
                tensor: name.to_owned(),
                field: field.into(),
                problem: format!(
                    "is {} {} but shape {} with blocksize {} needs {dtype} {}",
                    t.dtype,
                    shape_str(&t.shape),
                    shape_str(shape),
                    info.blocksize,
                    shape_str(&want)
                ),
            });
        }
        Ok(())
    };
    piece("weight", DType::U8, vec![numel.div_ceil(2), 1])?;
    piece("absmax", if dq { DType::U8 } else { DType::F32 }, vec![blocks])?;
    piece("quant_map", DType::F32, vec![16])?;
    let map = f32s(&w.read(&format!("{name}.quant_map"))?);
    if map.iter().zip(NF4_CODE).any(|(a, b)| a.to_bits() != b.to_bits()) {
        return Err(HfError::Nf4 {
            path: file(&format!("{name}.quant_map")),
            tensor: name.to_owned(),
            field: "quant_map".into(),
            problem: "is not the NF4 codebook (bitsandbytes ignores it and decodes with the codebook)".into(),
        });
    }
    if dq {
        piece("nested_absmax", DType::F32, vec![blocks.div_ceil(NESTED_BLOCKSIZE as u64)])?;
        piece("nested_quant_map", DType::F32, vec![256])?;
    } else {
        for extra in ["nested_absmax", "nested_quant_map"] {
            if w.get(&format!("{name}.{extra}")).is_some() {
                return Err(bad(extra, "is present but the quant state has no double quantization".into()));
            }
        }
    }
    Ok(info)
}

fn parse_state(w: &Checkpoint, name: &str, bad: &dyn Fn(&str, String) -> HfError) -> Result<Nf4Info, HfError> {
    let state_name = format!("{name}.{QUANT_STATE}");
    let Some(t) = w.get(&state_name) else { return Err(bad("quant_state", format!("is missing (`{state_name}`)"))) };
    if t.dtype != DType::U8 || t.shape.len() != 1 || t.nbytes > MAX_QUANT_STATE_BYTES {
        return Err(bad(
            "quant_state",
            format!("must be 1-D U8 JSON of at most {MAX_QUANT_STATE_BYTES} bytes, found {} {}", t.dtype, shape_str(&t.shape)),
        ));
    }
    let bytes = w.read(&state_name)?;
    let json = pesc_io::parse_strict(&bytes).map_err(|e| bad("quant_state", format!("is not valid JSON: {e}")))?;
    let Value::Object(s) = json else { return Err(bad("quant_state", "is not a JSON object".into())) };
    let dq = s.contains_key("nested_offset") || s.contains_key("nested_blocksize") || s.contains_key("nested_dtype");
    let allowed: &[&str] = if dq {
        &["quant_type", "blocksize", "dtype", "shape", "nested_blocksize", "nested_dtype", "nested_offset"]
    } else {
        &["quant_type", "blocksize", "dtype", "shape"]
    };
    if let Some(k) = s.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(bad(&format!("quant_state.{k}"), "is not a bitsandbytes quant-state key".into()));
    }
    if let Some(k) = allowed.iter().find(|k| !s.contains_key(**k)) {
        return Err(bad(&format!("quant_state.{k}"), "is missing".into()));
    }
    if s["quant_type"] != "nf4" {
        return Err(bad("quant_state.quant_type", format!("is {}; only \"nf4\" is supported", s["quant_type"])));
    }
    let blocksize = s["blocksize"].as_u64().and_then(|b| usize::try_from(b).ok()).filter(|b| BLOCKSIZES.contains(b));
    let Some(blocksize) = blocksize else {
        return Err(bad("quant_state.blocksize", format!("is {}; must be a power of two from 32 to 4096", s["blocksize"])));
    };
    let dtype = s["dtype"].as_str().and_then(dtype_of_name);
    let Some(dtype) = dtype else {
        return Err(bad("quant_state.dtype", format!("is {}; expected \"float32\", \"float16\" or \"bfloat16\"", s["dtype"])));
    };
    let shape: Option<Vec<u64>> = s["shape"].as_array().and_then(|a| a.iter().map(Value::as_u64).collect());
    let Some(shape) = shape.filter(|sh| !sh.is_empty() && pesc_tensor::numel(sh).is_some_and(|n| n > 0)) else {
        return Err(bad("quant_state.shape", format!("is {}; expected a list of positive integers", s["shape"])));
    };
    let offset = if dq {
        if s["nested_blocksize"].as_u64() != Some(NESTED_BLOCKSIZE as u64) {
            return Err(bad("quant_state.nested_blocksize", format!("is {}; bitsandbytes uses 256", s["nested_blocksize"])));
        }
        if s["nested_dtype"] != "float32" {
            return Err(bad("quant_state.nested_dtype", format!("is {}; expected \"float32\"", s["nested_dtype"])));
        }
        // bitsandbytes reads the offset back as a float32 tensor
        #[allow(clippy::cast_possible_truncation)]
        let offset = s["nested_offset"].as_f64().map(|o| o as f32).filter(|o| o.is_finite());
        let Some(offset) = offset else {
            return Err(bad("quant_state.nested_offset", format!("is {}; expected a finite number", s["nested_offset"])));
        };
        Some(offset)
    } else {
        None
    };
    Ok(Nf4Info { shape, dtype, blocksize, offset })
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// Reads and checks the stored NF4 tensor `name`.
pub(crate) fn read(w: &Checkpoint, dir: &Path, name: &str, info: &Nf4Info) -> Result<Nf4Tensor, HfError> {
    let path: PathBuf = w.file_of(name).map_or_else(|| dir.to_path_buf(), Path::to_path_buf);
    let piece = |p: &str| w.read(&format!("{name}.{p}"));
    let absmax = match info.offset {
        None => Absmax::Plain(f32s(&piece("absmax")?)),
        Some(offset) => Absmax::Double(DoubleQuant {
            codes: piece("absmax")?,
            offset,
            nested_absmax: f32s(&piece("nested_absmax")?),
            nested_quant_map: f32s(&piece("nested_quant_map")?),
        }),
    };
    let numel = usize::try_from(info.numel()).map_err(|_| HfError::Nf4 {
        path: path.clone(),
        tensor: name.to_owned(),
        field: "quant_state.shape".into(),
        problem: "is too large for this machine".into(),
    })?;
    Nf4Tensor::from_parts(numel, info.blocksize, w.read(name)?, absmax).map_err(|e| HfError::Nf4 {
        path,
        tensor: name.to_owned(),
        field: "values".into(),
        problem: e.to_string(),
    })
}

// === writing ===

/// The dtype name transformers records for `model`'s weights: config.json's
/// `dtype` / `torch_dtype` when it is a float type, else the embedding's.
fn model_dtype(model: &Model) -> &'static str {
    match model.config.dtype.as_deref() {
        Some("float32") => "float32",
        Some("float16") => "float16",
        Some("bfloat16") => "bfloat16",
        _ => StoreDType::torch_name(model.weights.get("model.embed_tokens.weight").map_or(DType::F32, |t| t.dtype)),
    }
}

/// `config.json` of the NF4 folder of `model`: its own, plus
/// `quantization_config` with the keys and order transformers 5 writes for
/// bitsandbytes 4-bit, placed where transformers' sorted keys put it.
#[must_use]
pub fn nf4_config(model: &Model, double_quant: bool) -> Map<String, Value> {
    // PESC routers and adapters stay in float: bitsandbytes must not replace them (transformers matches by name).
    let skip = match model.config.moe {
        crate::Moe::Pesc(_) => serde_json::json!(["lm_head", "moe_adapter"]),
        _ => Value::Null,
    };
    let q = serde_json::json!({
        "_load_in_4bit": true,
        "_load_in_8bit": false,
        "bnb_4bit_compute_dtype": model_dtype(model),
        "bnb_4bit_quant_storage": "uint8",
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": double_quant,
        "llm_int8_enable_fp32_cpu_offload": false,
        "llm_int8_has_fp16_weight": false,
        "llm_int8_skip_modules": skip,
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
        StoreDType::torch_name(dtype),
        dims.join(", ")
    );
    if let Absmax::Double(d) = t.absmax() {
        s.push_str(&format!(
            ", \"nested_blocksize\": {}, \"nested_dtype\": \"float32\", \"nested_offset\": {}",
            NESTED_BLOCKSIZE,
            py_float(f64::from(d.offset))
        ));
    }
    s.push('}');
    s.into_bytes()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// One tensor bitsandbytes stores for an NF4 weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Its name (`P.weight`, `P.weight.absmax`, ...).
    pub name: String,
    /// Its dtype.
    pub dtype: DType,
    /// Its shape.
    pub shape: Vec<u64>,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// The tensors stored for the NF4 weight `name` quantized as `q` (original
/// `dtype` and `shape`): the packed codes (U8 `[(numel+1)/2, 1]`), `absmax`,
/// `quant_map`, with double quantization `nested_absmax` and
/// `nested_quant_map`, and the quant-state JSON.
#[must_use]
pub fn stored_pieces(name: &str, q: &Nf4Tensor, dtype: DType, shape: &[u64]) -> Vec<Piece> {
    let piece = |suffix: &str, dtype: DType, shape: Vec<u64>, bytes: Vec<u8>| Piece {
        name: if suffix.is_empty() { name.to_owned() } else { format!("{name}.{suffix}") },
        dtype,
        shape,
        bytes,
    };
    let numel = pesc_tensor::numel(shape).unwrap_or(0);
    let blocks = numel.div_ceil(q.blocksize() as u64);
    let mut out = vec![piece("", DType::U8, vec![numel.div_ceil(2), 1], q.packed().to_vec())];
    match q.absmax() {
        Absmax::Plain(a) => {
            out.push(piece("absmax", DType::F32, vec![blocks], f32_bytes(a)));
            out.push(piece("quant_map", DType::F32, vec![16], f32_bytes(&NF4_CODE)));
        }
        Absmax::Double(d) => {
            out.push(piece("absmax", DType::U8, vec![blocks], d.codes.clone()));
            out.push(piece("quant_map", DType::F32, vec![16], f32_bytes(&NF4_CODE)));
            out.push(piece("nested_absmax", DType::F32, vec![blocks.div_ceil(NESTED_BLOCKSIZE as u64)], f32_bytes(&d.nested_absmax)));
            out.push(piece("nested_quant_map", DType::F32, vec![256], f32_bytes(&d.nested_quant_map)));
        }
    }
    let json = quant_state_json(q, dtype, shape);
    out.push(piece(QUANT_STATE, DType::U8, vec![json.len() as u64], json));
    out
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
