//! Byte-building helpers for hand-made (and hostile) GGUF files.
#![allow(dead_code)]

use pesc_gguf::{GgufError, GgufFile};
use std::io::Write;
use std::time::{Duration, Instant};

pub const T_U8: u32 = 0;
pub const T_I8: u32 = 1;
pub const T_U32: u32 = 4;
pub const T_I32: u32 = 5;
pub const T_F32: u32 = 6;
pub const T_BOOL: u32 = 7;
pub const T_STRING: u32 = 8;
pub const T_ARRAY: u32 = 9;

pub const F32: u32 = 0;
pub const Q8_0: u32 = 8;
pub const Q4_K: u32 = 12;
pub const I8: u32 = 24;
pub const F64: u32 = 28;

/// Magic, version, counts.
pub fn header_v(version: u32, n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&n_tensors.to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    b
}

/// A v3 header.
pub fn header(n_tensors: u64, n_kv: u64) -> Vec<u8> {
    header_v(3, n_tensors, n_kv)
}

/// A `gguf_string`.
pub fn string(s: &[u8]) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(s);
    b
}

/// A key, a value type and the value's raw bytes.
pub fn kv_raw(key: &[u8], ty: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = string(key);
    b.extend_from_slice(&ty.to_le_bytes());
    b.extend_from_slice(payload);
    b
}

pub fn kv_string(key: &str, value: &str) -> Vec<u8> {
    kv_raw(key.as_bytes(), T_STRING, &string(value.as_bytes()))
}

pub fn kv_u32(key: &str, value: u32) -> Vec<u8> {
    kv_raw(key.as_bytes(), T_U32, &value.to_le_bytes())
}

pub fn kv_i32(key: &str, value: i32) -> Vec<u8> {
    kv_raw(key.as_bytes(), T_I32, &value.to_le_bytes())
}

/// An array header (element type, count) followed by `elems`.
pub fn kv_array(key: &str, elem_ty: u32, count: u64, elems: &[u8]) -> Vec<u8> {
    let mut p = elem_ty.to_le_bytes().to_vec();
    p.extend_from_slice(&count.to_le_bytes());
    p.extend_from_slice(elems);
    kv_raw(key.as_bytes(), T_ARRAY, &p)
}

/// A tensor info: name, n_dims = `ne.len()`, dims, type, offset.
pub fn tensor_info(name: &[u8], ne: &[u64], ty: u32, offset: u64) -> Vec<u8> {
    tensor_info_ndims(name, u32::try_from(ne.len()).unwrap(), ne, ty, offset)
}

/// A tensor info whose `n_dims` field need not match `ne.len()`.
pub fn tensor_info_ndims(name: &[u8], n_dims: u32, ne: &[u64], ty: u32, offset: u64) -> Vec<u8> {
    let mut b = string(name);
    b.extend_from_slice(&n_dims.to_le_bytes());
    for d in ne {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b.extend_from_slice(&ty.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b
}

/// Zero-pads `b` to a multiple of `align`.
pub fn pad_to(b: &mut Vec<u8>, align: usize) {
    while b.len() % align != 0 {
        b.push(0);
    }
}

/// A complete file: header with the right counts, the KVs, the infos, zero
/// padding to 32, then `data`.
pub fn file(kvs: &[Vec<u8>], infos: &[Vec<u8>], data: &[u8]) -> Vec<u8> {
    file_aligned(kvs, infos, data, 32)
}

pub fn file_aligned(kvs: &[Vec<u8>], infos: &[Vec<u8>], data: &[u8], align: usize) -> Vec<u8> {
    let mut b = header(infos.len() as u64, kvs.len() as u64);
    for kv in kvs {
        b.extend_from_slice(kv);
    }
    for ti in infos {
        b.extend_from_slice(ti);
    }
    pad_to(&mut b, align);
    b.extend_from_slice(data);
    b
}

/// Writes `bytes` to a temporary file and opens it.
pub fn open_bytes(bytes: &[u8]) -> (tempfile::NamedTempFile, Result<GgufFile, GgufError>) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    let r = GgufFile::open(f.path());
    (f, r)
}

/// Opens `bytes` and asserts it is refused, quickly, with a message that
/// names the file and contains `needle`. Returns the message.
#[track_caller]
pub fn assert_rejects(bytes: &[u8], needle: &str) -> String {
    let start = Instant::now();
    let (f, r) = open_bytes(bytes);
    let elapsed = start.elapsed();
    let err = match r {
        Ok(g) => panic!("expected an error containing {needle:?}, but the file opened: {g:?}"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(msg.contains(needle), "error {msg:?} does not contain {needle:?}");
    assert!(msg.contains(&f.path().display().to_string()), "error {msg:?} does not name the file");
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    msg
}

/// Opens `bytes` and asserts it is accepted.
#[track_caller]
pub fn assert_accepts(bytes: &[u8]) -> GgufFile {
    let (_f, r) = open_bytes(bytes);
    // The open file handle keeps the data readable after the temp path is removed.
    r.unwrap_or_else(|e| panic!("expected the file to open: {e}"))
}
