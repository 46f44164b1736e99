//! Fused dot products of quantised weight rows with f32 activations: the CPU matmul hot path.
//!
//! The engine's matmul is `Y[t, n] = Σ_k X[t, k]·W[n, k]`: `W` is `N` rows of `K` weights of
//! one [`GgmlType`], each row `ty.row_bytes(K)` bytes, back to back (the GGUF layout of a
//! `[K, N]` tensor); `X` is `T × K` f32, row-major; `Y` is `T × N` f32, row-major.
//!
//! - [`dot_row`]`(ty, W[n], X[t])` → `Y[t, n]`: one row, one activation vector.
//! - [`dot_rows`]`(ty, W[n0..n1], X[t], Y[t, n0..n1])`: a contiguous range of rows against one
//!   vector, four rows at a time so each load of `x` feeds four rows. This is decode (`T = 1`):
//!   split `N` into ranges, one per thread.
//! - [`dot_row_multi`]`(ty, W[n], X[t0..t1], col)`: one row against several consecutive
//!   activation vectors (`col[j] = Y[t0 + j, n]`). This is prefill: the row is decoded once
//!   per chunk and reused for every vector, four at a time in registers, so decoding costs
//!   1/(t1 − t0) of what per-token [`dot_rows`] would spend. Split `N` among threads; per row,
//!   walk `T` in tiles of about 64 tokens (so the tile of `X`, 64·K·4 bytes, stays in L2) and
//!   scatter `col` into column `n` of `Y`.
//!
//! Numerics: each result equals `Σ_i w_i·x_i` with `w` decoded exactly as
//! [`dequantize`](super::dequantize) decodes it (bit for bit) and the products summed in f32;
//! activations are never quantised. Only the order of the f32 summation differs between
//! kernels (lanes, unrolled accumulators, chunks), so results agree with the scalar path to
//! about 1e-6 of `Σ|w_i·x_i|`, not bit for bit.
//!
//! How: rows are decoded [`CHUNK`] weights at a time into f32 buffers on the stack (L1-resident),
//! then a dot "tile" multiplies `R` decoded rows by `C` vectors. The decoders and tiles come from
//! a [`Kernels`] implementation: AVX2 + FMA + F16C when the CPU has them (detected once), else
//! the portable scalar one, which is also what the tests compare the SIMD kernels against.

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
pub(crate) enum Best {
    #[cfg(target_arch = "x86_64")]
    Avx2(super::dot_avx2::Avx2),
    Scalar,
}

pub(crate) fn best_kernels() -> Best {
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

/// Σ_i dequant(row)[i]·x[i], where `row` holds `x.len()` elements of `ty`.
///
/// Errors when the type is unsupported, `x.len()` is not a whole number of blocks, or `row` is
/// not exactly the bytes of `x.len()` elements.
pub fn dot_row(ty: GgmlType, row: &[u8], x: &[f32]) -> Result<f32, QuantError> {
    let format = check_len(ty, x.len(), row.len())?;
    let [sum] = dispatch!(kernels => rows_dot_x(kernels, format, [row], x, &mut [[0.0; CHUNK]]));
    Ok(sum)
}

/// `y[r] = dot_row(ty, row r, x)` for `r` in `0..y.len()`, where `w` holds `y.len()` rows of
/// `x.len()` elements of `ty`, back to back.
pub fn dot_rows(ty: GgmlType, w: &[u8], x: &[f32], y: &mut [f32]) -> Result<(), QuantError> {
    let format = check_elems(ty, x.len())?;
    check_bytes(format, y.len().saturating_mul(x.len()), w.len())?;
    dispatch!(kernels => rows_dot_x_all(kernels, format, w, x, y));
    Ok(())
}

/// `y[j] = dot_row(ty, row, x_j)` for `j` in `0..y.len()`, where `xs` holds `y.len()` vectors
/// `x_j`, each as long as the row, back to back (consecutive rows of a row-major `X`).
pub fn dot_row_multi(ty: GgmlType, row: &[u8], xs: &[f32], y: &mut [f32]) -> Result<(), QuantError> {
    if y.is_empty() {
        return if xs.is_empty() {
            Format::of(ty).map(|_| ()).ok_or(QuantError::Unsupported { ty })
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
    dispatch!(kernels => row_dot_xs(kernels, format, row, xs, y));
    Ok(())
}

/// The decode and multiply steps that the drivers below are written against.
pub(crate) trait Kernels: Copy {
    /// Decodes whole blocks: `dst.len()` weights of `format` from `src`, bit for bit as
    /// [`decode_blocks`] does. The caller passes exactly the bytes of those weights.
    fn decode(self, format: Format, src: &[u8], dst: &mut [f32]);

    /// `out[r][c] = Σ_i w[r][i]·x[c][i]` in f32; all slices have the same length.
    fn dot_tile<const R: usize, const C: usize>(
        self,
        w: [&[f32]; R],
        x: [&[f32]; C],
    ) -> [[f32; C]; R];
}

/// Portable kernels: the reference decode and an 8-lane f32 dot that compilers vectorise.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scalar;

impl Kernels for Scalar {
    fn decode(self, format: Format, src: &[u8], dst: &mut [f32]) {
        decode_blocks(format, src, dst);
    }

    fn dot_tile<const R: usize, const C: usize>(
        self,
        w: [&[f32]; R],
        x: [&[f32]; C],
    ) -> [[f32; C]; R] {
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
    for (i, x) in x.chunks(CHUNK).enumerate() {
        let start = format.bytes_for(i * CHUNK);
        let bytes = start..start + format.bytes_for(x.len());
        for (row, buf) in rows.iter().zip(buf.iter_mut()) {
            kernels.decode(format, &row[bytes.clone()], &mut buf[..x.len()]);
        }
        let w: [&[f32]; R] = std::array::from_fn(|r| &buf[r][..x.len()]);
        for (sum, part) in sums.iter_mut().zip(kernels.dot_tile(w, [x])) {
            *sum += part[0];
        }
    }
    sums
}

/// [`dot_rows`] after validation: rows in tiles of [`TILE`], then the remainder one by one.
fn rows_dot_x_all<K: Kernels>(kernels: K, format: Format, w: &[u8], x: &[f32], y: &mut [f32]) {
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
        let rows: [&[u8]; TILE] =
            std::array::from_fn(|r| &w_tile[r * row_bytes..(r + 1) * row_bytes]);
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
fn row_dot_xs<K: Kernels>(kernels: K, format: Format, row: &[u8], xs: &[f32], y: &mut [f32]) {
    let k = xs.len() / y.len();
    y.fill(0.0);
    let mut buf = [0.0f32; CHUNK];
    for start in (0..k).step_by(CHUNK) {
        let len = CHUNK.min(k - start);
        let bytes = format.bytes_for(start)..format.bytes_for(start + len);
        kernels.decode(format, &row[bytes], &mut buf[..len]);
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
