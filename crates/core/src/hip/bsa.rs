//! Block-sparse attention (DESIGN.md §4.3) and the dense causal attention it is tested against.
//!
//! Both take one query block (`[n_q][H][d]` un-rotated queries at consecutive positions) and
//! write `[n_q][H][d]` outputs. Query head `h` reads KV head `h / g`. Scores are
//! `q · k / √d`, soft-capped to `c · tanh(s / c)` when a cap is set.
//!
//! - [`block_sparse_attention`]: per KV head, every key of the mask's spans (sink, selected
//!   blocks, window; see [`bsa_key_spans`]) is rotated once at the position the BSA RoPE
//!   strategy gives it, then folded into each query row's online softmax (running max `m`,
//!   running sum `l`, weighted values `acc`). Keys after a row's own position are skipped, which
//!   only ever happens in the window.
//! - [`dense_causal_attention`]: a deliberately different algorithm, the textbook two-pass
//!   softmax over all keys `[0, p]` at their true positions, so that agreement between the two
//!   means something.

use super::config::{HeadReduction, HipConfig};
use super::mask::Mask;
use super::rope_strategy::{bsa_key_spans, KeySpan};
use super::{dot, HipError, KvSource, QueryBlock};
use crate::rope::rotate_into;

/// Block-sparse attention of one query block over the sink, `mask`'s blocks and the window
/// `[mask.window_start(), p]`, writing `[n_q][H][d]` into `out`.
pub fn block_sparse_attention<K: KvSource + ?Sized>(
    cfg: &HipConfig,
    block: &QueryBlock<K>,
    mask: &Mask,
    out: &mut [f32],
) -> Result<(), HipError> {
    cfg.validate()?;
    block.check(block.pos_last())?;
    check_out(block, out)?;
    let shape = block.shape;
    let want_groups = match cfg.head_reduction {
        HeadReduction::Shared => 1,
        HeadReduction::PerKvHead => shape.n_kv_heads,
    };
    if mask.n_sink() != cfg.n_sink || mask.n_groups() != want_groups {
        return Err(HipError::InvalidMask {
            what: format!(
                "{} head groups after a sink of {}; the config wants {want_groups} after {}",
                mask.n_groups(),
                mask.n_sink(),
                cfg.n_sink
            ),
        });
    }
    if mask.window_start() > block.pos_start {
        return Err(HipError::InvalidMask {
            what: format!("window start {} is after the first query {}", mask.window_start(), block.pos_start),
        });
    }

    let (d, g) = (shape.head_dim, shape.group());
    let style = block.rope.config().style;
    let mut rows = Rows::new(block.n_q() * g, d);
    let mut spans: Vec<KeySpan> = Vec::new();
    let mut key = vec![0f32; d];
    for kv_head in 0..shape.n_kv_heads {
        rows.load(block, kv_head);
        bsa_key_spans(cfg.bsa_rope, mask, mask.group_of_kv_head(kv_head), block.pos_last(), &mut spans);
        for span in &spans {
            for (i, pos) in span.keys.clone().enumerate() {
                let (cos, sin) = block.rope.row(span.rope_start + i);
                rotate_into(block.kv.key(pos, kv_head), &mut key, cos, sin, style);
                let value = block.kv.value(pos, kv_head);
                for r in 0..rows.n {
                    if pos <= rows.pos[r] {
                        let s = softcap(dot(rows.q(r), &key), cfg.logit_softcap);
                        rows.fold(r, s, value);
                    }
                }
            }
        }
        rows.store(block, kv_head, out);
    }
    Ok(())
}

/// Dense causal attention of one query block: each query at `p` over every key `[0, p]`, all at
/// their true positions, with a two-pass softmax. Writes `[n_q][H][d]` into `out`.
pub fn dense_causal_attention<K: KvSource + ?Sized>(
    block: &QueryBlock<K>,
    logit_softcap: Option<f32>,
    out: &mut [f32],
) -> Result<(), HipError> {
    block.check(block.pos_last())?;
    check_out(block, out)?;
    let shape = block.shape;
    let (h_count, d, g) = (shape.n_heads, shape.head_dim, shape.group());
    let style = block.rope.config().style;
    let n_keys = block.pos_last() + 1;
    let scale = 1.0 / (d as f32).sqrt();
    let mut keys = vec![0f32; n_keys * d];
    let mut q = vec![0f32; d];
    let mut scores = vec![0f32; n_keys];
    for kv_head in 0..shape.n_kv_heads {
        for (pos, dst) in keys.chunks_exact_mut(d).enumerate() {
            let (cos, sin) = block.rope.row(pos);
            rotate_into(block.kv.key(pos, kv_head), dst, cos, sin, style);
        }
        for t in 0..block.n_q() {
            let p = block.pos_start + t;
            let (cos, sin) = block.rope.row(p);
            for h in kv_head * g..(kv_head + 1) * g {
                rotate_into(block.query(t, h), &mut q, cos, sin, style);
                for (s, k) in scores[..=p].iter_mut().zip(keys.chunks_exact(d)) {
                    *s = softcap(dot(&q, k) * scale, logit_softcap);
                }
                let max = scores[..=p].iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for s in &mut scores[..=p] {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let o = &mut out[(t * h_count + h) * d..][..d];
                o.fill(0.0);
                for (pos, &weight) in scores[..=p].iter().enumerate() {
                    for (oc, &vc) in o.iter_mut().zip(block.kv.value(pos, kv_head)) {
                        *oc += weight * vc;
                    }
                }
                for oc in o.iter_mut() {
                    *oc /= sum;
                }
            }
        }
    }
    Ok(())
}

fn check_out<K: KvSource + ?Sized>(block: &QueryBlock<K>, out: &[f32]) -> Result<(), HipError> {
    if out.len() != block.q.len() {
        return Err(HipError::Shape {
            what: format!("the output holds {} values, the queries {}", out.len(), block.q.len()),
        });
    }
    Ok(())
}

fn softcap(s: f32, cap: Option<f32>) -> f32 {
    match cap {
        Some(c) => c * (s / c).tanh(),
        None => s,
    }
}

/// The query rows of one KV head (row `r` = token `r / g`, head `kv_head · g + r % g`), rotated
/// at their true positions and scaled by `1/√d`, with their online-softmax state.
struct Rows {
    n: usize,
    d: usize,
    q: Vec<f32>,
    pos: Vec<usize>,
    m: Vec<f32>,
    l: Vec<f32>,
    acc: Vec<f32>,
}

impl Rows {
    fn new(n: usize, d: usize) -> Self {
        Self { n, d, q: vec![0.0; n * d], pos: vec![0; n], m: vec![0.0; n], l: vec![0.0; n], acc: vec![0.0; n * d] }
    }

    fn load<K: KvSource + ?Sized>(&mut self, block: &QueryBlock<K>, kv_head: usize) {
        let (d, g) = (self.d, block.shape.group());
        let style = block.rope.config().style;
        let scale = 1.0 / (d as f32).sqrt();
        for r in 0..self.n {
            let (t, h) = (r / g, kv_head * g + r % g);
            let p = block.pos_start + t;
            let (cos, sin) = block.rope.row(p);
            let q = &mut self.q[r * d..(r + 1) * d];
            rotate_into(block.query(t, h), q, cos, sin, style);
            for x in q.iter_mut() {
                *x *= scale;
            }
            self.pos[r] = p;
        }
        self.m.fill(f32::NEG_INFINITY);
        self.l.fill(0.0);
        self.acc.fill(0.0);
    }

    fn q(&self, r: usize) -> &[f32] {
        &self.q[r * self.d..(r + 1) * self.d]
    }

    /// Folds the key with score `s` and value `value` into row `r`'s online softmax.
    fn fold(&mut self, r: usize, s: f32, value: &[f32]) {
        let acc = &mut self.acc[r * self.d..(r + 1) * self.d];
        if s > self.m[r] {
            // A new running max: rescale what was summed under the old one.
            let correction = (self.m[r] - s).exp();
            self.l[r] *= correction;
            for a in acc.iter_mut() {
                *a *= correction;
            }
            self.m[r] = s;
        }
        let weight = (s - self.m[r]).exp();
        self.l[r] += weight;
        for (a, &v) in acc.iter_mut().zip(value) {
            *a += weight * v;
        }
    }

    /// Writes `acc / l` of every row to its place in `out` (`[n_q][H][d]`).
    fn store<K: KvSource + ?Sized>(&self, block: &QueryBlock<K>, kv_head: usize, out: &mut [f32]) {
        let (d, g, h_count) = (self.d, block.shape.group(), block.shape.n_heads);
        for r in 0..self.n {
            let (t, h) = (r / g, kv_head * g + r % g);
            let o = &mut out[(t * h_count + h) * d..][..d];
            // Every query sees at least itself, so l > 0.
            for (oc, &a) in o.iter_mut().zip(&self.acc[r * d..(r + 1) * d]) {
                *oc = a / self.l[r];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hip::{AttnShape, BsaRope, VecKv};
    use crate::rope::{RopeConfig, RopeScaling, RopeStyle, RopeTable};

    fn no_rope() -> RopeTable {
        RopeTable::new(RopeConfig { theta: 10000.0, dim: 0, style: RopeStyle::Adjacent, scaling: RopeScaling::None })
    }

    #[test]
    fn dense_attention_matches_a_hand_computed_softmax() {
        // d = 4 (scale 1/2), one head, no rotation. Query (2, 0, 0, 0) at position 2 scores the
        // keys (1,0,0,0), (0,0,0,0), (−1,0,0,0) as 1, 0, −1.
        let mut kv = VecKv::new(1, 4);
        kv.push(&[1., 0., 0., 0.], &[1., 0., 0., 0.]).unwrap();
        kv.push(&[0., 0., 0., 0.], &[0., 1., 0., 0.]).unwrap();
        kv.push(&[-1., 0., 0., 0.], &[0., 0., 1., 0.]).unwrap();
        let rope = no_rope();
        let shape = AttnShape { n_heads: 1, n_kv_heads: 1, head_dim: 4 };
        let block = QueryBlock { layer: 0, shape, q: &[2., 0., 0., 0.], pos_start: 2, kv: &kv, rope: &rope };
        let mut out = [f32::NAN; 4];
        dense_causal_attention(&block, None, &mut out).unwrap();
        let z = 1f64.exp() + 1.0 + (-1f64).exp();
        let want = [1f64.exp() / z, 1.0 / z, (-1f64).exp() / z, 0.0];
        for (a, b) in out.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{out:?} vs {want:?}");
        }
        // Soft-cap 0.5: scores become 0.5·tanh(±2), 0.
        dense_causal_attention(&block, Some(0.5), &mut out).unwrap();
        let (hi, lo) = ((0.5 * 2f64.tanh()).exp(), (-0.5 * 2f64.tanh()).exp());
        let z = hi + 1.0 + lo;
        for (a, b) in out.iter().zip([hi / z, 1.0 / z, lo / z, 0.0]) {
            assert!((*a as f64 - b).abs() < 1e-6, "{out:?}");
        }
        // The first query sees only key 0: its output is value 0 exactly.
        let first = QueryBlock { pos_start: 0, ..block };
        dense_causal_attention(&first, None, &mut out).unwrap();
        assert_eq!(out, [1., 0., 0., 0.]);
    }

    #[test]
    fn bsa_skips_what_the_mask_leaves_out() {
        // Keys all zero (every score 0), so the output is the plain mean of the attended values:
        // value i = (i, 1). Sink 2, block_k 2, w = 8, block 4 selected, window [8, 9]:
        // keys 0, 1, 4, 5, 8, 9 for the query at 9, and 0, 1, 4, 5, 8 for the query at 8.
        let mut kv = VecKv::new(1, 2);
        for i in 0..10 {
            kv.push(&[0., 0.], &[i as f32, 1.]).unwrap();
        }
        let rope = no_rope();
        let shape = AttnShape { n_heads: 1, n_kv_heads: 1, head_dim: 2 };
        let block = QueryBlock { layer: 0, shape, q: &[1., 1., 1., 1.], pos_start: 8, kv: &kv, rope: &rope };
        let cfg = HipConfig { n_sink: 2, ..HipConfig::default() };
        let mask = Mask::new(2, 2, 8, vec![vec![4]]).unwrap();
        let mut out = [f32::NAN; 4];
        for bsa_rope in [BsaRope::Streaming, BsaRope::Plain] {
            block_sparse_attention(&HipConfig { bsa_rope, ..cfg.clone() }, &block, &mask, &mut out).unwrap();
            let want = [18.0 / 5.0, 1.0, 27.0 / 6.0, 1.0];
            for (a, b) in out.iter().zip(want) {
                assert!((a - b).abs() < 1e-6, "{out:?} vs {want:?}");
            }
        }
        // A mask from another config, or one whose window starts after the first query, is an
        // error.
        let wrong_sink = Mask::new(4, 2, 8, vec![vec![4]]).unwrap();
        assert!(matches!(
            block_sparse_attention(&cfg, &block, &wrong_sink, &mut out),
            Err(HipError::InvalidMask { .. })
        ));
        let late = Mask::new(2, 2, 9, vec![vec![4]]).unwrap();
        assert!(matches!(block_sparse_attention(&cfg, &block, &late, &mut out), Err(HipError::InvalidMask { .. })));
        let per_kv = HipConfig { head_reduction: HeadReduction::PerKvHead, ..cfg.clone() };
        assert!(block_sparse_attention(&per_kv, &block, &mask, &mut out).is_ok(), "Hkv = 1: one group either way");
        let mut short = [0.0; 3];
        assert!(matches!(block_sparse_attention(&cfg, &block, &mask, &mut short), Err(HipError::Shape { .. })));
    }
}
