//! NF4 folders: the layout transformers' `save_pretrained` writes for a
//! bitsandbytes 4-bit model, validated piece by piece.
//!
//! A quantized weight `P.weight` is stored as the packed codes (U8
//! `[(numel+1)/2, 1]`) plus `P.weight.absmax`, `P.weight.quant_map`,
//! (double quantization) `P.weight.nested_absmax` and
//! `P.weight.nested_quant_map`, and `P.weight.quant_state.bitsandbytes__nf4`,
//! the UTF-8 JSON of its quant state (shape, dtype, blocksize, offset).

use crate::model::ArchError;
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
    pub(crate) fn parse(path: &Path, raw: &Map<String, Value>) -> Result<Option<Self>, ArchError> {
        let err = |key: &str, problem: String| ArchError::Config { path: path.into(), key: format!("quantization_config.{key}"), problem };
        let q = match raw.get("quantization_config") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Object(q)) => q,
            Some(v) => {
                return Err(ArchError::Config {
                    path: path.into(),
                    key: "quantization_config".into(),
                    problem: format!("must be an object, found {v}"),
                })
            }
        };
        let text = |key: &str| -> Result<Option<&str>, ArchError> {
            match q.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(v) => Err(err(key, format!("must be a string, found {v}"))),
            }
        };
        let flag = |key: &str| -> Result<bool, ArchError> {
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
pub(crate) fn check_weight(dir: &Path, w: &Checkpoint, cfg: &Nf4Config, name: &str, shape: &[u64]) -> Result<Nf4Info, ArchError> {
    let file = |t: &str| w.file_of(t).map_or_else(|| dir.to_path_buf(), Path::to_path_buf);
    let bad = |field: &str, problem: String| ArchError::Nf4 {
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
    let piece = |field: &str, dtype: DType, want: Vec<u64>| -> Result<(), ArchError> {
        let t_name = if field == "weight" { name.to_owned() } else { format!("{name}.{field}") };
        let Some(t) = w.get(&t_name) else {
            return Err(ArchError::Nf4 {
                path: dir.to_path_buf(),
                tensor: name.to_owned(),
                field: field.into(),
                problem: format!("is missing (`{t_name}`)"),
            });
        };
        if t.dtype != dtype || t.shape != want {
            return Err(ArchError::Nf4 {
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
        return Err(ArchError::Nf4 {
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

fn parse_state(w: &Checkpoint, name: &str, bad: &dyn Fn(&str, String) -> ArchError) -> Result<Nf4Info, ArchError> {
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
pub(crate) fn read(w: &Checkpoint, dir: &Path, name: &str, info: &Nf4Info) -> Result<Nf4Tensor, ArchError> {
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
    let numel = usize::try_from(info.numel()).map_err(|_| ArchError::Nf4 {
        path: path.clone(),
        tensor: name.to_owned(),
        field: "quant_state.shape".into(),
        problem: "is too large for this machine".into(),
    })?;
    Nf4Tensor::from_parts(numel, info.blocksize, w.read(name)?, absmax).map_err(|e| ArchError::Nf4 {
        path,
        tensor: name.to_owned(),
        field: "values".into(),
        problem: e.to_string(),
    })
}
