//! Hugging Face checkpoint folders: one `model.safetensors`, or shards listed
//! by `model.safetensors.index.json`, cross-checked against each other.

use crate::error::{Error, IoContext, Result};
use crate::json::parse_strict;
use crate::safetensors::{SafetensorsFile, TensorInfo};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The single-file weights name.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The shard index name.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Most entries an index may list.
pub const MAX_INDEX_ENTRIES: usize = 1_000_000;
/// Largest index file read.
pub const MAX_INDEX_BYTES: u64 = 256 << 20;

/// Extensions of pickled PyTorch checkpoints, which are never opened.
const PICKLE_EXTENSIONS: [&str; 5] = ["bin", "pt", "pth", "ckpt", "pkl"];

/// The validated weights of a checkpoint: one file or a set of shards.
#[derive(Debug)]
pub struct Checkpoint {
    dir: PathBuf,
    index: Option<PathBuf>,
    files: Vec<SafetensorsFile>,
    /// Tensor name -> (file, position in that file's sorted list).
    by_name: BTreeMap<String, (usize, usize)>,
    warnings: Vec<String>,
}

impl Checkpoint {
    /// Opens the weights of a model folder.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let meta = std::fs::metadata(dir).at(dir)?;
        if !meta.is_dir() {
            return Err(Error::io(dir, std::io::Error::other("not a directory")));
        }
        let index = dir.join(INDEX_FILE);
        let single = dir.join(SINGLE_FILE);
        match (index.exists(), single.exists()) {
            (true, true) => Err(Error::NoWeights {
                path: dir.into(),
                problem: format!("holds both `{SINGLE_FILE}` and `{INDEX_FILE}`; remove the one that is stale"),
            }),
            (true, false) => Self::open_sharded(dir, &index),
            (false, true) => {
                confined(dir, &single)?;
                Self::from_files(dir.into(), None, vec![SafetensorsFile::open(&single)?])
            }
            (false, false) => Err(no_weights(dir)),
        }
    }

    /// Opens a lone `.safetensors` file.
    pub fn open_file(path: &Path) -> Result<Self> {
        refuse_pickle_name(path)?;
        let file = SafetensorsFile::open(path)?;
        let dir = path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        Self::from_files(dir, None, vec![file])
    }

    fn from_files(dir: PathBuf, index: Option<PathBuf>, files: Vec<SafetensorsFile>) -> Result<Self> {
        let mut by_name = BTreeMap::new();
        for (fi, f) in files.iter().enumerate() {
            for (ti, t) in f.tensors().iter().enumerate() {
                if let Some(&(other, _)) = by_name.get(&t.name) {
                    let first: &SafetensorsFile = &files[other];
                    return Err(Error::IndexMismatch {
                        path: index.clone().unwrap_or_else(|| f.path().into()),
                        problem: format!(
                            "tensor `{}` is stored in two shards, `{}` and `{}`",
                            t.name,
                            file_name(first.path()),
                            file_name(f.path())
                        ),
                    });
                }
                by_name.insert(t.name.clone(), (fi, ti));
            }
        }
        Ok(Checkpoint { dir, index, files, by_name, warnings: Vec::new() })
    }

    fn open_sharded(dir: &Path, index_path: &Path) -> Result<Self> {
        confined(dir, index_path)?;
        let map = read_index(index_path)?;
        let mut shard_names: Vec<&String> = map.weight_map.values().collect();
        shard_names.sort();
        shard_names.dedup();
        let mut files = Vec::with_capacity(shard_names.len());
        for name in &shard_names {
            let path = dir.join(name);
            if !path.exists() && std::fs::symlink_metadata(&path).is_err() {
                let tensor = map.weight_map.iter().find(|(_, s)| s == name).map(|(t, _)| t.clone()).unwrap_or_default();
                return Err(Error::IndexMismatch {
                    path: index_path.into(),
                    problem: format!("shard `{name}` (listed for tensor `{tensor}`) does not exist"),
                });
            }
            confined(dir, &path)?;
            files.push(SafetensorsFile::open(&path)?);
        }
        let mut ck = Self::from_files(dir.into(), Some(index_path.into()), files)?;
        for (tensor, shard) in &map.weight_map {
            match ck.by_name.get(tensor) {
                None => {
                    return Err(Error::IndexMismatch {
                        path: index_path.into(),
                        problem: format!("tensor `{tensor}` is mapped to `{shard}`, which does not contain it"),
                    })
                }
                Some(&(fi, _)) if file_name(ck.files[fi].path()) != *shard => {
                    return Err(Error::IndexMismatch {
                        path: index_path.into(),
                        problem: format!("tensor `{tensor}` is mapped to `{shard}` but stored in `{}`", file_name(ck.files[fi].path())),
                    })
                }
                Some(_) => {}
            }
        }
        if let Some(name) = ck.by_name.keys().find(|n| !map.weight_map.contains_key(*n)) {
            let (fi, _) = ck.by_name[name];
            return Err(Error::IndexMismatch {
                path: index_path.into(),
                problem: format!("tensor `{name}` in `{}` is not listed in the index", file_name(ck.files[fi].path())),
            });
        }
        if let Some(declared) = map.total_size {
            let actual = ck.total_bytes();
            if declared != actual {
                ck.warnings.push(format!(
                    "`{}`: metadata.total_size is {declared} but the shards hold {actual} tensor bytes",
                    index_path.display()
                ));
            }
        }
        Ok(ck)
    }

    /// The folder holding the weights.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The weight files (and the index, if any), in a stable order.
    #[must_use]
    pub fn files(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = self.index.iter().cloned().collect();
        out.extend(self.files.iter().map(|f| f.path().to_path_buf()));
        out
    }

    /// Number of weight files.
    #[must_use]
    pub fn shard_count(&self) -> usize {
        self.files.len()
    }

    /// Whether the weights are sharded with an index.
    #[must_use]
    pub fn is_sharded(&self) -> bool {
        self.index.is_some()
    }

    /// Problems worth telling the user that do not stop the load.
    #[must_use]
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// All tensors, sorted by name.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorInfo> {
        self.by_name.values().map(|&(f, t)| &self.files[f].tensors()[t])
    }

    /// Number of tensors.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are no tensors.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The tensor called `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&(f, t)| &self.files[f].tensors()[t])
    }

    /// The file holding tensor `name`.
    #[must_use]
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.by_name.get(name).map(|&(f, _)| self.files[f].path())
    }

    /// Sum of all tensors' bytes.
    #[must_use]
    pub fn total_bytes(&self) -> u64 {
        self.tensors().map(|t| t.nbytes).sum()
    }

    fn locate(&self, name: &str) -> Result<(&SafetensorsFile, &TensorInfo)> {
        let &(f, t) =
            self.by_name.get(name).ok_or_else(|| Error::NoWeights { path: self.dir.clone(), problem: format!("no tensor `{name}`") })?;
        Ok((&self.files[f], &self.files[f].tensors()[t]))
    }

    /// Reads a whole tensor's bytes.
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        let (f, t) = self.locate(name)?;
        f.read(t)
    }

    /// Reads tensor `name`'s bytes into `buf`, which must be exactly its size.
    pub fn read_into(&self, name: &str, buf: &mut [u8]) -> Result<()> {
        let (f, t) = self.locate(name)?;
        if buf.len() as u64 != t.nbytes {
            return Err(Error::Range { path: f.path().into(), tensor: name.into(), start: 0, len: buf.len() as u64, nbytes: t.nbytes });
        }
        f.read_into(t, buf)
    }

    /// Reads `len` bytes of tensor `name` from byte `start` of its data.
    pub fn read_range(&self, name: &str, start: u64, len: u64) -> Result<Vec<u8>> {
        let (f, t) = self.locate(name)?;
        f.read_range(t, start, len)
    }

    /// Streams a tensor's bytes into `out`.
    pub fn copy_to(&self, name: &str, out: &mut dyn crate::Sink) -> Result<()> {
        let (f, t) = self.locate(name)?;
        f.copy_to(t, out)
    }

    /// Calls `f` on consecutive whole-element pieces of a tensor's bytes of at
    /// most `chunk` bytes each.
    pub fn for_each_chunk(&self, name: &str, chunk: u64, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let (file, t) = self.locate(name)?;
        file.for_each_chunk(t, chunk, f)
    }
}

struct IndexMap {
    weight_map: BTreeMap<String, String>,
    total_size: Option<u64>,
}

fn read_index(path: &Path) -> Result<IndexMap> {
    let bytes = read_capped(path, MAX_INDEX_BYTES)?;
    let structure = |what: String| Error::Structure { path: path.into(), what };
    let value = parse_strict(&bytes).map_err(|e| Error::Json { path: path.into(), message: e.to_string() })?;
    let Value::Object(top) = value else { return Err(structure("index is not a JSON object".into())) };
    let total_size = match top.get("metadata") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => match m.get("total_size") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| structure(format!("`metadata.total_size` is {v}, not a byte count")))?),
        },
        Some(_) => return Err(structure("`metadata` is not an object".into())),
    };
    let Some(Value::Object(wm)) = top.get("weight_map") else {
        return Err(structure("`weight_map` is missing or not an object".into()));
    };
    if wm.len() > MAX_INDEX_ENTRIES {
        return Err(Error::Limit {
            path: path.into(),
            what: "number of `weight_map` entries".into(),
            value: wm.len() as u64,
            cap: MAX_INDEX_ENTRIES as u64,
        });
    }
    let mut weight_map = BTreeMap::new();
    for (tensor, shard) in wm {
        let Value::String(shard) = shard else {
            return Err(structure(format!("`weight_map` entry of `{tensor}` is not a string")));
        };
        check_shard_name(path, tensor, shard)?;
        weight_map.insert(tensor.clone(), shard.clone());
    }
    Ok(IndexMap { weight_map, total_size })
}

/// A shard reference must be one plain `.safetensors` file name in the folder.
fn check_shard_name(index: &Path, tensor: &str, shard: &str) -> Result<()> {
    let problem = if shard.is_empty() {
        "empty"
    } else if shard.contains('\0') {
        "contains a NUL byte"
    } else if shard.contains('/') || shard.contains('\\') {
        "contains a path separator; shards must be plain file names inside the model folder"
    } else if shard == "." || shard == ".." || shard.contains(':') {
        "is not a plain file name"
    } else if !shard.ends_with(".safetensors") {
        "does not end in `.safetensors`"
    } else {
        return Ok(());
    };
    Err(Error::ShardName { path: index.into(), tensor: tensor.into(), shard: shard.chars().take(200).collect(), problem })
}

/// Refuses a path that is a symlink resolving outside `dir`.
pub fn confined(dir: &Path, path: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(path).at(path)?;
    if meta.file_type().is_symlink() {
        let target = std::fs::canonicalize(path).at(path)?;
        let root = std::fs::canonicalize(dir).at(dir)?;
        if !target.starts_with(&root) {
            return Err(Error::SymlinkEscapes { path: path.into(), target });
        }
    }
    Ok(())
}

/// Reads a small file whole, refusing files above `cap` bytes.
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path).at(path)?.len();
    if len > cap {
        return Err(Error::Limit { path: path.into(), what: "file size".into(), value: len, cap });
    }
    std::fs::read(path).at(path)
}

/// Refuses a path whose extension says it is a pickled checkpoint, without opening it.
pub fn refuse_pickle_name(path: &Path) -> Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if PICKLE_EXTENSIONS.contains(&ext.as_str()) {
        return Err(Error::Pickle { path: path.into(), kind: format!("`.{ext}` checkpoint") });
    }
    Ok(())
}

fn no_weights(dir: &Path) -> Error {
    let mut pickles = Vec::new();
    let mut others = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ext = Path::new(&name).extension().and_then(|x| x.to_str()).unwrap_or("").to_ascii_lowercase();
            if PICKLE_EXTENSIONS.contains(&ext.as_str()) || name.ends_with(".bin.index.json") {
                pickles.push(name);
            } else if ext == "safetensors" {
                others.push(name);
            }
        }
    }
    pickles.sort();
    others.sort();
    let problem = if let Some(p) = pickles.first() {
        format!(
            "holds only pickled PyTorch weights (`{p}`), which can run arbitrary code when loaded; this tool never unpickles\n\nhint: convert them to safetensors in an isolated sandbox first, e.g. with transformers' `save_pretrained(dir, safe_serialization=True)`"
        )
    } else if let Some(o) = others.first() {
        format!("has no `{SINGLE_FILE}` or `{INDEX_FILE}` (found `{o}`); pass the `.safetensors` file itself to read it alone")
    } else {
        format!("has no `{SINGLE_FILE}` or `{INDEX_FILE}`")
    };
    Error::NoWeights { path: dir.into(), problem }
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}
