//! The validating GGUF reader. See the crate docs for the rules.

use crate::error::{GgufError, MetadataError, Result, TensorError};
use crate::metadata::{Metadata, MAX_KEY_LEN};
use crate::tensor::{check_name_len, check_rank, check_shape, check_type, pad, TensorInfo, MAX_DIMS};
use crate::value::{Array, StringArray, Value, ValueType};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The magic bytes.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// The version the writer produces and the reader prefers.
pub const VERSION: u32 = 3;
/// Longest string value (ggml's `GGUF_MAX_STRING_LENGTH`, 1 GiB).
pub const MAX_STRING_LEN: u64 = 1 << 30;
/// Most array elements (ggml's `GGUF_MAX_ARRAY_ELEMENTS`, 1 Gi).
pub const MAX_ARRAY_LEN: u64 = 1 << 30;
/// Fewest bytes a metadata entry occupies: key length (8), value type (4), a one-byte value.
pub const MIN_KV_SIZE: u64 = 8 + 4 + 1;
/// Fewest bytes a tensor info occupies: name length (8), n_dims (4), one dimension (8), type (4), offset (8).
pub const MIN_TENSOR_INFO_SIZE: u64 = 8 + 4 + 8 + 4 + 8;
/// Size of the fixed header: magic, version, tensor count, metadata count.
pub const HEADER_SIZE: u64 = 4 + 4 + 8 + 8;

/// Bytes read from the file at a time while parsing the header.
const CHUNK: usize = 64 << 10;

/// An open, validated GGUF file. Tensor data is read on demand with
/// positioned reads; nothing is mapped into memory.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    file: File,
    file_len: u64,
    version: u32,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    alignment: u32,
    data_start: u64,
}

macro_rules! file_getters {
    ($($get:ident -> $t:ty;)*) => {$(
        #[doc = concat!("[`Metadata::", stringify!($get), "`], with this file's path in the error.")]
        pub fn $get(&self, key: &str) -> Result<$t> {
            self.metadata.$get(key).map_err(|source| GgufError::Metadata { path: self.path.clone(), source })
        }
    )*};
}

impl GgufFile {
    /// Opens and validates `path`: the header, every metadata entry, every
    /// tensor info, the data layout and that every tensor lies inside the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io = |source| GgufError::Io { path: path.to_owned(), source };
        let file = File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(io(std::io::Error::other("not a regular file")));
        }
        let file_len = meta.len();
        let header = parse(path, &file, file_len)?;
        let index = header.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(GgufFile {
            path: path.to_owned(),
            file,
            file_len,
            version: header.version,
            metadata: header.metadata,
            tensors: header.tensors,
            index,
            alignment: header.alignment,
            data_start: header.data_start,
        })
    }

    /// The file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's length when it was opened.
    #[must_use]
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The GGUF version (3, or 2 which has the same layout).
    #[must_use]
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The metadata, in file order.
    #[must_use]
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The data alignment (`general.alignment`, default 32).
    #[must_use]
    pub fn alignment(&self) -> u32 {
        self.alignment
    }

    /// Absolute offset of the data section.
    #[must_use]
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// The tensors, in file order (which is also data order).
    #[must_use]
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor called `name`.
    #[must_use]
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// Wraps a [`MetadataError`] with this file's path.
    #[must_use]
    pub fn metadata_error(&self, source: MetadataError) -> GgufError {
        GgufError::Metadata { path: self.path.clone(), source }
    }

    file_getters! {
        get_u8 -> u8;
        get_i8 -> i8;
        get_u16 -> u16;
        get_i16 -> i16;
        get_u32 -> u32;
        get_i32 -> i32;
        get_f32 -> f32;
        get_bool -> bool;
        get_u64 -> u64;
        get_i64 -> i64;
        get_f64 -> f64;
        get_str -> &str;
        get_array -> &Array;
        get_str_array -> &StringArray;
        get_u8_array -> &[u8];
        get_i8_array -> &[i8];
        get_u16_array -> &[u16];
        get_i16_array -> &[i16];
        get_u32_array -> &[u32];
        get_i32_array -> &[i32];
        get_f32_array -> &[f32];
        get_bool_array -> &[bool];
        get_u64_array -> &[u64];
        get_i64_array -> &[i64];
        get_f64_array -> &[f64];
    }

    /// Checks that `t` is one of this file's tensors (its bytes lie inside the
    /// file as validated), so a hand-made `TensorInfo` cannot make a read
    /// allocate or read beyond what the file holds.
    fn check_own(&self, t: &TensorInfo) -> Result<()> {
        match self.tensor(&t.name) {
            Some(own) if own == t => Ok(()),
            _ => Err(GgufError::ForeignTensor { path: self.path.clone(), tensor: t.name.clone() }),
        }
    }

    fn read_error(&self, t: &TensorInfo, e: std::io::Error) -> GgufError {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            GgufError::UnexpectedEof { path: self.path.clone(), tensor: t.name.clone() }
        } else {
            GgufError::Io { path: self.path.clone(), source: e }
        }
    }

    /// Reads a tensor's bytes into `buf`, which must be exactly `t.nbytes` long.
    pub fn read_into(&self, t: &TensorInfo, buf: &mut [u8]) -> Result<()> {
        self.check_own(t)?;
        if buf.len() as u64 != t.nbytes {
            return Err(GgufError::TensorBytes { tensor: t.name.clone(), expected: t.nbytes, actual: buf.len() as u64 });
        }
        self.file.read_exact_at(buf, t.data_offset).map_err(|e| self.read_error(t, e))
    }

    /// Reads a whole tensor (its `nbytes`, without padding). Its size was
    /// checked against the file's length when the file was opened.
    pub fn read(&self, t: &TensorInfo) -> Result<Vec<u8>> {
        self.check_own(t)?;
        let len = usize::try_from(t.nbytes).map_err(|_| GgufError::TensorBeyondFile {
            path: self.path.clone(),
            tensor: t.name.clone(),
            start: t.data_offset,
            end: t.data_offset.saturating_add(t.nbytes),
            file_len: self.file_len,
        })?;
        let mut buf = vec![0u8; len];
        self.read_into(t, &mut buf)?;
        Ok(buf)
    }

    /// Reads `len` bytes of a tensor starting `start` bytes into its data (a
    /// stacked expert's slice, say); the range must lie within the tensor.
    pub fn read_part(&self, t: &TensorInfo, start: u64, len: u64) -> Result<Vec<u8>> {
        self.check_own(t)?;
        let end = start.checked_add(len).filter(|&e| e <= t.nbytes).ok_or(GgufError::TensorBytes {
            tensor: t.name.clone(),
            expected: t.nbytes,
            actual: start.saturating_add(len),
        })?;
        let mut buf = vec![0u8; usize::try_from(end - start).unwrap_or(0)];
        self.file.read_exact_at(&mut buf, t.data_offset + start).map_err(|e| self.read_error(t, e))?;
        Ok(buf)
    }

    /// Streams a tensor's bytes into `out` in chunks of at most 8 MiB.
    pub fn copy_to(&self, t: &TensorInfo, out: &mut dyn Write) -> Result<()> {
        const COPY_CHUNK: u64 = 8 << 20;
        self.check_own(t)?;
        let mut buf = vec![0u8; usize::try_from(t.nbytes.min(COPY_CHUNK)).unwrap_or(0)];
        let mut done = 0u64;
        while done < t.nbytes {
            let n = (t.nbytes - done).min(COPY_CHUNK);
            let chunk = &mut buf[..usize::try_from(n).unwrap_or(0)];
            self.file.read_exact_at(chunk, t.data_offset + done).map_err(|e| self.read_error(t, e))?;
            out.write_all(chunk).map_err(GgufError::Write)?;
            done += n;
        }
        Ok(())
    }
}

/// Everything before the data section.
struct Header {
    version: u32,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    alignment: u32,
    data_start: u64,
}

/// A buffered reader over the file with positioned reads. Every read first
/// checks that the bytes exist (`need`), so a length taken from the file can
/// never make it allocate more than the file holds.
struct Cursor<'a> {
    path: &'a Path,
    file: &'a File,
    len: u64,
    pos: u64,
    buf: Vec<u8>,
    buf_pos: u64,
}

impl<'a> Cursor<'a> {
    fn new(path: &'a Path, file: &'a File, len: u64) -> Self {
        Cursor { path, file, len, pos: 0, buf: Vec::new(), buf_pos: 0 }
    }

    fn remaining(&self) -> u64 {
        self.len - self.pos
    }

    fn need(&self, n: u64, what: &dyn Fn() -> String) -> Result<()> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                path: self.path.to_owned(),
                what: what(),
                offset: self.pos,
                needed: n,
                remaining: self.remaining(),
            });
        }
        Ok(())
    }

    /// Fills `dst` from the current position; the caller has called `need`.
    fn fill(&mut self, dst: &mut [u8], what: &dyn Fn() -> String) -> Result<()> {
        let start_pos = self.pos;
        let mut done = 0;
        while done < dst.len() {
            let buf_end = self.buf_pos + self.buf.len() as u64;
            if self.pos >= self.buf_pos && self.pos < buf_end {
                let at = usize::try_from(self.pos - self.buf_pos).unwrap_or(0);
                let n = (self.buf.len() - at).min(dst.len() - done);
                dst[done..done + n].copy_from_slice(&self.buf[at..at + n]);
                done += n;
                self.pos += n as u64;
                continue;
            }
            let want = dst.len() - done;
            let io = if want >= CHUNK {
                let r = self.file.read_exact_at(&mut dst[done..], self.pos);
                done = dst.len();
                self.pos += want as u64;
                r
            } else {
                let n = usize::try_from(self.remaining().min(CHUNK as u64)).unwrap_or(CHUNK);
                self.buf.resize(n, 0);
                self.buf_pos = self.pos;
                self.file.read_exact_at(&mut self.buf, self.pos).inspect_err(|_| self.buf.clear())
            };
            if let Err(e) = io {
                // The file shrank after its length was taken.
                return Err(if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    GgufError::Truncated {
                        path: self.path.to_owned(),
                        what: what(),
                        offset: start_pos,
                        needed: dst.len() as u64,
                        remaining: 0,
                    }
                } else {
                    GgufError::Io { path: self.path.to_owned(), source: e }
                });
            }
        }
        Ok(())
    }

    fn bytes<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        self.need(N as u64, what)?;
        let mut b = [0u8; N];
        self.fill(&mut b, what)?;
        Ok(b)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        self.bytes::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        self.bytes::<8>(what).map(u64::from_le_bytes)
    }

    /// A length-checked byte vector: `n` was checked against `remaining`
    /// before the allocation.
    fn vec(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<Vec<u8>> {
        self.need(n, what)?;
        let n = usize::try_from(n).map_err(|_| self.beyond(what(), n, n))?;
        let mut v = vec![0u8; n];
        self.fill(&mut v, what)?;
        Ok(v)
    }

    fn beyond(&self, what: String, len: u64, bytes: u64) -> GgufError {
        GgufError::LengthBeyondFile { path: self.path.to_owned(), what, len, bytes, remaining: self.remaining(), offset: self.pos }
    }

    /// A `gguf_string`: u64 length (checked against `cap` and the bytes left), then UTF-8.
    fn string(&mut self, cap: u64, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.u64(what)?;
        self.string_body(len, cap, what)
    }

    fn string_body(&mut self, len: u64, cap: u64, what: &dyn Fn() -> String) -> Result<String> {
        if len > cap {
            return Err(GgufError::LengthCap { path: self.path.to_owned(), what: what(), len, cap });
        }
        if len > self.remaining() {
            return Err(self.beyond(what(), len, len));
        }
        let bytes = self.vec(len, what)?;
        String::from_utf8(bytes).map_err(|e| GgufError::Utf8 {
            path: self.path.to_owned(),
            what: what(),
            offset: e.utf8_error().valid_up_to(),
        })
    }
}

fn parse(path: &Path, file: &File, file_len: u64) -> Result<Header> {
    let mut cur = Cursor::new(path, file, file_len);
    if file_len < 4 {
        return Err(GgufError::TooSmall { path: path.to_owned(), len: file_len });
    }
    let magic = cur.bytes::<4>(&|| "the magic".into())?;
    if magic != MAGIC {
        return Err(GgufError::Magic { path: path.to_owned(), found: escape(&magic) });
    }
    if file_len < HEADER_SIZE {
        return Err(GgufError::TooSmall { path: path.to_owned(), len: file_len });
    }
    let version = cur.u32(&|| "the version".into())?;
    check_version(path, version)?;
    let n_tensors = cur.u64(&|| "the tensor count".into())?;
    let n_kv = cur.u64(&|| "the metadata entry count".into())?;
    // Both counts are bounded by what the rest of the file can hold before
    // anything is allocated (ggml bounds them by SIZE_MAX / entry size; the
    // bytes left are the tighter bound).
    check_count(&cur, "metadata entry count", n_kv, MIN_KV_SIZE)?;
    check_count(&cur, "tensor count", n_tensors, MIN_TENSOR_INFO_SIZE)?;

    let mut metadata = Metadata::new();
    for i in 0..n_kv {
        let key = read_key(&mut cur, i)?;
        let ty = cur.u32(&|| format!("the value type of key `{key}`"))?;
        let value = read_value(&mut cur, &key, ty)?;
        // Empty and overlong keys were refused by `read_key`; this refuses duplicates.
        metadata.push(key, value).map_err(|source| GgufError::Metadata { path: path.to_owned(), source })?;
    }
    let alignment = metadata.alignment().map_err(|source| GgufError::Metadata { path: path.to_owned(), source })?;
    let align = u64::from(alignment);

    // Re-check against what is left now that the metadata is read.
    check_count(&cur, "tensor count", n_tensors, MIN_TENSOR_INFO_SIZE)?;
    let mut tensors: Vec<TensorInfo> = Vec::new();
    let mut names: HashSet<String> = HashSet::new();
    let mut running = 0u64;
    for i in 0..n_tensors {
        let t = read_tensor_info(&mut cur, i, &names)?;
        let (name, ty, ne, offset) = t;
        let tensor_err = |source| GgufError::Tensor { path: path.to_owned(), tensor: name.clone(), source };
        let nbytes = check_shape(ty, &ne).map_err(tensor_err)?;
        // ggml: each offset must equal the running padded size, in info order.
        if offset != running {
            let problem =
                if offset < running { "overlaps the previous tensor or is out of order" } else { "leaves a gap after the previous tensor" };
            return Err(tensor_err(TensorError::Offset { offset, expected: running, problem }));
        }
        running = pad(nbytes, align)
            .and_then(|p| running.checked_add(p))
            .ok_or_else(|| tensor_err(TensorError::DataOverflow { offset, nbytes }))?;
        names.insert(name.clone());
        tensors.push(TensorInfo { name, ty, ne, offset, data_offset: 0, nbytes });
    }

    // The data section starts at the next multiple of the alignment.
    let data_start = pad(cur.pos, align).unwrap_or(u64::MAX);
    for t in &mut tensors {
        let start = data_start.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.nbytes));
        match (start, end) {
            (Some(start), Some(end)) if end <= file_len => t.data_offset = start,
            _ => {
                return Err(GgufError::TensorBeyondFile {
                    path: path.to_owned(),
                    tensor: t.name.clone(),
                    start: start.unwrap_or(u64::MAX),
                    end: end.unwrap_or(u64::MAX),
                    file_len,
                })
            }
        }
    }
    Ok(Header { version, metadata, tensors, alignment, data_start })
}

fn check_version(path: &Path, version: u32) -> Result<()> {
    let problem = match version {
        2 | 3 => return Ok(()),
        0 => "not a valid version",
        1 => "GGUFv1 is no longer supported (ggml refuses it too); convert the model again with a current llama.cpp",
        v if v & 0xFFFF == 0 => "the file looks byte-swapped (big-endian); only little-endian GGUF files are supported",
        _ => "newer than this reader supports (versions 2 and 3)",
    };
    Err(GgufError::Version { path: path.to_owned(), version, problem })
}

fn check_count(cur: &Cursor<'_>, what: &'static str, value: u64, min_entry: u64) -> Result<()> {
    let max = cur.remaining() / min_entry;
    if value > max {
        return Err(GgufError::Count { path: cur.path.to_owned(), what, value, remaining: cur.remaining(), min_entry, max });
    }
    Ok(())
}

fn read_key(cur: &mut Cursor<'_>, i: u64) -> Result<String> {
    let what = || format!("the key of metadata entry {i}");
    let len = cur.u64(&what)?;
    let index = usize::try_from(i).unwrap_or(usize::MAX);
    let meta_err = |source| GgufError::Metadata { path: cur.path.to_owned(), source };
    if len == 0 {
        return Err(meta_err(MetadataError::EmptyKey { index }));
    }
    if len > MAX_KEY_LEN {
        return Err(meta_err(MetadataError::KeyTooLong { index, len, cap: MAX_KEY_LEN }));
    }
    cur.string_body(len, MAX_KEY_LEN, &what)
}

fn value_type(cur: &Cursor<'_>, key: &str, id: u32, role: &str) -> Result<ValueType> {
    ValueType::from_id(id).ok_or_else(|| GgufError::ValueType {
        path: cur.path.to_owned(),
        key: key.to_owned(),
        problem: format!("{role} {id} is not a GGUF value type (0 to 12)"),
    })
}

fn read_value(cur: &mut Cursor<'_>, key: &str, ty: u32) -> Result<Value> {
    let what = || format!("the value of key `{key}`");
    let ty = value_type(cur, key, ty, "value type")?;
    Ok(match ty {
        ValueType::U8 => Value::U8(u8::from_le_bytes(cur.bytes(&what)?)),
        ValueType::I8 => Value::I8(i8::from_le_bytes(cur.bytes(&what)?)),
        ValueType::U16 => Value::U16(u16::from_le_bytes(cur.bytes(&what)?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(cur.bytes(&what)?)),
        ValueType::U32 => Value::U32(u32::from_le_bytes(cur.bytes(&what)?)),
        ValueType::I32 => Value::I32(i32::from_le_bytes(cur.bytes(&what)?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(cur.bytes(&what)?)),
        ValueType::Bool => {
            let [b] = cur.bytes(&what)?;
            Value::Bool(bool_byte(cur, key, b)?)
        }
        ValueType::String => Value::String(cur.string(MAX_STRING_LEN, &what)?),
        ValueType::Array => Value::Array(read_array(cur, key)?),
        ValueType::U64 => Value::U64(u64::from_le_bytes(cur.bytes(&what)?)),
        ValueType::I64 => Value::I64(i64::from_le_bytes(cur.bytes(&what)?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(cur.bytes(&what)?)),
    })
}

fn bool_byte(cur: &Cursor<'_>, key: &str, b: u8) -> Result<bool> {
    match b {
        0 => Ok(false),
        1 => Ok(true),
        byte => Err(GgufError::Metadata { path: cur.path.to_owned(), source: MetadataError::Bool { key: key.to_owned(), byte } }),
    }
}

fn read_array(cur: &mut Cursor<'_>, key: &str) -> Result<Array> {
    let what = || format!("array `{key}`");
    let elem = cur.u32(&what)?;
    let elem = value_type(cur, key, elem, "array element type")?;
    if elem == ValueType::Array {
        return Err(GgufError::ValueType {
            path: cur.path.to_owned(),
            key: key.to_owned(),
            problem: "arrays of arrays are not supported (ggml's writer never produces them)".into(),
        });
    }
    let n = cur.u64(&what)?;
    if n > MAX_ARRAY_LEN {
        return Err(GgufError::LengthCap { path: cur.path.to_owned(), what: what(), len: n, cap: MAX_ARRAY_LEN });
    }
    // n ≤ 2^30 and min_size ≤ 8, so the product cannot overflow.
    let min_bytes = n * elem.min_size();
    if min_bytes > cur.remaining() {
        return Err(cur.beyond(what(), n, min_bytes));
    }
    let count = usize::try_from(n).map_err(|_| cur.beyond(what(), n, min_bytes))?;
    if elem == ValueType::String {
        // The length prefixes alone take 8 bytes each, so `count` offsets
        // (8 bytes each on 64-bit) take no more memory than the file holds.
        let mut a = StringArray::with_capacity(count, 0);
        for j in 0..n {
            let s = cur.string(MAX_STRING_LEN, &|| format!("element {j} of array `{key}`"))?;
            a.push(&s);
        }
        return Ok(Array::String(a));
    }
    fixed_array(cur, key, elem, count)
}

/// Reads `count` fixed-size elements in chunks (the byte count was checked
/// against the bytes left, so each typed vector is at most the file's size).
fn fixed_array(cur: &mut Cursor<'_>, key: &str, elem: ValueType, count: usize) -> Result<Array> {
    fn collect<T, const N: usize>(cur: &mut Cursor<'_>, key: &str, count: usize, f: impl Fn([u8; N]) -> T) -> Result<Vec<T>> {
        let mut out = Vec::with_capacity(count);
        let mut chunk = vec![0u8; (CHUNK / N * N).min(count * N)];
        let mut left = count;
        while left > 0 {
            let n = left.min(chunk.len() / N);
            let bytes = &mut chunk[..n * N];
            cur.need(bytes.len() as u64, &|| format!("array `{key}`"))?;
            cur.fill(bytes, &|| format!("array `{key}`"))?;
            out.extend(bytes.chunks_exact(N).map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            }));
            left -= n;
        }
        Ok(out)
    }
    Ok(match elem {
        ValueType::U8 => Array::U8(collect(cur, key, count, |[b]: [u8; 1]| b)?),
        ValueType::I8 => Array::I8(collect(cur, key, count, i8::from_le_bytes)?),
        ValueType::U16 => Array::U16(collect(cur, key, count, u16::from_le_bytes)?),
        ValueType::I16 => Array::I16(collect(cur, key, count, i16::from_le_bytes)?),
        ValueType::U32 => Array::U32(collect(cur, key, count, u32::from_le_bytes)?),
        ValueType::I32 => Array::I32(collect(cur, key, count, i32::from_le_bytes)?),
        ValueType::F32 => Array::F32(collect(cur, key, count, f32::from_le_bytes)?),
        ValueType::U64 => Array::U64(collect(cur, key, count, u64::from_le_bytes)?),
        ValueType::I64 => Array::I64(collect(cur, key, count, i64::from_le_bytes)?),
        ValueType::F64 => Array::F64(collect(cur, key, count, f64::from_le_bytes)?),
        ValueType::Bool => {
            let raw = collect(cur, key, count, |[b]: [u8; 1]| b)?;
            if let Some(&byte) = raw.iter().find(|&&b| b > 1) {
                return Err(GgufError::Metadata { path: cur.path.to_owned(), source: MetadataError::Bool { key: key.to_owned(), byte } });
            }
            Array::Bool(raw.into_iter().map(|b| b == 1).collect())
        }
        ValueType::String | ValueType::Array => unreachable!("handled by read_array"),
    })
}

type RawTensorInfo = (String, pesc_quant::GgmlType, Vec<u64>, u64);

fn read_tensor_info(cur: &mut Cursor<'_>, i: u64, seen: &HashSet<String>) -> Result<RawTensorInfo> {
    let placeholder = format!("#{i}");
    let tensor_err = |tensor: &str, source| GgufError::Tensor { path: cur.path.to_owned(), tensor: tensor.to_owned(), source };
    let what = || format!("the name of tensor info {i}");
    let len = cur.u64(&what)?;
    if len == 0 {
        return Err(tensor_err(&placeholder, TensorError::EmptyName));
    }
    // Checked before reading, so an overlong name is never allocated.
    check_name_len(len).map_err(|e| tensor_err(&placeholder, e))?;
    let name = cur.string_body(len, MAX_KEY_LEN, &what)?;
    if seen.contains(&name) {
        return Err(tensor_err(&name, TensorError::Duplicate));
    }
    let n_dims = cur.u32(&|| format!("n_dims of tensor `{name}`"))?;
    check_rank(u64::from(n_dims)).map_err(|e| tensor_err(&name, e))?;
    let mut ne = [0u64; MAX_DIMS];
    let n_dims = usize::try_from(n_dims).unwrap_or(MAX_DIMS);
    for (j, d) in ne.iter_mut().take(n_dims).enumerate() {
        *d = cur.u64(&|| format!("ne[{j}] of tensor `{name}`"))?;
    }
    let ty = cur.u32(&|| format!("the type of tensor `{name}`"))?;
    let ty = check_type(ty).map_err(|e| tensor_err(&name, e))?;
    let offset = cur.u64(&|| format!("the data offset of tensor `{name}`"))?;
    Ok((name, ty, ne[..n_dims].to_vec(), offset))
}

/// `b"GGML"` → `"GGML"`, other bytes as `\xNN`.
fn escape(bytes: &[u8]) -> String {
    let mut s = String::from("\"");
    for &b in bytes {
        if b.is_ascii_graphic() || b == b' ' {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s.push('"');
    s
}
