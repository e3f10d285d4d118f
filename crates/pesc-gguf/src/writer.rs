//! The streaming, deterministic GGUF v3 writer.

use crate::error::{GgufError, MetadataError, Result, TensorError};
use crate::metadata::Metadata;
use crate::reader::{MAGIC, MAX_ARRAY_LEN, MAX_STRING_LEN, VERSION};
use crate::tensor::{check_name, pad, TensorSpec};
use crate::value::{Array, Value};
use std::collections::HashSet;
use std::io::Write;

/// One tensor's place in the data section.
#[derive(Debug)]
struct Planned {
    name: String,
    nbytes: u64,
    padded: u64,
}

/// Writes a GGUF v3 file to any [`Write`], in one pass and without seeking.
///
/// [`GgufWriter::new`] takes the complete, ordered metadata and tensor list,
/// validates them against every rule the reader enforces, and writes the
/// header, the metadata, the tensor infos (with offsets laid out exactly as
/// ggml requires: each tensor at the running size, padded to the alignment)
/// and the zero padding up to the data section. The tensors' bytes then follow
/// in the same order through [`write_tensor`](Self::write_tensor) (or
/// [`begin_tensor`](Self::begin_tensor) / [`write_data`](Self::write_data) /
/// [`end_tensor`](Self::end_tensor) for large tensors), each followed by zero
/// padding to the alignment, the last one included. [`finish`](Self::finish)
/// checks every tensor was written and flushes.
///
/// The output depends only on the inputs: the same metadata, tensor list and
/// tensor bytes give byte-identical files.
///
/// The alignment is the metadata's `general.alignment` (which must then be a
/// `UINT32` power of two, at most 1 MiB) or 32 when absent. The writer does
/// not add `general.alignment` itself: like llama.cpp's converter, it leaves
/// the default implicit, so the metadata written is exactly the metadata given.
#[derive(Debug)]
pub struct GgufWriter<W: Write> {
    out: W,
    tensors: Vec<Planned>,
    alignment: u64,
    header_len: u64,
    next: usize,
    /// Bytes written into the tensor `next`, if it has been begun.
    current: Option<u64>,
    poisoned: bool,
}

impl<W: Write> GgufWriter<W> {
    /// Validates `metadata` and `tensors`, then writes everything up to the
    /// data section to `out`.
    pub fn new(mut out: W, metadata: &Metadata, tensors: &[TensorSpec]) -> Result<Self> {
        let alignment = u64::from(metadata.alignment().map_err(GgufError::WriterMetadata)?);
        let mut header = Vec::new();
        header.extend_from_slice(&MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata {
            check_value_len(key, value).map_err(GgufError::WriterMetadata)?;
            put_string(&mut header, key);
            header.extend_from_slice(&value.value_type().id().to_le_bytes());
            put_value(&mut header, value);
        }

        let mut seen = HashSet::new();
        let mut planned = Vec::with_capacity(tensors.len());
        let mut running = 0u64;
        for t in tensors {
            let err = |source| GgufError::WriterTensor { tensor: t.name.clone(), source };
            check_name(&t.name).map_err(err)?;
            if !seen.insert(t.name.as_str()) {
                return Err(err(TensorError::Duplicate));
            }
            let nbytes = t.nbytes().map_err(err)?;
            let padded = pad(nbytes, alignment).ok_or_else(|| err(TensorError::DataOverflow { offset: running, nbytes }))?;
            put_string(&mut header, &t.name);
            // `nbytes` checked the rank is 1..=4.
            header.extend_from_slice(&u32::try_from(t.ne.len()).unwrap_or(u32::MAX).to_le_bytes());
            for &d in &t.ne {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&t.ty.id().to_le_bytes());
            header.extend_from_slice(&running.to_le_bytes());
            running = running.checked_add(padded).ok_or_else(|| err(TensorError::DataOverflow { offset: running, nbytes }))?;
            planned.push(Planned { name: t.name.clone(), nbytes, padded });
        }
        let header_len = pad(header.len() as u64, alignment).unwrap_or(u64::MAX);
        header.resize(usize::try_from(header_len).unwrap_or(usize::MAX), 0);
        out.write_all(&header).map_err(GgufError::Write)?;
        Ok(GgufWriter { out, tensors: planned, alignment, header_len, next: 0, current: None, poisoned: false })
    }

    /// Bytes before the data section (header, metadata, tensor infos, padding).
    #[must_use]
    pub fn header_len(&self) -> u64 {
        self.header_len
    }

    /// The size the finished file will have.
    #[must_use]
    pub fn total_len(&self) -> u64 {
        self.tensors.iter().fold(self.header_len, |acc, t| acc.saturating_add(t.padded))
    }

    /// The data alignment in use.
    #[must_use]
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// The name of the tensor expected next, if any.
    #[must_use]
    pub fn next_tensor(&self) -> Option<&str> {
        self.tensors.get(self.next).map(|t| t.name.as_str())
    }

    /// Writes the whole of the next tensor, `name`, which must be given
    /// exactly its `nbytes` bytes. A wrong name or size changes nothing.
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        self.check_next(name)?;
        let expected = self.tensors[self.next].nbytes;
        if bytes.len() as u64 != expected {
            return Err(GgufError::TensorBytes { tensor: name.to_owned(), expected, actual: bytes.len() as u64 });
        }
        self.begin_tensor(name)?;
        self.write_data(bytes)?;
        self.end_tensor()
    }

    fn check_next(&self, name: &str) -> Result<()> {
        if self.poisoned {
            return Err(GgufError::Poisoned);
        }
        let expected = match (self.current, self.tensors.get(self.next)) {
            (Some(_), Some(t)) => format!("the rest of tensor `{}`", t.name),
            (None, Some(t)) if t.name == name => return Ok(()),
            (None, Some(t)) => format!("tensor `{}`", t.name),
            (_, None) => "no more tensors".to_owned(),
        };
        Err(GgufError::WrongTensor { expected, got: name.to_owned() })
    }

    /// Starts the next tensor, `name`, whose bytes then arrive through
    /// [`write_data`](Self::write_data).
    pub fn begin_tensor(&mut self, name: &str) -> Result<()> {
        self.check_next(name)?;
        self.current = Some(0);
        Ok(())
    }

    /// Writes the next part of the current tensor. More bytes than the tensor
    /// has left is an error and writes nothing.
    pub fn write_data(&mut self, bytes: &[u8]) -> Result<()> {
        if self.poisoned {
            return Err(GgufError::Poisoned);
        }
        let (Some(done), Some(t)) = (self.current, self.tensors.get(self.next)) else {
            return Err(GgufError::WrongTensor { expected: "begin_tensor first".into(), got: "<data>".into() });
        };
        let after = done.saturating_add(bytes.len() as u64);
        if after > t.nbytes {
            return Err(GgufError::TensorBytes { tensor: t.name.clone(), expected: t.nbytes, actual: after });
        }
        self.emit(bytes)?;
        self.current = Some(after);
        Ok(())
    }

    /// Ends the current tensor, which must have received exactly its size,
    /// and writes its zero padding.
    pub fn end_tensor(&mut self) -> Result<()> {
        if self.poisoned {
            return Err(GgufError::Poisoned);
        }
        let (Some(done), Some(t)) = (self.current, self.tensors.get(self.next)) else {
            return Err(GgufError::WrongTensor { expected: "begin_tensor first".into(), got: "<end>".into() });
        };
        if done != t.nbytes {
            return Err(GgufError::TensorBytes { tensor: t.name.clone(), expected: t.nbytes, actual: done });
        }
        let mut left = t.padded - t.nbytes;
        while left > 0 {
            const ZEROS: [u8; 4096] = [0; 4096];
            let n = left.min(ZEROS.len() as u64);
            self.emit(&ZEROS[..usize::try_from(n).unwrap_or(0)])?;
            left -= n;
        }
        self.next += 1;
        self.current = None;
        Ok(())
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).map_err(|e| {
            self.poisoned = true;
            GgufError::Write(e)
        })
    }

    /// Checks that every tensor was written, flushes, and returns the output.
    pub fn finish(mut self) -> Result<W> {
        if self.poisoned {
            return Err(GgufError::Poisoned);
        }
        if let Some(t) = self.tensors.get(self.next) {
            return Err(GgufError::Unfinished { written: self.next, total: self.tensors.len(), next: t.name.clone() });
        }
        self.out.flush().map_err(GgufError::Write)?;
        Ok(self.out)
    }
}

/// Writes a complete GGUF file whose tensors are all in memory (tests and
/// small files): [`GgufWriter::new`], one [`GgufWriter::write_tensor`] per
/// tensor, [`GgufWriter::finish`].
pub fn write_gguf<W: Write>(out: W, metadata: &Metadata, tensors: &[(TensorSpec, &[u8])]) -> Result<W> {
    let specs: Vec<TensorSpec> = tensors.iter().map(|(s, _)| s.clone()).collect();
    let mut w = GgufWriter::new(out, metadata, &specs)?;
    for (spec, bytes) in tensors {
        w.write_tensor(&spec.name, bytes)?;
    }
    w.finish()
}

/// The reader's string and array caps, applied before writing so the writer
/// never produces a file the reader refuses.
fn check_value_len(key: &str, value: &Value) -> Result<(), MetadataError> {
    let too_long =
        |what: &str, len: usize, cap: u64| MetadataError::ValueTooLong { key: key.to_owned(), what: what.to_owned(), len: len as u64, cap };
    match value {
        Value::String(s) if s.len() as u64 > MAX_STRING_LEN => Err(too_long("string", s.len(), MAX_STRING_LEN)),
        Value::Array(a) if a.len() as u64 > MAX_ARRAY_LEN => Err(too_long("array", a.len(), MAX_ARRAY_LEN)),
        Value::Array(Array::String(a)) => match a.iter().find(|s| s.len() as u64 > MAX_STRING_LEN) {
            Some(s) => Err(too_long("array element", s.len(), MAX_STRING_LEN)),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

fn put_string(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_value(buf: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(x) => buf.push(*x),
        Value::I8(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => buf.push(u8::from(*x)),
        Value::String(s) => put_string(buf, s),
        Value::Array(a) => put_array(buf, a),
        Value::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
    }
}

fn put_array(buf: &mut Vec<u8>, a: &Array) {
    buf.extend_from_slice(&a.element_type().id().to_le_bytes());
    buf.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! le {
        ($v:expr) => {
            for x in $v {
                buf.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        Array::U8(v) => buf.extend_from_slice(v),
        Array::I8(v) => le!(v),
        Array::U16(v) => le!(v),
        Array::I16(v) => le!(v),
        Array::U32(v) => le!(v),
        Array::I32(v) => le!(v),
        Array::F32(v) => le!(v),
        Array::Bool(v) => buf.extend(v.iter().map(|&b| u8::from(b))),
        Array::String(v) => {
            for s in v.iter() {
                put_string(buf, s);
            }
        }
        Array::U64(v) => le!(v),
        Array::I64(v) => le!(v),
        Array::F64(v) => le!(v),
    }
}
