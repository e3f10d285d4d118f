//! `merge-lora`: a PEFT LoRA adapter (and trained PESC tensors delivered
//! beside it) merged into a base model, tensor by tensor.
//!
//! Every check (names, shapes, ranks, targets, finite values) runs in
//! [`Merge::plan`], before anything is written; only a delta that overflows
//! is found while writing, and then the staged output is discarded.

use crate::CraftError;
use pesc_hf::output::{set_config_dtype, write_config};
use pesc_hf::peft::{LoraModule, PeftAdapter, Scaling, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use pesc_hf::Model;
use pesc_hf::{HfError, StoreDType};
use pesc_io::{write_weights, OutputDir, SafetensorsFile, TensorInfo, TensorSpec};
use pesc_quant::nf4::{self, Nf4Options};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The file of trained router and adapter tensors the reference
/// implementation saves beside the LoRA (`moe_model.bin`, pickled); its
/// safetensors form is read.
pub const MOE_TENSORS: &str = "moe_model.safetensors";
/// The merge report written into the output folder.
pub const REPORT_FILE: &str = "merge-report.json";

/// What the LoRA deltas are added to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Onto {
    /// The base weights as stored.
    Original,
    /// `dequant(NF4(W))` for every linear layer NF4 quantizes: what QLoRA trained against.
    DequantizedNf4,
}

impl Onto {
    /// The `--onto` spelling.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Onto::Original => "original",
            Onto::DequantizedNf4 => "dequantized-nf4",
        }
    }
}

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeRequest {
    /// `--onto`, or `None` for the default rule.
    pub onto: Option<Onto>,
    /// `--blocksize`, or `None` for 64.
    pub blocksize: Option<usize>,
    /// `--no-double-quant`.
    pub no_double_quant: bool,
    /// Stored dtype of the output.
    pub dtype: StoreDType,
}

/// One LoRA delta to add.
#[derive(Debug, Clone)]
pub struct LoraTarget {
    /// The module (base tensor name without `.weight`).
    pub module: String,
    /// `lora_A.weight`.
    pub a: TensorInfo,
    /// `lora_B.weight`.
    pub b: TensorInfo,
    /// DoRA magnitude vector.
    pub magnitude: Option<TensorInfo>,
    /// Rank, alpha and scale.
    pub scaling: Scaling,
}

/// Where a replacing tensor comes from.
#[derive(Debug, Clone)]
enum Source {
    /// `adapter_model.safetensors` (modules_to_save, biases).
    Adapter(TensorInfo),
    /// An extra safetensors file (index into `Merge::extras`).
    Extra(usize, TensorInfo),
}

/// A checked merge, ready to write.
#[derive(Debug)]
pub struct Merge {
    /// The adapter.
    pub adapter: PeftAdapter,
    /// Extra safetensors files of trained tensors.
    pub extras: Vec<SafetensorsFile>,
    /// What the deltas are added to, and why.
    pub onto: Onto,
    /// Why `onto` was chosen.
    pub onto_reason: String,
    /// NF4 settings (used for `dequantized-nf4` and the report).
    pub nf4: Nf4Options,
    /// LoRA deltas by base tensor name.
    pub loras: BTreeMap<String, LoraTarget>,
    replaced: BTreeMap<String, Source>,
    /// The weights NF4 quantizes ([`crate::nf4_targets`]).
    quantized: BTreeSet<String>,
    /// Stored dtype.
    pub dtype: StoreDType,
    /// Things the user should know (printed as warnings).
    pub warnings: Vec<String>,
}

/// Size of one LoRA delta against the NF4 rounding error of its weight.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportRow {
    /// The weight.
    pub tensor: String,
    /// Its layer, if it has one.
    pub layer: Option<u64>,
    /// Element count.
    pub numel: u64,
    /// Rank, alpha, scale.
    pub scaling: Scaling,
    /// RMS of the delta (`sqrt(sum d^2 / n)`).
    pub delta_rms: f64,
    /// RMS of `W - dequant(NF4(W))`, for weights NF4 quantizes.
    pub nf4_error_rms: Option<f64>,
}

/// The adapter folder's files, and the checkpoint folder above it when the
/// adapter sits in the reference implementation's `adapter_model/`.
fn adapter_dirs(adapter: &Path) -> Result<(PathBuf, Option<PathBuf>), CraftError> {
    if adapter.join(ADAPTER_CONFIG).is_file() {
        return Ok((adapter.into(), None));
    }
    let nested = adapter.join("adapter_model");
    if nested.join(ADAPTER_CONFIG).is_file() {
        return Ok((nested, Some(adapter.into())));
    }
    Err(HfError::NotAdapterFolder { path: adapter.into() }.into())
}

/// Extra safetensors files in `dirs`: every `.safetensors` but the LoRA's own.
/// The reference implementation's pickled `moe_model.bin` is refused with a hint.
fn extra_files(dirs: &[&Path]) -> Result<Vec<SafetensorsFile>, CraftError> {
    let mut out = Vec::new();
    for dir in dirs {
        let pickled = dir.join("moe_model.bin");
        if pickled.is_file() && !dir.join(MOE_TENSORS).is_file() {
            return Err(HfError::PickledFile {
                path: pickled,
                what: " (the reference implementation's trained routers and adapters)",
                hint: format!("in an isolated sandbox run `python -c \"import torch; from safetensors.torch import save_file; save_file(torch.load('moe_model.bin', weights_only=True), '{MOE_TENSORS}')\"` beside it"),
            }
            .into());
        }
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| pesc_io::Error::Io { path: dir.to_path_buf(), source: e })?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors") && p.file_name().is_some_and(|n| n != ADAPTER_WEIGHTS))
            .collect();
        names.sort();
        for p in names {
            pesc_io::confined(dir, &p)?;
            out.push(SafetensorsFile::open(&p)?);
        }
    }
    Ok(out)
}

/// The base tensor an extra file's tensor `name` replaces: PEFT's prefix
/// stripped, and `experts.{j}.` / `experts.expert_{j}.` mapped to the base's naming.
fn base_name(base: &Model, name: &str) -> String {
    let name = name.strip_prefix("base_model.model.").unwrap_or(name);
    if base.weights.get(name).is_some() {
        return name.to_owned();
    }
    let mut parts: Vec<String> = name.split('.').map(str::to_owned).collect();
    for i in 1..parts.len() {
        if parts[i - 1] == "experts" && !parts[i].is_empty() && parts[i].bytes().all(|b| b.is_ascii_digit()) {
            parts[i] = format!("expert_{}", parts[i]);
        }
    }
    base.stored_name(&parts.join("."))
}

/// Checks every element of tensor `t` of `f` is finite.
fn file_finite(f: &SafetensorsFile, t: &TensorInfo) -> Result<(), CraftError> {
    let mut bad = false;
    f.for_each_chunk(t, 4 << 20, &mut |chunk| {
        bad |= pesc_tensor::to_f32(t.dtype, chunk).is_none_or(|v| v.iter().any(|x| !x.is_finite()));
        Ok(())
    })?;
    if bad {
        return Err(CraftError::NonFinite { path: f.path().into(), tensor: t.name.clone() });
    }
    Ok(())
}

/// Evidence that the adapter was trained on a 4-bit base: a
/// `quantization_config` in `adapter_config.json` (as our trainer writes),
/// the bitsandbytes section PEFT writes into the adapter's `README.md`, or an
/// NF4 base. Returns the evidence and the recorded double-quant setting.
fn four_bit_evidence(adapter: &PeftAdapter, base: &Model) -> Result<Option<(String, Option<bool>)>, CraftError> {
    let check_type = |qt: Option<&str>, from: &str| match qt {
        Some(t) if !t.eq_ignore_ascii_case("nf4") => Err(CraftError::FourBitBase { evidence: from.to_owned(), quant_type: t.to_owned() }),
        _ => Ok(()),
    };
    if let Some(q) = &adapter.config.quantization {
        if q.get("load_in_4bit").and_then(Value::as_bool) == Some(true) {
            let from = format!("`{}` field `quantization_config`", adapter.config.path.display());
            check_type(q.get("bnb_4bit_quant_type").and_then(Value::as_str), &from)?;
            return Ok(Some((format!("{from} has load_in_4bit true"), q.get("bnb_4bit_use_double_quant").and_then(Value::as_bool))));
        }
    }
    let card = adapter.dir.join("README.md");
    if let Ok(text) = pesc_io::read_capped(&card, 1 << 20) {
        let text = String::from_utf8_lossy(&text);
        let mut lines = text.lines().skip_while(|l| !l.contains("`bitsandbytes` quantization config was used during training"));
        if lines.next().is_some() {
            let fields: BTreeMap<&str, &str> = lines.map_while(|l| l.strip_prefix("- ")).filter_map(|l| l.split_once(": ")).collect();
            if fields.get("load_in_4bit") == Some(&"True") {
                let from = format!("`{}` (PEFT's record of the bitsandbytes config)", card.display());
                check_type(fields.get("bnb_4bit_quant_type").copied(), &from)?;
                return Ok(Some((format!("{from} has load_in_4bit: True"), fields.get("bnb_4bit_use_double_quant").map(|v| *v == "True"))));
            }
        }
    }
    if let Some(q) = base.config.raw.get("quantization_config").and_then(Value::as_object) {
        if q.get("load_in_4bit").and_then(Value::as_bool) == Some(true) {
            return Ok(Some(("the base is a 4-bit folder".into(), q.get("bnb_4bit_use_double_quant").and_then(Value::as_bool))));
        }
    }
    Ok(None)
}

/// Every tensor of `base` by name and shape, NF4 weights with their original
/// shape and without their quantization state tensors.
fn logical_shapes(base: &Model) -> BTreeMap<String, Vec<u64>> {
    base.weights
        .tensors()
        .filter(|t| !is_nf4_state(base, &t.name))
        .map(|t| (t.name.clone(), base.shape_of(&t.name).unwrap_or_else(|| t.shape.clone())))
        .collect()
}

/// Whether `name` is one of the tensors that store an NF4 weight's quantization state.
fn is_nf4_state(base: &Model, name: &str) -> bool {
    base.nf4_weights().any(|(w, _)| name.strip_prefix(w).is_some_and(|rest| rest.starts_with('.')))
}

impl Merge {
    /// Opens the adapter in `adapter_dir` and checks it, and every extra
    /// tensor file beside it, against `base`.
    pub fn plan(base: &Model, adapter_dir: &Path, req: MergeRequest) -> Result<Self, CraftError> {
        let (lora_dir, checkpoint_dir) = adapter_dirs(adapter_dir)?;
        let adapter = PeftAdapter::open(&lora_dir)?;
        let cfg = &adapter.config;
        let weights_path = adapter.weights.path().to_path_buf();
        let mut warnings = Vec::new();
        let mut dirs: Vec<&Path> = vec![&lora_dir];
        if let Some(c) = &checkpoint_dir {
            dirs.push(c);
        }
        let extras = extra_files(&dirs)?;

        // The default --onto and the NF4 settings.
        let evidence = four_bit_evidence(&adapter, base)?;
        let (onto, onto_reason) = match (req.onto, &evidence) {
            (Some(o), _) => (o, "--onto".to_owned()),
            (None, Some((why, _))) => (Onto::DequantizedNf4, format!("trained on a 4-bit base: {why}")),
            (None, None) => (Onto::Original, "no record of a 4-bit base in the adapter".to_owned()),
        };
        let nf4_base = base.quantization.is_some();
        if nf4_base && onto == Onto::Original {
            return Err(CraftError::OriginalOfNf4 { path: base.dir.clone() });
        }
        if nf4_base && (req.blocksize.is_some() || req.no_double_quant) {
            warnings.push(
                "the base is an NF4 folder: its weights are read as stored, so --blocksize and --no-double-quant do not apply".to_owned(),
            );
        }
        let recorded_dq = evidence.as_ref().and_then(|(_, dq)| *dq);
        let nf4 = Nf4Options { blocksize: req.blocksize.unwrap_or(64), double_quant: !req.no_double_quant && recorded_dq.unwrap_or(true) };
        nf4.check().map_err(|e| CraftError::Flag { flag: "--blocksize", problem: e.to_string() })?;

        // The base's modules: every 2-D `.weight` (NF4 weights by their original shape).
        let shapes = logical_shapes(base);
        let modules: BTreeMap<&str, &[u64]> =
            shapes.iter().filter(|(_, s)| s.len() == 2).filter_map(|(n, s)| n.strip_suffix(".weight").map(|m| (m, s.as_slice()))).collect();
        let is_linear = |m: &str| m != "lm_head" && !m.ends_with("embed_tokens");
        let selected: Vec<&str> = modules.keys().copied().filter(|m| cfg.targets(m, is_linear(m))).collect();
        if selected.is_empty() {
            return Err(CraftError::NoTargets {
                path: cfg.path.clone(),
                base: base.dir.clone(),
                example: (*modules.keys().find(|m| m.contains("q_proj")).unwrap_or(&"model.layers.0.self_attn.q_proj")).to_owned(),
            });
        }
        if cfg.fan_in_fan_out {
            warnings.push(format!(
                "`{}` sets fan_in_fan_out, but every target of this model is a linear layer stored [out, in]; PEFT resets it to false for such layers, and so does merge-lora",
                cfg.path.display()
            ));
        }

        let h = base.config.hidden_size;
        let mut loras = BTreeMap::new();
        for (module, lm) in &adapter.modules {
            let target =
                Self::check_module(base, &adapter, &weights_path, module, lm, modules.get(module.as_str()).copied(), h, &is_linear)?;
            loras.insert(format!("{module}.weight"), target);
        }
        let missing: Vec<&&str> = selected.iter().filter(|m| !adapter.modules.contains_key(**m)).collect();
        if let Some(first) = missing.first() {
            warnings.push(format!(
                "`target_modules` also selects {} module(s) the adapter holds no LoRA weights for (first: `{first}`); they are left unchanged, as PEFT leaves them",
                missing.len()
            ));
        }

        // Whole tensors: modules_to_save and biases from the adapter, then the extra files.
        let mut replaced: BTreeMap<String, Source> = BTreeMap::new();
        let mut place = |name: String, src: Source, t: &TensorInfo, file: &Path| -> Result<(), CraftError> {
            let bad = |problem: String| CraftError::from(HfError::AdapterTensor { path: file.into(), tensor: t.name.clone(), problem });
            let Some(b_shape) = shapes.get(&name) else {
                return Err(bad(format!("has no counterpart `{name}` in `{}`", base.dir.display())));
            };
            if *b_shape != t.shape {
                return Err(bad(format!(
                    "has shape {} but `{name}` in the base is {}",
                    pesc_tensor::shape_str(&t.shape),
                    pesc_tensor::shape_str(b_shape)
                )));
            }
            if !t.dtype.is_compute_float() {
                return Err(bad(format!("has dtype {}; expected F32, F16 or BF16", t.dtype)));
            }
            if loras.contains_key(&name) && matches!(src, Source::Adapter(_)) {
                return Err(bad("is saved whole and also has LoRA weights".into()));
            }
            if replaced.insert(name.clone(), src).is_some() {
                return Err(bad(format!("replaces `{name}`, which another file already replaces")));
            }
            Ok(())
        };
        for (name, t) in &adapter.whole {
            let module = name.rsplit_once('.').map_or(name.as_str(), |(m, _)| m);
            let bias_ok = cfg.bias != "none" && name.ends_with(".bias");
            if !cfg.saved_whole(module) && !bias_ok {
                return Err(HfError::AdapterTensor {
                    path: weights_path.clone(),
                    tensor: t.name.clone(),
                    problem: format!("is neither a LoRA weight nor part of `modules_to_save` ({:?})", cfg.modules_to_save),
                }
                .into());
            }
            file_finite(&adapter.weights, t)?;
            place(name.clone(), Source::Adapter(t.clone()), t, &weights_path)?;
        }
        for (fi, f) in extras.iter().enumerate() {
            if f.tensors().is_empty() {
                return Err(CraftError::Empty { path: f.path().into(), what: "tensors" });
            }
            for t in f.tensors() {
                file_finite(f, t)?;
                place(base_name(base, &t.name), Source::Extra(fi, t.clone()), t, f.path())?;
            }
        }
        if loras.is_empty() && replaced.is_empty() {
            return Err(CraftError::Empty { path: weights_path.clone(), what: "LoRA weights" });
        }
        if let (Some(a), Some(b)) = (&cfg.base_model, pesc_hf::card::hub_id(base)) {
            if a != &b {
                warnings.push(format!("the adapter names base model `{a}`, but the base folder says `{b}`"));
            }
        }
        Ok(Merge {
            adapter,
            extras,
            onto,
            onto_reason,
            nf4,
            loras,
            replaced,
            quantized: crate::nf4_targets(base).into_iter().collect(),
            dtype: req.dtype,
            warnings,
        })
    }

    /// Checks one module's LoRA tensors against the config and the base.
    #[allow(clippy::too_many_arguments)]
    fn check_module(
        base: &Model,
        adapter: &PeftAdapter,
        file: &Path,
        module: &str,
        lm: &LoraModule,
        weight: Option<&[u64]>,
        hidden: u64,
        is_linear: &dyn Fn(&str) -> bool,
    ) -> Result<LoraTarget, CraftError> {
        let cfg = &adapter.config;
        let bad = |problem: String| CraftError::Module { path: file.into(), module: module.into(), problem };
        let (Some(a), Some(b)) = (&lm.a, &lm.b) else {
            let which = if lm.a.is_none() { "lora_A.weight" } else { "lora_B.weight" };
            return Err(bad(format!("`{which}` is missing")));
        };
        let Some(w) = weight else {
            return Err(bad(format!("lands on no tensor of `{}` (there is no 2-D `{module}.weight`)", base.dir.display())));
        };
        if !cfg.targets(module, is_linear(module)) {
            return Err(bad(
                "has LoRA weights but `target_modules` (with exclude_modules, layers_to_transform, modules_to_save) does not select it"
                    .into(),
            ));
        }
        let scaling = cfg.scaling(module);
        let (out, inp) = (w[0], w[1]);
        let shape = pesc_tensor::shape_str;
        if a.shape.len() != 2 || b.shape.len() != 2 {
            return Err(bad(format!("lora_A {} and lora_B {} must both be 2-D", shape(&a.shape), shape(&b.shape))));
        }
        if a.shape[0] != scaling.r || b.shape[1] != scaling.r {
            let from = scaling.rank_key.as_ref().map_or("`r`".to_owned(), |k| format!("rank_pattern `{k}`"));
            return Err(bad(format!(
                "rank mismatch: lora_A is {}, lora_B is {}, but the config gives r = {} ({from})",
                shape(&a.shape),
                shape(&b.shape),
                scaling.r
            )));
        }
        if a.shape[1] != inp || b.shape[0] != out {
            return Err(bad(format!(
                "shape mismatch: lora_B @ lora_A is [{}, {}] but `{module}.weight` in the base is {}; was the adapter made for another base? (the base's hidden_size is {hidden})",
                b.shape[0],
                a.shape[1],
                shape(w)
            )));
        }
        match (&lm.magnitude, cfg.use_dora) {
            (None, true) => return Err(bad("use_dora is set but `lora_magnitude_vector` is missing".into())),
            (Some(_), false) => return Err(bad("has a `lora_magnitude_vector` but use_dora is not set".into())),
            (Some(m), true) if m.shape != [out] => {
                return Err(bad(format!("lora_magnitude_vector is {} but the module has {out} outputs", shape(&m.shape))))
            }
            _ => {}
        }
        for t in [Some(a), Some(b), lm.magnitude.as_ref()].into_iter().flatten() {
            file_finite(&adapter.weights, t)?;
        }
        Ok(LoraTarget { module: module.into(), a: a.clone(), b: b.clone(), magnitude: lm.magnitude.clone(), scaling })
    }

    /// Base tensors whose values change.
    #[must_use]
    pub fn changes(&self, name: &str) -> bool {
        self.loras.contains_key(name)
            || self.replaced.contains_key(name)
            || (self.onto == Onto::DequantizedNf4 && self.quantized.contains(name))
    }

    /// Names of the base tensors replaced whole.
    pub fn replaced(&self) -> impl Iterator<Item = &str> {
        self.replaced.keys().map(String::as_str)
    }

    /// The input files of the adapter side (for the manifest).
    #[must_use]
    pub fn input_files(&self) -> Vec<PathBuf> {
        let mut v = vec![self.adapter.config.path.clone(), self.adapter.weights.path().to_path_buf()];
        v.extend(self.extras.iter().map(|f| f.path().to_path_buf()));
        v
    }

    fn read_adapter(&self, t: &TensorInfo) -> Result<Vec<f32>, CraftError> {
        let bytes = self.adapter.weights.read(t)?;
        pesc_tensor::to_f32(t.dtype, &bytes).ok_or_else(|| CraftError::NotFloat { tensor: t.name.clone(), dtype: t.dtype })
    }

    /// The f32 values of base tensor `name` before any delta: the replacing tensor, or the base's.
    fn source_values(&self, base: &Model, name: &str) -> Result<Vec<f32>, CraftError> {
        let (dtype, bytes) = match self.replaced.get(name) {
            Some(Source::Adapter(t)) => (t.dtype, self.adapter.weights.read(t)?),
            Some(Source::Extra(i, t)) => (t.dtype, self.extras[*i].read(t)?),
            None => return Ok(base.read_f32(name)?),
        };
        pesc_tensor::to_f32(dtype, &bytes).ok_or_else(|| CraftError::NotFloat { tensor: name.into(), dtype })
    }

    /// The merged f32 values of `name`, and its report row when it has a LoRA.
    fn merged_values(&self, base: &Model, name: &str) -> Result<(Vec<f32>, Option<ReportRow>), CraftError> {
        let mut w = self.source_values(base, name)?;
        // An NF4 base's weights are dequant(NF4(W)) already, and W is unknown.
        let quantized = self.quantized.contains(name) && base.nf4(name).is_none();
        let lora = self.loras.get(name);
        let mut nf4_error_rms = None;
        if quantized && (self.onto == Onto::DequantizedNf4 || lora.is_some()) {
            let q = nf4::roundtrip(&w, self.nf4).map_err(|source| CraftError::Quantize { tensor: name.into(), source })?;
            nf4_error_rms = Some(rms(w.iter().zip(&q).map(|(a, b)| f64::from(a - b))));
            if self.onto == Onto::DequantizedNf4 {
                w = q;
            }
        }
        let row = match lora {
            None => None,
            Some(t) => {
                let a = self.read_adapter(&t.a)?;
                let b = self.read_adapter(&t.b)?;
                let (out, r, inp) = (to_usize(t.b.shape[0]), to_usize(t.scaling.r), to_usize(t.a.shape[1]));
                #[allow(clippy::cast_possible_truncation)]
                let delta = lora_delta(&a, &b, out, r, inp, t.scaling.scale as f32);
                let delta_rms = rms(delta.iter().map(|&d| f64::from(d)));
                for (x, d) in w.iter_mut().zip(&delta) {
                    *x += d;
                }
                if let Some(m) = &t.magnitude {
                    apply_dora(&mut w, &self.read_adapter(m)?, inp);
                }
                Some(ReportRow {
                    tensor: name.into(),
                    layer: layer_of(name),
                    numel: w.len() as u64,
                    scaling: t.scaling.clone(),
                    delta_rms,
                    nf4_error_rms,
                })
            }
        };
        if w.iter().any(|x| !x.is_finite()) {
            return Err(CraftError::MergeOverflow { tensor: name.into() });
        }
        Ok((w, row))
    }

    /// Writes the merged weights, `config.json` and the report into `out`;
    /// returns the report rows.
    pub fn write(
        &self,
        base: &Model,
        out: &mut OutputDir,
        shard_size: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Vec<ReportRow>, CraftError> {
        let specs: Vec<TensorSpec> = base
            .weights
            .tensors()
            .filter(|t| !t.name.ends_with(".rotary_emb.inv_freq") && !is_nf4_state(base, &t.name))
            .map(|t| match base.nf4(&t.name) {
                Some(info) => TensorSpec { name: t.name.clone(), dtype: self.dtype.of(info.dtype), shape: info.shape.clone() },
                None => TensorSpec { name: t.name.clone(), dtype: self.dtype.of(t.dtype), shape: t.shape.clone() },
            })
            .collect();
        let mut config = base.config.raw.clone();
        // The output is 16-bit whatever the base was.
        config.remove("quantization_config");
        if let StoreDType::To(d) = self.dtype {
            set_config_dtype(&mut config, d);
        }
        write_config(out, &config)?;
        let mut rows = Vec::new();
        write_weights::<CraftError>(
            out,
            specs,
            shard_size,
            &mut |spec, w| {
                if !self.changes(&spec.name) && base.nf4(&spec.name).is_none() {
                    return Ok(base.write_tensor(&spec.name, spec.dtype, w)?);
                }
                let (values, row) = self.merged_values(base, &spec.name)?;
                rows.extend(row);
                Ok(pesc_io::write_values(w, spec.dtype, &values)?)
            },
            progress,
        )?;
        rows.sort_by(|a, b| a.layer.cmp(&b.layer).then_with(|| a.tensor.cmp(&b.tensor)));
        let mut bytes = serde_json::to_vec_pretty(&self.report_json(&rows)).unwrap_or_default();
        bytes.push(b'\n');
        out.write_file(REPORT_FILE, &bytes)?;
        Ok(rows)
    }

    /// The `merge-report.json` document.
    #[must_use]
    pub fn report_json(&self, rows: &[ReportRow]) -> Value {
        let tensors: Vec<Value> = rows
            .iter()
            .map(|r| {
                let mut m = Map::new();
                m.insert("tensor".into(), json!(r.tensor));
                m.insert("layer".into(), json!(r.layer));
                m.insert("r".into(), json!(r.scaling.r));
                m.insert("alpha".into(), json!(r.scaling.alpha));
                m.insert("scaling".into(), json!(r.scaling.scale));
                m.insert("delta_rms".into(), json!(r.delta_rms));
                m.insert("nf4_error_rms".into(), json!(r.nf4_error_rms));
                m.insert("nf4_error_over_delta".into(), json!(r.ratio()));
                Value::Object(m)
            })
            .collect();
        json!({
            "onto": self.onto.name(),
            "onto_reason": self.onto_reason,
            "nf4": {"blocksize": self.nf4.blocksize, "double_quant": self.nf4.double_quant},
            "lora_tensors": rows.len(),
            "replaced_tensors": self.replaced.keys().collect::<Vec<_>>(),
            "tensors": tensors,
        })
    }
}

impl ReportRow {
    /// `nf4_error_rms / delta_rms`: above 1, NF4's rounding of the weight is
    /// larger than what the LoRA changes, and `--onto` matters.
    #[must_use]
    pub fn ratio(&self) -> Option<f64> {
        self.nf4_error_rms.filter(|_| self.delta_rms > 0.0).map(|q| q / self.delta_rms)
    }
}

/// `model.layers.{i}.` -> `i`.
fn layer_of(name: &str) -> Option<u64> {
    name.strip_prefix("model.layers.")?.split('.').next()?.parse().ok()
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Root mean square, accumulated in f64.
fn rms(values: impl Iterator<Item = f64>) -> f64 {
    let (mut s, mut n) = (0.0f64, 0u64);
    for v in values {
        s += v * v;
        n += 1;
    }
    #[allow(clippy::cast_precision_loss)]
    let n = n.max(1) as f64;
    (s / n).sqrt()
}

/// `(B @ A) * scale` in f32, `B`: `[out, r]`, `A`: `[r, inp]`, row-major.
/// Rows are split across threads; each element is summed over `k` in order,
/// so the result does not depend on the thread count.
#[must_use]
pub fn lora_delta(a: &[f32], b: &[f32], out: usize, r: usize, inp: usize, scale: f32) -> Vec<f32> {
    let mut delta = vec![0.0f32; out * inp];
    if inp == 0 {
        return delta;
    }
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get).min(out.max(1));
    let rows_per = out.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (ci, chunk) in delta.chunks_mut(rows_per * inp).enumerate() {
            s.spawn(move || {
                for (ri, row) in chunk.chunks_mut(inp).enumerate() {
                    let o = ci * rows_per + ri;
                    for k in 0..r {
                        let bk = b[o * r + k];
                        for (d, &x) in row.iter_mut().zip(&a[k * inp..(k + 1) * inp]) {
                            *d += bk * x;
                        }
                    }
                    for d in row.iter_mut() {
                        *d *= scale;
                    }
                }
            });
        }
    });
    delta
}

/// DoRA: each output row of `w` (already `W + delta`) rescaled to the
/// magnitude `m`: `w[o] *= m[o] / ||w[o]||`.
fn apply_dora(w: &mut [f32], m: &[f32], inp: usize) {
    for (row, &mo) in w.chunks_mut(inp).zip(m) {
        #[allow(clippy::cast_possible_truncation)]
        let norm = row.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt() as f32;
        let factor = mo / norm;
        for x in row.iter_mut() {
            *x *= factor;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_is_scaled_b_times_a_whatever_the_split() {
        // B [3, 2], A [2, 4]
        let b = [1.0, 2.0, 0.0, -1.0, 0.5, 0.5];
        let a = [1.0, 0.0, 2.0, -1.0, 0.0, 1.0, 1.0, 3.0];
        let d = lora_delta(&a, &b, 3, 2, 4, 2.0);
        assert_eq!(d, vec![2.0, 4.0, 8.0, 10.0, 0.0, -2.0, -2.0, -6.0, 1.0, 1.0, 3.0, 2.0]);
    }

    #[test]
    fn dora_rescales_rows_to_the_magnitude() {
        let mut w = vec![3.0, 4.0, 0.0, 2.0];
        apply_dora(&mut w, &[10.0, 1.0], 2);
        assert_eq!(w, vec![6.0, 8.0, 0.0, 1.0]);
    }
}
