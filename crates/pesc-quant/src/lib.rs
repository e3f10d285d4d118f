//! ggml tensor types and their encodings: ids, block geometry, checked byte
//! sizes, and byte-exact quantizers and dequantizers.
//!
//! The table ([`GgmlType`]) is what every GGUF reader and writer consults.
//! The conversions are written from ggml's reference arithmetic
//! (`ggml-quants.c`: `quantize_row_*_ref` and `dequantize_row_*`, the block
//! structs of `ggml-common.h`) and produce the same bytes and the same f32
//! bits as ggml built for x86-64:
//!
//! - `float` (private): F32, F16 and BF16, element by element.
//! - `legacy` (private): the 32-element block types Q8_0, Q4_0, Q4_1, Q5_0
//!   and Q5_1.
//! - `kquants` (private): the 256-element super-block types. Q4_K, Q5_K and
//!   Q6_K quantize exactly as `llama-quantize` does without an importance
//!   matrix (ggml then calls the `_ref` functions); Q2_K..Q6_K dequantize.
//!
//! The public entry points are [`quantize`] / [`quantize_into`] and
//! [`dequantize`] / [`dequantize_into`]. They are single-threaded and
//! deterministic: the output depends only on the input values, so callers may
//! split a tensor at block boundaries (for instance by rows) and work on the
//! pieces in parallel. Quantized types reject NaN and infinities, which ggml
//! would turn into undefined integer conversions; the float types pass them
//! through the way ggml does.
//!
//! [`nf4`] is bitsandbytes' NF4 (QLoRA's 4-bit NormalFloat), byte for byte.
//!
//! Test vectors in `fixtures/quant` (made by `fixtures/quant/make_vectors.py`
//! from gguf-py 0.19.0 and ggml's own C code) pin every type bit for bit.

mod error;
mod float;
mod kquants;
mod legacy;
pub mod nf4;

pub use error::QuantError;

/// A ggml tensor type (`enum ggml_type`), with its numeric id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[allow(non_camel_case_types)]
#[non_exhaustive]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// 4-bit, 32-element blocks, scale only.
    Q4_0,
    /// 4-bit, 32-element blocks, scale and minimum.
    Q4_1,
    /// 5-bit, 32-element blocks, scale only.
    Q5_0,
    /// 5-bit, 32-element blocks, scale and minimum.
    Q5_1,
    /// 8-bit, 32-element blocks.
    Q8_0,
    /// 8-bit with block sums (activations only).
    Q8_1,
    /// 2-bit k-quant.
    Q2_K,
    /// 3-bit k-quant.
    Q3_K,
    /// 4-bit k-quant.
    Q4_K,
    /// 5-bit k-quant.
    Q5_K,
    /// 6-bit k-quant.
    Q6_K,
    /// 8-bit k-quant (activations only).
    Q8_K,
    /// 8-bit integer.
    I8,
    /// 16-bit integer.
    I16,
    /// 32-bit integer.
    I32,
    /// 64-bit integer.
    I64,
    /// 64-bit float.
    F64,
    /// bfloat16.
    BF16,
}

/// Elements per k-quant super-block.
pub const QK_K: u64 = 256;

impl GgmlType {
    /// Every supported type.
    pub const ALL: [GgmlType; 20] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::F64,
        GgmlType::BF16,
    ];

    /// The `ggml_type` id.
    #[must_use]
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q8_1 => 9,
            GgmlType::Q2_K => 10,
            GgmlType::Q3_K => 11,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::Q8_K => 15,
            GgmlType::I8 => 24,
            GgmlType::I16 => 25,
            GgmlType::I32 => 26,
            GgmlType::I64 => 27,
            GgmlType::F64 => 28,
            GgmlType::BF16 => 30,
        }
    }

    /// The type with `id`, if this tool supports it.
    #[must_use]
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.into_iter().find(|t| t.id() == id)
    }

    /// ggml's name (`"q4_K"` style is ggml's; this returns the upper-case `Q4_K`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q8_1 => "Q8_1",
            GgmlType::Q2_K => "Q2_K",
            GgmlType::Q3_K => "Q3_K",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
            GgmlType::Q8_K => "Q8_K",
            GgmlType::I8 => "I8",
            GgmlType::I16 => "I16",
            GgmlType::I32 => "I32",
            GgmlType::I64 => "I64",
            GgmlType::F64 => "F64",
            GgmlType::BF16 => "BF16",
        }
    }

    /// Elements per block (1 for plain types).
    #[must_use]
    pub fn block_size(self) -> u64 {
        match self {
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 | GgmlType::Q8_1 => 32,
            GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K | GgmlType::Q8_K => QK_K,
            _ => 1,
        }
    }

    /// Bytes per block.
    #[must_use]
    pub fn type_size(self) -> u64 {
        match self {
            GgmlType::F32 | GgmlType::I32 => 4,
            GgmlType::F16 | GgmlType::BF16 | GgmlType::I16 => 2,
            GgmlType::I8 => 1,
            GgmlType::I64 | GgmlType::F64 => 8,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q8_1 => 36,
            GgmlType::Q2_K => 84,
            GgmlType::Q3_K => 110,
            GgmlType::Q4_K => 144,
            GgmlType::Q5_K => 176,
            GgmlType::Q6_K => 210,
            GgmlType::Q8_K => 292,
        }
    }

    /// Bytes of a row of `n` elements, or `None` if `n` is not a whole number
    /// of blocks or the size overflows.
    #[must_use]
    pub fn row_bytes(self, n: u64) -> Option<u64> {
        if n % self.block_size() != 0 {
            return None;
        }
        (n / self.block_size()).checked_mul(self.type_size())
    }

    /// Bytes of a tensor with `ne` (ggml order: `ne[0]` is the row length), or
    /// `None` if the row is not whole blocks or the size overflows.
    #[must_use]
    pub fn nbytes(self, ne: &[u64]) -> Option<u64> {
        let (&first, rest) = ne.split_first()?;
        rest.iter().try_fold(self.row_bytes(first)?, |acc, &d| acc.checked_mul(d))
    }
}

impl GgmlType {
    /// Whether [`quantize`] can encode f32 values as this type.
    #[must_use]
    pub fn can_quantize(self) -> bool {
        matches!(
            self,
            GgmlType::F32
                | GgmlType::F16
                | GgmlType::BF16
                | GgmlType::Q8_0
                | GgmlType::Q4_0
                | GgmlType::Q4_1
                | GgmlType::Q5_0
                | GgmlType::Q5_1
                | GgmlType::Q4_K
                | GgmlType::Q5_K
                | GgmlType::Q6_K
        )
    }

    /// Whether [`dequantize`] can decode this type to f32.
    #[must_use]
    pub fn can_dequantize(self) -> bool {
        self.can_quantize() || matches!(self, GgmlType::Q2_K | GgmlType::Q3_K)
    }

    /// Whether the type holds integers rather than an encoding of reals.
    #[must_use]
    pub fn is_integer(self) -> bool {
        matches!(self, GgmlType::I8 | GgmlType::I16 | GgmlType::I32 | GgmlType::I64)
    }

    /// Bytes of `n` elements as a `usize`, checked.
    fn byte_len(self, n: usize) -> Result<usize, QuantError> {
        let block_size = self.block_size();
        let n64 = u64::try_from(n).map_err(|_| QuantError::TooLarge { ty: self, len: n })?;
        if n64 % block_size != 0 {
            return Err(QuantError::PartialBlock { ty: self, len: n, block_size });
        }
        self.row_bytes(n64).and_then(|b| usize::try_from(b).ok()).ok_or(QuantError::TooLarge { ty: self, len: n })
    }
}

/// Encodes `src` as `t`, the way ggml's reference quantizers do.
///
/// `src.len()` must be a whole number of `t`'s blocks (32 elements for the
/// legacy types, 256 for k-quants). The result is `t.row_bytes(src.len())`
/// bytes, laid out as ggml stores them. ggml quantizes a tensor block by
/// block, so quantizing a whole tensor equals quantizing its rows one after
/// the other.
///
/// # Errors
///
/// [`QuantError::Unsupported`] for a type with no quantizer here (Q2_K,
/// Q3_K, Q8_1, Q8_K, the integer types and F64), [`QuantError::PartialBlock`]
/// when the length is not whole blocks, and [`QuantError::NonFinite`] when a
/// quantized (not float) type meets NaN or an infinity.
pub fn quantize(t: GgmlType, src: &[f32]) -> Result<Vec<u8>, QuantError> {
    check_quantizable(t)?;
    let mut dst = vec![0u8; t.byte_len(src.len())?];
    quantize_into(t, src, &mut dst)?;
    Ok(dst)
}

/// [`quantize`] into a caller's buffer, which must be exactly
/// `t.row_bytes(src.len())` bytes. Every byte of `dst` is written.
///
/// # Errors
///
/// As [`quantize`], plus [`QuantError::ByteLength`] when `dst` has the wrong
/// size.
pub fn quantize_into(t: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    check_quantizable(t)?;
    let expected = t.byte_len(src.len())?;
    if dst.len() != expected {
        return Err(QuantError::ByteLength { ty: t, n: src.len(), expected, actual: dst.len() });
    }
    if t.block_size() > 1 {
        if let Some(index) = src.iter().position(|v| !v.is_finite()) {
            return Err(QuantError::NonFinite { ty: t, index, value: src[index] });
        }
    }
    match t {
        GgmlType::F32 => float::encode_f32(src, dst),
        GgmlType::F16 => float::encode_f16(src, dst),
        GgmlType::BF16 => float::encode_bf16(src, dst),
        GgmlType::Q8_0 => legacy::quantize_q8_0(src, dst),
        GgmlType::Q4_0 => legacy::quantize_q4_0(src, dst),
        GgmlType::Q4_1 => legacy::quantize_q4_1(src, dst),
        GgmlType::Q5_0 => legacy::quantize_q5_0(src, dst),
        GgmlType::Q5_1 => legacy::quantize_q5_1(src, dst),
        GgmlType::Q4_K => kquants::quantize_q4_k(src, dst),
        GgmlType::Q5_K => kquants::quantize_q5_k(src, dst),
        GgmlType::Q6_K => kquants::quantize_q6_k(src, dst),
        _ => return Err(QuantError::Unsupported { ty: t, op: "quantize" }),
    }
    Ok(())
}

/// Decodes `n` elements of type `t` from `src`, giving the f32 values ggml's
/// `dequantize_row_*` (or `ggml_fp16_to_fp32_row` etc.) gives, bit for bit.
///
/// # Errors
///
/// [`QuantError::NotFloat`] for I8/I16/I32/I64, [`QuantError::Unsupported`]
/// for Q8_1, Q8_K and F64, [`QuantError::PartialBlock`] when `n` is not whole
/// blocks, and [`QuantError::ByteLength`] unless `src.len()` is exactly the
/// size of `n` elements.
pub fn dequantize(t: GgmlType, src: &[u8], n: usize) -> Result<Vec<f32>, QuantError> {
    check_dequantizable(t)?;
    t.byte_len(n)?;
    let mut dst = vec![0f32; n];
    dequantize_into(t, src, &mut dst)?;
    Ok(dst)
}

/// [`dequantize`] into a caller's buffer; `dst.len()` is the element count.
///
/// # Errors
///
/// As [`dequantize`].
pub fn dequantize_into(t: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    check_dequantizable(t)?;
    let expected = t.byte_len(dst.len())?;
    if src.len() != expected {
        return Err(QuantError::ByteLength { ty: t, n: dst.len(), expected, actual: src.len() });
    }
    match t {
        GgmlType::F32 => float::decode_f32(src, dst),
        GgmlType::F16 => float::decode_f16(src, dst),
        GgmlType::BF16 => float::decode_bf16(src, dst),
        GgmlType::Q8_0 => legacy::dequantize_q8_0(src, dst),
        GgmlType::Q4_0 => legacy::dequantize_q4_0(src, dst),
        GgmlType::Q4_1 => legacy::dequantize_q4_1(src, dst),
        GgmlType::Q5_0 => legacy::dequantize_q5_0(src, dst),
        GgmlType::Q5_1 => legacy::dequantize_q5_1(src, dst),
        GgmlType::Q2_K => kquants::dequantize_q2_k(src, dst),
        GgmlType::Q3_K => kquants::dequantize_q3_k(src, dst),
        GgmlType::Q4_K => kquants::dequantize_q4_k(src, dst),
        GgmlType::Q5_K => kquants::dequantize_q5_k(src, dst),
        GgmlType::Q6_K => kquants::dequantize_q6_k(src, dst),
        _ => return Err(QuantError::Unsupported { ty: t, op: "dequantize" }),
    }
    Ok(())
}

fn check_quantizable(t: GgmlType) -> Result<(), QuantError> {
    if t.is_integer() {
        Err(QuantError::NotFloat { ty: t })
    } else if t.can_quantize() {
        Ok(())
    } else {
        Err(QuantError::Unsupported { ty: t, op: "quantize" })
    }
}

fn check_dequantizable(t: GgmlType) -> Result<(), QuantError> {
    if t.is_integer() {
        Err(QuantError::NotFloat { ty: t })
    } else if t.can_dequantize() {
        Ok(())
    } else {
        Err(QuantError::Unsupported { ty: t, op: "dequantize" })
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sizes_are_checked() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
        }
        assert_eq!(GgmlType::from_id(4), None, "Q4_2 was removed");
        assert_eq!(GgmlType::Q4_K.nbytes(&[512, 3]), Some(2 * 144 * 3));
        assert_eq!(GgmlType::Q8_0.nbytes(&[576, 2]), Some(18 * 34 * 2));
        assert_eq!(GgmlType::Q4_K.nbytes(&[576]), None, "576 is not a multiple of 256");
        assert_eq!(GgmlType::F32.nbytes(&[u64::MAX, 2]), None);
    }
}
