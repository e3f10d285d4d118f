//! The error type of the quantizers and dequantizers.

use crate::GgmlType;

/// Why a quantization or dequantization was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum QuantError {
    /// The type has no quantizer or dequantizer in this crate.
    #[error("cannot {op} `{ty}`: this tool has no {op}r for it")]
    Unsupported {
        /// The type asked for.
        ty: GgmlType,
        /// `"quantize"` or `"dequantize"`.
        op: &'static str,
    },
    /// An integer type (I8, I16, I32, I64) is not an encoding of real numbers.
    #[error("`{ty}` holds integers, not floats, so it has no f32 encoding")]
    NotFloat {
        /// The integer type.
        ty: GgmlType,
    },
    /// The element count is not a whole number of blocks.
    #[error("{len} elements is not a whole number of `{ty}` blocks ({block_size} elements each)")]
    PartialBlock {
        /// The type.
        ty: GgmlType,
        /// The element count given.
        len: usize,
        /// Elements per block of `ty`.
        block_size: u64,
    },
    /// The encoded buffer has the wrong size for the element count.
    #[error("`{ty}` data for {n} elements must be {expected} bytes, got {actual}")]
    ByteLength {
        /// The type.
        ty: GgmlType,
        /// The element count.
        n: usize,
        /// The exact byte count `n` elements take.
        expected: usize,
        /// The byte count given.
        actual: usize,
    },
    /// A quantized type cannot encode NaN or an infinity.
    #[error("element {index} is {value}; `{ty}` blocks cannot encode NaN or infinity")]
    NonFinite {
        /// The type.
        ty: GgmlType,
        /// Index of the first non-finite element.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// The byte size of the data does not fit in memory.
    #[error("{len} elements of `{ty}` is too large to address")]
    TooLarge {
        /// The type.
        ty: GgmlType,
        /// The element count.
        len: usize,
    },
    /// An NF4 blocksize bitsandbytes does not accept.
    #[error("NF4 blocksize {blocksize} is not one of 32, 64, 128, 256, 512, 1024, 2048, 4096")]
    Nf4Blocksize {
        /// The blocksize given.
        blocksize: usize,
    },
    /// NF4 cannot encode NaN or an infinity.
    #[error("element {index} is {value}; NF4 cannot encode NaN or infinity")]
    Nf4NonFinite {
        /// Index of the first non-finite element.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// An empty tensor has no NF4 blocks.
    #[error("an empty tensor cannot be quantized to NF4")]
    Nf4Empty,
    /// A piece of a stored NF4 tensor has the wrong length.
    #[error("NF4 `{field}` must have {expected} elements for this shape and blocksize, found {actual}")]
    Nf4Length {
        /// The piece: `weight`, `absmax`, `nested_absmax`, `nested_quant_map`.
        field: &'static str,
        /// The length the shape and blocksize imply.
        expected: usize,
        /// The length found.
        actual: usize,
    },
    /// A stored NF4 scale or map value is NaN or infinite.
    #[error("NF4 `{field}` element {index} is {value}, not a finite number")]
    Nf4Value {
        /// The piece.
        field: &'static str,
        /// The element.
        index: usize,
        /// Its value.
        value: f32,
    },
}
