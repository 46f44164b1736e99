//! Fused decode-and-dot for AVX2 + FMA + F16C: `dot_rows` over block-quantised weight rows
//! without writing decoded weights to memory. This is the decode step's matmul (one activation
//! vector, every weight row).
//!
//! The algebra: each block type keeps its weights in groups that share one affine map from
//! small integers, `w_i = a·q_i + b`, so that over a group
//!
//! ```text
//! Σ_i w_i·x_i = a·Σ_i q_i·x_i + b·Σ_i x_i
//! ```
//!
//! | type       | group | a        | b          | q_i          |
//! |------------|-------|----------|------------|--------------|
//! | Q4_0       | 32    | d        | −8·d       | 0..=15       |
//! | Q4_1       | 32    | d        | m          | 0..=15       |
//! | Q8_0       | 32    | d        | 0          | −128..=127   |
//! | Q4_K, Q5_K | 32    | d·sc_j   | −dmin·m_j  | 0..=15/31    |
//! | Q6_K       | 16    | d·sc_i   | 0          | −32..=31     |
//!
//! (`a` and `b` are exact in f32: f16 values, or an f16 times a 6- or 8-bit integer.) Per group
//! and row the quants are widened to f32 lanes in registers and multiplied into the matching
//! eight-lane slices of `x`, giving a partial `p` whose lanes sum to `Σ q_i·x_i`; the row's
//! accumulator then takes `a·p + b·s`, where `s` is the lane-wise sum of the group's slices of
//! `x`. `s` does not depend on the row, so it is computed once per tile of [`TILE`] rows. The
//! accumulator's eight lanes are added up at the end of the row.
//!
//! Numerics: this is `Σ_i w_i·x_i` over the exact weights, with f32 rounding in a different order
//! from decode-then-dot (which rounds each weight to f32 first, then each product). The rounding
//! error scales with `Σ_i (|a·q_i·x_i| + |b·x_i|)`, a small multiple of `Σ_i |w_i·x_i|`;
//! activations are never quantised.
//!
//! Safety: every function here needs AVX2, FMA and F16C; `dot_avx2::Avx2` proves them and is the
//! only caller. Block reads stay inside the `size_of::<B>()` bytes at each block pointer, and `x`
//! reads inside the block's `ELEMS` values; [`dot_rows`] derives those pointers from slices whose
//! lengths it checks.

use std::arch::x86_64::*;
use std::mem::{offset_of, size_of};

use super::block::{Block, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ6K, BlockQ8_0};
use super::dot_avx2::{load_i8x8, load_u8x8, sum_lanes};

/// Rows per tile: the tile shares each load of `x` (and each group sum) among four rows, and its
/// four accumulators plus one row's temporaries fit in the 16 AVX2 registers.
const TILE: usize = 4;

/// A block type whose dot product with `x` is computed straight from its bytes.
pub(super) trait FusedDot: Block {
    /// Adds to each `acc[r]` eight lanes whose sum is `Σ_i w_i·x_i` over the block at
    /// `blocks[r]` and the `Self::ELEMS` values at `x`.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; each `blocks[r]` points to `size_of::<Self>()` readable
    /// bytes and `x` to `Self::ELEMS` readable f32.
    unsafe fn accumulate<const R: usize>(blocks: [*const u8; R], x: *const f32, acc: &mut [__m256; R]);
}

/// `y[r] = Σ_i w_r,i·x_i` for the `y.len()` rows of `w`, each `x.len()` weights of `B`.
///
/// Panics if `x` is not whole blocks or `w` is not exactly `y.len()` such rows (the public API has
/// checked both).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_rows<B: FusedDot>(w: &[u8], x: &[f32], y: &mut [f32]) {
    let n_blocks = x.len() / B::ELEMS;
    let row_bytes = n_blocks * size_of::<B>();
    assert!(
        n_blocks * B::ELEMS == x.len() && y.len().checked_mul(row_bytes) == Some(w.len()),
        "fused dot_rows: {} bytes are not {} rows of {} weights",
        w.len(),
        y.len(),
        x.len()
    );
    if n_blocks == 0 {
        y.fill(0.0);
        return;
    }
    let w_tiles = w.chunks_exact(TILE * row_bytes);
    let w_rest = w_tiles.remainder();
    let mut y_tiles = y.chunks_exact_mut(TILE);
    // Each tile prefetches the next one, block by block: the hardware prefetchers alone leave
    // the four interleaved row streams waiting on memory (measured: Q8_0 49152×576, whose 28 MB
    // exceed the caches, ran 1.7× faster with the prefetch).
    for (w_tile, y_tile) in w_tiles.zip(&mut y_tiles) {
        let rows: [*const u8; TILE] = std::array::from_fn(|r| w_tile[r * row_bytes..].as_ptr());
        let sums = rows_dot::<B, TILE>(rows, x, n_blocks, TILE * row_bytes);
        y_tile.copy_from_slice(&sums);
    }
    for (y, row) in y_tiles.into_remainder().iter_mut().zip(w_rest.chunks_exact(row_bytes)) {
        let [sum] = rows_dot::<B, 1>([row.as_ptr()], x, n_blocks, row_bytes);
        *y = sum;
    }
}

/// The dots of `R` rows of `n_blocks` blocks each (starting at `rows[r]`) with `x`, prefetching
/// the bytes `prefetch_ahead` past each block read.
///
/// # Safety
/// As [`FusedDot::accumulate`], for `n_blocks` consecutive blocks of each row and of `x`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_dot<B: FusedDot, const R: usize>(
    rows: [*const u8; R],
    x: &[f32],
    n_blocks: usize,
    prefetch_ahead: usize,
) -> [f32; R] {
    debug_assert_eq!(x.len(), n_blocks * B::ELEMS);
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..n_blocks {
        let blocks = rows.map(|row| row.wrapping_add(b * size_of::<B>()));
        for &block in &blocks {
            // A prefetch never faults, so it may point past the end of the rows.
            _mm_prefetch::<_MM_HINT_T0>(block.wrapping_add(prefetch_ahead).cast());
        }
        B::accumulate(blocks, x.as_ptr().add(b * B::ELEMS), &mut acc);
    }
    let mut sums = [0.0f32; R];
    for (sum, &acc) in sums.iter_mut().zip(&acc) {
        *sum = sum_lanes(acc);
    }
    sums
}

/// `x[at..at + 8]`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load_x(x: *const f32, at: usize) -> __m256 {
    _mm256_loadu_ps(x.add(at))
}

/// The lane-wise sum of the four slices of `x[at..at + 32]`: its lanes add up to that group's
/// `Σ x_i`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn group_sum(x: *const f32, at: usize) -> __m256 {
    let front = _mm256_add_ps(load_x(x, at), load_x(x, at + 8));
    let back = _mm256_add_ps(load_x(x, at + 16), load_x(x, at + 24));
    _mm256_add_ps(front, back)
}

/// The f16 at `p`, widened to f32 (exact) in all eight lanes.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn splat_f16(p: *const u8) -> __m256 {
    _mm256_cvtph_ps(_mm_set1_epi16(p.cast::<i16>().read_unaligned()))
}

/// The low and the high nibbles of the eight bytes at `p`, as i32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn nibbles(p: *const u8) -> (__m256i, __m256i) {
    let q = load_u8x8(p);
    (_mm256_and_si256(q, _mm256_set1_epi32(0x0F)), _mm256_srli_epi32::<4>(q))
}

/// `p` with lanes summing to `Σ q_i·x_i` over the 32 nibbles of a Q4_0 / Q4_1 block: byte `j`
/// of `qs` holds `q_j` in its low nibble and `q_{j+16}` in its high one.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn q4_partial(qs: *const u8, x: *const f32) -> __m256 {
    let (low_a, high_a) = nibbles(qs);
    let (low_b, high_b) = nibbles(qs.add(8));
    let p = _mm256_mul_ps(_mm256_cvtepi32_ps(low_a), load_x(x, 0));
    let p = _mm256_fmadd_ps(_mm256_cvtepi32_ps(low_b), load_x(x, 8), p);
    let p = _mm256_fmadd_ps(_mm256_cvtepi32_ps(high_a), load_x(x, 16), p);
    _mm256_fmadd_ps(_mm256_cvtepi32_ps(high_b), load_x(x, 24), p)
}

impl FusedDot for BlockQ4_0 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn accumulate<const R: usize>(blocks: [*const u8; R], x: *const f32, acc: &mut [__m256; R]) {
        const D: usize = offset_of!(BlockQ4_0, d);
        const QS: usize = offset_of!(BlockQ4_0, qs);
        let eight = _mm256_set1_ps(8.0);
        let s = group_sum(x, 0);
        for (block, acc) in blocks.into_iter().zip(acc) {
            // Σ (q − 8)·x = Σ q·x − 8·Σ x: one FMA instead of widening q − 8 lane by lane.
            let p = _mm256_fnmadd_ps(eight, s, q4_partial(block.add(QS), x));
            *acc = _mm256_fmadd_ps(splat_f16(block.add(D)), p, *acc);
        }
    }
}

impl FusedDot for BlockQ4_1 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn accumulate<const R: usize>(blocks: [*const u8; R], x: *const f32, acc: &mut [__m256; R]) {
        const D: usize = offset_of!(BlockQ4_1, d);
        const M: usize = offset_of!(BlockQ4_1, m);
        const QS: usize = offset_of!(BlockQ4_1, qs);
        let s = group_sum(x, 0);
        for (block, acc) in blocks.into_iter().zip(acc) {
            let p = q4_partial(block.add(QS), x);
            let scaled = _mm256_fmadd_ps(splat_f16(block.add(D)), p, *acc);
            *acc = _mm256_fmadd_ps(splat_f16(block.add(M)), s, scaled);
        }
    }
}

impl FusedDot for BlockQ8_0 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn accumulate<const R: usize>(blocks: [*const u8; R], x: *const f32, acc: &mut [__m256; R]) {
        const D: usize = offset_of!(BlockQ8_0, d);
        const QS: usize = offset_of!(BlockQ8_0, qs);
        for (block, acc) in blocks.into_iter().zip(acc) {
            let qs = block.add(QS);
            let mut p = _mm256_setzero_ps();
            for v in 0..4 {
                let q = _mm256_cvtepi32_ps(load_i8x8(qs.add(8 * v)));
                p = _mm256_fmadd_ps(q, load_x(x, 8 * v), p);
            }
            *acc = _mm256_fmadd_ps(splat_f16(block.add(D)), p, *acc);
        }
    }
}

/// Field offsets of a Q4_K or Q5_K block; `qh` (the fifth quant bits) only for Q5_K.
struct KLayout {
    d: usize,
    dmin: usize,
    scales: usize,
    qs: usize,
    qh: Option<usize>,
}

/// Eight bytes as f32 lanes, byte `i` in lane `i`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn u8_lanes(bytes: u64) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(bytes as i64)))
}

/// The sub-block factors of the Q4_K / Q5_K block at `block`, lane `j` for sub-block `j`:
/// `(d·sc_j, dmin·m_j)`, the same products as `block::k_factors`, unpacked with word-wide bit
/// operations instead of byte by byte.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn k_factor_lanes(block: *const u8, layout: &KLayout) -> (__m256, __m256) {
    const LOW6: u32 = 0x3F3F_3F3F;
    const LOW4: u32 = 0x0F0F_0F0F;
    const TOP2: u32 = 0x0303_0303;
    let word = |i: usize| block.wrapping_add(layout.scales + 4 * i).cast::<u32>().read_unaligned();
    // The packing of `block::k_scale_min`: byte j of `a` (of `b`) holds sc_j (m_j) in its low six
    // bits and the top two bits of sc_{j+4} (m_{j+4}) above them; byte j of `c` holds the low
    // four bits of sc_{j+4} in its low nibble and those of m_{j+4} in its high one.
    let (a, b, c) = (word(0), word(1), word(2));
    let scales_high = (c & LOW4) | ((a >> 6) & TOP2) << 4;
    let mins_high = ((c >> 4) & LOW4) | ((b >> 6) & TOP2) << 4;
    let scales = u64::from(a & LOW6) | u64::from(scales_high) << 32;
    let mins = u64::from(b & LOW6) | u64::from(mins_high) << 32;
    (
        _mm256_mul_ps(splat_f16(block.add(layout.d)), u8_lanes(scales)),
        _mm256_mul_ps(splat_f16(block.add(layout.dmin)), u8_lanes(mins)),
    )
}

/// Lane `j` is the sum of the eight lanes of `v[j]`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn transpose_sums(v: &[__m256; 8]) -> __m256 {
    // Pairwise adds leave [v0, v1, v2, v3] sums of the low 128-bit halves in the low half of
    // `front` and of the high halves in its high half; `back` likewise for v4..v8.
    let front = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    let back = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
    _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(front, back), _mm256_permute2f128_ps::<0x31>(front, back))
}

/// Q4_K and Q5_K: sub-block `j` is `(d·sc_j)·q − dmin·m_j`. Sub-blocks `2p` and `2p + 1` take
/// the low and the high nibbles of `qs[32p..32p + 32]`; in Q5_K, bit `j` of `qh[l]` is bit 4 of
/// quant `l` of sub-block `j`.
///
/// The min terms of all eight sub-blocks take one FMA per row: the factors `dmin·m_j` are lane
/// `j` of a vector, and so is the sub-block's `Σ x`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn accumulate_k<const R: usize>(layout: &KLayout, blocks: [*const u8; R], x: *const f32, acc: &mut [__m256; R]) {
    let mut group_sums = [_mm256_setzero_ps(); 8];
    for (j, sum) in group_sums.iter_mut().enumerate() {
        *sum = group_sum(x, 32 * j);
    }
    let x_sums = transpose_sums(&group_sums);
    let bit4 = _mm256_set1_epi32(0x10);
    for (block, acc) in blocks.into_iter().zip(acc) {
        let (scale_lanes, min_lanes) = k_factor_lanes(block, layout);
        // Through the stack, so that each scale is one broadcast load.
        let mut scales = [0.0f32; 8];
        _mm256_storeu_ps(scales.as_mut_ptr(), scale_lanes);
        let mut total = _mm256_fnmadd_ps(min_lanes, x_sums, *acc);
        for p in 0..4 {
            let (x_low, x_high) = (64 * p, 64 * p + 32);
            let qh_shift = _mm_cvtsi32_si128(2 * p as i32);
            let qs = block.add(layout.qs + 32 * p);
            let (mut p_low, mut p_high) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for v in 0..4 {
                let (mut low, mut high) = nibbles(qs.add(8 * v));
                if let Some(qh) = layout.qh {
                    // Bits 2p and 2p + 1 of qh[8v..8v + 8], moved to bit 4, worth 16 each.
                    let h = _mm256_srl_epi32(load_u8x8(block.add(qh + 8 * v)), qh_shift);
                    low = _mm256_or_si256(low, _mm256_and_si256(_mm256_slli_epi32::<4>(h), bit4));
                    high = _mm256_or_si256(high, _mm256_and_si256(_mm256_slli_epi32::<3>(h), bit4));
                }
                let (low, high) = (_mm256_cvtepi32_ps(low), _mm256_cvtepi32_ps(high));
                p_low = _mm256_fmadd_ps(low, load_x(x, x_low + 8 * v), p_low);
                p_high = _mm256_fmadd_ps(high, load_x(x, x_high + 8 * v), p_high);
            }
            total = _mm256_fmadd_ps(_mm256_set1_ps(scales[2 * p]), p_low, total);
            total = _mm256_fmadd_ps(_mm256_set1_ps(scales[2 * p + 1]), p_high, total);
        }
        *acc = total;
    }
}

impl FusedDot for BlockQ4K {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn accumulate<const R: usize>(blocks: [*const u8; R], x: *const f32, acc: &mut [__m256; R]) {
        const LAYOUT: KLayout = KLayout {
            d: offset_of!(BlockQ4K, d),
            dmin: offset_of!(BlockQ4K, dmin),
            scales: offset_of!(BlockQ4K, scales),
            qs: offset_of!(BlockQ4K, qs),
            qh: None,
        };
        accumulate_k(&LAYOUT, blocks, x, acc);
    }
}

impl FusedDot for BlockQ5K {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn accumulate<const R: usize>(blocks: [*const u8; R], x: *const f32, acc: &mut [__m256; R]) {
        const LAYOUT: KLayout = KLayout {
            d: offset_of!(BlockQ5K, d),
            dmin: offset_of!(BlockQ5K, dmin),
            scales: offset_of!(BlockQ5K, scales),
            qs: offset_of!(BlockQ5K, qs),
            qh: Some(offset_of!(BlockQ5K, qh)),
        };
        accumulate_k(&LAYOUT, blocks, x, acc);
    }
}

impl FusedDot for BlockQ6K {
    /// Group `i` of 16 is `(d·scales[i])·(q − 32)`; in half `h`, quarter `g`, quant `l` takes its
    /// low four bits from `ql[64h + 32(g % 2) + l]` (low nibble for `g < 2`) and its top two from
    /// `qh[32h + l] >> 2g`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn accumulate<const R: usize>(blocks: [*const u8; R], x: *const f32, acc: &mut [__m256; R]) {
        const QL: usize = offset_of!(BlockQ6K, ql);
        const QH: usize = offset_of!(BlockQ6K, qh);
        const SCALES: usize = offset_of!(BlockQ6K, scales);
        const D: usize = offset_of!(BlockQ6K, d);
        let low4 = _mm256_set1_epi32(0x0F);
        let top2 = _mm256_set1_epi32(0x30);
        let bias = _mm256_set1_epi32(32);
        for (block, acc) in blocks.into_iter().zip(acc) {
            // The sixteen d·scales[i], through the stack so that each is one broadcast load.
            let mut factors = [0.0f32; 16];
            let d = splat_f16(block.add(D));
            let scales = _mm_loadu_si128(block.add(SCALES).cast());
            for (half, at) in [(scales, 0), (_mm_srli_si128::<8>(scales), 8)] {
                let lanes = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(half));
                _mm256_storeu_ps(factors[at..].as_mut_ptr(), _mm256_mul_ps(d, lanes));
            }
            let mut total = *acc;
            for h in 0..2 {
                let qh = block.add(QH + 32 * h);
                for g in 0..4 {
                    let ql = block.add(QL + 64 * h + 32 * (g % 2));
                    // qh << 4 >> 2g puts quarter g's two bits at bits 4..6.
                    let qh_shift = _mm_cvtsi32_si128(2 * g as i32);
                    for j in 0..2 {
                        // Group j of 16 within the quarter: lanes 16j..16j + 16.
                        let mut p = _mm256_setzero_ps();
                        for v in 2 * j..2 * j + 2 {
                            let bytes = load_u8x8(ql.add(8 * v));
                            let low = if g < 2 { _mm256_and_si256(bytes, low4) } else { _mm256_srli_epi32::<4>(bytes) };
                            let high = _mm256_srl_epi32(_mm256_slli_epi32::<4>(load_u8x8(qh.add(8 * v))), qh_shift);
                            let q = _mm256_or_si256(low, _mm256_and_si256(high, top2));
                            let q = _mm256_cvtepi32_ps(_mm256_sub_epi32(q, bias));
                            p = _mm256_fmadd_ps(q, load_x(x, 128 * h + 32 * g + 8 * v), p);
                        }
                        let scale = _mm256_set1_ps(factors[8 * h + 2 * g + j]);
                        total = _mm256_fmadd_ps(scale, p, total);
                    }
                }
            }
            *acc = total;
        }
    }
}
