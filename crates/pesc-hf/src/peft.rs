//! PEFT LoRA adapters: `adapter_config.json` (validated, with PEFT's rules for
//! `target_modules`, `exclude_modules`, `layers_to_transform`, `rank_pattern`
//! and `alpha_pattern`) and the tensors of `adapter_model.safetensors`,
//! grouped by the module they belong to.

use crate::HfError;
use fancy_regex::Regex;
use pesc_io::{SafetensorsFile, TensorInfo};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The adapter's config file.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The adapter's weights file.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The prefix PEFT puts before every module name on save.
const PEFT_PREFIX: &str = "base_model.model.";
/// Largest `adapter_config.json` read.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Config fields of LoRA variants whose merge this tool does not implement:
/// any of them set (non-null, true, non-empty) refuses the adapter.
const UNSUPPORTED: [&str; 11] = [
    "use_qalora",
    "alora_invocation_tokens",
    "target_parameters",
    "layer_replication",
    "trainable_token_indices",
    "lora_bias",
    "use_bdlora",
    "arrow_config",
    "kasa_config",
    "velora_config",
    "monteclora_config",
];

/// Which modules `target_modules` (or `exclude_modules`) selects.
#[derive(Debug, Clone)]
pub enum ModuleSelector {
    /// Names: a module matches one exactly or ends with `.` + it.
    List(Vec<String>),
    /// A Python regular expression the whole module name must match.
    Regex(String, Regex),
    /// `all-linear`: every linear layer but the output layer.
    AllLinear,
}

impl ModuleSelector {
    fn parse(file: &Path, field: &str, v: &Value) -> Result<Self, HfError> {
        match v {
            Value::String(s) if s == "all-linear" => Ok(ModuleSelector::AllLinear),
            Value::String(s) => Ok(ModuleSelector::Regex(s.clone(), regex(file, field, &format!(r"\A(?:{s})\z"))?)),
            Value::Array(items) => {
                let names = items.iter().map(|x| x.as_str().map(str::to_owned)).collect::<Option<Vec<_>>>();
                names
                    .map(ModuleSelector::List)
                    .ok_or_else(|| field_error(file, field, "must be a list of module names or a regular expression"))
            }
            _ => Err(field_error(file, field, "must be a list of module names or a regular expression")),
        }
    }

    /// Whether module `key` is selected (PEFT's `check_target_module_exists`,
    /// before the layer filter). `linear` says whether it is a linear layer
    /// other than the output layer, for `all-linear`.
    fn matches(&self, key: &str, linear: bool) -> bool {
        match self {
            ModuleSelector::List(names) => names.iter().any(|n| ends_with_module(key, n)),
            ModuleSelector::Regex(_, re) => re.is_match(key).unwrap_or(false),
            ModuleSelector::AllLinear => linear,
        }
    }
}

/// `key == name` or `key` ends with `.name`.
fn ends_with_module(key: &str, name: &str) -> bool {
    key == name || key.strip_suffix(name).is_some_and(|rest| rest.ends_with('.'))
}

/// A pattern override (`rank_pattern`, `alpha_pattern`): the first key `k`
/// (in file order) with `(.*\.)?(k)$` matching the module name wins.
#[derive(Debug, Clone)]
pub struct Pattern<T> {
    entries: Vec<(String, Regex, T)>,
}

impl<T: Copy> Pattern<T> {
    /// The override for `module` and the key that gave it.
    fn lookup(&self, module: &str) -> Option<(&str, T)> {
        self.entries.iter().find(|(_, re, _)| re.is_match(module).unwrap_or(false)).map(|(k, _, v)| (k.as_str(), *v))
    }
}

/// A validated `adapter_config.json`.
#[derive(Debug, Clone)]
pub struct LoraConfig {
    /// The file.
    pub path: PathBuf,
    /// Default rank.
    pub r: u64,
    /// Default alpha.
    pub alpha: f64,
    /// Scale by `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
    /// Weight-decomposed LoRA (magnitude vectors).
    pub use_dora: bool,
    /// Whether the config asks for `[in, out]` weights (PEFT resets it for linear layers).
    pub fan_in_fan_out: bool,
    /// `bias`: `none`, `all` or `lora_only`.
    pub bias: String,
    /// Selected modules.
    pub target: ModuleSelector,
    /// Excluded modules.
    pub exclude: Option<ModuleSelector>,
    /// `layers_to_transform` (empty: all layers).
    pub layers: Vec<u64>,
    /// `layers_pattern` (empty: any `name.N.`).
    pub layers_pattern: Vec<String>,
    /// Per-module ranks.
    pub rank_pattern: Pattern<u64>,
    /// Per-module alphas.
    pub alpha_pattern: Pattern<f64>,
    /// Modules saved whole.
    pub modules_to_save: Vec<String>,
    /// `base_model_name_or_path`.
    pub base_model: Option<String>,
    /// `quantization_config` recorded beside the LoRA fields (what our trainer writes), if any.
    pub quantization: Option<Map<String, Value>>,
}

fn field_error(file: &Path, field: &str, problem: &str) -> HfError {
    HfError::AdapterField { path: file.into(), field: field.into(), problem: problem.into() }
}

fn regex(file: &Path, field: &str, pattern: &str) -> Result<Regex, HfError> {
    Regex::new(pattern).map_err(|e| field_error(file, field, &format!("is not a regular expression this tool can compile: {e}")))
}

/// Replaces the bare `NaN`, `Infinity` and `-Infinity` tokens Python's `json`
/// writes by strings, so that such a value is reported by its field name.
fn quote_python_floats(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if !in_string {
            if let Some(tok) = ["-Infinity", "Infinity", "NaN"].into_iter().find(|t| rest.starts_with(t)) {
                out.push('"');
                out.push_str(tok);
                out.push('"');
                rest = &rest[tok.len()..];
                continue;
            }
        }
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// A number field that must be finite and non-zero.
fn alpha_value(file: &Path, field: &str, v: &Value) -> Result<f64, HfError> {
    let a = match v {
        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        Value::String(s) if ["NaN", "Infinity", "-Infinity"].contains(&s.as_str()) => f64::NAN,
        _ => return Err(field_error(file, field, "must be a number")),
    };
    if !a.is_finite() || a == 0.0 {
        return Err(field_error(file, field, &format!("is {v}; it must be a finite, non-zero number")));
    }
    Ok(a)
}

/// A rank field: a positive integer.
fn rank_value(file: &Path, field: &str, v: &Value) -> Result<u64, HfError> {
    match v.as_u64() {
        Some(0) => Err(field_error(file, field, "is 0; a LoRA rank must be at least 1")),
        Some(r) => Ok(r),
        None => Err(field_error(file, field, &format!("is {v}; it must be a positive integer"))),
    }
}

fn bool_field(file: &Path, cfg: &Map<String, Value>, field: &str) -> Result<bool, HfError> {
    match cfg.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(field_error(file, field, "must be true or false")),
    }
}

/// A field that is a string or a list of strings (null: empty).
fn strings_field(file: &Path, cfg: &Map<String, Value>, field: &str) -> Result<Vec<String>, HfError> {
    match cfg.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|x| x.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| field_error(file, field, "must be a string or a list of strings")),
        Some(_) => Err(field_error(file, field, "must be a string or a list of strings")),
    }
}

fn pattern<T>(
    file: &Path,
    cfg: &Map<String, Value>,
    field: &str,
    value: impl Fn(&Path, &str, &Value) -> Result<T, HfError>,
) -> Result<Pattern<T>, HfError> {
    let mut entries = Vec::new();
    match cfg.get(field) {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (k, v) in map {
                let f = format!("{field}.{k}");
                entries.push((k.clone(), regex(file, &f, &format!(r"\A(?:.*\.)?(?:{k})\z"))?, value(file, &f, v)?));
            }
        }
        Some(_) => return Err(field_error(file, field, "must be an object")),
    }
    Ok(Pattern { entries })
}

/// Whether a config value counts as set.
fn is_set(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => false,
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

impl LoraConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, HfError> {
        let bytes = pesc_io::read_capped(path, MAX_CONFIG_BYTES)?;
        let text = String::from_utf8(bytes).map_err(|_| HfError::NotUtf8 { path: path.into() })?;
        let value = pesc_io::parse_strict(quote_python_floats(&text).as_bytes())
            .map_err(|e| HfError::NotJson { path: path.into(), message: e.to_string() })?;
        let Value::Object(cfg) = value else {
            return Err(HfError::NotJsonObject { path: path.into() });
        };
        Self::parse(path, &cfg)
    }

    fn parse(path: &Path, cfg: &Map<String, Value>) -> Result<Self, HfError> {
        let peft_type = cfg.get("peft_type").and_then(Value::as_str);
        if peft_type != Some("LORA") {
            return Err(field_error(
                path,
                "peft_type",
                &format!("is {}; only LORA adapters can be merged", cfg.get("peft_type").unwrap_or(&Value::Null)),
            ));
        }
        if let Some(field) = UNSUPPORTED.iter().find(|f| cfg.get(**f).is_some_and(is_set)) {
            return Err(field_error(path, field, "is set: this LoRA variant is not supported by merge-lora"));
        }
        let r = rank_value(path, "r", cfg.get("r").unwrap_or(&Value::Null))?;
        let alpha = alpha_value(path, "lora_alpha", cfg.get("lora_alpha").unwrap_or(&Value::Null))?;
        let target = match cfg.get("target_modules") {
            None | Some(Value::Null) => return Err(field_error(path, "target_modules", "is missing")),
            Some(v) => ModuleSelector::parse(path, "target_modules", v)?,
        };
        let exclude = match cfg.get("exclude_modules") {
            None | Some(Value::Null) => None,
            Some(v) => Some(ModuleSelector::parse(path, "exclude_modules", v)?),
        };
        let layers = match cfg.get("layers_to_transform") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(Value::as_u64)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| field_error(path, "layers_to_transform", "must be a layer index or a list of them"))?,
            Some(v) => {
                vec![v.as_u64().ok_or_else(|| field_error(path, "layers_to_transform", "must be a layer index or a list of them"))?]
            }
        };
        let bias = match cfg.get("bias") {
            None | Some(Value::Null) => "none".to_owned(),
            Some(Value::String(s)) if ["none", "all", "lora_only"].contains(&s.as_str()) => s.clone(),
            Some(v) => return Err(field_error(path, "bias", &format!("is {v}; expected none, all or lora_only"))),
        };
        let quantization = match cfg.get("quantization_config") {
            None | Some(Value::Null) => None,
            Some(Value::Object(q)) => Some(q.clone()),
            Some(_) => return Err(field_error(path, "quantization_config", "must be an object")),
        };
        Ok(LoraConfig {
            path: path.into(),
            r,
            alpha,
            use_rslora: bool_field(path, cfg, "use_rslora")?,
            use_dora: bool_field(path, cfg, "use_dora")?,
            fan_in_fan_out: bool_field(path, cfg, "fan_in_fan_out")?,
            bias,
            target,
            exclude,
            layers,
            layers_pattern: strings_field(path, cfg, "layers_pattern")?,
            rank_pattern: pattern(path, cfg, "rank_pattern", rank_value)?,
            alpha_pattern: pattern(path, cfg, "alpha_pattern", alpha_value)?,
            modules_to_save: strings_field(path, cfg, "modules_to_save")?,
            base_model: cfg.get("base_model_name_or_path").and_then(Value::as_str).map(str::to_owned),
            quantization,
        })
    }

    /// Number of `rank_pattern` entries.
    #[must_use]
    pub fn rank_pattern_len(&self) -> usize {
        self.rank_pattern.entries.len()
    }

    /// Number of `alpha_pattern` entries.
    #[must_use]
    pub fn alpha_pattern_len(&self) -> usize {
        self.alpha_pattern.entries.len()
    }

    /// Whether `key` is in (or inside) one of `modules_to_save`.
    #[must_use]
    pub fn saved_whole(&self, key: &str) -> bool {
        self.modules_to_save.iter().any(|m| {
            let parts: Vec<&str> = key.split('.').collect();
            let mparts: Vec<&str> = m.split('.').collect();
            (0..parts.len()).any(|i| parts[i..].starts_with(&mparts))
        })
    }

    /// The layer index PEFT reads from `key` for `layers_to_transform`.
    fn layer_index(&self, key: &str) -> Option<u64> {
        let patterns: Vec<String> = if self.layers_pattern.is_empty() {
            vec![r"\A.*?\.[^.]*\.(\d+)\.".to_owned()]
        } else {
            self.layers_pattern.iter().map(|p| format!(r"\A(?:.*?\.)?{p}\.(\d+)\.")).collect()
        };
        patterns.iter().find_map(|p| {
            let re = Regex::new(p).ok()?;
            re.captures(key).ok().flatten()?.get(1)?.as_str().parse().ok()
        })
    }

    /// Whether PEFT puts a LoRA on module `key` (`linear`: a linear layer
    /// other than the output layer, for `all-linear`).
    #[must_use]
    pub fn targets(&self, key: &str, linear: bool) -> bool {
        if self.exclude.as_ref().is_some_and(|e| e.matches(key, linear)) || self.saved_whole(key) {
            return false;
        }
        let found = self.target.matches(key, linear);
        // PEFT applies layers_to_transform only to a list of names, and not to a name listed in full.
        let exact = matches!(&self.target, ModuleSelector::List(names) if names.iter().any(|n| n == key));
        if !found || exact || self.layers.is_empty() || matches!(self.target, ModuleSelector::Regex(..)) {
            return found;
        }
        self.layer_index(key).is_some_and(|i| self.layers.contains(&i))
    }

    /// Rank, alpha and scale of module `key`, with the pattern keys that set them.
    #[must_use]
    pub fn scaling(&self, key: &str) -> Scaling {
        let rank = self.rank_pattern.lookup(key);
        let alpha = self.alpha_pattern.lookup(key);
        let r = rank.map_or(self.r, |(_, r)| r);
        let a = alpha.map_or(self.alpha, |(_, a)| a);
        #[allow(clippy::cast_precision_loss)]
        let rf = r as f64;
        let scale = if self.use_rslora { a / rf.sqrt() } else { a / rf };
        Scaling { r, alpha: a, scale, rank_key: rank.map(|(k, _)| k.to_owned()), alpha_key: alpha.map(|(k, _)| k.to_owned()) }
    }
}

/// A module's effective LoRA scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct Scaling {
    /// Rank.
    pub r: u64,
    /// Alpha.
    pub alpha: f64,
    /// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub scale: f64,
    /// The `rank_pattern` key that set `r`, if any.
    pub rank_key: Option<String>,
    /// The `alpha_pattern` key that set `alpha`, if any.
    pub alpha_key: Option<String>,
}

/// The LoRA tensors of one module.
#[derive(Debug, Clone, Default)]
pub struct LoraModule {
    /// `lora_A.weight`, `[r, in]`.
    pub a: Option<TensorInfo>,
    /// `lora_B.weight`, `[out, r]`.
    pub b: Option<TensorInfo>,
    /// DoRA `lora_magnitude_vector`, `[out]`.
    pub magnitude: Option<TensorInfo>,
}

/// A PEFT adapter folder.
#[derive(Debug)]
pub struct PeftAdapter {
    /// The folder holding `adapter_config.json`.
    pub dir: PathBuf,
    /// Its config.
    pub config: LoraConfig,
    /// `adapter_model.safetensors`.
    pub weights: SafetensorsFile,
    /// LoRA tensors by module name (without PEFT's prefix).
    pub modules: BTreeMap<String, LoraModule>,
    /// Whole tensors (modules_to_save, biases) by model tensor name.
    pub whole: BTreeMap<String, TensorInfo>,
}

impl PeftAdapter {
    /// Opens the adapter in `dir`: its config and `adapter_model.safetensors`
    /// (a pickled `adapter_model.bin` is refused unopened).
    pub fn open(dir: &Path) -> Result<Self, HfError> {
        let config_path = dir.join(ADAPTER_CONFIG);
        if !config_path.is_file() {
            return Err(HfError::NotAdapterFolder { path: dir.into() });
        }
        pesc_io::confined(dir, &config_path)?;
        let config = LoraConfig::load(&config_path)?;
        let weights_path = dir.join(ADAPTER_WEIGHTS);
        if !weights_path.is_file() {
            let pickled = dir.join("adapter_model.bin");
            if pickled.is_file() {
                return Err(HfError::PickledFile {
                    path: pickled,
                    what: "",
                    hint: format!("in an isolated sandbox, load the adapter with PEFT and save it again with `save_pretrained(dir, safe_serialization=True)`, which writes `{ADAPTER_WEIGHTS}`"),
                });
            }
            return Err(HfError::MissingAdapterWeights { path: dir.into() });
        }
        pesc_io::confined(dir, &weights_path)?;
        let weights = SafetensorsFile::open(&weights_path)?;
        let mut modules: BTreeMap<String, LoraModule> = BTreeMap::new();
        let mut whole = BTreeMap::new();
        for t in weights.tensors() {
            let bad =
                |problem: &str| HfError::AdapterTensor { path: weights_path.clone(), tensor: t.name.clone(), problem: problem.into() };
            let name = t
                .name
                .strip_prefix(PEFT_PREFIX)
                .ok_or_else(|| bad(&format!("does not start with `{PEFT_PREFIX}`, as PEFT names every saved tensor")))?;
            if !t.dtype.is_compute_float() {
                return Err(bad(&format!("has dtype {}; expected F32, F16 or BF16", t.dtype)));
            }
            let slot = |suffix: &str| name.strip_suffix(suffix).map(str::to_owned);
            if let Some(m) = slot(".lora_A.weight") {
                modules.entry(m).or_default().a = Some(t.clone());
            } else if let Some(m) = slot(".lora_B.weight") {
                modules.entry(m).or_default().b = Some(t.clone());
            } else if let Some(m) = slot(".lora_magnitude_vector") {
                modules.entry(m).or_default().magnitude = Some(t.clone());
            } else if name.contains(".lora_") {
                return Err(bad("is a LoRA tensor of a kind merge-lora does not support (embedding LoRA, lora_B bias, ...)"));
            } else {
                whole.insert(name.to_owned(), t.clone());
            }
        }
        Ok(PeftAdapter { dir: dir.into(), config, weights, modules, whole })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(v: Value) -> Result<LoraConfig, HfError> {
        let Value::Object(m) = v else { unreachable!() };
        LoraConfig::parse(Path::new("adapter_config.json"), &m)
    }

    #[test]
    fn python_floats_become_named_field_errors() {
        assert_eq!(quote_python_floats(r#"{"a": NaN, "b": "NaN x", "c": -Infinity}"#), r#"{"a": "NaN", "b": "NaN x", "c": "-Infinity"}"#);
        let e = config(json!({"peft_type": "LORA", "r": 4, "lora_alpha": "NaN", "target_modules": ["q_proj"]})).unwrap_err();
        assert!(e.to_string().contains("`lora_alpha` is \"NaN\""), "{e}");
    }

    #[test]
    fn list_targets_match_by_suffix_and_layers() {
        let c = config(json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "mlp.down_proj"], "layers_to_transform": [1]})).unwrap();
        assert!(c.targets("model.layers.1.self_attn.q_proj", true));
        assert!(!c.targets("model.layers.0.self_attn.q_proj", true));
        assert!(!c.targets("model.layers.1.self_attn.xq_proj", true));
        assert!(c.targets("model.layers.1.mlp.down_proj", true));
    }

    #[test]
    fn patterns_use_the_first_matching_key() {
        let c = config(json!({
            "peft_type": "LORA", "r": 8, "lora_alpha": 16, "use_rslora": true, "target_modules": ".*proj",
            "rank_pattern": {"o_proj": 4, "layers.1.mlp.down_proj": 2}, "alpha_pattern": {"down_proj": 3}
        }))
        .unwrap();
        assert!(c.targets("model.layers.0.self_attn.o_proj", true));
        assert!(!c.targets("model.layers.0.self_attn", true));
        let s = c.scaling("model.layers.1.mlp.down_proj");
        assert_eq!((s.r, s.alpha), (2, 3.0));
        assert!((s.scale - 3.0 / 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(c.scaling("model.layers.0.mlp.down_proj").r, 8);
        assert_eq!(c.scaling("model.layers.0.self_attn.o_proj").r, 4);
    }

    #[test]
    fn bad_values_name_their_field() {
        let base = json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            config(b).unwrap_err().to_string()
        };
        assert!(with("r", json!(0)).contains("`r` is 0"));
        assert!(with("lora_alpha", json!(0)).contains("`lora_alpha` is 0"));
        assert!(with("peft_type", json!("IA3")).contains("only LORA"));
        assert!(with("use_qalora", json!(true)).contains("`use_qalora` is set"));
        assert!(with("target_modules", json!("(unclosed")).contains("`target_modules` is not a regular expression"));
    }
}
