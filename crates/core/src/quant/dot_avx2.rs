//! x86-64 AVX2 + FMA + F16C kernels for the dot products (see `dot.rs`).
//!
//! `dot_rows` of the block-quantised types goes to the fused kernels of `fused_avx2.rs`, which
//! never materialise weights; everything else is decode-then-dot, in two parts:
//! - block decoders, one per type, eight weights per step: bytes are widened to i32 lanes
//!   (`vpmovzxbd` / `vpmovsxbd`), the quant is assembled with integer ops, converted to f32, and
//!   scaled with the same f32 operations as the scalar reference in `block.rs`, mul and add kept
//!   separate (never fused), so the weights are bit-identical to [`super::dequantize`];
//! - the dot tile: `R` decoded rows times `C` activation vectors, `U` FMA accumulators per pair
//!   to hide the FMA latency, reduced once per chunk. Only this step reorders the f32 sums.
//!
//! Safety: every function here is `unsafe` because it uses these CPU features; an [`Avx2`]
//! value exists only after runtime detection has found them, and its safe [`Kernels`] methods
//! are the only way in. Raw-pointer accesses stay inside one `chunks_exact` block (fixed offsets
//! taken from the `#[repr(C)]` structs with `offset_of!`) or inside slices whose lengths the
//! dot tile asserts.

use std::arch::x86_64::*;
use std::mem::{offset_of, size_of};

use half::f16;

use super::block::{decode_blocks, k_factors, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ6K, BlockQ8_0};
use super::dot::{rows_dot_x_all, Kernels};
use super::fused_avx2;
use super::Format;

/// Proof that this CPU has AVX2, FMA and F16C.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx2 {
    _detected: (),
}

impl Avx2 {
    /// The kernels, if this CPU can run them.
    pub(crate) fn detect() -> Option<Self> {
        let present =
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
        present.then_some(Avx2 { _detected: () })
    }
}

impl Kernels for Avx2 {
    fn decode(self, format: Format, src: &[u8], dst: &mut [f32]) {
        // Checked by the caller; the decoders stay in bounds whatever the lengths (they walk
        // `chunks_exact` of both slices), so this is for debugging only.
        debug_assert_eq!(src.len(), format.bytes_for(dst.len()), "decode: byte count");
        // SAFETY: `self` proves the CPU features.
        unsafe {
            match format {
                Format::F32 => decode_f32(src, dst),
                Format::F16 => decode_f16(src, dst),
                Format::BF16 => decode_bf16(src, dst),
                Format::Q4_0 => decode_q4_0(src, dst),
                Format::Q4_1 => decode_q4_1(src, dst),
                Format::Q8_0 => decode_q8_0(src, dst),
                Format::Q4K => decode_q4k(src, dst),
                Format::Q5K => decode_q5k(src, dst),
                Format::Q6K => decode_q6k(src, dst),
            }
        }
    }

    fn dot_rows(self, format: Format, w: &[u8], x: &[f32], y: &mut [f32]) {
        // SAFETY: `self` proves the CPU features; the fused kernels check the lengths.
        unsafe {
            match format {
                Format::Q4_0 => fused_avx2::dot_rows::<BlockQ4_0>(w, x, y),
                Format::Q4_1 => fused_avx2::dot_rows::<BlockQ4_1>(w, x, y),
                Format::Q8_0 => fused_avx2::dot_rows::<BlockQ8_0>(w, x, y),
                Format::Q4K => fused_avx2::dot_rows::<BlockQ4K>(w, x, y),
                Format::Q5K => fused_avx2::dot_rows::<BlockQ5K>(w, x, y),
                Format::Q6K => fused_avx2::dot_rows::<BlockQ6K>(w, x, y),
                // One-element "blocks" have no shared scale to factor out: decode, then dot.
                Format::F32 | Format::F16 | Format::BF16 => rows_dot_x_all(self, format, w, x, y),
            }
        }
    }

    fn dot_tile<const R: usize, const C: usize>(self, w: [&[f32]; R], x: [&[f32]; C]) -> [[f32; C]; R] {
        let len = x.first().map_or(0, |x| x.len());
        assert!(w.iter().chain(&x).all(|s| s.len() == len), "dot_tile: slices differ in length");
        // SAFETY: `self` proves the CPU features; all slices hold `len` values.
        unsafe {
            // A single pair needs four chains to cover the FMA latency; tiles have enough pairs.
            if R * C == 1 {
                dot_tile::<R, C, 4>(w, x, len)
            } else {
                dot_tile::<R, C, 2>(w, x, len)
            }
        }
    }
}

/// Loads eight bytes at `p`, zero-extended to i32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn load_u8x8(p: *const u8) -> __m256i {
    _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.cast()))
}

/// Loads eight bytes at `p`, sign-extended to i32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn load_i8x8(p: *const u8) -> __m256i {
    _mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast()))
}

/// The f16 at byte `at` of `block`, widened to f32 (exact).
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn f16_at(block: &[u8], at: usize) -> f32 {
    let bits = u16::from_le_bytes([block[at], block[at + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// Stores eight f32 at `out[at..at + 8]`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn store(out: &mut [f32], at: usize, v: __m256) {
    debug_assert!(at + 8 <= out.len());
    _mm256_storeu_ps(out.as_mut_ptr().add(at), v);
}

/// Q4_0: `(q - 8) * d`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_q4_0(src: &[u8], dst: &mut [f32]) {
    const D: usize = offset_of!(BlockQ4_0, d);
    const QS: usize = offset_of!(BlockQ4_0, qs);
    let low4 = _mm256_set1_epi32(0x0F);
    let eight = _mm256_set1_epi32(8);
    for (block, out) in src.chunks_exact(size_of::<BlockQ4_0>()).zip(dst.chunks_exact_mut(32)) {
        let d = _mm256_set1_ps(f16_at(block, D));
        let qs = block.as_ptr().add(QS);
        // Bytes 8h..8h + 8 hold elements 8h.. in their low nibbles and 16 + 8h.. in the high.
        for h in 0..2 {
            let q = load_u8x8(qs.add(8 * h));
            let low = _mm256_sub_epi32(_mm256_and_si256(q, low4), eight);
            let high = _mm256_sub_epi32(_mm256_srli_epi32::<4>(q), eight);
            store(out, 8 * h, _mm256_mul_ps(_mm256_cvtepi32_ps(low), d));
            store(out, 16 + 8 * h, _mm256_mul_ps(_mm256_cvtepi32_ps(high), d));
        }
    }
}

/// Q4_1: `q * d + m`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_q4_1(src: &[u8], dst: &mut [f32]) {
    const D: usize = offset_of!(BlockQ4_1, d);
    const M: usize = offset_of!(BlockQ4_1, m);
    const QS: usize = offset_of!(BlockQ4_1, qs);
    let low4 = _mm256_set1_epi32(0x0F);
    for (block, out) in src.chunks_exact(size_of::<BlockQ4_1>()).zip(dst.chunks_exact_mut(32)) {
        let d = _mm256_set1_ps(f16_at(block, D));
        let m = _mm256_set1_ps(f16_at(block, M));
        let qs = block.as_ptr().add(QS);
        for h in 0..2 {
            let q = load_u8x8(qs.add(8 * h));
            let low = _mm256_cvtepi32_ps(_mm256_and_si256(q, low4));
            let high = _mm256_cvtepi32_ps(_mm256_srli_epi32::<4>(q));
            store(out, 8 * h, _mm256_add_ps(_mm256_mul_ps(low, d), m));
            store(out, 16 + 8 * h, _mm256_add_ps(_mm256_mul_ps(high, d), m));
        }
    }
}

/// Q8_0: `q * d`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_q8_0(src: &[u8], dst: &mut [f32]) {
    const D: usize = offset_of!(BlockQ8_0, d);
    const QS: usize = offset_of!(BlockQ8_0, qs);
    for (block, out) in src.chunks_exact(size_of::<BlockQ8_0>()).zip(dst.chunks_exact_mut(32)) {
        let d = _mm256_set1_ps(f16_at(block, D));
        let qs = block.as_ptr().add(QS);
        for v in 0..4 {
            let q = _mm256_cvtepi32_ps(load_i8x8(qs.add(8 * v)));
            store(out, 8 * v, _mm256_mul_ps(q, d));
        }
    }
}

/// The `(d * sc_j, dmin * m_j)` factors of a Q4_K or Q5_K block, from its header bytes.
#[inline]
fn k_block_factors(block: &[u8], d_at: usize, dmin_at: usize, scales_at: usize) -> [(f32, f32); 8] {
    let d = f16::from_le_bytes([block[d_at], block[d_at + 1]]);
    let dmin = f16::from_le_bytes([block[dmin_at], block[dmin_at + 1]]);
    let scales: [u8; 12] = std::array::from_fn(|i| block[scales_at + i]);
    k_factors(d, dmin, &scales)
}

/// Q4_K: sub-block `j` is `(d * sc_j) * q - dmin * m_j`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_q4k(src: &[u8], dst: &mut [f32]) {
    const D: usize = offset_of!(BlockQ4K, d);
    const DMIN: usize = offset_of!(BlockQ4K, dmin);
    const SCALES: usize = offset_of!(BlockQ4K, scales);
    const QS: usize = offset_of!(BlockQ4K, qs);
    let low4 = _mm256_set1_epi32(0x0F);
    for (block, out) in src.chunks_exact(size_of::<BlockQ4K>()).zip(dst.chunks_exact_mut(256)) {
        let factors = k_block_factors(block, D, DMIN, SCALES);
        let qs = block.as_ptr().add(QS);
        // Pair p: sub-block 2p from the low nibbles of qs[32p..32p + 32], 2p + 1 from the high.
        for p in 0..4 {
            let (d_low, m_low) = factors[2 * p];
            let (d_high, m_high) = factors[2 * p + 1];
            let (d_low, m_low) = (_mm256_set1_ps(d_low), _mm256_set1_ps(m_low));
            let (d_high, m_high) = (_mm256_set1_ps(d_high), _mm256_set1_ps(m_high));
            for v in 0..4 {
                let q = load_u8x8(qs.add(32 * p + 8 * v));
                let low = _mm256_cvtepi32_ps(_mm256_and_si256(q, low4));
                let high = _mm256_cvtepi32_ps(_mm256_srli_epi32::<4>(q));
                store(out, 64 * p + 8 * v, _mm256_sub_ps(_mm256_mul_ps(d_low, low), m_low));
                store(out, 64 * p + 32 + 8 * v, _mm256_sub_ps(_mm256_mul_ps(d_high, high), m_high));
            }
        }
    }
}

/// Q5_K: as Q4_K with bit `j` of `qh[l]` as bit 4 of element `l` of sub-block `j`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_q5k(src: &[u8], dst: &mut [f32]) {
    const D: usize = offset_of!(BlockQ5K, d);
    const DMIN: usize = offset_of!(BlockQ5K, dmin);
    const SCALES: usize = offset_of!(BlockQ5K, scales);
    const QH: usize = offset_of!(BlockQ5K, qh);
    const QS: usize = offset_of!(BlockQ5K, qs);
    let low4 = _mm256_set1_epi32(0x0F);
    let one = _mm256_set1_epi32(1);
    for (block, out) in src.chunks_exact(size_of::<BlockQ5K>()).zip(dst.chunks_exact_mut(256)) {
        let factors = k_block_factors(block, D, DMIN, SCALES);
        let qs = block.as_ptr().add(QS);
        let qh = block.as_ptr().add(QH);
        for p in 0..4 {
            let (d_low, m_low) = factors[2 * p];
            let (d_high, m_high) = factors[2 * p + 1];
            let (d_low, m_low) = (_mm256_set1_ps(d_low), _mm256_set1_ps(m_low));
            let (d_high, m_high) = (_mm256_set1_ps(d_high), _mm256_set1_ps(m_high));
            let shift_low = _mm_cvtsi32_si128(2 * p as i32);
            let shift_high = _mm_cvtsi32_si128(2 * p as i32 + 1);
            for v in 0..4 {
                let q = load_u8x8(qs.add(32 * p + 8 * v));
                let h = load_u8x8(qh.add(8 * v));
                let bit_low = _mm256_and_si256(_mm256_srl_epi32(h, shift_low), one);
                let bit_high = _mm256_and_si256(_mm256_srl_epi32(h, shift_high), one);
                let low = _mm256_or_si256(_mm256_and_si256(q, low4), _mm256_slli_epi32::<4>(bit_low));
                let high = _mm256_or_si256(_mm256_srli_epi32::<4>(q), _mm256_slli_epi32::<4>(bit_high));
                let low = _mm256_cvtepi32_ps(low);
                let high = _mm256_cvtepi32_ps(high);
                store(out, 64 * p + 8 * v, _mm256_sub_ps(_mm256_mul_ps(d_low, low), m_low));
                store(out, 64 * p + 32 + 8 * v, _mm256_sub_ps(_mm256_mul_ps(d_high, high), m_high));
            }
        }
    }
}

/// Q6_K: group `i` of 16 is `(d * scales[i]) * (q - 32)`, `q` from `ql` and `qh`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_q6k(src: &[u8], dst: &mut [f32]) {
    const QL: usize = offset_of!(BlockQ6K, ql);
    const QH: usize = offset_of!(BlockQ6K, qh);
    const SCALES: usize = offset_of!(BlockQ6K, scales);
    const D: usize = offset_of!(BlockQ6K, d);
    let low4 = _mm256_set1_epi32(0x0F);
    let low2 = _mm256_set1_epi32(3);
    let bias = _mm256_set1_epi32(32);
    for (block, out) in src.chunks_exact(size_of::<BlockQ6K>()).zip(dst.chunks_exact_mut(256)) {
        let d = f16_at(block, D);
        let factors: [f32; 16] = std::array::from_fn(|i| d * f32::from(block[SCALES + i] as i8));
        let ql = block.as_ptr().add(QL);
        let qh = block.as_ptr().add(QH);
        // Half h, quarter g (32 weights), lanes l = 8v..8v + 8.
        for h in 0..2 {
            for g in 0..4 {
                let qh_shift = _mm_cvtsi32_si128(2 * g as i32);
                for v in 0..4 {
                    let ql_bytes = load_u8x8(ql.add(64 * h + 32 * (g % 2) + 8 * v));
                    let low = if g < 2 { _mm256_and_si256(ql_bytes, low4) } else { _mm256_srli_epi32::<4>(ql_bytes) };
                    let qh_bytes = load_u8x8(qh.add(32 * h + 8 * v));
                    let top = _mm256_and_si256(_mm256_srl_epi32(qh_bytes, qh_shift), low2);
                    let q = _mm256_sub_epi32(_mm256_or_si256(low, _mm256_slli_epi32::<4>(top)), bias);
                    let scale = _mm256_set1_ps(factors[8 * h + 2 * g + v / 2]);
                    store(out, 128 * h + 32 * g + 8 * v, _mm256_mul_ps(scale, _mm256_cvtepi32_ps(q)));
                }
            }
        }
    }
}

/// F32: a copy, eight at a time (the bytes may be unaligned), the tail through the reference.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_f32(src: &[u8], dst: &mut [f32]) {
    let body = dst.len() / 8 * 8;
    for (bytes, out) in src.chunks_exact(32).zip(dst.chunks_exact_mut(8)) {
        store(out, 0, _mm256_loadu_ps(bytes.as_ptr().cast()));
    }
    decode_blocks(Format::F32, &src[4 * body..], &mut dst[body..]);
}

/// F16: eight at a time with `vcvtph2ps`, the tail through the reference.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_f16(src: &[u8], dst: &mut [f32]) {
    let body = dst.len() / 8 * 8;
    for (bytes, out) in src.chunks_exact(16).zip(dst.chunks_exact_mut(8)) {
        store(out, 0, _mm256_cvtph_ps(_mm_loadu_si128(bytes.as_ptr().cast())));
    }
    decode_blocks(Format::F16, &src[2 * body..], &mut dst[body..]);
}

/// BF16: eight at a time (a bf16 is the top half of an f32), the tail through the reference.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_bf16(src: &[u8], dst: &mut [f32]) {
    let body = dst.len() / 8 * 8;
    for (bytes, out) in src.chunks_exact(16).zip(dst.chunks_exact_mut(8)) {
        let widened = _mm256_cvtepu16_epi32(_mm_loadu_si128(bytes.as_ptr().cast()));
        store(out, 0, _mm256_castsi256_ps(_mm256_slli_epi32::<16>(widened)));
    }
    decode_blocks(Format::BF16, &src[2 * body..], &mut dst[body..]);
}

/// One step of the tile: eight weights of each row times eight values of each vector, at `at`,
/// into accumulator set `u`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_step<const R: usize, const C: usize, const U: usize>(
    w: &[&[f32]; R],
    x: &[&[f32]; C],
    at: usize,
    u: usize,
    acc: &mut [[[__m256; U]; C]; R],
) {
    let mut xv = [_mm256_setzero_ps(); C];
    for c in 0..C {
        xv[c] = _mm256_loadu_ps(x[c].as_ptr().add(at));
    }
    for r in 0..R {
        let wv = _mm256_loadu_ps(w[r].as_ptr().add(at));
        for c in 0..C {
            acc[r][c][u] = _mm256_fmadd_ps(wv, xv[c], acc[r][c][u]);
        }
    }
}

/// Sum of the eight lanes.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn sum_lanes(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// `out[r][c] = Σ_i w[r][i]·x[c][i]` over `len` values, with `U` accumulators per pair.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_tile<const R: usize, const C: usize, const U: usize>(
    w: [&[f32]; R],
    x: [&[f32]; C],
    len: usize,
) -> [[f32; C]; R] {
    let mut acc = [[[_mm256_setzero_ps(); U]; C]; R];
    let mut i = 0;
    while i + 8 * U <= len {
        for u in 0..U {
            fma_step(&w, &x, i + 8 * u, u, &mut acc);
        }
        i += 8 * U;
    }
    while i + 8 <= len {
        fma_step(&w, &x, i, 0, &mut acc);
        i += 8;
    }
    let mut out = [[0.0f32; C]; R];
    for r in 0..R {
        for c in 0..C {
            let mut total = acc[r][c][0];
            for &more in &acc[r][c][1..] {
                total = _mm256_add_ps(total, more);
            }
            out[r][c] = sum_lanes(total);
            for j in i..len {
                out[r][c] += w[r][j] * x[c][j];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::testing::{random_row, test_lengths, weights, Rng, SUPPORTED};

    #[test]
    fn decoders_match_reference_bit_for_bit() {
        let Some(avx2) = Avx2::detect() else {
            eprintln!("skipped: this CPU lacks AVX2/FMA/F16C");
            return;
        };
        let mut rng = Rng::new(11);
        for ty in SUPPORTED {
            let format = Format::of(ty).unwrap();
            for n in test_lengths(ty) {
                let row = random_row(&mut rng, ty, n);
                let want = weights(ty, &row, n);
                let mut got = vec![f32::NAN; n];
                avx2.decode(format, &row, &mut got);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(g.to_bits(), w.to_bits(), "{ty}, {n} elements, element {i}");
                }
            }
        }
    }

    #[test]
    fn decoders_keep_nan_and_infinite_scales() {
        let Some(avx2) = Avx2::detect() else {
            eprintln!("skipped: this CPU lacks AVX2/FMA/F16C");
            return;
        };
        // Q8_0 with d = +inf (0x7C00) and q = 0: inf·0 is NaN in both paths.
        let mut block = vec![0x00, 0x7C];
        block.extend([0u8, 1, 0xFF].iter().cycle().take(32));
        let want = weights(crate::quant::GgmlType::Q8_0, &block, 32);
        let mut got = [0.0f32; 32];
        avx2.decode(Format::Q8_0, &block, &mut got);
        assert!(got[0].is_nan() && want[0].is_nan());
        assert_eq!(got[1], f32::INFINITY);
        assert_eq!(got[2], f32::NEG_INFINITY);
        assert_eq!(&got[1..3], &want[1..3]);
    }
}
