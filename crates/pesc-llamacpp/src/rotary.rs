//! llama.cpp's rotary row permutation of the q and k projections, both ways.
//!
//! Hugging Face rotates each head's first half against its second half
//! (`rotate_half`); llama.cpp rotates adjacent pairs. Its converter therefore
//! permutes the rows of q and k: within each head of `d` rows, Hugging Face
//! row `t * d/2 + i` (`t` = 0 or 1) becomes GGUF row `2i + t`. Rows move
//! whole, so the same function permutes f32 rows before quantization and
//! encoded rows (whole blocks) after it.

/// Which way to permute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Hugging Face order to llama.cpp's (export).
    ToGguf,
    /// llama.cpp's order to Hugging Face's (import).
    ToHf,
}

/// Rows of `row_len` elements of `data` (`heads` heads of `d` rows each,
/// `d` even) permuted as `direction` says. The caller checks that the rows
/// split into heads of rotary pairs.
#[must_use]
pub fn permute_rows<T: Copy + Default>(data: &[T], row_len: usize, heads: usize, direction: Direction) -> Vec<T> {
    let rows = data.len() / row_len.max(1);
    let d = rows / heads.max(1);
    let half = d / 2;
    let mut out = vec![T::default(); data.len()];
    for h in 0..heads {
        for t in 0..2 {
            for i in 0..half {
                let hf = (h * d + t * half + i) * row_len;
                let gguf = (h * d + 2 * i + t) * row_len;
                let (src, dst) = match direction {
                    Direction::ToGguf => (hf, gguf),
                    Direction::ToHf => (gguf, hf),
                };
                out[dst..dst + row_len].copy_from_slice(&data[src..src + row_len]);
            }
        }
    }
    out
}

/// Whether `rows` rows split into `heads` heads of whole rotary pairs.
#[must_use]
pub fn splits_into_pairs(rows: u64, heads: u64) -> bool {
    heads > 0 && rows % (2 * heads) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_pairs_rotary_rows() {
        // One head of 4 rows, 1 column: HF [a0 a1 | b0 b1] -> GGUF [a0 b0 a1 b1].
        assert_eq!(permute_rows(&[0.0f32, 1.0, 2.0, 3.0], 1, 1, Direction::ToGguf), [0.0, 2.0, 1.0, 3.0]);
        // Two heads.
        let w: Vec<f32> = (0..8u8).map(f32::from).collect();
        assert_eq!(permute_rows(&w, 1, 2, Direction::ToGguf), [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
    }

    #[test]
    fn the_two_directions_are_inverse() {
        let (rows, cols, heads) = (24, 3, 3);
        #[allow(clippy::cast_precision_loss)]
        let w: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let p = permute_rows(&w, cols, heads, Direction::ToGguf);
        assert_ne!(p, w);
        // Head 0, rows of the first half land on even rows.
        assert_eq!(&p[cols..2 * cols], &w[4 * cols..5 * cols]);
        let bytes: Vec<u8> = p.iter().flat_map(|x| x.to_le_bytes()).collect();
        let back = permute_rows(&bytes, cols * 4, heads, Direction::ToHf);
        let back: Vec<f32> = back.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        assert_eq!(back, w);
        assert!(splits_into_pairs(24, 3) && !splits_into_pairs(21, 3) && !splits_into_pairs(24, 0));
    }
}
