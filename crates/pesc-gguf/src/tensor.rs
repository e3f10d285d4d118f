//! Tensor descriptions and the rules shared by the reader and the writer.

use crate::error::TensorError;
use pesc_quant::GgmlType;

/// Most dimensions a GGUF tensor may have (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// ggml's `GGML_MAX_NAME`: a name plus its NUL must fit, so names are at most 63 bytes.
pub const GGML_MAX_NAME: usize = 64;
/// Largest element count, dimension, or byte size (ggml uses `int64_t`).
pub const MAX_I64: u64 = i64::MAX as u64;

/// One tensor of a GGUF file, validated against the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name.
    pub name: String,
    /// Its ggml type.
    pub ty: GgmlType,
    /// Dimensions in ggml order: `ne[0]` is the contiguous row length (a
    /// PyTorch `[out, in]` weight is `[in, out]` here). 1 to 4 entries, each ≥ 1.
    pub ne: Vec<u64>,
    /// Offset of its data relative to the start of the data section, as stored.
    pub offset: u64,
    /// Absolute offset of its first byte in the file.
    pub data_offset: u64,
    /// Its byte size (`GgmlType::nbytes(ne)`), without padding.
    pub nbytes: u64,
}

impl TensorInfo {
    /// Element count (checked to fit in an `i64` when the file was opened).
    #[must_use]
    pub fn n_elements(&self) -> u64 {
        self.ne.iter().product()
    }

    /// The shape in PyTorch order (outermost first): `ne` reversed.
    #[must_use]
    pub fn shape(&self) -> Vec<u64> {
        self.ne.iter().rev().copied().collect()
    }
}

/// A tensor the writer will write: its name, type and ggml-order dimensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// The tensor's name (1 to 63 bytes, unique in the file).
    pub name: String,
    /// Its ggml type.
    pub ty: GgmlType,
    /// Dimensions in ggml order (`ne[0]` is the row length), 1 to 4, each ≥ 1.
    pub ne: Vec<u64>,
}

impl TensorSpec {
    /// A spec from ggml-order dimensions.
    #[must_use]
    pub fn new(name: impl Into<String>, ty: GgmlType, ne: &[u64]) -> Self {
        TensorSpec { name: name.into(), ty, ne: ne.to_vec() }
    }

    /// A spec from a PyTorch-order shape (outermost first), reversed into ggml order.
    #[must_use]
    pub fn from_shape(name: impl Into<String>, ty: GgmlType, shape: &[u64]) -> Self {
        TensorSpec { name: name.into(), ty, ne: shape.iter().rev().copied().collect() }
    }

    /// The byte size, after checking the name-independent rules (rank,
    /// dimensions, element count, block size, byte size).
    pub fn nbytes(&self) -> Result<u64, TensorError> {
        check_shape(self.ty, &self.ne)
    }
}

/// `[4096, 32000]` style.
pub(crate) fn shape_str(ne: &[u64]) -> String {
    let parts: Vec<String> = ne.iter().map(u64::to_string).collect();
    format!("[{}]", parts.join(", "))
}

/// The name rules: non-empty and below `GGML_MAX_NAME` bytes. UTF-8 is
/// guaranteed by the caller's `&str`.
pub(crate) fn check_name(name: &str) -> Result<(), TensorError> {
    if name.is_empty() {
        return Err(TensorError::EmptyName);
    }
    check_name_len(name.len() as u64)
}

pub(crate) fn check_name_len(len: u64) -> Result<(), TensorError> {
    if len >= GGML_MAX_NAME as u64 {
        return Err(TensorError::NameTooLong { len, max: GGML_MAX_NAME as u64 - 1 });
    }
    Ok(())
}

pub(crate) fn check_rank(n_dims: u64) -> Result<(), TensorError> {
    if n_dims == 0 || n_dims > MAX_DIMS as u64 {
        return Err(TensorError::Rank { n_dims });
    }
    Ok(())
}

/// Rank 1..=4; every `ne[j]` in `1..=i64::MAX`; element count ≤ `i64::MAX`;
/// `ne[0]` whole blocks; byte size ≤ `i64::MAX`. Returns the byte size.
/// Every product is checked, and no division has a divisor taken from the input.
pub(crate) fn check_shape(ty: GgmlType, ne: &[u64]) -> Result<u64, TensorError> {
    check_rank(ne.len() as u64)?;
    for (dim, &value) in ne.iter().enumerate() {
        if value == 0 {
            return Err(TensorError::ZeroDim { dim, shape: shape_str(ne) });
        }
        if value > MAX_I64 {
            return Err(TensorError::DimTooLarge { dim, value, max: MAX_I64 });
        }
    }
    let elements = ne.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
    if !matches!(elements, Some(n) if n <= MAX_I64) {
        return Err(TensorError::ElementOverflow { shape: shape_str(ne), max: MAX_I64 });
    }
    let block = ty.block_size();
    if ne[0] % block != 0 {
        return Err(TensorError::BlockSize { ty, ne0: ne[0], block });
    }
    match ty.nbytes(ne) {
        Some(n) if n <= MAX_I64 => Ok(n),
        _ => Err(TensorError::ByteOverflow { ty, shape: shape_str(ne), max: MAX_I64 }),
    }
}

/// The type with `id`, or an error saying what ggml calls that id.
pub(crate) fn check_type(id: u32) -> Result<GgmlType, TensorError> {
    GgmlType::from_id(id).ok_or_else(|| TensorError::UnknownType { id, note: unknown_type_note(id) })
}

fn unknown_type_note(id: u32) -> String {
    let known = match id {
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        40 => "NVFP4",
        41 => "Q1_0",
        42 => "Q2_0",
        4 | 5 | 31..=33 | 36..=38 => return "a type id ggml has removed".into(),
        _ => return "not a ggml type id".into(),
    };
    format!("ggml type {known}, which pesc-convert does not support")
}

/// `n` rounded up to a multiple of `align` (a power of two), or `None` on overflow.
pub(crate) fn pad(n: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    Some(n.checked_add(align - 1)? & !(align - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_is_checked_near_u64_max() {
        assert_eq!(pad(0, 32), Some(0));
        assert_eq!(pad(1, 32), Some(32));
        assert_eq!(pad(32, 32), Some(32));
        assert_eq!(pad(u64::MAX - 31, 32), Some(u64::MAX - 31));
        // GGML_PAD wraps to 0 here (llama.cpp #24759); this returns None.
        assert_eq!(pad(u64::MAX - 30, 32), None);
        assert_eq!(pad(u64::MAX, 1), Some(u64::MAX));
    }

    #[test]
    fn shape_rules_both_sides_of_each_bound() {
        assert_eq!(check_shape(GgmlType::F32, &[1]), Ok(4));
        assert_eq!(check_shape(GgmlType::I8, &[MAX_I64]), Ok(MAX_I64));
        assert!(matches!(check_shape(GgmlType::I8, &[MAX_I64 + 1]), Err(TensorError::DimTooLarge { dim: 0, .. })));
        assert_eq!(check_shape(GgmlType::I8, &[MAX_I64 / 2, 2]), Ok(MAX_I64 - 1));
        assert!(matches!(check_shape(GgmlType::I8, &[MAX_I64 / 2 + 1, 2]), Err(TensorError::ElementOverflow { .. })));
        assert!(matches!(check_shape(GgmlType::I16, &[MAX_I64 / 2 + 1]), Err(TensorError::ByteOverflow { .. })));
        assert_eq!(check_shape(GgmlType::I16, &[MAX_I64 / 2]), Ok(MAX_I64 - 1));
        assert_eq!(check_shape(GgmlType::Q4_K, &[512, 3]), Ok(2 * 144 * 3));
        assert!(matches!(check_shape(GgmlType::Q4_K, &[576]), Err(TensorError::BlockSize { ne0: 576, block: 256, .. })));
        assert!(matches!(check_rank(0), Err(TensorError::Rank { n_dims: 0 })));
        assert!(check_rank(4).is_ok());
        assert!(matches!(check_rank(5), Err(TensorError::Rank { n_dims: 5 })));
        assert!(check_name_len(63).is_ok());
        assert!(matches!(check_name_len(64), Err(TensorError::NameTooLong { len: 64, max: 63 })));
    }

    #[test]
    fn unknown_types_are_named() {
        assert_eq!(check_type(0), Ok(GgmlType::F32));
        assert!(check_type(43).unwrap_err().to_string().contains("not a ggml type id"));
        assert!(check_type(5).unwrap_err().to_string().contains("removed"));
        assert!(check_type(29).unwrap_err().to_string().contains("IQ1_M"));
    }
}
