//! The seeded initialiser for new tensors (routers, adapters, gates).
//!
//! Platform- and order-independent by construction: each tensor draws from
//! its own SplitMix64 stream seeded with `seed XOR fnv1a64(tensor name)`, and
//! every value is computed with IEEE operations that are correctly rounded
//! everywhere (integer shifts, one multiply-add in f64, one sqrt):
//!
//! ```text
//! u = (next_u64() >> 11) * 2^-53          // uniform in [0, 1), 53 bits
//! x = bound * (2u - 1), bound = 1 / sqrt(fan_in)
//! ```
//!
//! rounded once to f32 and then to the stored dtype. `U(-1/sqrt(fan_in),
//! 1/sqrt(fan_in))` is what `kaiming_uniform_(a = sqrt(5))` gives, PyTorch's
//! default for `nn.Linear` and the reference implementation's choice.

use pesc_tensor::SplitMix64;

/// FNV-1a, 64-bit.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// `n` values of `U(-1/sqrt(fan_in), 1/sqrt(fan_in))` for tensor `name`.
#[must_use]
#[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
pub fn kaiming_uniform(seed: u64, name: &str, fan_in: u64, n: usize) -> Vec<f32> {
    let mut rng = SplitMix64(seed ^ fnv1a64(name.as_bytes()));
    let bound = 1.0 / (fan_in as f64).sqrt();
    (0..n).map(|_| (bound * (2.0 * rng.next_f64() - 1.0)) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_pin_the_generator() {
        // SplitMix64's published first output for state 0.
        assert_eq!(SplitMix64(0).next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn values_are_bounded_per_tensor_and_seeded() {
        let a = kaiming_uniform(7, "w", 64, 10_000);
        assert!(a.iter().all(|v| v.abs() <= 0.125), "bound is 1/sqrt(64)");
        let mean: f32 = a.iter().sum::<f32>() / 10_000.0;
        assert!(mean.abs() < 0.005, "{mean}");
        assert_eq!(a, kaiming_uniform(7, "w", 64, 10_000));
        assert_ne!(a, kaiming_uniform(8, "w", 64, 10_000));
        assert_ne!(a, kaiming_uniform(7, "v", 64, 10_000));
    }
}
