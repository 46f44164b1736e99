//! Fused dot products of quantised weight rows with f32 activations: the CPU matmul hot path.
//!
//! The engine's matmul is `Y[t, n] = Σ_k X[t, k]·W[n, k]`: `W` is `N` rows of `K` weights of
//! one [`GgmlType`], each row `ty.row_bytes(K)` bytes, back to back (the GGUF layout of a
//! `[K, N]` tensor); `X` is `T × K` f32, row-major; `Y` is `T × N` f32, row-major.
//!
//! - [`dot_row`]`(ty, W[n], X[t])` → `Y[t, n]`: one row, one activation vector.
//! - [`dot_rows`]`(ty, W[n0..n1], X[t], Y[t, n0..n1])`: a contiguous range of rows against one
//!   vector, four rows at a time so each load of `x` feeds four rows. This is decode (`T = 1`):
//!   split `N` into ranges, one per thread. With AVX2 the block-quantised types take fused
//!   kernels (`fused_avx2.rs`) that never write decoded weights to memory: per block, the quants
//!   are dotted with `x` in registers and scaled once (`Σ w·x = d·Σ q·x + m·Σ x`).
//! - [`dot_row_multi`]`(ty, W[n], X[t0..t1], col)`: one row against several consecutive
//!   activation vectors (`col[j] = Y[t0 + j, n]`). This is prefill: the row is decoded once
//!   per chunk and reused for every vector, four at a time in registers, so decoding costs
//!   1/(t1 − t0) of what per-token [`dot_rows`] would spend. Split `N` among threads; per row,
//!   walk `T` in tiles of about 64 tokens (so the tile of `X`, 64·K·4 bytes, stays in L2) and
//!   scatter `col` into column `n` of `Y`.
//!
//! Numerics: each result is `Σ_i w_i·x_i` over the weights that [`dequantize`](super::dequantize)
//! decodes, summed in f32; activations are never quantised. Kernels differ only in f32 rounding:
//! the order of the summation (lanes, unrolled accumulators, chunks) and, in the fused kernels,
//! the algebra that applies each block's scale and offset once per block instead of once per
//! weight. They agree to well within 1e-5 of `Σ|w_i·x_i|` (the tests' tolerance), not bit for
//! bit.
//!
//! How (the reference path): rows are decoded [`CHUNK`] weights at a time into f32 buffers on
//! the stack (L1-resident), then a dot "tile" multiplies `R` decoded rows by `C` vectors. The
//! decoders, tiles and `dot_rows` come from a [`Kernels`] implementation: AVX2 + FMA + F16C when
//! the CPU has them (detected once), else the portable scalar one, which decodes then dots and is
//! what the tests hold the SIMD kernels against.

use std::sync::OnceLock;

use super::block::decode_blocks;
use super::{check_bytes, check_elems, check_len, Format, GgmlType, QuantError, QK_K};

/// Weights decoded per step: a whole number of blocks of every supported type (1, 32 and 256
/// elements), and small enough that four decoded rows (4 KiB) stay in L1 next to `x`.
pub(crate) const CHUNK: usize = QK_K;

/// Rows per tile in [`dot_rows`], and activation vectors per tile in [`dot_row_multi`]: four
/// keeps the accumulators, one decoded vector and the loaded `x` in the 16 AVX2 registers.
const TILE: usize = 4;

/// The fastest kernels this CPU supports, detected once.
#[derive(Debug, Clone, Copy)]
enum Best {
    #[cfg(target_arch = "x86_64")]
    Avx2(super::dot_avx2::Avx2),
    Scalar,
}

fn best_kernels() -> Best {
    static BEST: OnceLock<Best> = OnceLock::new();
    *BEST.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if let Some(avx2) = super::dot_avx2::Avx2::detect() {
            return Best::Avx2(avx2);
        }
        Best::Scalar
    })
}

/// Evaluates `$body` with `$kernels` bound to the best [`Kernels`] for this CPU.
macro_rules! dispatch {
    ($kernels:ident => $body:expr) => {
        match best_kernels() {
            #[cfg(target_arch = "x86_64")]
            Best::Avx2($kernels) => $body,
            Best::Scalar => {
                let $kernels = Scalar;
                $body
            }
        }
    };
}

/// Decodes `dst.len()` elements of `ty` from `src` exactly as [`dequantize`](super::dequantize)
/// does (bit for bit), with the fastest decoder this CPU has. The prefill matmul decodes weight
/// panels with it.
pub fn decode_fast(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    let format = check_len(ty, dst.len(), src.len())?;
    dispatch!(kernels => kernels.decode(format, src, dst));
    Ok(())
}

/// `Σ_i dequant(row)[i]·x[i]`, where `row` holds `x.len()` elements of `ty`.
///
/// Errors when the type is unsupported, `x.len()` is not a whole number of blocks, or `row` is
/// not exactly the bytes of `x.len()` elements.
pub fn dot_row(ty: GgmlType, row: &[u8], x: &[f32]) -> Result<f32, QuantError> {
    let format = check_len(ty, x.len(), row.len())?;
    let mut sum = 0.0;
    dispatch!(kernels => kernels.dot_rows(format, row, x, std::array::from_mut(&mut sum)));
    Ok(sum)
}

/// `y[r] = dot_row(ty, row r, x)` for `r` in `0..y.len()`, where `w` holds `y.len()` rows of
/// `x.len()` elements of `ty`, back to back.
pub fn dot_rows(ty: GgmlType, w: &[u8], x: &[f32], y: &mut [f32]) -> Result<(), QuantError> {
    let format = check_elems(ty, x.len())?;
    check_bytes(format, y.len().saturating_mul(x.len()), w.len())?;
    dispatch!(kernels => kernels.dot_rows(format, w, x, y));
    Ok(())
}

/// `y[j] = dot_row(ty, row, x_j)` for `j` in `0..y.len()`, where `xs` holds `y.len()` vectors
/// `x_j`, each as long as the row, back to back (consecutive rows of a row-major `X`).
pub fn dot_row_multi(ty: GgmlType, row: &[u8], xs: &[f32], y: &mut [f32]) -> Result<(), QuantError> {
    if y.is_empty() {
        return if xs.is_empty() {
            check_elems(ty, 0).map(|_| ())
        } else {
            Err(QuantError::Shape { what: "activations for zero outputs", expected: 0, got: xs.len() })
        };
    }
    let k = xs.len() / y.len();
    if k * y.len() != xs.len() {
        return Err(QuantError::Shape {
            what: "activations (y.len() vectors of equal length)",
            expected: k * y.len(),
            got: xs.len(),
        });
    }
    let format = check_len(ty, k, row.len())?;
    dispatch!(kernels => row_dot_xs(kernels, format, row, k, xs, y));
    Ok(())
}

/// The decode and multiply steps that the drivers below are written against, and `dot_rows`,
/// which a kernel set may fuse.
pub(crate) trait Kernels: Copy {
    /// `y[r] = Σ_i dequant(row r of w)[i]·x[i]`, where `w` holds exactly `y.len()` rows of
    /// `x.len()` elements of `format` (checked by the caller). By default, decode then dot
    /// ([`rows_dot_x_all`]).
    fn dot_rows(self, format: Format, w: &[u8], x: &[f32], y: &mut [f32]) {
        rows_dot_x_all(self, format, w, x, y);
    }

    /// Decodes whole blocks: `dst.len()` weights of `format` from `src`, bit for bit as
    /// [`decode_blocks`] does. The caller passes exactly the bytes of those weights; a mismatch
    /// is a bug that may leave part of `dst` unwritten but never reads or writes out of bounds.
    fn decode(self, format: Format, src: &[u8], dst: &mut [f32]);

    /// `out[r][c] = Σ_i w[r][i]·x[c][i]` in f32; all slices have the same length.
    fn dot_tile<const R: usize, const C: usize>(self, w: [&[f32]; R], x: [&[f32]; C]) -> [[f32; C]; R];
}

/// Portable kernels: the reference decode and an 8-lane f32 dot that compilers vectorise.
#[derive(Debug, Clone, Copy)]
struct Scalar;

impl Kernels for Scalar {
    fn decode(self, format: Format, src: &[u8], dst: &mut [f32]) {
        decode_blocks(format, src, dst);
    }

    fn dot_tile<const R: usize, const C: usize>(self, w: [&[f32]; R], x: [&[f32]; C]) -> [[f32; C]; R] {
        const LANES: usize = 8;
        let mut out = [[0.0f32; C]; R];
        for (w, out) in w.iter().zip(&mut out) {
            for (x, out) in x.iter().zip(out) {
                // Eight independent partial sums: no reassociation is needed to vectorise them.
                let mut lanes = [0.0f32; LANES];
                let (w_body, w_tail) = w.split_at(w.len() / LANES * LANES);
                let (x_body, x_tail) = x.split_at(w_body.len());
                for (w, x) in w_body.chunks_exact(LANES).zip(x_body.chunks_exact(LANES)) {
                    for ((lane, &w), &x) in lanes.iter_mut().zip(w).zip(x) {
                        *lane += w * x;
                    }
                }
                let tail: f32 = w_tail.iter().zip(x_tail).map(|(&w, &x)| w * x).sum();
                *out = lanes.iter().sum::<f32>() + tail;
            }
        }
        out
    }
}

/// `out[r] = Σ_i dequant(rows[r])[i]·x[i]` for `R` rows of `x.len()` elements (lengths
/// checked by the caller); `buf` is scratch for the decoded chunks.
fn rows_dot_x<K: Kernels, const R: usize>(
    kernels: K,
    format: Format,
    rows: [&[u8]; R],
    x: &[f32],
    buf: &mut [[f32; CHUNK]; R],
) -> [f32; R] {
    let mut sums = [0.0f32; R];
    let chunk_bytes = format.bytes_for(CHUNK);
    for (i, x) in x.chunks(CHUNK).enumerate() {
        // Every chunk but the last is whole, and the last one ends the row: no division here.
        let start = i * chunk_bytes;
        for (row, buf) in rows.iter().zip(buf.iter_mut()) {
            let src = &row[start..(start + chunk_bytes).min(row.len())];
            kernels.decode(format, src, &mut buf[..x.len()]);
        }
        let w: [&[f32]; R] = std::array::from_fn(|r| &buf[r][..x.len()]);
        for (sum, part) in sums.iter_mut().zip(kernels.dot_tile(w, [x])) {
            *sum += part[0];
        }
    }
    sums
}

/// [`dot_rows`] after validation, decode then dot: rows in tiles of [`TILE`], then the remainder
/// one by one.
pub(crate) fn rows_dot_x_all<K: Kernels>(kernels: K, format: Format, w: &[u8], x: &[f32], y: &mut [f32]) {
    let row_bytes = format.bytes_for(x.len());
    if row_bytes == 0 {
        y.fill(0.0);
        return;
    }
    let mut buf = [[0.0f32; CHUNK]; TILE];
    let w_tiles = w.chunks_exact(TILE * row_bytes);
    let w_rest = w_tiles.remainder();
    let mut y_tiles = y.chunks_exact_mut(TILE);
    for (w_tile, y_tile) in w_tiles.zip(&mut y_tiles) {
        let rows: [&[u8]; TILE] = std::array::from_fn(|r| &w_tile[r * row_bytes..(r + 1) * row_bytes]);
        y_tile.copy_from_slice(&rows_dot_x(kernels, format, rows, x, &mut buf));
    }
    let [buf_one, ..] = &mut buf;
    for (y, row) in y_tiles.into_remainder().iter_mut().zip(w_rest.chunks_exact(row_bytes)) {
        let [sum] = rows_dot_x(kernels, format, [row], x, std::array::from_mut(buf_one));
        *y = sum;
    }
}

/// [`dot_row_multi`] after validation: each chunk of the row is decoded once, then dotted with
/// the matching chunk of every vector, [`TILE`] vectors at a time.
fn row_dot_xs<K: Kernels>(kernels: K, format: Format, row: &[u8], k: usize, xs: &[f32], y: &mut [f32]) {
    y.fill(0.0);
    let mut buf = [0.0f32; CHUNK];
    let chunk_bytes = format.bytes_for(CHUNK);
    for (i, start) in (0..k).step_by(CHUNK).enumerate() {
        let len = CHUNK.min(k - start);
        let src = &row[i * chunk_bytes..((i + 1) * chunk_bytes).min(row.len())];
        kernels.decode(format, src, &mut buf[..len]);
        let w = &buf[..len];
        let x_chunk = |j: usize| &xs[j * k + start..j * k + start + len];

        let mut y_tiles = y.chunks_exact_mut(TILE);
        for (tile, y_tile) in (&mut y_tiles).enumerate() {
            let x: [&[f32]; TILE] = std::array::from_fn(|c| x_chunk(tile * TILE + c));
            let [parts] = kernels.dot_tile([w], x);
            for (y, part) in y_tile.iter_mut().zip(parts) {
                *y += part;
            }
        }
        let done = y.len() / TILE * TILE;
        for (j, y) in y[done..].iter_mut().enumerate() {
            let [[part]] = kernels.dot_tile([w], [x_chunk(done + j)]);
            *y += part;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::testing::{assert_close, random_row, reference_dot, test_lengths, weights, Rng, SUPPORTED};

    /// Every type and length: the one-row decode-then-dot driver against dequantize + f64 dot.
    fn check_dot_row<K: Kernels>(kernels: K, seed: u64) {
        let mut rng = Rng::new(seed);
        for ty in SUPPORTED {
            let format = Format::of(ty).unwrap();
            for n in test_lengths(ty) {
                let row = random_row(&mut rng, ty, n);
                let x = rng.f32s(n);
                let (want, scale) = reference_dot(&weights(ty, &row, n), &x);
                let [got] = rows_dot_x(kernels, format, [&row], &x, &mut [[0.0; CHUNK]]);
                assert_close(got, want, scale, &format!("{ty}, {n} elements"));
            }
        }
    }

    /// Activations of the sizes a model produces, by `kind % 4`: (0) magnitudes spread
    /// log-uniformly over 1e-4..10, with one in a hundred an outlier near ±100 (the few "massive"
    /// channels of LLM activations); (1) all tiny, below 1e-6; (2) all large, 50..150; (3) uniform
    /// in (−1, 1). Signs are random.
    fn activations(rng: &mut Rng, n: usize, kind: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let magnitude = match kind % 4 {
                    0 if rng.f32_in(0.0, 1.0) < 0.01 => rng.f32_in(50.0, 150.0),
                    0 => 10f32.powf(rng.f32_in(-4.0, 1.0)),
                    1 => rng.f32_in(0.0, 1e-6),
                    2 => rng.f32_in(50.0, 150.0),
                    _ => rng.f32_in(0.0, 1.0),
                };
                if rng.next_u64() & 1 == 0 {
                    magnitude
                } else {
                    -magnitude
                }
            })
            .collect()
    }

    /// [`Kernels::dot_rows`] (the fused kernels, for AVX2) against dequantize + f64 dot, for
    /// every type, rows of 1..=40 blocks, 1..=7 rows at once (so whole tiles of four and every
    /// remainder), and every kind of activations.
    fn check_dot_rows<K: Kernels>(kernels: K, seed: u64) {
        let mut rng = Rng::new(seed);
        for ty in SUPPORTED {
            let format = Format::of(ty).unwrap();
            for n_blocks in 1..=40 {
                let n = n_blocks * ty.block_elems();
                let n_rows = 1 + n_blocks % 7;
                let rows: Vec<Vec<u8>> = (0..n_rows).map(|_| random_row(&mut rng, ty, n)).collect();
                let x = activations(&mut rng, n, n_blocks);
                let mut y = vec![f32::NAN; n_rows];
                kernels.dot_rows(format, &rows.concat(), &x, &mut y);
                for (r, (row, &got)) in rows.iter().zip(&y).enumerate() {
                    let (want, scale) = reference_dot(&weights(ty, row, n), &x);
                    let what = format!("{ty}, {n_blocks} blocks, row {r} of {n_rows}, activations {}", n_blocks % 4);
                    assert_close(got, want, scale, &what);
                }
            }
        }
    }

    /// A block whose scale `d` is infinite or NaN makes the dot non-finite, whichever way the
    /// kernel applies the scale (per weight, or once per block).
    fn check_non_finite_scales<K: Kernels>(kernels: K, seed: u64) {
        use crate::quant::block::{BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ6K, BlockQ8_0};
        use std::mem::offset_of;
        let mut rng = Rng::new(seed);
        for (ty, d_at) in [
            (GgmlType::Q4_0, offset_of!(BlockQ4_0, d)),
            (GgmlType::Q4_1, offset_of!(BlockQ4_1, d)),
            (GgmlType::Q8_0, offset_of!(BlockQ8_0, d)),
            (GgmlType::Q4K, offset_of!(BlockQ4K, d)),
            (GgmlType::Q5K, offset_of!(BlockQ5K, d)),
            (GgmlType::Q6K, offset_of!(BlockQ6K, d)),
        ] {
            let format = Format::of(ty).unwrap();
            let n = 3 * ty.block_elems();
            // +inf, −inf and a quiet NaN in f16, in the middle block.
            for bits in [0x7C00u16, 0xFC00, 0x7E00] {
                let mut row = random_row(&mut rng, ty, n);
                let at = ty.block_bytes() + d_at;
                row[at..at + 2].copy_from_slice(&bits.to_le_bytes());
                let x = rng.f32s(n);
                let mut y = [0.0f32];
                kernels.dot_rows(format, &row, &x, &mut y);
                assert!(!y[0].is_finite(), "{ty} with scale bits {bits:#06x}: {}", y[0]);
            }
        }
    }

    /// Lengths for the tile tests: one short row and one spanning several chunks.
    fn tile_lengths(ty: GgmlType) -> [usize; 2] {
        if ty.block_elems() == 1 {
            [13, 600]
        } else {
            [ty.block_elems(), 3 * QK_K]
        }
    }

    /// The row-tile and vector-tile drivers against the one-row dot, for 0..=9 rows / vectors
    /// (whole tiles of four plus every remainder).
    fn check_tiles<K: Kernels>(kernels: K, seed: u64) {
        let mut rng = Rng::new(seed);
        for ty in SUPPORTED {
            let format = Format::of(ty).unwrap();
            for n in tile_lengths(ty) {
                let dot_one = |row: &[u8], x: &[f32]| {
                    let [sum] = rows_dot_x(kernels, format, [row], x, &mut [[0.0; CHUNK]]);
                    (sum, reference_dot(&weights(ty, row, n), x).1)
                };
                for count in 0..=9 {
                    let rows: Vec<Vec<u8>> = (0..count).map(|_| random_row(&mut rng, ty, n)).collect();
                    let x = rng.f32s(n);
                    let mut y = vec![f32::NAN; count];
                    rows_dot_x_all(kernels, format, &rows.concat(), &x, &mut y);
                    for (r, (row, &got)) in rows.iter().zip(&y).enumerate() {
                        let (want, scale) = dot_one(row, &x);
                        assert_close(got, f64::from(want), scale, &format!("{ty} row {r}/{count}"));
                    }

                    let row = random_row(&mut rng, ty, n);
                    let xs = rng.f32s(count * n);
                    let mut y = vec![f32::NAN; count];
                    row_dot_xs(kernels, format, &row, n, &xs, &mut y);
                    for (j, (x, &got)) in xs.chunks_exact(n).zip(&y).enumerate() {
                        let (want, scale) = dot_one(&row, x);
                        assert_close(got, f64::from(want), scale, &format!("{ty} x {j}/{count}"));
                    }
                }
            }
        }
    }

    #[test]
    fn decode_fast_equals_dequantize_bit_for_bit() {
        let mut rng = Rng::new(17);
        for ty in SUPPORTED {
            for n in test_lengths(ty) {
                let row = random_row(&mut rng, ty, n);
                let (mut fast, mut reference) = (vec![f32::NAN; n], vec![f32::NAN; n]);
                decode_fast(ty, &row, &mut fast).unwrap();
                crate::quant::dequantize(ty, &row, &mut reference).unwrap();
                let same = fast.iter().zip(&reference).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{ty}, {n} elements");
            }
        }
        assert!(decode_fast(GgmlType::Q4_1, &[0; 19], &mut [0.0; 32]).is_err(), "length errors as in dequantize");
    }

    #[test]
    fn scalar_dot_row_matches_reference() {
        check_dot_row(Scalar, 1);
    }

    #[test]
    fn scalar_tiles_match_dot_row() {
        check_tiles(Scalar, 2);
    }

    #[test]
    fn scalar_dot_rows_match_reference() {
        check_dot_rows(Scalar, 7);
    }

    #[test]
    fn scalar_non_finite_scales() {
        check_non_finite_scales(Scalar, 9);
    }

    #[cfg(target_arch = "x86_64")]
    fn avx2_or_skip() -> Option<crate::quant::dot_avx2::Avx2> {
        let found = crate::quant::dot_avx2::Avx2::detect();
        if found.is_none() {
            eprintln!("skipped: this CPU lacks AVX2/FMA/F16C");
        }
        found
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_dot_row_matches_reference() {
        if let Some(avx2) = avx2_or_skip() {
            check_dot_row(avx2, 3);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_tiles_match_dot_row() {
        if let Some(avx2) = avx2_or_skip() {
            check_tiles(avx2, 4);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_dot_rows_match_reference() {
        if let Some(avx2) = avx2_or_skip() {
            check_dot_rows(avx2, 8);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_non_finite_scales() {
        if let Some(avx2) = avx2_or_skip() {
            check_non_finite_scales(avx2, 10);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_matches_scalar() {
        let Some(avx2) = avx2_or_skip() else { return };
        let mut rng = Rng::new(5);
        for ty in SUPPORTED {
            let format = Format::of(ty).unwrap();
            for n in test_lengths(ty) {
                let row = random_row(&mut rng, ty, n);
                let x = rng.f32s(n);
                let scale = reference_dot(&weights(ty, &row, n), &x).1;
                let [simd] = rows_dot_x(avx2, format, [&row], &x, &mut [[0.0; CHUNK]]);
                let [scalar] = rows_dot_x(Scalar, format, [&row], &x, &mut [[0.0; CHUNK]]);
                assert_close(simd, f64::from(scalar), scale, &format!("{ty}, {n} elements"));
            }
        }
    }

    #[test]
    fn public_api_agrees_with_reference() {
        let mut rng = Rng::new(6);
        for ty in SUPPORTED {
            let n = 2 * QK_K;
            let rows: Vec<Vec<u8>> = (0..5).map(|_| random_row(&mut rng, ty, n)).collect();
            let xs: Vec<Vec<f32>> = (0..5).map(|_| rng.f32s(n)).collect();

            let mut y = [f32::NAN; 5];
            dot_rows(ty, &rows.concat(), &xs[0], &mut y).unwrap();
            let mut col = [f32::NAN; 5];
            dot_row_multi(ty, &rows[0], &xs.concat(), &mut col).unwrap();
            for i in 0..5 {
                let (want, scale) = reference_dot(&weights(ty, &rows[i], n), &xs[0]);
                assert_close(dot_row(ty, &rows[i], &xs[0]).unwrap(), want, scale, "dot_row");
                assert_close(y[i], want, scale, &format!("{ty} dot_rows {i}"));
                let (want, scale) = reference_dot(&weights(ty, &rows[0], n), &xs[i]);
                assert_close(col[i], want, scale, &format!("{ty} dot_row_multi {i}"));
            }
        }
    }

    #[test]
    fn hand_computed_q4_1_dot() {
        // d = 0.5, m = −1, byte j = j | (15 − j) << 4: weights w_j = 0.5j − 1 for j < 16, then
        // w_j = 0.5(31 − j) − 1. With x = 1: 2·Σ_{q<16}(0.5q − 1) = 2·(60 − 16) = 88.
        // With x_j = j: Σ_{j<16} j(0.5j − 1) = 0.5·1240 − 120 = 500, and
        // Σ_{16≤j<32} j(14.5 − 0.5j) = 14.5·376 − 0.5·9176 = 864; total 1364.
        let qs: Vec<u8> = (0..16u8).map(|j| j | ((15 - j) << 4)).collect();
        let row = [&half::f16::from_f32(0.5).to_le_bytes()[..], &[0x00, 0xBC], &qs].concat();
        assert_eq!(dot_row(GgmlType::Q4_1, &row, &[1.0; 32]).unwrap(), 88.0);
        let ramp: Vec<f32> = (0..32).map(|j| j as f32).collect();
        assert_eq!(dot_row(GgmlType::Q4_1, &row, &ramp).unwrap(), 1364.0);
    }

    #[test]
    fn hand_computed_q4_0_and_q8_0_dots() {
        let ramp: Vec<f32> = (0..32).map(|j| j as f32).collect();
        // Q4_0, d = 0.5, byte j = j | (15 − j) << 4: w_j = 0.5(j − 8) for j < 16, and
        // w_{16+j} = 0.5(7 − j). With x = 1: 0.5·(120 − 128) twice = −8. With x_j = j:
        // 0.5·(1240 − 8·120) = 140 for the low half, 0.5·Σ_j (16 + j)(7 − j) = 0.5·(1792 − 9·120
        // − 1240) = −264 for the high half; total −124.
        let qs: Vec<u8> = (0..16u8).map(|j| j | ((15 - j) << 4)).collect();
        let row = [&half::f16::from_f32(0.5).to_le_bytes()[..], &qs].concat();
        assert_eq!(dot_row(GgmlType::Q4_0, &row, &[1.0; 32]).unwrap(), -8.0);
        assert_eq!(dot_row(GgmlType::Q4_0, &row, &ramp).unwrap(), -124.0);
        // Q8_0, d = 0.25, q_j = j − 16: w_j = 0.25(j − 16). With x = 1: 0.25·(496 − 512) = −4.
        // With x_j = j: 0.25·(Σ j² − 16·Σ j) = 0.25·(10416 − 7936) = 620.
        let qs: Vec<u8> = (0..32i8).map(|j| (j - 16) as u8).collect();
        let row = [&half::f16::from_f32(0.25).to_le_bytes()[..], &qs].concat();
        assert_eq!(dot_row(GgmlType::Q8_0, &row, &[1.0; 32]).unwrap(), -4.0);
        assert_eq!(dot_row(GgmlType::Q8_0, &row, &ramp).unwrap(), 620.0);
    }

    #[test]
    fn rejects_bad_shapes() {
        let row = [0u8; 40]; // two Q4_1 blocks
        let x = [0.0f32; 64];
        assert_eq!(dot_row(GgmlType::Q2K, &[0; 84], &[0.0; 256]), Err(QuantError::Unsupported { ty: GgmlType::Q2K }));
        assert!(matches!(
            dot_row(GgmlType::Q4_1, &row, &x[..48]),
            Err(QuantError::PartialBlock { n_elements: 48, .. })
        ));
        assert!(matches!(
            dot_row(GgmlType::Q4_1, &row[..39], &x),
            Err(QuantError::ByteCount { expected_bytes: 40, got_bytes: 39, .. })
        ));
        // dot_rows: three rows of 64 elements need 120 bytes.
        let mut y = [0.0f32; 3];
        assert!(matches!(
            dot_rows(GgmlType::Q4_1, &[0; 80], &x, &mut y),
            Err(QuantError::ByteCount { n_elements: 192, expected_bytes: 120, got_bytes: 80, .. })
        ));
        assert!(matches!(
            dot_rows(GgmlType::Q8_0, &[0; 34], &x[..31], &mut y[..1]),
            Err(QuantError::PartialBlock { n_elements: 31, .. })
        ));
        // dot_row_multi: 130 activations do not split into two equal vectors of whole blocks.
        let xs = [0.0f32; 130];
        assert!(matches!(
            dot_row_multi(GgmlType::Q4_1, &row, &xs[..129], &mut y[..2]),
            Err(QuantError::Shape { expected: 128, got: 129, .. })
        ));
        assert!(matches!(
            dot_row_multi(GgmlType::Q4_1, &row, &xs, &mut y[..2]),
            Err(QuantError::PartialBlock { n_elements: 65, .. })
        ));
        assert!(matches!(
            dot_row_multi(GgmlType::Q4_1, &row, &xs[..1], &mut []),
            Err(QuantError::Shape { expected: 0, got: 1, .. })
        ));
        dot_row_multi(GgmlType::Q4_1, &row, &[], &mut []).unwrap();
        dot_rows(GgmlType::Q4_1, &[], &x, &mut []).unwrap();
        assert_eq!(dot_row(GgmlType::F32, &[], &[]), Ok(0.0));
    }
}
