//! What the checks of GPU kernels against the CPU reference share: a small seedable generator
//! for host inputs, and the relative-error measure with its bar (the device tool's METHOD.md:
//! bf16 storage with f32 arithmetic).

use half::bf16;

/// The bar of METHOD.md for bf16 storage with f32 arithmetic: ‖gpu − cpu‖ / ‖cpu‖.
pub const ORACLE_REL_TOL: f64 = 1e-2;

/// SplitMix64: small, seedable, good enough for test inputs.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 24 bits.
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [−1, −1/64] ∪ [1/64, 1], rounded to bf16: never zero nor tiny, so that a
    /// relative error is not dominated by near-zero values.
    pub fn nonzero_bf16(&mut self) -> bf16 {
        let mag = 1.0 / 64.0 + self.unit() * (1.0 - 1.0 / 64.0);
        bf16::from_f32(if self.next_u64() & 1 == 0 { mag } else { -mag })
    }

    /// Uniform in [−1, 1), never 0, rounded to bf16 (so that the CPU sees what the GPU stores).
    pub fn signed_bf16(&mut self) -> bf16 {
        let u = self.unit();
        let x = if u < 0.5 { -1.0 + u } else { u };
        bf16::from_f32(if x == 0.0 { 0.5 } else { x })
    }
}

/// ‖a − b‖ / ‖b‖ in f64, or infinity when `a` holds a non-finite value (an unwritten, poisoned
/// output).
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    if a.iter().any(|x| !x.is_finite()) {
        return f64::INFINITY;
    }
    let (mut num, mut den) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        num += (f64::from(x) - f64::from(y)).powi(2);
        den += f64::from(y).powi(2);
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_stay_in_their_ranges_and_errors_measure_relative_distance() {
        let mut rng = SplitMix64::new(7);
        for _ in 0..10_000 {
            let a = rng.nonzero_bf16().to_f32().abs();
            assert!((1.0 / 64.0..=1.0).contains(&a), "{a}");
            let b = rng.signed_bf16().to_f32();
            assert!(b != 0.0 && (-1.0..=1.0).contains(&b), "{b}");
        }
        assert_eq!(rel_err(&[3.0, 4.0], &[3.0, 4.0]), 0.0);
        assert!((rel_err(&[3.0, 4.5], &[3.0, 4.0]) - 0.1).abs() < 1e-12);
        assert_eq!(rel_err(&[f32::NAN], &[1.0]), f64::INFINITY);
    }
}
