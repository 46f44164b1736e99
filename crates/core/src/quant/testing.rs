//! Test helpers: a seeded PRNG and random rows of any supported type.
//!
//! Random bytes are valid blocks of every supported type, except that an f16/bf16 scale (or
//! element) could be NaN or infinite; those fields are overwritten with finite values so that
//! dot products can be compared with a relative tolerance.

use std::mem::offset_of;

use half::{bf16, f16};

use super::block::{BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ6K, BlockQ8_0};
use super::{dequantize, GgmlType};

/// SplitMix64: tiny, seeded, good enough for test data.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    pub(crate) fn f32_in(&mut self, lo: f32, hi: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * unit
    }

    pub(crate) fn f32s(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32_in(-1.0, 1.0)).collect()
    }
}

/// Byte offsets of the f16 fields of one block of `ty` (scales and mins).
fn f16_fields(ty: GgmlType) -> &'static [usize] {
    const Q4_0: [usize; 1] = [offset_of!(BlockQ4_0, d)];
    const Q4_1: [usize; 2] = [offset_of!(BlockQ4_1, d), offset_of!(BlockQ4_1, m)];
    const Q8_0: [usize; 1] = [offset_of!(BlockQ8_0, d)];
    const Q4K: [usize; 2] = [offset_of!(BlockQ4K, d), offset_of!(BlockQ4K, dmin)];
    const Q5K: [usize; 2] = [offset_of!(BlockQ5K, d), offset_of!(BlockQ5K, dmin)];
    const Q6K: [usize; 1] = [offset_of!(BlockQ6K, d)];
    match ty {
        GgmlType::Q4_0 => &Q4_0,
        GgmlType::Q4_1 => &Q4_1,
        GgmlType::Q8_0 => &Q8_0,
        GgmlType::Q4K => &Q4K,
        GgmlType::Q5K => &Q5K,
        GgmlType::Q6K => &Q6K,
        _ => &[],
    }
}

/// `n_elements` random weights of `ty`, all finite.
pub(crate) fn random_row(rng: &mut Rng, ty: GgmlType, n_elements: usize) -> Vec<u8> {
    let n_blocks = n_elements / ty.block_elems();
    match ty {
        GgmlType::F32 => rng.f32s(n_elements).iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => (0..n_elements).flat_map(|_| f16::from_f32(rng.f32_in(-2.0, 2.0)).to_le_bytes()).collect(),
        GgmlType::BF16 => (0..n_elements).flat_map(|_| bf16::from_f32(rng.f32_in(-2.0, 2.0)).to_le_bytes()).collect(),
        _ => {
            let mut bytes: Vec<u8> = (0..n_blocks * ty.block_bytes()).map(|_| rng.next_u64() as u8).collect();
            for block in bytes.chunks_exact_mut(ty.block_bytes()) {
                for &at in f16_fields(ty) {
                    let scale = f16::from_f32(rng.f32_in(-0.1, 0.1));
                    block[at..at + 2].copy_from_slice(&scale.to_le_bytes());
                }
            }
            bytes
        }
    }
}

/// The weights of a row, through the reference dequantiser.
pub(crate) fn weights(ty: GgmlType, row: &[u8], n_elements: usize) -> Vec<f32> {
    let mut w = vec![0.0f32; n_elements];
    dequantize(ty, row, &mut w).expect("test rows are well formed");
    w
}

/// `(Σ w·x, Σ|w·x|)` in f64: the exact-ish dot product and the scale for its tolerance.
pub(crate) fn reference_dot(w: &[f32], x: &[f32]) -> (f64, f64) {
    w.iter().zip(x).fold((0.0, 0.0), |(sum, abs), (&w, &x)| {
        let p = f64::from(w) * f64::from(x);
        (sum + p, abs + p.abs())
    })
}

/// Asserts `got` is within 1e-5 of `abs_scale` (Σ|w·x|) of `want`.
pub(crate) fn assert_close(got: f32, want: f64, abs_scale: f64, what: &str) {
    let err = (f64::from(got) - want).abs();
    assert!(
        err <= 1e-5 * abs_scale,
        "{what}: got {got}, want {want}, error {err:e} > 1e-5 × Σ|w·x| = {:e}",
        1e-5 * abs_scale
    );
}

/// Every supported type, for tests that cover them all.
pub(crate) const SUPPORTED: [GgmlType; 9] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

/// Row lengths to test for `ty`: 1..=8 blocks and one longer row spanning several chunks; for
/// the one-element types, lengths that leave every SIMD tail.
pub(crate) fn test_lengths(ty: GgmlType) -> Vec<usize> {
    if ty.block_elems() == 1 {
        vec![1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100, 255, 256, 257, 600]
    } else {
        (1..=8).chain([19]).map(|n| n * ty.block_elems()).collect()
    }
}
