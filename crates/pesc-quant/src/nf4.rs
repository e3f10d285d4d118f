//! NF4, bit for bit as bitsandbytes 0.50 computes it on the CPU
//! (`functional.quantize_4bit(x, quant_type="nf4", blocksize, compress_statistics)`).
//!
//! Written from the description of the algorithm (`formats.md` §4 of the
//! project notes), checked against bitsandbytes 0.50.2 with the vectors in
//! `fixtures/nf4`:
//!
//! - the tensor is flattened row-major and cut into blocks of `blocksize`
//!   elements; each block keeps its absmax (f32);
//! - a full block scales by `x * (1 / absmax)`, the last partial block by
//!   `x / absmax`, clamps to [-1, 1] and takes the codebook index whose
//!   midpoint interval holds the value (ties go to the lower index);
//! - two codes make a byte, the even element in the high nibble; an odd count
//!   is padded with one zero code;
//! - double quantization stores `absmax - mean(absmax)` as 8-bit codes of the
//!   signed dynamic map in blocks of 256, as bitsandbytes' CPU library does
//!   (a 65,536-entry table from the normalized value to the code).
//!
//! `mean` is computed in f32 in the order torch's CPU `sum` uses on one thread
//! (8-lane cascade); torch splits a sum of more than 32,768 absmax values
//! across threads, so for tensors above 2M elements (blocksize 64) the offset
//! equals bitsandbytes' under `torch.set_num_threads(1)`.
//!
//! Work is split by blocks across threads; the result does not depend on the
//! thread count.

use std::sync::OnceLock;

use crate::QuantError;

/// The NF4 codebook (`bitsandbytes.functional.get_4bit_type("nf4")`).
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// Elements per block of the second-level quantization of the absmax.
pub const NESTED_BLOCKSIZE: usize = 256;

/// The signed 8-bit dynamic map that double quantization uses
/// (`bitsandbytes.functional.create_dynamic_map(signed=True)`), as f32 bits.
const DYNAMIC_MAP_BITS: [u32; 256] = [
    0xbf7e3333, 0xbf7a999a, 0xbf770000, 0xbf736666, 0xbf6fcccd, 0xbf6c3333, 0xbf68999a, 0xbf650000, 0xbf616666, 0xbf5dcccd, 0xbf5a3333,
    0xbf56999a, 0xbf530000, 0xbf4f6666, 0xbf4bcccd, 0xbf483333, 0xbf44999a, 0xbf410000, 0xbf3d6666, 0xbf39cccd, 0xbf363334, 0xbf32999a,
    0xbf2f0000, 0xbf2b6666, 0xbf27cccd, 0xbf243334, 0xbf20999a, 0xbf1d0000, 0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a, 0xbf0b0000,
    0xbf076666, 0xbf03cccc, 0xbf003333, 0xbef93332, 0xbef20000, 0xbeeacccc, 0xbee3999a, 0xbedc6666, 0xbed53333, 0xbece0000, 0xbec6cccc,
    0xbebf999a, 0xbeb86666, 0xbeb13333, 0xbeaa0000, 0xbea2cccc, 0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d9999, 0xbe6f3333,
    0xbe60cccd, 0xbe526666, 0xbe440000, 0xbe35999a, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000, 0xbddb3334, 0xbdc9eb85, 0xbdc428f7,
    0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8, 0xbda75c2a, 0xbda1999a, 0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd,
    0xbd7e147b, 0xbd728f5d, 0xbd670a3d, 0xbd5b851f, 0xbd500000, 0xbd447ae1, 0xbd38f5c3, 0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae148,
    0xbcfeb852, 0xbce7ae15, 0xbcd0a3d7, 0xbcb9999a, 0xbca28f5d, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148, 0xbc1f3b64, 0xbc160418, 0xbc0ccccd,
    0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4, 0xbbab020d, 0xbb989374, 0xbb8624dd, 0xbb676c8a, 0xbb428f5c, 0xbb1db22d,
    0xbaf1a9fc, 0xbaa7ef9d, 0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01, 0xb9c7e283, 0xb98ce705, 0xb923d70b, 0xb8ba1f4b,
    0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94, 0xb513a3b7, 0x00000000, 0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206,
    0x38378034, 0x388aefb3, 0x38ba1f4b, 0x3923d70b, 0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff,
    0x3aa7ef9d, 0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4, 0x3bcfdf3b, 0x3be24dd3,
    0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148, 0x3c68f5c3, 0x3c8b851f, 0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7,
    0x3ce7ae15, 0x3cfeb852, 0x3d0ae148, 0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d,
    0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a, 0x3da75c2a, 0x3dad1eb8, 0x3db2e148,
    0x3db8a3d7, 0x3dbe6667, 0x3dc428f7, 0x3dc9eb85, 0x3ddb3334, 0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000,
    0x3e526666, 0x3e60cccd, 0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000, 0x3eb13333,
    0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a, 0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333,
    0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a, 0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd,
    0x3f2b6666, 0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333, 0x3f4bcccd, 0x3f4f6666,
    0x3f530000, 0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666, 0x3f650000, 0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666, 0x3f770000,
    0x3f7a999a, 0x3f7e3333, 0x3f800000,
];

/// The signed 8-bit dynamic map that double quantization uses.
#[must_use]
pub fn dynamic_map() -> [f32; 256] {
    DYNAMIC_MAP_BITS.map(f32::from_bits)
}

/// Block sizes bitsandbytes accepts.
pub const BLOCKSIZES: [usize; 8] = [32, 64, 128, 256, 512, 1024, 2048, 4096];

/// NF4 settings: transformers' `bnb_4bit_*` options that change the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nf4Options {
    /// Elements per absmax block: a power of two from 32 to 4096.
    pub blocksize: usize,
    /// Quantize the absmax again (`bnb_4bit_use_double_quant`).
    pub double_quant: bool,
}

impl Default for Nf4Options {
    /// Blocksize 64 with double quantization, as QLoRA trains.
    fn default() -> Self {
        Nf4Options { blocksize: 64, double_quant: true }
    }
}

impl Nf4Options {
    /// Refuses a blocksize bitsandbytes would refuse.
    pub fn check(&self) -> Result<(), QuantError> {
        check_blocksize(self.blocksize)
    }
}

fn check_blocksize(blocksize: usize) -> Result<(), QuantError> {
    if BLOCKSIZES.contains(&blocksize) {
        Ok(())
    } else {
        Err(QuantError::Nf4Blocksize { blocksize })
    }
}

/// The double-quantized absmax of an NF4 tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct DoubleQuant {
    /// One 8-bit code per NF4 block (stored as `absmax`).
    pub codes: Vec<u8>,
    /// The mean that was subtracted (`nested_offset`).
    pub offset: f32,
    /// One scale per 256 codes (`nested_absmax`).
    pub nested_absmax: Vec<f32>,
    /// The 256-entry code table (`nested_quant_map`).
    pub nested_quant_map: Vec<f32>,
}

/// How an NF4 tensor stores its per-block absmax.
#[derive(Debug, Clone, PartialEq)]
pub enum Absmax {
    /// f32, one per block.
    Plain(Vec<f32>),
    /// Quantized again to 8 bits.
    Double(DoubleQuant),
}

/// A validated NF4 tensor: the packed codes and their block scales.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Tensor {
    numel: usize,
    blocksize: usize,
    packed: Vec<u8>,
    absmax: Absmax,
}

fn check_len(field: &'static str, expected: usize, actual: usize) -> Result<(), QuantError> {
    if expected == actual {
        Ok(())
    } else {
        Err(QuantError::Nf4Length { field, expected, actual })
    }
}

fn check_finite(field: &'static str, values: &[f32]) -> Result<(), QuantError> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(QuantError::Nf4Value { field, index, value: values[index] }),
    }
}

impl Nf4Tensor {
    /// Checks the pieces of a stored NF4 tensor of `numel` elements against
    /// each other: `packed` holds `ceil(numel/2)` bytes, there is one absmax
    /// (or code) per block, one nested scale per 256 codes, a 256-entry
    /// nested map, and every float is finite.
    pub fn from_parts(numel: usize, blocksize: usize, packed: Vec<u8>, absmax: Absmax) -> Result<Self, QuantError> {
        check_blocksize(blocksize)?;
        check_len("weight", numel.div_ceil(2), packed.len())?;
        let blocks = numel.div_ceil(blocksize);
        match &absmax {
            Absmax::Plain(a) => {
                check_len("absmax", blocks, a.len())?;
                check_finite("absmax", a)?;
            }
            Absmax::Double(d) => {
                check_len("absmax", blocks, d.codes.len())?;
                check_len("nested_absmax", blocks.div_ceil(NESTED_BLOCKSIZE), d.nested_absmax.len())?;
                check_len("nested_quant_map", 256, d.nested_quant_map.len())?;
                check_finite("nested_absmax", &d.nested_absmax)?;
                check_finite("nested_quant_map", &d.nested_quant_map)?;
                check_finite("nested_offset", &[d.offset])?;
            }
        }
        Ok(Nf4Tensor { numel, blocksize, packed, absmax })
    }

    /// Element count of the original tensor.
    #[must_use]
    pub fn numel(&self) -> usize {
        self.numel
    }

    /// Elements per absmax block.
    #[must_use]
    pub fn blocksize(&self) -> usize {
        self.blocksize
    }

    /// Two codes per byte, the even element in the high nibble.
    #[must_use]
    pub fn packed(&self) -> &[u8] {
        &self.packed
    }

    /// The block scales as stored.
    #[must_use]
    pub fn absmax(&self) -> &Absmax {
        &self.absmax
    }

    /// The f32 absmax of every block (decoding the double quantization the
    /// way bitsandbytes does: `map[code] * nested_absmax + offset`).
    #[must_use]
    pub fn block_absmax(&self) -> Vec<f32> {
        match &self.absmax {
            Absmax::Plain(a) => a.clone(),
            Absmax::Double(d) => d
                .codes
                .iter()
                .enumerate()
                .map(|(i, &c)| d.nested_quant_map[usize::from(c)] * d.nested_absmax[i / NESTED_BLOCKSIZE] + d.offset)
                .collect(),
        }
    }

    /// The f32 values: `NF4_CODE[code] * absmax[block]`, what bitsandbytes'
    /// reference (`default` backend) `dequantize_4bit` computes before its
    /// cast to the stored dtype.
    #[must_use]
    pub fn dequantize(&self) -> Vec<f32> {
        let absmax = self.block_absmax();
        let mut out = vec![0.0f32; self.numel];
        let bs = self.blocksize;
        par_chunks(&mut out, bs, self.numel, |first, chunk| {
            for (k, v) in chunk.iter_mut().enumerate() {
                let i = first + k;
                let byte = self.packed[i / 2];
                let code = if i % 2 == 0 { byte >> 4 } else { byte & 0x0F };
                *v = NF4_CODE[usize::from(code)] * absmax[i / bs];
            }
        });
        out
    }
}

/// Runs `f(first_index, chunk)` over `out` split at multiples of `unit`
/// items, on up to 16 threads.
/// `elements` is the work it stands for: small jobs stay on this thread.
fn par_chunks<T: Send>(out: &mut [T], unit: usize, elements: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let units = out.len().div_ceil(unit);
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get).min(16).min(units.max(1));
    if threads <= 1 || elements < (1 << 16) {
        f(0, out);
        return;
    }
    let per = units.div_ceil(threads) * unit;
    std::thread::scope(|s| {
        for (t, chunk) in out.chunks_mut(per).enumerate() {
            let f = &f;
            s.spawn(move || f(t * per, chunk));
        }
    });
}

/// Quantizes `values` (a row-major tensor, flattened) to NF4 exactly as
/// bitsandbytes does. NaN and infinities are refused.
pub fn quantize(values: &[f32], opts: Nf4Options) -> Result<Nf4Tensor, QuantError> {
    opts.check()?;
    if let Some(index) = values.iter().position(|v| !v.is_finite()) {
        return Err(QuantError::Nf4NonFinite { index, value: values[index] });
    }
    let n = values.len();
    if n == 0 {
        return Err(QuantError::Nf4Empty);
    }
    let bs = opts.blocksize;
    let blocks = n.div_ceil(bs);
    let mut absmax = vec![0.0f32; blocks];
    let mid: [f32; 15] = std::array::from_fn(|i| (NF4_CODE[i] + NF4_CODE[i + 1]) / 2.0);
    let mut packed = vec![0u8; n.div_ceil(2)];
    // One job covers whole blocks: `bs` values, `bs / 2` bytes, one absmax.
    let mut jobs: Vec<(usize, &mut [u8], &mut f32)> =
        packed.chunks_mut(bs / 2).zip(absmax.iter_mut()).enumerate().map(|(b, (p, a))| (b, p, a)).collect();
    par_chunks(&mut jobs, 1, n, |_, chunk| {
        for (b, bytes, am) in chunk.iter_mut() {
            let block = &values[*b * bs..n.min((*b + 1) * bs)];
            let raw = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let clamped = raw.max(1e-38);
            let scale = |x: f32| -> u8 {
                let s = if block.len() == bs { x * (1.0 / clamped) } else { x / clamped };
                let s = s.clamp(-1.0, 1.0);
                // bucketize(right=False): the number of midpoints strictly below
                mid.iter().map(|&m| u8::from(m < s)).sum()
            };
            for (k, byte) in bytes.iter_mut().enumerate() {
                let hi = scale(block[2 * k]);
                let lo = block.get(2 * k + 1).map_or(NF4_ZERO_CODE, |&x| scale(x));
                *byte = hi << 4 | lo;
            }
            // A full block keeps its raw absmax, the partial last one the clamped value.
            **am = if block.len() == bs { raw } else { clamped };
        }
    });
    drop(jobs);
    let absmax = if opts.double_quant { Absmax::Double(double_quantize(&absmax)) } else { Absmax::Plain(absmax) };
    Ok(Nf4Tensor { numel: n, blocksize: bs, packed, absmax })
}

/// The code of a zero after scaling (padding of an odd element count).
const NF4_ZERO_CODE: u8 = 7;

/// `dequantize(quantize(values))`: the weights a QLoRA base really has.
pub fn roundtrip(values: &[f32], opts: Nf4Options) -> Result<Vec<f32>, QuantError> {
    Ok(quantize(values, opts)?.dequantize())
}

/// bitsandbytes' double quantization of the absmax vector.
fn double_quantize(absmax: &[f32]) -> DoubleQuant {
    let offset = torch_sum(absmax) / absmax.len() as f32;
    let lut = dynamic_lut();
    let mut codes = Vec::with_capacity(absmax.len());
    let mut nested_absmax = Vec::with_capacity(absmax.len().div_ceil(NESTED_BLOCKSIZE));
    for block in absmax.chunks(NESTED_BLOCKSIZE) {
        let d: Vec<f32> = block.iter().map(|a| a - offset).collect();
        let m = d.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        nested_absmax.push(m);
        if m == 0.0 {
            codes.extend(std::iter::repeat_n(0u8, d.len()));
            continue;
        }
        let inv = 1.0 / m;
        for v in d {
            let s = (v * inv).clamp(-1.0, 1.0);
            // truncation of a value in [0.5, 65535.5] is the intended rounding
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let i = ((s + 1.0) * 0.5 * 65535.0 + 0.5) as usize;
            codes.push(lut[i]);
        }
    }
    DoubleQuant { codes, offset, nested_absmax, nested_quant_map: dynamic_map().to_vec() }
}

/// bitsandbytes' CPU table from a normalized value's 65,536-step bin to the
/// dynamic-map code with the next midpoint at or above the bin's value.
fn dynamic_lut() -> &'static [u8; 65536] {
    static LUT: OnceLock<Box<[u8; 65536]>> = OnceLock::new();
    LUT.get_or_init(|| {
        let map = dynamic_map();
        let mid: Vec<f32> = map.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
        let mut lut = Box::new([0u8; 65536]);
        let mut code = 0usize;
        for (i, slot) in lut.iter_mut().enumerate() {
            #[allow(clippy::cast_precision_loss)]
            let v = -1.0f32 + (2.0 * i as f32) / 65535.0;
            while code < mid.len() && mid[code] < v {
                code += 1;
            }
            *slot = u8::try_from(code).unwrap_or(u8::MAX);
        }
        lut
    })
}

/// torch's single-threaded CPU `sum` of a contiguous f32 vector (8 lanes,
/// 4-way interleaved, cascaded in levels), so that `mean` matches its bits.
fn torch_sum(x: &[f32]) -> f32 {
    const W: usize = 8;
    let n = x.len();
    if n < W {
        return row_sum(n, |i| x[i], 0.0f32, |a, b| a + b);
    }
    let nv = n / W;
    let load = |i: usize| -> [f32; W] { std::array::from_fn(|k| x[i * W + k]) };
    let add = |a: [f32; W], b: [f32; W]| -> [f32; W] { std::array::from_fn(|k| a[k] + b[k]) };
    let lanes = row_sum(nv, load, [0.0f32; W], add);
    let mut acc = x[nv * W..].iter().fold(0.0f32, |a, &b| a + b);
    for l in lanes {
        acc += l;
    }
    acc
}

/// torch's `row_sum`: four interleaved accumulators over a cascade.
fn row_sum<T: Copy>(size: usize, load: impl Fn(usize) -> T, zero: T, add: impl Fn(T, T) -> T) -> T {
    let ilp = size / 4;
    let mut p = multi_row_sum(ilp, |i| [load(4 * i), load(4 * i + 1), load(4 * i + 2), load(4 * i + 3)], zero, &add);
    for i in ilp * 4..size {
        p[0] = add(p[0], load(i));
    }
    for k in 1..4 {
        p[0] = add(p[0], p[k]);
    }
    p[0]
}

/// torch's `multi_row_sum` for 4 rows: 4 levels of partial sums, each level
/// flushed into the next every `2^level_power` additions.
fn multi_row_sum<T: Copy>(size: usize, rows: impl Fn(usize) -> [T; 4], zero: T, add: &impl Fn(T, T) -> T) -> [T; 4] {
    const LEVELS: usize = 4;
    let ceil_log2 = if size <= 1 { 0 } else { usize::BITS - (size - 1).leading_zeros() };
    let level_power = 4.max(ceil_log2 as usize / LEVELS);
    let step = 1usize << level_power;
    let mask = step - 1;
    let mut acc = [[zero; 4]; LEVELS];
    let mut i = 0;
    while i + step <= size {
        for _ in 0..step {
            for (a, r) in acc[0].iter_mut().zip(rows(i)) {
                *a = add(*a, r);
            }
            i += 1;
        }
        for j in 1..LEVELS {
            let (lower, upper) = acc.split_at_mut(j);
            for (a, b) in upper[0].iter_mut().zip(lower[j - 1].iter_mut()) {
                *a = add(*a, *b);
                *b = zero;
            }
            if i & (mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    while i < size {
        for (a, r) in acc[0].iter_mut().zip(rows(i)) {
            *a = add(*a, r);
        }
        i += 1;
    }
    let (total, levels) = acc.split_at_mut(1);
    for level in levels.iter() {
        for (a, &b) in total[0].iter_mut().zip(level) {
            *a = add(*a, b);
        }
    }
    total[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codebook_is_sorted_and_the_dynamic_map_spans_minus_one_to_one() {
        assert!(NF4_CODE.windows(2).all(|w| w[0] < w[1]));
        let m = dynamic_map();
        assert!(m.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(m[255], 1.0);
        assert!(m[0] > -1.0 && m[0] < -0.99);
    }

    #[test]
    fn blocksizes_outside_bitsandbytes_are_refused() {
        for bs in [0, 1, 16, 48, 96, 8192] {
            let e = quantize(&[1.0; 8], Nf4Options { blocksize: bs, double_quant: false }).unwrap_err();
            assert_eq!(e, QuantError::Nf4Blocksize { blocksize: bs });
        }
    }

    #[test]
    fn non_finite_values_are_refused_with_their_index() {
        let mut x = vec![0.5f32; 100];
        x[70] = f32::NAN;
        let e = quantize(&x, Nf4Options::default()).unwrap_err();
        assert!(matches!(e, QuantError::Nf4NonFinite { index: 70, .. }), "{e}");
        x[70] = f32::NEG_INFINITY;
        assert!(quantize(&x, Nf4Options::default()).is_err());
    }

    #[test]
    fn roundtrip_keeps_block_maxima_and_zeros() {
        let x: Vec<f32> = (0..301).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        for double_quant in [false, true] {
            let y = roundtrip(&x, Nf4Options { blocksize: 64, double_quant }).unwrap();
            assert_eq!(y.len(), x.len());
            for (a, b) in x.iter().zip(&y) {
                // half the widest codebook gap, (1 - 0.696) / 2, of the block absmax
                assert!((a - b).abs() <= 0.153 * 51.0 / 7.0, "{a} vs {b}");
            }
        }
        let y = roundtrip(&x, Nf4Options { blocksize: 64, double_quant: false }).unwrap();
        let m = x[..64].iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(y[..64].iter().any(|v| v.abs() == m));
    }

    #[test]
    fn torch_sum_equals_a_plain_sum_on_exact_values() {
        for n in [0usize, 1, 7, 8, 9, 63, 64, 65, 1000, 70_000] {
            let x: Vec<f32> = (0..n).map(|i| (i % 13) as f32).collect();
            let want: f32 = (0..n).map(|i| (i % 13) as f32).sum();
            assert_eq!(torch_sum(&x), want, "{n}");
        }
    }

    #[test]
    fn from_parts_checks_every_length() {
        let t = quantize(&[0.25f32; 300], Nf4Options::default()).unwrap();
        let Absmax::Double(d) = t.absmax().clone() else { panic!() };
        assert!(Nf4Tensor::from_parts(300, 64, t.packed().to_vec(), Absmax::Double(d.clone())).is_ok());
        let e = Nf4Tensor::from_parts(301, 64, t.packed().to_vec(), Absmax::Double(d.clone())).unwrap_err();
        assert_eq!(e, QuantError::Nf4Length { field: "weight", expected: 151, actual: 150 });
        let mut bad = d.clone();
        bad.codes.pop();
        assert!(matches!(
            Nf4Tensor::from_parts(300, 64, t.packed().to_vec(), Absmax::Double(bad)),
            Err(QuantError::Nf4Length { field: "absmax", .. })
        ));
        let mut bad = d.clone();
        bad.nested_absmax.push(1.0);
        assert!(Nf4Tensor::from_parts(300, 64, t.packed().to_vec(), Absmax::Double(bad)).is_err());
        let mut bad = d;
        bad.nested_quant_map[3] = f32::NAN;
        assert!(matches!(
            Nf4Tensor::from_parts(300, 64, t.packed().to_vec(), Absmax::Double(bad)),
            Err(QuantError::Nf4Value { field: "nested_quant_map", index: 3, .. })
        ));
        assert!(Nf4Tensor::from_parts(300, 100, t.packed().to_vec(), Absmax::Plain(vec![1.0; 3])).is_err());
    }
}
