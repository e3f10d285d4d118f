//! Seeded randomness: SplitMix64 streams keyed by name, as `craft`
//! initialises tensors (`docs/format.md` §4.4), so runs repeat on every machine.

/// A SplitMix64 generator.
pub(crate) struct SplitMix64(u64);

/// FNV-1a-64 of `bytes`.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

impl SplitMix64 {
    /// The stream of `seed` XOR FNV-1a-64(`key`).
    pub(crate) fn keyed(seed: u64, key: &str) -> Self {
        SplitMix64(seed ^ fnv1a(key.as_bytes()))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 bits.
    pub(crate) fn unit(&mut self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let u = (self.next_u64() >> 11) as f64;
        u * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        #[allow(clippy::cast_possible_truncation)]
        let r = (self.next_u64() % n as u64) as usize;
        r
    }
}

/// `U(-b, b)` values of a tensor named `name`, as `craft` draws them: `x = b (2u - 1)` rounded to f32.
pub(crate) fn uniform(seed: u64, name: &str, n: usize, b: f64) -> Vec<f32> {
    let mut g = SplitMix64::keyed(seed, name);
    #[allow(clippy::cast_possible_truncation)]
    (0..n).map(|_| (b * (2.0 * g.unit() - 1.0)) as f32).collect()
}
