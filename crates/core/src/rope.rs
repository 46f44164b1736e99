//! Rotary position embedding (RoPE): frequencies, scaling rules and cos/sin tables.
//!
//! GGUF llama weights are permuted by llama.cpp's converter so that RoPE rotates *adjacent
//! pairs* `(x[2i], x[2i+1])` (`RopeStyle::Adjacent`); Qwen2-style models rotate the two halves
//! `(x[i], x[i + d/2])` (`RopeStyle::Halves`). Pair `i` of a vector at position `p` is rotated by
//! the angle `p · inv_freq[i]`, where `inv_freq[i] = θ^(−2i/d_rope) · freq_scale / factor[i]`.
//!
//! The KV cache keeps keys un-rotated (DESIGN.md §5); attention rotates queries and keys on the
//! fly with positions of its own choosing, which is what the HiP RoPE strategies need.

use rayon::prelude::*;
use std::f64::consts::PI;

/// Which components form a rotated pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// `(x[2i], x[2i+1])`: GGUF llama weights.
    Adjacent,
    /// `(x[i], x[i + d_rope/2])`: GPT-NeoX / Qwen2 layout.
    Halves,
}

/// How the model extends its trained context (from GGUF metadata).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (`rope.scaling.type = linear`).
    Linear {
        factor: f32,
    },
    /// Llama 3.1: per-frequency factors, long wavelengths stretched by `factor`, short ones kept,
    /// smooth in between.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_context: usize,
    },
    /// Explicit per-pair divisors, as stored in a GGUF `rope_freqs.weight` tensor.
    FreqFactors(Vec<f32>),
}

/// Everything needed to compute rotation angles.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    /// θ, the frequency base (`rope.freq_base`).
    pub theta: f32,
    /// Number of leading dimensions of each head that are rotated (`rope.dimension_count`).
    pub dim: usize,
    pub style: RopeStyle,
    pub scaling: RopeScaling,
}

impl RopeConfig {
    /// Per-pair inverse frequencies (radians per position), `dim / 2` values, computed in f64.
    pub fn inv_freqs(&self) -> Vec<f64> {
        let half = self.dim / 2;
        (0..half)
            .map(|i| {
                let base = (self.theta as f64).powf(-2.0 * i as f64 / self.dim as f64);
                match &self.scaling {
                    RopeScaling::None => base,
                    RopeScaling::Linear { factor } => base / *factor as f64,
                    RopeScaling::FreqFactors(f) => base / f.get(i).copied().unwrap_or(1.0) as f64,
                    RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_context } => {
                        llama3_scaled(
                            base,
                            *factor as f64,
                            *low_freq_factor as f64,
                            *high_freq_factor as f64,
                            *original_context as f64,
                        )
                    }
                }
            })
            .collect()
    }
}

/// Llama 3.1's frequency rule: wavelengths shorter than `ctx / high` keep their frequency,
/// those longer than `ctx / low` are divided by `factor`, and the band between interpolates.
fn llama3_scaled(freq: f64, factor: f64, low: f64, high: f64, ctx: f64) -> f64 {
    let wavelen = 2.0 * PI / freq;
    let low_freq_wavelen = ctx / low;
    let high_freq_wavelen = ctx / high;
    if wavelen < high_freq_wavelen {
        freq
    } else if wavelen > low_freq_wavelen {
        freq / factor
    } else {
        let smooth = (ctx / wavelen - low) / (high - low);
        (1.0 - smooth) * freq / factor + smooth * freq
    }
}

/// cos/sin of `p · inv_freq[i]` for positions `0..len`, grown on demand.
///
/// Layout: `cos[p * half + i]`. Angles are computed in f64 and stored as f32, so the table is
/// exact to f32 rounding at any position.
#[derive(Debug, Clone)]
pub struct RopeTable {
    config: RopeConfig,
    inv_freq: Vec<f64>,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    pub fn new(config: RopeConfig) -> Self {
        let inv_freq = config.inv_freqs();
        Self { config, inv_freq, cos: Vec::new(), sin: Vec::new() }
    }

    pub fn config(&self) -> &RopeConfig {
        &self.config
    }

    /// Number of rotated pairs per head.
    pub fn half(&self) -> usize {
        self.inv_freq.len()
    }

    /// Number of positions the table covers.
    pub fn len(&self) -> usize {
        if self.inv_freq.is_empty() {
            usize::MAX
        } else {
            self.cos.len() / self.inv_freq.len()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes the table cover positions `0..n_positions`.
    pub fn ensure(&mut self, n_positions: usize) {
        let half = self.half();
        let have = self.len();
        if half == 0 || have >= n_positions {
            return;
        }
        // Grow geometrically so that a decode loop does not extend the table every step; rows
        // are computed in parallel (a million positions are 64 million sin/cos).
        let target = n_positions.max(have.saturating_mul(2)).max(1024);
        self.cos.resize(target * half, 0.0);
        self.sin.resize(target * half, 0.0);
        let inv_freq = &self.inv_freq;
        self.cos[have * half..]
            .par_chunks_mut(half)
            .zip(self.sin[have * half..].par_chunks_mut(half))
            .enumerate()
            .for_each(|(i, (cos, sin))| {
                let p = (have + i) as f64;
                for ((c, s), &f) in cos.iter_mut().zip(sin.iter_mut()).zip(inv_freq) {
                    let (sn, cs) = (p * f).sin_cos();
                    *c = cs as f32;
                    *s = sn as f32;
                }
            });
    }

    /// cos and sin rows for position `pos` (`half()` values each). Panics if `pos` is not
    /// covered: callers `ensure` the range first.
    pub fn row(&self, pos: usize) -> (&[f32], &[f32]) {
        self.rows(pos..pos + 1)
    }

    /// cos and sin of `positions`, row after row (`[position][half]`), as one slice each: what
    /// a device copy of the table takes. Panics if a position is not covered.
    pub fn rows(&self, positions: std::ops::Range<usize>) -> (&[f32], &[f32]) {
        let half = self.half();
        let r = positions.start * half..positions.end * half;
        (&self.cos[r.clone()], &self.sin[r])
    }

    /// Rotates one head vector in place as if it sat at position `pos`.
    pub fn rotate(&self, x: &mut [f32], pos: usize) {
        let (cos, sin) = self.row(pos);
        rotate_with(x, cos, sin, self.config.style);
    }
}

/// Writes `src` rotated by the given angles into `dst` (components past `2 · cos.len()` are
/// copied unchanged). One pass, so callers that gather keys need no separate copy. Always
/// inlined, so that it is vectorised with the caller's target features.
#[inline(always)]
pub fn rotate_into(src: &[f32], dst: &mut [f32], cos: &[f32], sin: &[f32], style: RopeStyle) {
    let half = cos.len();
    match style {
        RopeStyle::Adjacent => {
            // Four pairs at a time as 8-wide lanes: d = x·(c,c) + swap(x)·(−s,s). The same
            // products and sums as the pairwise form, so the result is bit-identical to it.
            let n4 = half / 4 * 4;
            let lanes = dst[..2 * n4].chunks_exact_mut(8).zip(src[..2 * n4].chunks_exact(8));
            for ((d, x), (c, sn)) in lanes.zip(cos[..n4].chunks_exact(4).zip(sin[..n4].chunks_exact(4))) {
                let cc = [c[0], c[0], c[1], c[1], c[2], c[2], c[3], c[3]];
                let ss = [-sn[0], sn[0], -sn[1], sn[1], -sn[2], sn[2], -sn[3], sn[3]];
                let sw = [x[1], x[0], x[3], x[2], x[5], x[4], x[7], x[6]];
                for k in 0..8 {
                    d[k] = x[k] * cc[k] + sw[k] * ss[k];
                }
            }
            for i in n4..half {
                let (a, b) = (src[2 * i], src[2 * i + 1]);
                dst[2 * i] = a * cos[i] - b * sin[i];
                dst[2 * i + 1] = a * sin[i] + b * cos[i];
            }
        }
        RopeStyle::Halves => {
            let (dlo, dhi) = dst[..2 * half].split_at_mut(half);
            let (slo, shi) = src[..2 * half].split_at(half);
            for i in 0..half {
                dlo[i] = slo[i] * cos[i] - shi[i] * sin[i];
                dhi[i] = slo[i] * sin[i] + shi[i] * cos[i];
            }
        }
    }
    dst[2 * half..].copy_from_slice(&src[2 * half..]);
}

/// Rotates the leading `2 · cos.len()` components of `x` by the given angles.
#[inline]
pub fn rotate_with(x: &mut [f32], cos: &[f32], sin: &[f32], style: RopeStyle) {
    let half = cos.len();
    match style {
        RopeStyle::Adjacent => {
            for (pair, (&c, &s)) in x.chunks_exact_mut(2).zip(cos.iter().zip(sin)) {
                let (a, b) = (pair[0], pair[1]);
                pair[0] = a * c - b * s;
                pair[1] = a * s + b * c;
            }
        }
        RopeStyle::Halves => {
            let (lo, hi) = x[..2 * half].split_at_mut(half);
            for i in 0..half {
                let (a, b) = (lo[i], hi[i]);
                lo[i] = a * cos[i] - b * sin[i];
                hi[i] = a * sin[i] + b * cos[i];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(scaling: RopeScaling, style: RopeStyle) -> RopeConfig {
        RopeConfig { theta: 10000.0, dim: 8, style, scaling }
    }

    #[test]
    fn rows_are_the_rows_of_a_range_side_by_side() {
        let mut t = RopeTable::new(RopeConfig {
            theta: 10000.0,
            dim: 8,
            style: RopeStyle::Adjacent,
            scaling: RopeScaling::None,
        });
        t.ensure(5);
        let (cos, sin) = t.rows(2..4);
        assert_eq!(cos, [t.row(2).0, t.row(3).0].concat());
        assert_eq!(sin, [t.row(2).1, t.row(3).1].concat());
        assert_eq!(t.rows(0..t.len()).0.len(), t.len() * t.half());
    }

    #[test]
    fn inverse_frequencies_follow_theta() {
        let f = cfg(RopeScaling::None, RopeStyle::Adjacent).inv_freqs();
        assert_eq!(f.len(), 4);
        assert!((f[0] - 1.0).abs() < 1e-15);
        assert!((f[1] - 0.1).abs() < 1e-15);
        assert!((f[2] - 0.01).abs() < 1e-15);
        assert!((f[3] - 0.001).abs() < 1e-15);
        let lin = cfg(RopeScaling::Linear { factor: 4.0 }, RopeStyle::Adjacent).inv_freqs();
        assert!((lin[1] - 0.025).abs() < 1e-15);
    }

    #[test]
    fn llama3_scaling_keeps_short_and_stretches_long_wavelengths() {
        let s =
            RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_context: 8192 };
        let c = RopeConfig { theta: 500000.0, dim: 128, style: RopeStyle::Adjacent, scaling: s };
        let plain = RopeConfig { scaling: RopeScaling::None, ..c.clone() }.inv_freqs();
        let scaled = c.inv_freqs();
        // Pair 0: wavelength 2π < 8192/4, unchanged.
        assert_eq!(scaled[0], plain[0]);
        // The last pair: wavelength far above 8192, divided by 8.
        assert!((scaled[63] - plain[63] / 8.0).abs() < 1e-18);
        // In between, the result lies between the two rules.
        for i in 0..64 {
            assert!(scaled[i] <= plain[i] + 1e-18 && scaled[i] >= plain[i] / 8.0 - 1e-18);
        }
    }

    #[test]
    fn rotation_of_adjacent_pairs_matches_hand_computed_angles() {
        let mut t = RopeTable::new(cfg(RopeScaling::None, RopeStyle::Adjacent));
        t.ensure(3);
        let mut x = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 0.0];
        t.rotate(&mut x, 2);
        // Pair 0 turns by 2 rad, pair 1 by 0.2, pair 2 by 0.02, pair 3 by 0.002.
        let want = [
            2f64.cos(),
            2f64.sin(),
            -(0.2f64.sin()),
            0.2f64.cos(),
            0.02f64.cos() - 0.02f64.sin(),
            0.02f64.sin() + 0.02f64.cos(),
            2.0 * 0.002f64.cos(),
            2.0 * 0.002f64.sin(),
        ];
        for (a, b) in x.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{x:?}");
        }
    }

    #[test]
    fn rotate_into_equals_copy_then_rotate() {
        for style in [RopeStyle::Adjacent, RopeStyle::Halves] {
            // A partial rotation (6 of 10 dims) checks that the tail is copied unchanged.
            let mut t = RopeTable::new(RopeConfig { theta: 500.0, dim: 6, style, scaling: RopeScaling::None });
            t.ensure(40);
            let src: Vec<f32> = (0..10).map(|i| i as f32 * 0.3 - 1.0).collect();
            let mut a = src.clone();
            t.rotate(&mut a, 37);
            let mut b = vec![f32::NAN; 10];
            let (c, s) = t.row(37);
            rotate_into(&src, &mut b, c, s, style);
            assert_eq!(a, b);
        }
    }

    #[test]
    fn halves_style_pairs_i_with_i_plus_half() {
        let mut t = RopeTable::new(cfg(RopeScaling::None, RopeStyle::Halves));
        t.ensure(2);
        let mut x = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        t.rotate(&mut x, 1);
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[4] - 1f32.sin()).abs() < 1e-6);
    }

    #[test]
    fn rotation_preserves_relative_dot_products() {
        // The defining property of RoPE: <R(p)q, R(p')k> depends only on p − p'.
        let mut t = RopeTable::new(RopeConfig {
            theta: 100000.0,
            dim: 64,
            style: RopeStyle::Adjacent,
            scaling: RopeScaling::None,
        });
        t.ensure(5000);
        let q: Vec<f32> = (0..64).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
        let k: Vec<f32> = (0..64).map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0).collect();
        let dot_at = |pq: usize, pk: usize| {
            let (mut a, mut b) = (q.clone(), k.clone());
            t.rotate(&mut a, pq);
            t.rotate(&mut b, pk);
            a.iter().zip(&b).map(|(x, y)| x * y).sum::<f32>()
        };
        let d1 = dot_at(10, 3);
        let d2 = dot_at(4007, 4000);
        assert!((d1 - d2).abs() < 2e-3, "{d1} vs {d2}");
    }

    #[test]
    fn table_grows_and_keeps_earlier_rows() {
        let mut t = RopeTable::new(cfg(RopeScaling::None, RopeStyle::Adjacent));
        t.ensure(10);
        let before: Vec<f32> = t.row(7).0.to_vec();
        t.ensure(5000);
        assert!(t.len() >= 5000);
        assert_eq!(t.row(7).0, &before[..]);
        assert!((t.row(4999).0[0] - (4999f64).cos() as f32).abs() < 1e-6);
    }
}
