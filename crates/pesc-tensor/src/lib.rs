//! Element types, shapes and overflow-checked byte sizes.
//!
//! Every size computed from an untrusted file goes through [`DType::nbytes`] or
//! [`numel`], which fail instead of wrapping. Conversions between the float
//! types live here too, so every crate rounds the same way.
//!
//! ```
//! use pesc_tensor::DType;
//! assert_eq!(DType::BF16.nbytes(&[4, 8]).unwrap(), 64);
//! assert!(DType::F32.nbytes(&[2, u64::MAX / 2]).is_err());
//! ```

use std::fmt;

/// SplitMix64 (Steele, Lea, Flood 2014): the project's one seeded generator,
/// the same on every platform. Each named use draws from its own stream,
/// [`SplitMix64::keyed`]: `seed XOR fnv1a64(name)` (`docs/format.md` §4.4).
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

/// FNV-1a, 64-bit.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

impl SplitMix64 {
    /// The stream of `seed` XOR FNV-1a-64(`key`).
    #[must_use]
    pub fn keyed(seed: u64, key: &str) -> Self {
        SplitMix64(seed ^ fnv1a64(key.as_bytes()))
    }

    /// Uniform in `0..n` (`n > 0`).
    #[allow(clippy::cast_possible_truncation)]
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform value in `[0, 1)` with 53 random bits.
    #[allow(clippy::cast_precision_loss)]
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// `n` values of `U(-1/sqrt(fan_in), 1/sqrt(fan_in))` for the tensor `name`:
/// `x = bound * (2u - 1)` in f64 (u with 53 bits from the stream keyed by
/// `name`), rounded once to f32. Computed with correctly rounded IEEE
/// operations only, so the values are the same everywhere. This is what
/// PyTorch's `kaiming_uniform_(a = sqrt(5))` draws from, `nn.Linear`'s default
/// and the reference implementation's choice for routers and adapters, and
/// PEFT's for LoRA `A`.
#[must_use]
#[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
pub fn kaiming_uniform(seed: u64, name: &str, fan_in: u64, n: usize) -> Vec<f32> {
    let mut rng = SplitMix64::keyed(seed, name);
    let bound = 1.0 / (fan_in as f64).sqrt();
    (0..n).map(|_| (bound * (2.0 * rng.next_f64() - 1.0)) as f32).collect()
}

/// A size computation overflowed `u64`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shape {shape:?} of {dtype} overflows a 64-bit byte count")]
pub struct Overflow {
    /// The element type.
    pub dtype: DType,
    /// The offending shape.
    pub shape: Vec<u64>,
}

/// The element types a safetensors file may hold, in safetensors' spelling.
///
/// Sub-byte types (F4, F6) are not representable: files that use them are
/// rejected when parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[allow(non_camel_case_types)]
pub enum DType {
    /// Boolean, one byte.
    BOOL,
    /// Unsigned 8-bit integer (packed NF4 data lives here).
    U8,
    /// Signed 8-bit integer.
    I8,
    /// 8-bit float, 5 exponent bits.
    F8_E5M2,
    /// 8-bit float, 4 exponent bits.
    F8_E4M3,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 16-bit integer.
    U16,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
    /// IEEE single precision.
    F32,
    /// IEEE double precision.
    F64,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 64-bit integer.
    U64,
}

impl DType {
    /// Every type, in the order above.
    pub const ALL: [DType; 15] = [
        DType::BOOL,
        DType::U8,
        DType::I8,
        DType::F8_E5M2,
        DType::F8_E4M3,
        DType::I16,
        DType::U16,
        DType::F16,
        DType::BF16,
        DType::I32,
        DType::U32,
        DType::F32,
        DType::F64,
        DType::I64,
        DType::U64,
    ];

    /// The name used in safetensors headers (`"F32"`, `"BF16"` ...).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            DType::BOOL => "BOOL",
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::F8_E5M2 => "F8_E5M2",
            DType::F8_E4M3 => "F8_E4M3",
            DType::I16 => "I16",
            DType::U16 => "U16",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I32 => "I32",
            DType::U32 => "U32",
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::I64 => "I64",
            DType::U64 => "U64",
        }
    }

    /// Parses a safetensors dtype name; the match is exact (`"f32"` is not a dtype).
    #[must_use]
    pub fn from_safetensors(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.as_str() == name)
    }

    /// Bytes per element.
    #[must_use]
    pub fn size(self) -> u64 {
        match self {
            DType::BOOL | DType::U8 | DType::I8 | DType::F8_E5M2 | DType::F8_E4M3 => 1,
            DType::I16 | DType::U16 | DType::F16 | DType::BF16 => 2,
            DType::I32 | DType::U32 | DType::F32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
        }
    }

    /// Whether this is one of the float types weights are computed in.
    #[must_use]
    pub fn is_compute_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// Byte size of a tensor of this type and shape, or [`Overflow`].
    pub fn nbytes(self, shape: &[u64]) -> Result<u64, Overflow> {
        numel(shape).and_then(|n| n.checked_mul(self.size())).ok_or_else(|| Overflow { dtype: self, shape: shape.to_vec() })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Number of elements of `shape` (1 for a scalar), or `None` on overflow.
#[must_use]
pub fn numel(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
}

/// Formats a shape as `[a, b, c]`.
#[must_use]
pub fn shape_str(shape: &[u64]) -> String {
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    format!("[{}]", dims.join(", "))
}

/// Decodes little-endian elements of a float type into `f32`, exactly (f16 and
/// bf16 widen without rounding). Returns `None` for non-float types or a byte
/// length that is not a whole number of elements.
#[must_use]
pub fn to_f32(dtype: DType, bytes: &[u8]) -> Option<Vec<f32>> {
    let n = usize::try_from(dtype.size()).ok()?;
    if bytes.len() % n != 0 {
        return None;
    }
    let out = match dtype {
        DType::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        DType::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        DType::BF16 => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        _ => return None,
    };
    Some(out)
}

/// Encodes `f32` values as little-endian elements of a float type, rounding to
/// nearest-even for f16 and bf16. Returns `None` for non-float types.
#[must_use]
pub fn from_f32(dtype: DType, values: &[f32]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(values.len() * usize::try_from(dtype.size()).ok()?);
    match dtype {
        DType::F32 => values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::F16 => values.iter().for_each(|v| out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
        DType::BF16 => values.iter().for_each(|v| out.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
        _ => return None,
    }
    Some(out)
}

/// Converts float elements from one type to another (via `f32`, which holds
/// every f16 and bf16 value exactly). Same-type conversion returns the input.
#[must_use]
pub fn convert(from: DType, to: DType, bytes: &[u8]) -> Option<Vec<u8>> {
    if from == to {
        return Some(bytes.to_vec());
    }
    from_f32(to, &to_f32(from, bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_case_sensitive() {
        for d in DType::ALL {
            assert_eq!(DType::from_safetensors(d.as_str()), Some(d));
        }
        assert_eq!(DType::from_safetensors("f32"), None);
        assert_eq!(DType::from_safetensors("F4"), None);
    }

    #[test]
    fn nbytes_is_checked() {
        assert_eq!(DType::F32.nbytes(&[]).unwrap(), 4);
        assert_eq!(DType::F16.nbytes(&[3, 0]).unwrap(), 0);
        assert_eq!(DType::I64.nbytes(&[2, 3]).unwrap(), 48);
        assert!(DType::U8.nbytes(&[2, u64::MAX - 1]).is_err());
        // The element count fits, the byte count does not.
        assert!(DType::I32.nbytes(&[2, (1 << 62) - 1]).is_err());
    }

    #[test]
    fn known_values_pin_the_generator() {
        // SplitMix64's published first output for state 0.
        assert_eq!(SplitMix64(0).next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(SplitMix64::keyed(5, "a").0, 5 ^ 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn kaiming_values_are_bounded_per_tensor_and_seeded() {
        let a = kaiming_uniform(7, "w", 64, 10_000);
        assert!(a.iter().all(|v| v.abs() <= 0.125), "bound is 1/sqrt(64)");
        let mean: f32 = a.iter().sum::<f32>() / 10_000.0;
        assert!(mean.abs() < 0.005, "{mean}");
        assert_eq!(a, kaiming_uniform(7, "w", 64, 10_000));
        assert_ne!(a, kaiming_uniform(8, "w", 64, 10_000));
        assert_ne!(a, kaiming_uniform(7, "v", 64, 10_000));
    }

    #[test]
    fn half_types_round_to_nearest_even() {
        // 1 + 2^-8 sits exactly between two bf16 values; ties go to even (1.0).
        let v = 1.0f32 + 2f32.powi(-8);
        let b = from_f32(DType::BF16, &[v]).unwrap();
        assert_eq!(to_f32(DType::BF16, &b).unwrap(), vec![1.0]);
        let back = convert(DType::BF16, DType::F32, &b).unwrap();
        assert_eq!(back, 1.0f32.to_le_bytes());
        assert!(to_f32(DType::U8, &[1]).is_none());
        assert!(to_f32(DType::F32, &[1, 2, 3]).is_none());
    }
}
