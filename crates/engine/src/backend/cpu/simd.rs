//! Small vector kernels written so that the compiler vectorises them (8 independent f32 lanes),
//! and a fast `exp` for softmax.
//!
//! They are `#[inline]`, so a caller compiled with `#[target_feature(enable = "avx2,fma")]`
//! (after checking `has_avx2_fma`) gets them as 8-wide AVX2 code, and others as SSE2.

/// Whether this CPU has AVX2 and FMA (detected once).
#[cfg(target_arch = "x86_64")]
pub fn has_avx2_fma() -> bool {
    use std::sync::OnceLock;
    static DETECTED: OnceLock<bool> = OnceLock::new();
    *DETECTED.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

const LANES: usize = 8;

/// `a·b + c`, fused into one FMA instruction when `FUSED`. Only callers compiled with the
/// `fma` target feature may pass `true`: elsewhere `mul_add` is a slow library call.
#[inline(always)]
pub fn madd<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Σ a[i]·b[i] with 8 partial sums.
#[inline]
pub fn dot<const FUSED: bool>(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; LANES];
    let (ac, ar) = a.split_at(a.len() / LANES * LANES);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(LANES).zip(bc.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] = madd::<FUSED>(x[l], y[l], acc[l]);
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

/// y += a·x
#[inline]
pub fn axpy<const FUSED: bool>(a: f32, x: &[f32], y: &mut [f32]) {
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv = madd::<FUSED>(a, xv, *yv);
    }
}

/// Σ x[i] with 8 partial sums.
#[inline]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (xc, xr) = x.split_at(x.len() / LANES * LANES);
    for c in xc.chunks_exact(LANES) {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + xr.iter().sum::<f32>()
}

/// x *= a
#[inline]
pub fn scale(x: &mut [f32], a: f32) {
    for v in x {
        *v *= a;
    }
}

/// e^x to within about 2 ulp for x in [-87.3, 88], 0 below, +inf above 88.7; NaN stays NaN.
///
/// Range reduction to 2^n · e^r with |r| ≤ ln2/2, then a degree-6 polynomial for e^r. Written
/// branch-free per element so that loops over slices vectorise.
#[inline]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 88 keeps 2^n finite (n ≤ 127); softmax only ever calls this with x ≤ 0.
    let xc = x.clamp(-87.3, 88.0);
    // Round to nearest by adding and subtracting 1.5·2^23 (`f32::round` is a libm call on
    // baseline x86-64, which would stop this loop from vectorising).
    const ROUND: f32 = 12_582_912.0;
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    // Taylor coefficients 1/k! up to k = 6; |r| ≤ 0.347 keeps the error below f32 epsilon.
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let bits = ((n as i32 + 127) as u32) << 23;
    let y = p * f32::from_bits(bits);
    if x < -87.3 {
        0.0
    } else if x > 88.7 {
        f32::INFINITY
    } else if x.is_nan() {
        x
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_over_the_softmax_range() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(100.0), f32::INFINITY);
    }

    #[test]
    fn dot_and_axpy() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..19).map(|i| 1.0 - i as f32 * 0.1).collect();
        let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert!((dot::<false>(&a, &b) as f64 - want).abs() < 1e-4);
        let mut y = b.clone();
        axpy::<false>(2.0, &a, &mut y);
        assert_eq!(y[3], b[3] + 2.0 * a[3]);
    }
}
