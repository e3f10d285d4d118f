//! The safetensors container: a validating reader and the header encoder used
//! by the writer.
//!
//! Rules enforced on read, beyond the `safetensors` crate's: no duplicate
//! tensor or metadata keys, no unknown fields in a tensor entry, tensor names
//! non-empty, without NUL and at most [`MAX_NAME_LEN`] bytes, rank at most
//! [`MAX_RANK`], header at most [`MAX_HEADER_LEN`]. Data regions must tile the
//! data section exactly (no gaps, overlaps or trailing bytes). See
//! `docs/format.md`.

use crate::error::{Error, IoContext, Result};
use crate::json::parse_strict;
use pesc_tensor::{shape_str, DType};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Largest header this tool reads (the `safetensors` crate allows 100 MB).
pub const MAX_HEADER_LEN: u64 = 16 << 20;
/// Most dimensions a tensor may have.
pub const MAX_RANK: usize = 8;
/// Longest tensor name, in bytes.
pub const MAX_NAME_LEN: usize = 1024;
/// Most `__metadata__` entries.
pub const MAX_METADATA_ENTRIES: usize = 1024;

/// One tensor of a safetensors file, validated against the file's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dimensions, outermost first.
    pub shape: Vec<u64>,
    /// Absolute offset of its first byte in the file.
    pub offset: u64,
    /// Its byte length (dtype size × element count).
    pub nbytes: u64,
}

impl TensorInfo {
    /// Element count (checked when the file was opened).
    #[must_use]
    pub fn numel(&self) -> u64 {
        pesc_tensor::numel(&self.shape).unwrap_or(0)
    }
}

/// An open, validated safetensors file. Tensor data is read on demand with
/// positioned reads; nothing is mapped into memory.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    file: File,
    tensors: Vec<TensorInfo>,
    metadata: BTreeMap<String, String>,
}

impl SafetensorsFile {
    /// Opens and validates `path`. Files that fail validation and look like a
    /// Git LFS pointer or a pickle are reported as such.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).at(path)?;
        let meta = file.metadata().at(path)?;
        if !meta.is_file() {
            return Err(Error::io(path, std::io::Error::other("not a regular file")));
        }
        match Self::validate(path, &file, meta.len()) {
            Ok((tensors, metadata)) => Ok(SafetensorsFile { path: path.to_owned(), file, tensors, metadata }),
            // Only a file whose framing is unreadable may be something else in disguise.
            Err(
                e @ (Error::HeaderTooSmall { .. }
                | Error::HeaderTooLarge { .. }
                | Error::HeaderBeyondFile { .. }
                | Error::HeaderNotUtf8 { .. }
                | Error::Json { .. }),
            ) => Err(diagnose(path, &file).unwrap_or(e)),
            Err(e) => Err(e),
        }
    }

    fn validate(path: &Path, file: &File, file_len: u64) -> Result<(Vec<TensorInfo>, BTreeMap<String, String>)> {
        if file_len < 8 {
            return Err(Error::HeaderTooSmall { path: path.into(), len: file_len });
        }
        let mut len = [0u8; 8];
        file.read_exact_at(&mut len, 0).at(path)?;
        let header_len = u64::from_le_bytes(len);
        if header_len > MAX_HEADER_LEN {
            return Err(Error::HeaderTooLarge { path: path.into(), len: header_len, cap: MAX_HEADER_LEN });
        }
        if header_len > file_len - 8 {
            return Err(Error::HeaderBeyondFile { path: path.into(), len: header_len, file_len });
        }
        // Bounded by MAX_HEADER_LEN and by the file's length.
        let mut header = vec![0u8; usize::try_from(header_len).unwrap_or(usize::MAX)];
        file.read_exact_at(&mut header, 8).at(path)?;
        let (tensors, metadata) = parse_header(path, &header)?;
        check_layout(path, &tensors, 8 + header_len, file_len)?;
        let mut tensors = tensors;
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((tensors, metadata))
    }

    /// The file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensors sorted by name.
    #[must_use]
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor called `name`.
    #[must_use]
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.binary_search_by(|t| t.name.as_str().cmp(name)).ok().map(|i| &self.tensors[i])
    }

    /// The `__metadata__` map.
    #[must_use]
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Reads a tensor's bytes into `buf`, which must be exactly `t.nbytes` long.
    pub fn read_into(&self, t: &TensorInfo, buf: &mut [u8]) -> Result<()> {
        debug_assert_eq!(buf.len() as u64, t.nbytes);
        self.file.read_exact_at(buf, t.offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::UnexpectedEof { path: self.path.clone(), tensor: t.name.clone() }
            } else {
                Error::io(&self.path, e)
            }
        })
    }

    /// Reads a whole tensor. Its size was checked against the file's length.
    pub fn read(&self, t: &TensorInfo) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; usize::try_from(t.nbytes).unwrap_or(usize::MAX)];
        self.read_into(t, &mut buf)?;
        Ok(buf)
    }

    /// Reads `len` bytes of a tensor from byte `start` of its data (within its
    /// `nbytes`, which were checked against the file's length).
    pub fn read_range(&self, t: &TensorInfo, start: u64, len: u64) -> Result<Vec<u8>> {
        if start.checked_add(len).is_none_or(|end| end > t.nbytes) {
            return Err(Error::Range { path: self.path.clone(), tensor: t.name.clone(), start, len, nbytes: t.nbytes });
        }
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
        self.file.read_exact_at(&mut buf, t.offset + start).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::UnexpectedEof { path: self.path.clone(), tensor: t.name.clone() }
            } else {
                Error::io(&self.path, e)
            }
        })?;
        Ok(buf)
    }

    /// Streams a tensor's bytes into `out` in chunks of at most 8 MiB.
    pub fn copy_to(&self, t: &TensorInfo, out: &mut dyn crate::Sink) -> Result<()> {
        self.for_each_chunk(t, 8 << 20, &mut |chunk| out.write_bytes(chunk))
    }

    /// Calls `f` on consecutive pieces of a tensor's bytes, each at most
    /// `chunk` bytes (rounded down to whole elements), so that memory stays
    /// bounded whatever the tensor's size.
    pub fn for_each_chunk(&self, t: &TensorInfo, chunk: u64, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let elem = t.dtype.size();
        let chunk = (chunk / elem).max(1) * elem;
        let mut buf = vec![0u8; usize::try_from(t.nbytes.min(chunk)).unwrap_or(0)];
        let mut done = 0u64;
        while done < t.nbytes {
            let n = (t.nbytes - done).min(chunk);
            let piece = &mut buf[..usize::try_from(n).unwrap_or(0)];
            self.file.read_exact_at(piece, t.offset + done).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    Error::UnexpectedEof { path: self.path.clone(), tensor: t.name.clone() }
                } else {
                    Error::io(&self.path, e)
                }
            })?;
            f(piece)?;
            done += n;
        }
        Ok(())
    }
}

/// Parses a header's JSON into tensor entries (absolute offsets assume the
/// header is `header.len()` bytes after the 8-byte prefix) and metadata.
pub fn parse_header(path: &Path, header: &[u8]) -> Result<(Vec<TensorInfo>, BTreeMap<String, String>)> {
    if let Err(e) = std::str::from_utf8(header) {
        return Err(Error::HeaderNotUtf8 { path: path.into(), offset: e.valid_up_to() });
    }
    let value = parse_strict(header).map_err(|e| Error::Json { path: path.into(), message: e.to_string() })?;
    let Value::Object(entries) = value else {
        return Err(Error::Structure { path: path.into(), what: "header is not a JSON object".into() });
    };
    let data_start = 8 + header.len() as u64;
    let mut tensors = Vec::with_capacity(entries.len());
    let mut metadata = BTreeMap::new();
    for (name, entry) in entries {
        if name == "__metadata__" {
            metadata = parse_metadata(path, entry)?;
            continue;
        }
        check_name(path, &name)?;
        tensors.push(parse_entry(path, name, entry, data_start)?);
    }
    Ok((tensors, metadata))
}

fn check_name(path: &Path, name: &str) -> Result<()> {
    let problem = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_NAME_LEN {
        "longer than 1024 bytes"
    } else if name.contains('\0') {
        "contains a NUL byte"
    } else {
        return Ok(());
    };
    let shown: String = name.chars().take(64).collect();
    Err(Error::TensorName { path: path.into(), name: shown, problem })
}

fn parse_metadata(path: &Path, entry: Value) -> Result<BTreeMap<String, String>> {
    let Value::Object(map) = entry else {
        return Err(Error::Structure { path: path.into(), what: "`__metadata__` is not a JSON object".into() });
    };
    if map.len() > MAX_METADATA_ENTRIES {
        return Err(Error::Limit {
            path: path.into(),
            what: "number of `__metadata__` entries".into(),
            value: map.len() as u64,
            cap: MAX_METADATA_ENTRIES as u64,
        });
    }
    map.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            other => Err(Error::Structure {
                path: path.into(),
                what: format!("`__metadata__` value of `{k}` is {}, not a string", kind_of(&other)),
            }),
        })
        .collect()
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn parse_entry(path: &Path, name: String, entry: Value, data_start: u64) -> Result<TensorInfo> {
    let field_err = |field: &str, problem: String| Error::Field { path: path.into(), tensor: name.clone(), field: field.into(), problem };
    let Value::Object(map) = entry else {
        return Err(field_err("<entry>", format!("is {}, not an object", kind_of(&entry))));
    };
    if let Some(k) = map.keys().find(|k| !matches!(k.as_str(), "dtype" | "shape" | "data_offsets")) {
        return Err(field_err(k, "is not a safetensors field (expected `dtype`, `shape`, `data_offsets`)".into()));
    }
    let dtype = match map.get("dtype") {
        None => return Err(field_err("dtype", "is missing".into())),
        Some(Value::String(s)) => DType::from_safetensors(s).ok_or_else(|| field_err("dtype", format!("has unsupported value {s:?}")))?,
        Some(v) => return Err(field_err("dtype", format!("is {}, not a string", kind_of(v)))),
    };
    let shape = match map.get("shape") {
        None => return Err(field_err("shape", "is missing".into())),
        Some(Value::Array(dims)) => {
            if dims.len() > MAX_RANK {
                return Err(field_err("shape", format!("has {} dimensions, above the limit of {MAX_RANK}", dims.len())));
            }
            dims.iter()
                .map(|d| d.as_u64().ok_or_else(|| field_err("shape", format!("holds {d}, not a non-negative integer"))))
                .collect::<Result<Vec<u64>>>()?
        }
        Some(v) => return Err(field_err("shape", format!("is {}, not an array", kind_of(v)))),
    };
    let offsets = match map.get("data_offsets") {
        None => return Err(field_err("data_offsets", "is missing".into())),
        Some(Value::Array(o)) if o.len() == 2 => match (o[0].as_u64(), o[1].as_u64()) {
            (Some(s), Some(e)) => [s, e],
            _ => return Err(field_err("data_offsets", "must hold two non-negative integers".into())),
        },
        Some(_) => return Err(field_err("data_offsets", "must be an array of two integers [start, end]".into())),
    };
    let [start, end] = offsets;
    if end < start {
        return Err(field_err("data_offsets", format!("end {end} is before start {start}")));
    }
    let nbytes =
        dtype.nbytes(&shape).map_err(|_| Error::Overflow { path: path.into(), tensor: name.clone(), shape: shape_str(&shape), dtype })?;
    if end - start != nbytes {
        return Err(Error::TensorSize {
            path: path.into(),
            tensor: name,
            dtype,
            shape: shape_str(&shape),
            expected: nbytes,
            actual: end - start,
        });
    }
    let offset = data_start.checked_add(start).ok_or_else(|| field_err("data_offsets", "overflows".into()))?;
    Ok(TensorInfo { name, dtype, shape, offset, nbytes })
}

/// Checks that the tensors tile `[data_start, file_len)` exactly.
fn check_layout(path: &Path, tensors: &[TensorInfo], data_start: u64, file_len: u64) -> Result<()> {
    let declared = tensors.iter().map(|t| t.offset.saturating_add(t.nbytes)).max().unwrap_or(data_start);
    let mut order: Vec<&TensorInfo> = tensors.iter().collect();
    order.sort_by_key(|t| (t.offset, t.nbytes));
    let mut end = data_start;
    for t in order {
        if t.offset != end {
            let problem = if t.offset < end { "overlaps the previous tensor" } else { "leaves a gap after the previous tensor" };
            return Err(Error::Offset {
                path: path.into(),
                tensor: t.name.clone(),
                start: t.offset - data_start,
                expected: end - data_start,
                problem,
            });
        }
        end = match t.offset.checked_add(t.nbytes) {
            Some(e) if e <= file_len => e,
            _ => return Err(Error::Truncated { path: path.into(), tensor: t.name.clone(), expected: declared, actual: file_len }),
        };
    }
    if end < file_len {
        return Err(Error::TrailingBytes { path: path.into(), expected: end, actual: file_len, extra: file_len - end });
    }
    Ok(())
}

/// Names what a file that failed validation really is, if it is a Git LFS
/// pointer or a pickle. Only called after the safetensors framing failed.
fn diagnose(path: &Path, file: &File) -> Option<Error> {
    let mut head = Vec::with_capacity(512);
    let mut f = file.try_clone().ok()?;
    std::io::Seek::rewind(&mut f).ok()?;
    f.take(512).read_to_end(&mut head).ok()?;
    if let Some(text) = head.strip_prefix(b"version https://git-lfs.github.com/spec/") {
        let text = String::from_utf8_lossy(text);
        let field =
            |key: &str| text.lines().find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned())).unwrap_or_else(|| "unknown".into());
        return Some(Error::LfsPointer { path: path.into(), oid: field("oid "), size: field("size ") });
    }
    pickle_kind(&head).map(|kind| Error::Pickle { path: path.into(), kind })
}

/// Recognises the first bytes of a pickle or of the zip that `torch.save` writes.
#[must_use]
pub fn pickle_kind(head: &[u8]) -> Option<String> {
    match head {
        [b'P', b'K', 3, 4, ..] => Some("zip archive, as written by torch.save".into()),
        [0x80, v @ 2..=5, ..] => Some(format!("pickle protocol {v}")),
        _ => None,
    }
}

/// Encodes a header for tensors laid out in the given order, each starting
/// where the previous ended. Returns the 8-byte length prefix and the JSON
/// padded with spaces to a multiple of 8 bytes. Keys in `metadata` are sorted.
#[must_use]
pub fn encode_header(tensors: &[(&str, DType, &[u64], u64)], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut obj = serde_json::Map::new();
    if !metadata.is_empty() {
        obj.insert("__metadata__".into(), serde_json::to_value(metadata).unwrap_or_default());
    }
    let mut offset = 0u64;
    for &(name, dtype, shape, nbytes) in tensors {
        obj.insert(
            name.to_owned(),
            serde_json::json!({"dtype": dtype.as_str(), "shape": shape, "data_offsets": [offset, offset + nbytes]}),
        );
        offset += nbytes;
    }
    let mut json = serde_json::to_vec(&Value::Object(obj)).unwrap_or_default();
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out
}

/// Writes a complete single-file safetensors to `out` (tests and small files).
pub fn write_all(
    out: &mut dyn Write,
    tensors: &[(&str, DType, &[u64], &[u8])],
    metadata: &BTreeMap<String, String>,
) -> std::io::Result<()> {
    let layout: Vec<_> = tensors.iter().map(|&(n, d, s, b)| (n, d, s, b.len() as u64)).collect();
    out.write_all(&encode_header(&layout, metadata))?;
    for (_, _, _, bytes) in tensors {
        out.write_all(bytes)?;
    }
    Ok(())
}
