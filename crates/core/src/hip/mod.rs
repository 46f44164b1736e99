//! HiP / InfiniteHiP sparse attention: the CPU reference (DESIGN.md §4).
//!
//! This module is the oracle the GPU kernels are tested against, so it is written for
//! exactness and clarity (plain loops, no intrinsics), not speed. Every function works on one
//! **query block** of one layer of one sequence and takes shared references only, so callers
//! parallelise over blocks, sequences and layers as they like.
//!
//! # Shapes (DESIGN notation)
//! - queries of a block: `[n_q][H][d]` f32, **un-rotated**, at consecutive absolute positions
//!   `pos_start .. pos_start + n_q` (`n_q = b_q` in prefill, 1 in decode, fewer for a last
//!   partial block);
//! - keys and values: read through [`KvSource`] by absolute position and KV head, `d` values
//!   each, keys **un-rotated** (the KV cache stores them so; every strategy below rotates them
//!   on the fly at the position it assigns);
//! - GQA: `g = H / Hkv`; query head `h` reads KV head `h / g`;
//! - output of attention: `[n_q][H][d]`.
//!
//! # The algorithm in a page
//! A query at position `p` attends to three disjoint key sets (§4.1): the **sink**
//! `[0, min(n_sink, w))`, the **selected blocks** (at most `k` tokens chosen among
//! `[n_sink, w)`), and the **window** `[w, p]`. Here `w = max(0, pos_min − n_window + 1)` is the
//! window start of the block's first query `pos_min`; later queries of the block see up to
//! `n_q − 1` more window tokens. The selected keys all lie before `w`, so nothing is counted
//! twice and, with the sink, nothing before the window falls through a hole.
//!
//! **Mask estimation** (§4.2, [`estimate_mask`], one stage: [`run_stage`]). Stage 0 tiles the
//! candidates `[n_sink, w)` with chunks of `chunk_sizes[0]` tokens starting at `n_sink`; the
//! last chunk is clipped to end at `w`. Each stage `s`:
//! 1. builds its query rows: `query_group[s]` consecutive queries, each rotated at the position
//!    the pruning RoPE strategy gives it, averaged per head and scaled by `1/√d`
//!    (`ceil(n_q / query_group[s])` rows);
//! 2. scores every chunk `[l, r)` by a descent: while `r − l > 1`, split at `c = l + (r−l)/2`,
//!    probe the left half with the key at `l + (c−l)/2` and the right half with the key at
//!    `c + (r−c)/2`, keep the half whose probe scored higher; the chunk's score is the
//!    maximum of all its probe scores (a chunk of one token is scored by that token, as a left
//!    probe). A probe's score is `max` over the rows and over the heads of the head group of
//!    `row · RoPE(key)`: all H heads (`shared`, one mask per layer) or the g heads of one KV
//!    head (`per_kv_head`, Hkv masks);
//! 3. keeps the best `budget / chunk_size` chunks, where the budget is `stage_k[s]`, or the
//!    layer's `k` for the last stage. When there are no more candidates than that, every chunk
//!    is kept, so a context of at most `n_sink + n_window + k` tokens is attended exactly
//!    densely;
//! 4. the next stage splits each kept chunk on its own, finer grid (starts `n_sink + i · l_c`,
//!    clipped at `w`).
//!
//! The last stage's kept chunks are the mask ([`Mask`]): per head group, the sorted list of
//! block starts, `block_k` (the last chunk size) tokens each, clipped at `w`. Chunks are
//! disjoint by construction, so the list has no duplicates.
//!
//! **Tie-breaking** (the GPU kernels must match it): a probe score is a plain IEEE `max`, so a
//! NaN product never wins and a probe with only NaN products scores −∞; in the descent, equal
//! probe scores keep the **left** half; in the top-k, a higher score ranks first and equal
//! scores rank the **lower chunk start** first. Scores are f32 dot products in a fixed order
//! (8 lanes, see `dot`); a kernel that sums differently can flip a near-tie, so GPU tests
//! should compare masks by the scores of what they select, not only by identity.
//!
//! **Block-sparse attention** (§4.3, [`block_sparse_attention`]): for each query row, an
//! online-softmax pass over the sink, the selected blocks (in position order) and the window
//! `[w, p]` (causal), with scores `q · k / √d`, optionally soft-capped `c · tanh(s / c)`.
//! [`dense_causal_attention`] is the plain two-pass softmax over `[0, p]` at true positions
//! that the tests (and the engine's tests) compare against.
//!
//! **Decode** (§4.4, [`DecodeMaskCache`]): a per-request, per-layer cache of every stage's kept
//! chunks; at step `n` stage `s` is recomputed when `n % refresh[s] == 0` or an earlier stage
//! was recomputed (so step 0 computes everything). Between stage-0 refreshes the candidate
//! range — and so the window start `w` of the mask — stays where stage 0 last put it: the
//! window grows by one token a step instead of sliding, so no token leaves the window into a
//! hole (the same rule as the `b_q − 1` extra window tokens of prefill).
//!
//! # RoPE rules (§4.5, [`rope_strategy`])
//! Pruning, per layer ([`PruningRope`]):
//! - `relative`: left probes at position 0, right probes at 1, queries at `n_window + 1`;
//! - `chunk_indexed`: every key of chunk `j` of the stage's grid (`j = (start − n_sink) /
//!   chunk_size`) at position `j`; a query at `p` at `min(p, n_chunks + n_window)` where
//!   `n_chunks = ceil((w − n_sink) / chunk_size)` is the size of the stage's whole grid;
//! - `plain`: true positions.
//!
//! Block-sparse attention ([`BsaRope`]):
//! - `streaming`: queries and window keys at their true positions; with `K` selected tokens
//!   (in position order) the selected token `i` at `w − K + i`, and sink token `j` at
//!   `w − K − n_s + j` with `n_s = min(n_sink, w)`. When every candidate is selected this is
//!   the identity, so streaming also equals dense on short contexts;
//! - `plain`: every key at its true position.
//!
//! The RoPE table must cover positions `0 ..= max(p_last, n_window + 1)`.

pub mod bsa;
pub mod config;
pub mod mask;
pub mod refresh;
pub mod rope_strategy;

pub use bsa::{block_sparse_attention, dense_causal_attention};
pub use config::{BsaRope, FirstLayers, HeadReduction, HipConfig, LayerParams, PruningRope, PRESET_NAMES};
pub use mask::{estimate_mask, run_stage, Chunks, Mask};
pub use refresh::{first_stage_to_refresh, DecodeMaskCache, DecodeStep};

use crate::rope::RopeTable;

/// Errors of HiP configuration and of the attention entry points.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HipError {
    #[error("unknown HiP preset `{name}` (valid: {valid})")]
    UnknownPreset { name: String, valid: String },
    #[error("HiP config: `{field}` {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    #[error("HiP config JSON{}: {cause}", field.as_ref().map(|f| format!(", field `{f}`")).unwrap_or_default())]
    Json { field: Option<String>, cause: serde_json::Error },
    #[error("HiP config JSON must be an object, found {found}")]
    NotAnObject { found: &'static str },
    #[error("attention shape: {what}")]
    Shape { what: String },
    #[error("queries at positions {pos_start}..{pos_end} need their keys, but the KV source holds {kv_len} positions")]
    QueriesPastKv { pos_start: usize, pos_end: usize, kv_len: usize },
    #[error("the RoPE table covers {len} positions but {needed} are needed")]
    RopeTableTooShort { needed: usize, len: usize },
    #[error("stage {stage}: {reason}")]
    StageInput { stage: usize, reason: String },
    #[error("invalid mask: {what}")]
    InvalidMask { what: String },
}

/// Head counts and head dimension of one attention layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    /// Query heads (H).
    pub n_heads: usize,
    /// Key/value heads (Hkv).
    pub n_kv_heads: usize,
    /// Head dimension (d).
    pub head_dim: usize,
}

impl AttnShape {
    /// GQA group size g = H / Hkv.
    pub fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    fn validate(&self) -> Result<(), HipError> {
        let AttnShape { n_heads, n_kv_heads, head_dim } = *self;
        if n_heads == 0 || n_kv_heads == 0 || head_dim == 0 || n_heads % n_kv_heads != 0 {
            return Err(HipError::Shape {
                what: format!(
                    "{n_heads} query heads, {n_kv_heads} KV heads, head dim {head_dim}: need H = g · Hkv > 0, d > 0"
                ),
            });
        }
        Ok(())
    }
}

/// Un-rotated keys and values of one layer of one sequence, by absolute position.
///
/// Contract: positions `0 .. len()` are filled, and `key`/`value` return exactly
/// `head_dim()` values for every such position and every `kv_head < n_kv_heads()`.
pub trait KvSource: Sync {
    /// Positions `0 .. len` are filled.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Hkv.
    fn n_kv_heads(&self) -> usize;
    /// d.
    fn head_dim(&self) -> usize;
    /// The un-rotated key at `pos` of `kv_head`: d values.
    fn key(&self, pos: usize, kv_head: usize) -> &[f32];
    /// The value at `pos` of `kv_head`: d values.
    fn value(&self, pos: usize, kv_head: usize) -> &[f32];
}

/// A [`KvSource`] in two flat vectors `[T][Hkv][d]`, for tests and small tools.
#[derive(Debug, Clone, PartialEq)]
pub struct VecKv {
    n_kv_heads: usize,
    head_dim: usize,
    keys: Vec<f32>,
    values: Vec<f32>,
}

impl VecKv {
    pub fn new(n_kv_heads: usize, head_dim: usize) -> Self {
        Self { n_kv_heads, head_dim, keys: Vec::new(), values: Vec::new() }
    }

    /// Appends one position: `key` and `value` are `[Hkv][d]` rows.
    pub fn push(&mut self, key: &[f32], value: &[f32]) -> Result<(), HipError> {
        let width = self.n_kv_heads * self.head_dim;
        if key.len() != width || value.len() != width {
            return Err(HipError::Shape {
                what: format!(
                    "a KV row needs Hkv · d = {width} values, got {} keys and {} values",
                    key.len(),
                    value.len()
                ),
            });
        }
        self.keys.extend_from_slice(key);
        self.values.extend_from_slice(value);
        Ok(())
    }

    /// Mutable key of an existing position (tests plant needles with it).
    pub fn key_mut(&mut self, pos: usize, kv_head: usize) -> &mut [f32] {
        let at = (pos * self.n_kv_heads + kv_head) * self.head_dim;
        &mut self.keys[at..at + self.head_dim]
    }
}

impl KvSource for VecKv {
    fn len(&self) -> usize {
        self.keys.len() / (self.n_kv_heads * self.head_dim).max(1)
    }
    fn n_kv_heads(&self) -> usize {
        self.n_kv_heads
    }
    fn head_dim(&self) -> usize {
        self.head_dim
    }
    fn key(&self, pos: usize, kv_head: usize) -> &[f32] {
        let at = (pos * self.n_kv_heads + kv_head) * self.head_dim;
        &self.keys[at..at + self.head_dim]
    }
    fn value(&self, pos: usize, kv_head: usize) -> &[f32] {
        let at = (pos * self.n_kv_heads + kv_head) * self.head_dim;
        &self.values[at..at + self.head_dim]
    }
}

/// One query block of one layer: everything mask estimation and attention read.
#[derive(Debug)]
pub struct QueryBlock<'a, K: KvSource + ?Sized> {
    /// Layer index (selects the per-layer knobs of [`HipConfig::layer_params`]).
    pub layer: usize,
    pub shape: AttnShape,
    /// Un-rotated queries `[n_q][H][d]`.
    pub q: &'a [f32],
    /// Absolute position of the first query; the others follow consecutively.
    pub pos_start: usize,
    /// Keys and values of the layer; must hold every position up to the block's last query.
    pub kv: &'a K,
    /// cos/sin table; must cover the positions the strategies assign (see the module doc).
    pub rope: &'a RopeTable,
}

// By hand, because a derive would demand `K: Copy`; the block only holds references.
impl<K: KvSource + ?Sized> Clone for QueryBlock<'_, K> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K: KvSource + ?Sized> Copy for QueryBlock<'_, K> {}

impl<K: KvSource + ?Sized> QueryBlock<'_, K> {
    /// Number of queries n_q.
    pub fn n_q(&self) -> usize {
        self.q.len() / (self.shape.n_heads * self.shape.head_dim).max(1)
    }

    /// Position of the last query.
    pub fn pos_last(&self) -> usize {
        self.pos_start + self.n_q().saturating_sub(1)
    }

    /// Window start `w = max(0, pos_start − n_window + 1)` of the block (§4.2).
    pub fn window_start(&self, n_window: usize) -> usize {
        (self.pos_start + 1).saturating_sub(n_window)
    }

    /// Checks shapes, that the KV source holds the block's own positions, and that the RoPE
    /// table covers positions `0 ..= max_rope_pos`.
    fn check(&self, max_rope_pos: usize) -> Result<(), HipError> {
        let shape = self.shape;
        shape.validate()?;
        let row = shape.n_heads * shape.head_dim;
        if self.q.is_empty() || !self.q.len().is_multiple_of(row) {
            return Err(HipError::Shape {
                what: format!(
                    "{} query values are not a positive number of [H = {}][d = {}] rows",
                    self.q.len(),
                    shape.n_heads,
                    shape.head_dim
                ),
            });
        }
        if self.kv.n_kv_heads() != shape.n_kv_heads || self.kv.head_dim() != shape.head_dim {
            return Err(HipError::Shape {
                what: format!(
                    "the KV source has {} KV heads of dim {}, the layer {} of dim {}",
                    self.kv.n_kv_heads(),
                    self.kv.head_dim(),
                    shape.n_kv_heads,
                    shape.head_dim
                ),
            });
        }
        let rotated = 2 * self.rope.half();
        if rotated > shape.head_dim {
            return Err(HipError::Shape {
                what: format!("RoPE rotates {rotated} dims of a head of {}", shape.head_dim),
            });
        }
        let pos_end = self.pos_start + self.n_q();
        if pos_end > self.kv.len() {
            return Err(HipError::QueriesPastKv { pos_start: self.pos_start, pos_end, kv_len: self.kv.len() });
        }
        if self.rope.len() <= max_rope_pos {
            return Err(HipError::RopeTableTooShort { needed: max_rope_pos + 1, len: self.rope.len() });
        }
        Ok(())
    }

    /// The un-rotated query of token `t` (0-based within the block) and head `h`.
    fn query(&self, t: usize, h: usize) -> &[f32] {
        let d = self.shape.head_dim;
        let at = (t * self.shape.n_heads + h) * d;
        &self.q[at..at + d]
    }
}

/// `Σ a[i]·b[i]` over `min(a.len(), b.len())` terms, accumulated in 8 lanes (lane `j` sums
/// the terms `i ≡ j (mod 8)` in index order), then the lanes in order 0..8, then the tail of
/// the last `len % 8` terms. A fixed order, so results are the same on every platform, and one
/// that the compiler vectorises.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let (a_tail, b_tail) = (a_chunks.remainder(), b_chunks.remainder());
    let mut lanes = [0f32; 8];
    for (x, y) in a_chunks.zip(b_chunks) {
        for j in 0..8 {
            lanes[j] += x[j] * y[j];
        }
    }
    let mut sum = 0f32;
    for lane in lanes {
        sum += lane;
    }
    for (x, y) in a_tail.iter().zip(b_tail) {
        sum += x * y;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vec_kv_stores_rows_by_position_and_head() {
        let mut kv = VecKv::new(2, 3);
        kv.push(&[1., 2., 3., 4., 5., 6.], &[7., 8., 9., 10., 11., 12.]).unwrap();
        kv.push(&[0.; 6], &[0.; 6]).unwrap();
        assert_eq!((kv.len(), kv.n_kv_heads(), kv.head_dim()), (2, 2, 3));
        assert_eq!(kv.key(0, 1), [4., 5., 6.]);
        assert_eq!(kv.value(0, 0), [7., 8., 9.]);
        kv.key_mut(1, 0)[2] = 5.0;
        assert_eq!(kv.key(1, 0), [0., 0., 5.]);
        assert!(matches!(kv.push(&[0.; 5], &[0.; 6]), Err(HipError::Shape { .. })));
    }

    #[test]
    fn window_start_clamps_at_zero() {
        let rope = RopeTable::new(crate::rope::RopeConfig {
            theta: 10000.0,
            dim: 2,
            style: crate::rope::RopeStyle::Adjacent,
            scaling: crate::rope::RopeScaling::None,
        });
        let kv = VecKv::new(1, 2);
        let shape = AttnShape { n_heads: 1, n_kv_heads: 1, head_dim: 2 };
        let q = [0.0; 2];
        let block = |pos_start| QueryBlock { layer: 0, shape, q: &q, pos_start, kv: &kv, rope: &rope };
        // w = pos − n_window + 1, so the window [w, pos] holds n_window tokens.
        assert_eq!(block(10).window_start(4), 7);
        assert_eq!(block(3).window_start(4), 0);
        assert_eq!(block(2).window_start(4), 0);
    }
}
