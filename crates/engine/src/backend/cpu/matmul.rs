//! `Y[T, N] = X[T, K] · W[N, K]ᵀ` with quantised weight rows and f32 activations.
//!
//! Three paths, all exact in the sense of the model's accuracy bar (weights decoded exactly to
//! f32, f32 accumulation, activations never quantised), chosen by the number of tokens:
//! - one token (decode): fused dequantise-and-dot kernels over ranges of weight rows
//!   (`quant::dot_rows`); no intermediate buffers.
//! - a few tokens (batched decode): each weight row is decoded once and dotted with every
//!   token (`quant::dot_row_multi`).
//! - many tokens (prefill): weight rows are decoded `NR` at a time into a transposed f32 panel
//!   `[K][NR]`, and a register-blocked micro-kernel computes `MR × NR` outputs per pass
//!   (AVX2+FMA when the CPU has it, portable code otherwise).
//!
//! Measured on the default model (2 cores, one step over every matrix): the panel path costs
//! about as much for 4 tokens as for 16 (the decode of the panels dominates), which is where
//! the row-wise paths hand over.

use infinihip_core::quant::{self, GgmlType};
use rayon::prelude::*;

/// Weight rows per panel (two 8-lane vectors).
const NR: usize = 16;
/// Tokens per micro-tile: 6 × 2 accumulators fill 12 of the 16 AVX2 registers.
const MR: usize = 6;
/// From this many tokens on, one decode of each weight row serves several tokens
/// (`quant::dot_row_multi`).
const MULTI_MIN_ROWS: usize = 2;
/// From this many tokens on, the panel GEMM beats per-row dots.
const GEMM_MIN_ROWS: usize = 16;

/// A quantised weight matrix as raw GGUF rows.
pub struct QuantMatrix<'a> {
    pub ty: GgmlType,
    pub bytes: &'a [u8],
    pub n_out: usize,
    pub n_in: usize,
}

impl QuantMatrix<'_> {
    fn row_bytes(&self) -> usize {
        self.n_in / self.ty.block_elems() * self.ty.block_bytes()
    }

    fn row(&self, n: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.bytes[n * rb..(n + 1) * rb]
    }
}

/// Raw pointer to the output, shared by tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes a disjoint set of (row, column) cells, and the slice outlives the
// parallel scope that uses the pointer.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Through a method, so that closures capture the `Send + Sync` wrapper, not the raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `out[t * n_out + n] = Σ_k x[t * n_in + k] · w[n, k]` for `t < rows`.
///
/// The caller has checked that `x` holds `rows × n_in` values and `out` `rows × n_out`.
pub fn matmul(x: &[f32], rows: usize, w: &QuantMatrix<'_>, out: &mut [f32]) {
    debug_assert_eq!(x.len(), rows * w.n_in);
    debug_assert_eq!(out.len(), rows * w.n_out);
    if rows < MULTI_MIN_ROWS {
        matmul_rowwise(x, rows, w, out);
    } else if rows < GEMM_MIN_ROWS {
        matmul_row_multi(x, rows, w, out);
    } else {
        matmul_panels(x, rows, w, out);
    }
}

fn matmul_rowwise(x: &[f32], rows: usize, w: &QuantMatrix<'_>, out: &mut [f32]) {
    let (n_in, n_out) = (w.n_in, w.n_out);
    let rb = w.row_bytes();
    let ptr = OutPtr(out.as_mut_ptr());
    // Several ranges per thread balance the load; each range is a multiple of 4 rows, the
    // unroll of `dot_rows`.
    let range = (n_out / (rayon::current_num_threads() * 4)).max(64).next_multiple_of(4);
    (0..n_out.div_ceil(range)).into_par_iter().for_each(|c| {
        let n0 = c * range;
        let n1 = (n0 + range).min(n_out);
        let block = &w.bytes[n0 * rb..n1 * rb];
        for t in 0..rows {
            // SAFETY: this task alone writes cells (t, n0..n1), which lie inside `out`.
            let y = unsafe { std::slice::from_raw_parts_mut(ptr.get().add(t * n_out + n0), n1 - n0) };
            quant::dot_rows(w.ty, block, &x[t * n_in..(t + 1) * n_in], y).expect("matrix rows were validated at load");
        }
    });
}

fn matmul_row_multi(x: &[f32], rows: usize, w: &QuantMatrix<'_>, out: &mut [f32]) {
    let n_out = w.n_out;
    let ptr = OutPtr(out.as_mut_ptr());
    let chunk = (n_out / (rayon::current_num_threads() * 8)).max(16);
    (0..n_out).into_par_iter().with_min_len(chunk).for_each_init(
        || vec![0f32; rows],
        |col, n| {
            quant::dot_row_multi(w.ty, w.row(n), x, col).expect("matrix rows were validated at load");
            for (t, &y) in col.iter().enumerate() {
                // SAFETY: cell (t, n) is written by the task that owns weight row n only.
                unsafe { *ptr.get().add(t * n_out + n) = y };
            }
        },
    );
}

fn matmul_panels(x: &[f32], rows: usize, w: &QuantMatrix<'_>, out: &mut [f32]) {
    let (k, n_out) = (w.n_in, w.n_out);
    let ptr = OutPtr(out.as_mut_ptr());
    let n_panels = n_out.div_ceil(NR);
    (0..n_panels).into_par_iter().for_each_init(
        || vec![0f32; k * NR + k],
        |scratch, p| {
            let (panel, row_buf) = scratch.split_at_mut(k * NR);
            let n0 = p * NR;
            let n_valid = NR.min(n_out - n0);
            pack_panel(w, n0, n_valid, panel, row_buf);
            let mut t = 0;
            while t < rows {
                let m = MR.min(rows - t);
                // SAFETY: this task alone writes columns n0..n0+n_valid; rows t..t+m exist.
                unsafe {
                    micro_tile(m, &x[t * k..], k, panel, ptr.get().add(t * n_out + n0), n_out, n_valid);
                }
                t += m;
            }
        },
    );
}

/// Decodes weight rows `n0..n0+n_valid` into `panel[kk * NR + j]`; missing rows are zero.
fn pack_panel(w: &QuantMatrix<'_>, n0: usize, n_valid: usize, panel: &mut [f32], row_buf: &mut [f32]) {
    let k = w.n_in;
    if n_valid < NR {
        panel.fill(0.0);
    }
    for j in 0..n_valid {
        quant::decode_fast(w.ty, w.row(n0 + j), row_buf).expect("matrix rows were validated at load");
        for (kk, &v) in row_buf.iter().enumerate() {
            panel[kk * NR + j] = v;
        }
    }
    debug_assert_eq!(row_buf.len(), k);
}

/// `out[i * ldo + j] = Σ_kk x[i * k + kk] · panel[kk * NR + j]` for `i < m ≤ MR`, `j < n_valid`.
///
/// # Safety
/// `out` must be valid for writes at `i * ldo + j` for `i < m`, `j < n_valid`; `x` holds at
/// least `m` rows of `k` values.
unsafe fn micro_tile(m: usize, x: &[f32], k: usize, panel: &[f32], out: *mut f32, ldo: usize, n_valid: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::simd::has_avx2_fma() {
            return match m {
                6 => avx2::tile::<6>(x, k, panel, out, ldo, n_valid),
                5 => avx2::tile::<5>(x, k, panel, out, ldo, n_valid),
                4 => avx2::tile::<4>(x, k, panel, out, ldo, n_valid),
                3 => avx2::tile::<3>(x, k, panel, out, ldo, n_valid),
                2 => avx2::tile::<2>(x, k, panel, out, ldo, n_valid),
                _ => avx2::tile::<1>(x, k, panel, out, ldo, n_valid),
            };
        }
    }
    portable_tile(m, x, k, panel, out, ldo, n_valid)
}

unsafe fn portable_tile(m: usize, x: &[f32], k: usize, panel: &[f32], out: *mut f32, ldo: usize, n_valid: usize) {
    let mut acc = [[0f32; NR]; MR];
    for kk in 0..k {
        let b = &panel[kk * NR..(kk + 1) * NR];
        for (i, acc_row) in acc.iter_mut().enumerate().take(m) {
            let a = x[i * k + kk];
            for (o, &bv) in acc_row.iter_mut().zip(b) {
                *o += a * bv;
            }
        }
    }
    for (i, acc_row) in acc.iter().enumerate().take(m) {
        for (j, &v) in acc_row.iter().enumerate().take(n_valid) {
            *out.add(i * ldo + j) = v;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::NR;
    use std::arch::x86_64::*;

    /// The AVX2 micro-kernel: `M` tokens × 16 weight rows, two accumulators per token.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile<const M: usize>(
        x: &[f32],
        k: usize,
        panel: &[f32],
        out: *mut f32,
        ldo: usize,
        n_valid: usize,
    ) {
        debug_assert!(x.len() >= M * k && panel.len() >= k * NR);
        let xp = x.as_ptr();
        let pp = panel.as_ptr();
        let mut acc = [[_mm256_setzero_ps(); 2]; M];
        for kk in 0..k {
            let b0 = _mm256_loadu_ps(pp.add(kk * NR));
            let b1 = _mm256_loadu_ps(pp.add(kk * NR + 8));
            for (i, a) in acc.iter_mut().enumerate() {
                let xv = _mm256_broadcast_ss(&*xp.add(i * k + kk));
                a[0] = _mm256_fmadd_ps(xv, b0, a[0]);
                a[1] = _mm256_fmadd_ps(xv, b1, a[1]);
            }
        }
        for (i, a) in acc.iter().enumerate() {
            let dst = out.add(i * ldo);
            if n_valid == NR {
                _mm256_storeu_ps(dst, a[0]);
                _mm256_storeu_ps(dst.add(8), a[1]);
            } else {
                let mut tmp = [0f32; NR];
                _mm256_storeu_ps(tmp.as_mut_ptr(), a[0]);
                _mm256_storeu_ps(tmp.as_mut_ptr().add(8), a[1]);
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, n_valid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic test data in [-1, 1).
    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn f32_matrix(w: &[f32]) -> Vec<u8> {
        w.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn reference(x: &[f32], rows: usize, w: &[f32], n_out: usize, n_in: usize) -> Vec<f64> {
        let mut y = vec![0f64; rows * n_out];
        for t in 0..rows {
            for n in 0..n_out {
                y[t * n_out + n] = (0..n_in).map(|k| x[t * n_in + k] as f64 * w[n * n_in + k] as f64).sum();
            }
        }
        y
    }

    #[test]
    fn both_paths_match_f64_reference_on_ragged_shapes() {
        for &(rows, n_out, n_in) in &[(1, 16, 32), (3, 37, 64), (4, 16, 32), (7, 50, 96), (13, 33, 576), (64, 48, 128)]
        {
            let x = noise(rows * n_in, rows as u64);
            let w = noise(n_out * n_in, n_out as u64 + 7);
            let bytes = f32_matrix(&w);
            let m = QuantMatrix { ty: GgmlType::F32, bytes: &bytes, n_out, n_in };
            let mut y = vec![f32::NAN; rows * n_out];
            matmul(&x, rows, &m, &mut y);
            let want = reference(&x, rows, &w, n_out, n_in);
            for (i, (a, b)) in y.iter().zip(&want).enumerate() {
                assert!(
                    (*a as f64 - b).abs() < 1e-4 * (1.0 + b.abs()),
                    "rows {rows} n_out {n_out} n_in {n_in} at {i}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn portable_tile_matches_dispatched_tile() {
        let (k, m) = (40, 5);
        let x = noise(m * k, 3);
        let panel = noise(k * NR, 4);
        let mut a = vec![0f32; m * NR];
        let mut b = vec![0f32; m * NR];
        unsafe {
            micro_tile(m, &x, k, &panel, a.as_mut_ptr(), NR, 11);
            portable_tile(m, &x, k, &panel, b.as_mut_ptr(), NR, 11);
        }
        for (u, v) in a.iter().zip(&b) {
            assert!((u - v).abs() < 1e-5);
        }
        assert!(a.iter().enumerate().all(|(i, &v)| i % NR < 11 || v == 0.0), "only valid columns written");
    }
}
