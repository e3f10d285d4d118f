//! `pesc-manifest.json` and `SHA256SUMS`: what every published folder says
//! about itself, and their check (`verify-manifest`, and `verify`'s checksum
//! pre-check).

use crate::error::{Error, IoContext, Result};
use crate::publish::{hash_file, FileDigest, TOOL_VERSION};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// Name of the checksum file (`sha256sum -c SHA256SUMS`).
pub const SHA256SUMS: &str = "SHA256SUMS";
/// Name of the manifest.
pub const MANIFEST: &str = "pesc-manifest.json";
/// Version of the manifest format (`schemas/manifest.schema.json`).
pub const MANIFEST_VERSION: u64 = 1;

/// What the manifest records about the run besides the files it wrote.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// The subcommand (`craft`, `quantize` ...).
    pub command: String,
    /// Canonical parameters (an object; written with sorted keys).
    pub parameters: Value,
    /// Inputs: role (`model`, `adapter` ...) -> file name within that input -> digest.
    pub inputs: BTreeMap<String, BTreeMap<String, FileDigest>>,
}

/// The manifest of a folder holding `files`, made by `run`.
pub(crate) fn manifest_json(run: &RunRecord, files: &BTreeMap<String, FileDigest>) -> Value {
    let digest = |path: &str, d: &FileDigest| json!({"path": path, "bytes": d.bytes, "sha256": d.sha256});
    let inputs: Vec<Value> = run
        .inputs
        .iter()
        .flat_map(|(role, fs)| {
            fs.iter().map(move |(p, d)| {
                let mut v = digest(p, d);
                v["role"] = json!(role);
                v
            })
        })
        .collect();
    json!({
        "format_version": MANIFEST_VERSION,
        "tool": {"name": "pesc-convert", "version": TOOL_VERSION},
        "command": run.command,
        "parameters": sort_keys(&run.parameters),
        "inputs": inputs,
        "files": files.iter().map(|(p, d)| digest(p, d)).collect::<Vec<_>>(),
    })
}

/// Returns `v` with every object's keys sorted (for canonical output).
#[must_use]
pub fn sort_keys(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<&String, Value> = m.iter().map(|(k, v)| (k, sort_keys(v))).collect();
            Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(sort_keys).collect()),
        other => other.clone(),
    }
}

/// The outcome of [`verify_manifest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestCheck {
    /// Files whose size and hash matched, in manifest order.
    pub verified: Vec<String>,
    /// The first file that did not match, and how.
    pub failure: Option<(String, String)>,
}

/// Recomputes every hash listed in `DIR/pesc-manifest.json` (and in
/// `SHA256SUMS` when present) and reports the first mismatch, missing file or
/// file the manifest does not list. A malformed manifest is an error.
pub fn verify_manifest(dir: &Path) -> Result<ManifestCheck> {
    let path = dir.join(MANIFEST);
    let bytes = crate::checkpoint::read_capped(&path, 64 << 20)?;
    let structure = |what: String| Error::Structure { path: path.clone(), what };
    let v = crate::json::parse_strict(&bytes).map_err(|e| Error::Json { path: path.clone(), message: e.to_string() })?;
    if v.get("format_version").and_then(Value::as_u64) != Some(MANIFEST_VERSION) {
        return Err(structure(format!("`format_version` must be {MANIFEST_VERSION}")));
    }
    let Some(files) = v.get("files").and_then(Value::as_array) else {
        return Err(structure("`files` is missing or not an array".into()));
    };
    let mut listed = BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        let name = f.get("path").and_then(Value::as_str);
        let bytes = f.get("bytes").and_then(Value::as_u64);
        let sha = f.get("sha256").and_then(Value::as_str);
        let (Some(name), Some(bytes), Some(sha)) = (name, bytes, sha) else {
            return Err(structure(format!("`files[{i}]` needs `path`, `bytes` and `sha256`")));
        };
        if name.is_empty() || name.contains('/') || name.contains('\\') || name == ".." || name == "." {
            return Err(structure(format!("`files[{i}].path` {name:?} is not a plain file name")));
        }
        if listed.insert(name.to_owned(), FileDigest { bytes, sha256: sha.to_owned() }).is_some() {
            return Err(structure(format!("`{name}` is listed twice in `files`")));
        }
    }
    let mut sums = BTreeMap::new();
    let sums_path = dir.join(SHA256SUMS);
    if sums_path.exists() {
        let text = crate::checkpoint::read_capped(&sums_path, 16 << 20)?;
        for (i, line) in String::from_utf8_lossy(&text).lines().enumerate() {
            let parsed = line.split_once("  ").or_else(|| line.split_once(" *"));
            let Some((sha, name)) = parsed.filter(|(s, _)| s.len() == 64) else {
                return Err(Error::Structure { path: sums_path.clone(), what: format!("line {} is not `<sha256>  <file>`", i + 1) });
            };
            sums.insert(name.to_owned(), sha.to_owned());
        }
    }
    let mut check = ManifestCheck { verified: Vec::new(), failure: None };
    let fail = |check: &mut ManifestCheck, name: &str, problem: String| {
        check.failure = Some((name.to_owned(), problem));
    };
    for (name, want) in &listed {
        let file = dir.join(name);
        crate::checkpoint::confined(dir, &file).or_else(|e| match e {
            Error::Io { .. } => Ok(()),
            other => Err(other),
        })?;
        let got = match hash_file(&file) {
            Ok(d) => d,
            Err(_) if !file.exists() => {
                fail(&mut check, name, "is listed in the manifest but missing".into());
                return Ok(check);
            }
            Err(e) => return Err(e),
        };
        if got.bytes != want.bytes {
            fail(&mut check, name, format!("has {} bytes, the manifest says {}", got.bytes, want.bytes));
            return Ok(check);
        }
        if got.sha256 != want.sha256 {
            fail(&mut check, name, format!("has SHA-256 {}, the manifest says {}", got.sha256, want.sha256));
            return Ok(check);
        }
        if let Some(s) = sums.get(name.as_str()) {
            if *s != got.sha256 {
                fail(&mut check, name, format!("has SHA-256 {}, `SHA256SUMS` says {s}", got.sha256));
                return Ok(check);
            }
        }
        check.verified.push(name.clone());
    }
    if let Some(name) = sums.keys().find(|n| !listed.contains_key(*n) && n.as_str() != MANIFEST) {
        fail(&mut check, name, "is in `SHA256SUMS` but not in the manifest".into());
        return Ok(check);
    }
    if let Some(s) = sums.get(MANIFEST) {
        let got = hash_file(&path)?;
        if *s != got.sha256 {
            fail(&mut check, MANIFEST, format!("has SHA-256 {}, `SHA256SUMS` says {s}", got.sha256));
            return Ok(check);
        }
    }
    let mut present: Vec<String> = fs::read_dir(dir)
        .at(dir)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != MANIFEST && n != SHA256SUMS && !listed.contains_key(n))
        .collect();
    present.sort();
    if let Some(extra) = present.first() {
        fail(&mut check, extra, "is in the folder but not in the manifest".into());
    }
    Ok(check)
}

/// Checks every line of `DIR/SHA256SUMS`; returns the first mismatching or
/// missing file and what is wrong with it, or `None` when all match.
pub fn check_sha256sums(dir: &Path) -> Result<Option<(String, String)>> {
    let path = dir.join(SHA256SUMS);
    let text = crate::checkpoint::read_capped(&path, 16 << 20)?;
    for (i, line) in String::from_utf8_lossy(&text).lines().enumerate() {
        let Some((want, name)) = line.split_once("  ").or_else(|| line.split_once(" *")).filter(|(s, _)| s.len() == 64) else {
            return Err(Error::Structure { path: path.clone(), what: format!("line {} is not `<sha256>  <file>`", i + 1) });
        };
        if name.contains('/') || name.contains('\\') || name == ".." {
            return Err(Error::Structure { path: path.clone(), what: format!("line {} names `{name}`, not a plain file name", i + 1) });
        }
        let file = dir.join(name);
        if !file.is_file() {
            return Ok(Some((name.to_owned(), "is listed in `SHA256SUMS` but missing".into())));
        }
        let got = hash_file(&file)?;
        if got.sha256 != want {
            return Ok(Some((name.to_owned(), format!("has SHA-256 {}, `SHA256SUMS` says {want}", got.sha256))));
        }
    }
    Ok(None)
}
