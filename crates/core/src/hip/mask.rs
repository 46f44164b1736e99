//! Mask estimation by multi-stage hierarchical pruning (DESIGN.md §4.2), per (query block,
//! layer).
//!
//! Types:
//! - [`Chunks`]: what one stage keeps, per head group: chunk starts on the stage's grid
//!   `n_sink + i · chunk_size`, ascending, each chunk `[start, min(start + chunk_size, end))`
//!   where `end` is the window start `w` stage 0 saw;
//! - [`Mask`]: the final selection: per head group, sorted block starts of `block_k` tokens,
//!   plus the sink size and the window start, so that it says exactly which keys a query sees.
//!
//! Cost per stage and head group: `n_chunks · 2·ceil(log2 chunk_size)` probes, each rotating
//! the probe key of every KV head of the group (Hkv for `shared`, 1 for `per_kv_head`) and
//! taking `rows ·` (heads of the group) dot products of length d. Scratch buffers are allocated
//! once per stage, never per chunk or token.
//! See the `hip` module doc for the algorithm, the RoPE rules and the tie-breaking.

use std::cmp::Ordering;
use std::ops::Range;

use super::config::{HeadReduction, HipConfig};
use super::rope_strategy::{Half, PruningPositions};
use super::{dot, HipError, KvSource, QueryBlock};
use crate::rope::rotate_into;

/// The chunks one pruning stage keeps (or, for stage 0's input, all of its grid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunks {
    n_sink: usize,
    chunk_size: usize,
    end: usize,
    groups: Vec<Vec<usize>>,
}

impl Chunks {
    /// Every chunk of the grid over `[n_sink, end)` (none if `end ≤ n_sink`), for `n_groups`
    /// head groups.
    fn grid(n_sink: usize, chunk_size: usize, end: usize, n_groups: usize) -> Self {
        let starts: Vec<usize> = (n_sink..end).step_by(chunk_size).collect();
        Self { n_sink, chunk_size, end, groups: vec![starts; n_groups] }
    }

    /// Each chunk split on the finer grid of `chunk_size` (which divides the current one), the
    /// last piece clipped at `end`.
    fn split(&self, chunk_size: usize) -> Self {
        let groups = self
            .groups
            .iter()
            .map(|starts| starts.iter().flat_map(|&s| (s..self.range(s).end).step_by(chunk_size)).collect())
            .collect();
        Self { n_sink: self.n_sink, chunk_size, end: self.end, groups }
    }

    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// End of the candidate range `[n_sink, end)`: the window start `w` stage 0 saw.
    pub fn end(&self) -> usize {
        self.end
    }

    pub fn n_groups(&self) -> usize {
        self.groups.len()
    }

    /// Chunk starts of head group `group`, ascending. Panics if `group ≥ n_groups()`.
    pub fn starts(&self, group: usize) -> &[usize] {
        &self.groups[group]
    }

    /// The tokens of the chunk starting at `start`.
    pub fn range(&self, start: usize) -> Range<usize> {
        start..(start + self.chunk_size).min(self.end)
    }

    /// The kept chunks as a mask of `chunk_size`-token blocks (for the last stage: the final
    /// mask).
    pub fn into_mask(self) -> Mask {
        Mask { n_sink: self.n_sink, block_k: self.chunk_size, window_start: self.end, groups: self.groups }
    }
}

/// The keys a query block attends to, besides its window: per head group, the sorted,
/// de-duplicated starts of the selected blocks.
///
/// Invariants (checked by [`Mask::new`], true by construction otherwise): every block start
/// `b` satisfies `n_sink ≤ b < window_start` and `(b − n_sink) % block_k == 0`; starts are
/// strictly increasing; block `b` covers `[b, min(b + block_k, window_start))`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    n_sink: usize,
    block_k: usize,
    window_start: usize,
    groups: Vec<Vec<usize>>,
}

impl Mask {
    /// A mask from explicit block starts (one list per head group), validated.
    pub fn new(n_sink: usize, block_k: usize, window_start: usize, groups: Vec<Vec<usize>>) -> Result<Self, HipError> {
        let bad = |what: String| Err(HipError::InvalidMask { what });
        if block_k == 0 {
            return bad("block_k is 0".into());
        }
        if groups.is_empty() {
            return bad("no head group".into());
        }
        for (g, starts) in groups.iter().enumerate() {
            for (i, &b) in starts.iter().enumerate() {
                if b < n_sink || b >= window_start {
                    return bad(format!("group {g}: block {b} is outside the candidates [{n_sink}, {window_start})"));
                }
                if !(b - n_sink).is_multiple_of(block_k) {
                    return bad(format!("group {g}: block {b} is off the grid {n_sink} + {block_k}·i"));
                }
                if i > 0 && starts[i - 1] >= b {
                    return bad(format!("group {g}: blocks {} and {b} are not strictly increasing", starts[i - 1]));
                }
            }
        }
        Ok(Self { n_sink, block_k, window_start, groups })
    }

    pub fn n_sink(&self) -> usize {
        self.n_sink
    }

    pub fn block_k(&self) -> usize {
        self.block_k
    }

    /// The window start `w`: queries of the block see `[w, p]`; every block lies before it.
    pub fn window_start(&self) -> usize {
        self.window_start
    }

    /// 1 (shared) or Hkv (per KV head).
    pub fn n_groups(&self) -> usize {
        self.groups.len()
    }

    /// The head group KV head `kv_head` reads.
    pub fn group_of_kv_head(&self, kv_head: usize) -> usize {
        if self.groups.len() == 1 {
            0
        } else {
            kv_head
        }
    }

    /// Selected block starts of `group`, ascending. Panics if `group ≥ n_groups()`.
    pub fn blocks(&self, group: usize) -> &[usize] {
        &self.groups[group]
    }

    /// The tokens of the block starting at `start`.
    pub fn block_range(&self, start: usize) -> Range<usize> {
        start..(start + self.block_k).min(self.window_start)
    }

    /// The sink as attended: `[0, min(n_sink, w))`.
    pub fn sink_range(&self) -> Range<usize> {
        0..self.n_sink.min(self.window_start)
    }

    /// Number of selected tokens of `group` (blocks clipped at the window start).
    pub fn selected_tokens(&self, group: usize) -> usize {
        self.groups[group].iter().map(|&b| self.block_range(b).len()).sum()
    }

    /// Whether a query of the block (at or after `pos`) sees key `pos` in `group`: sink,
    /// selected block or window.
    pub fn covers(&self, group: usize, pos: usize) -> bool {
        if self.sink_range().contains(&pos) || pos >= self.window_start {
            return true;
        }
        let blocks = &self.groups[group];
        let after = blocks.partition_point(|&b| b <= pos);
        after > 0 && self.block_range(blocks[after - 1]).contains(&pos)
    }
}

/// Runs every pruning stage for one query block and returns the final mask (DESIGN.md §4.2).
pub fn estimate_mask<K: KvSource + ?Sized>(cfg: &HipConfig, block: &QueryBlock<K>) -> Result<Mask, HipError> {
    let mut kept = run_stage(cfg, block, 0, None)?;
    for stage in 1..cfg.n_stages() {
        kept = run_stage(cfg, block, stage, Some(&kept))?;
    }
    Ok(kept.into_mask())
}

/// Runs pruning stage `stage` for one query block: scores its candidate chunks and returns the
/// ones it keeps. Stage 0 takes no input (its candidates are the grid over `[n_sink, w)`);
/// stage `s > 0` takes stage `s − 1`'s output and splits it on its own grid.
pub fn run_stage<K: KvSource + ?Sized>(
    cfg: &HipConfig,
    block: &QueryBlock<K>,
    stage: usize,
    prev: Option<&Chunks>,
) -> Result<Chunks, HipError> {
    cfg.validate()?;
    block.check(block.pos_last().max(cfg.n_window + 1))?;
    let shape = block.shape;
    let n_groups = match cfg.head_reduction {
        HeadReduction::Shared => 1,
        HeadReduction::PerKvHead => shape.n_kv_heads,
    };
    let stage_err = |reason: String| Err(HipError::StageInput { stage, reason });
    let Some(&chunk_size) = cfg.chunk_sizes.get(stage) else {
        return stage_err(format!("the config has {} stages", cfg.n_stages()));
    };
    let candidates = match (stage, prev) {
        (0, None) => Chunks::grid(cfg.n_sink, chunk_size, block.window_start(cfg.n_window), n_groups),
        (0, Some(_)) => return stage_err("stage 0 takes no input chunks".into()),
        (_, None) => return stage_err("needs the previous stage's output".into()),
        (s, Some(p)) => {
            if p.chunk_size != cfg.chunk_sizes[s - 1] || p.n_groups() != n_groups || p.n_sink != cfg.n_sink {
                return stage_err(format!(
                    "input of {} groups of {}-token chunks after a sink of {}; the config wants {n_groups} groups of {} after {}",
                    p.n_groups(),
                    p.chunk_size,
                    p.n_sink,
                    cfg.chunk_sizes[s - 1],
                    cfg.n_sink
                ));
            }
            if p.end > block.pos_start {
                return stage_err(format!(
                    "input candidates end at {}, after the first query {}",
                    p.end, block.pos_start
                ));
            }
            p.split(chunk_size)
        }
    };
    let n_keep = cfg.stage_budget(stage, block.layer) / chunk_size;
    let positions = PruningPositions {
        strategy: cfg.pruning_rope_at(block.layer, block.pos_last()),
        n_sink: cfg.n_sink,
        n_window: cfg.n_window,
        chunk_size,
        n_chunks: candidates.end.saturating_sub(cfg.n_sink).div_ceil(chunk_size),
    };
    let rows = QueryRows::new(block, cfg.query_group[stage], &positions);
    let mut scorer = Scorer { block, rows: &rows, positions, key: vec![0f32; shape.head_dim], kv_heads: 0..0 };
    let mut scored: Vec<(f32, usize)> = Vec::new();
    let mut groups = Vec::with_capacity(n_groups);
    for (group, starts) in candidates.groups.iter().enumerate() {
        scorer.kv_heads = match cfg.head_reduction {
            HeadReduction::Shared => 0..shape.n_kv_heads,
            HeadReduction::PerKvHead => group..group + 1,
        };
        scored.clear();
        scored.extend(starts.iter().map(|&s| (scorer.chunk_score(candidates.range(s)), s)));
        groups.push(keep_best(&mut scored, n_keep));
    }
    Ok(Chunks { n_sink: cfg.n_sink, chunk_size, end: candidates.end, groups })
}

/// The best `n_keep` of `(score, start)` pairs, returned as starts in ascending order.
/// Ranking: higher score first, equal scores by lower start (scores are never NaN).
fn keep_best(scored: &mut [(f32, usize)], n_keep: usize) -> Vec<usize> {
    let rank = |a: &(f32, usize), b: &(f32, usize)| {
        if a.0 > b.0 {
            Ordering::Less
        } else if a.0 < b.0 {
            Ordering::Greater
        } else {
            a.1.cmp(&b.1)
        }
    };
    if n_keep < scored.len() {
        scored.select_nth_unstable_by(n_keep, rank);
    }
    let mut kept: Vec<usize> = scored.iter().take(n_keep).map(|&(_, s)| s).collect();
    kept.sort_unstable();
    kept
}

/// The scoring rows of a stage: `[n_rows][H][d]`, each the mean of `query_group` consecutive
/// queries rotated at their pruning positions, scaled by `1/√d`.
struct QueryRows {
    n_rows: usize,
    values: Vec<f32>,
}

impl QueryRows {
    fn new<K: KvSource + ?Sized>(block: &QueryBlock<K>, query_group: usize, positions: &PruningPositions) -> Self {
        let (h_count, d) = (block.shape.n_heads, block.shape.head_dim);
        let n_q = block.n_q();
        let n_rows = n_q.div_ceil(query_group);
        let style = block.rope.config().style;
        let mut values = vec![0f32; n_rows * h_count * d];
        let mut rotated = vec![0f32; d];
        for r in 0..n_rows {
            let tokens = r * query_group..((r + 1) * query_group).min(n_q);
            let weight = 1.0 / (tokens.len() as f32 * (d as f32).sqrt());
            for t in tokens {
                let (cos, sin) = block.rope.row(positions.query(block.pos_start + t));
                for h in 0..h_count {
                    rotate_into(block.query(t, h), &mut rotated, cos, sin, style);
                    let row = &mut values[(r * h_count + h) * d..][..d];
                    for (acc, x) in row.iter_mut().zip(&rotated) {
                        *acc += x;
                    }
                }
            }
            for x in &mut values[r * h_count * d..(r + 1) * h_count * d] {
                *x *= weight;
            }
        }
        Self { n_rows, values }
    }
}

/// Scores chunks for one head group (a range of KV heads and their query heads).
struct Scorer<'a, 'b, K: KvSource + ?Sized> {
    block: &'a QueryBlock<'b, K>,
    rows: &'a QueryRows,
    positions: PruningPositions,
    /// Scratch for one rotated key.
    key: Vec<f32>,
    kv_heads: Range<usize>,
}

impl<K: KvSource + ?Sized> Scorer<'_, '_, K> {
    /// The descent of DESIGN.md §4.2 step 2 over the chunk `[l, r)`.
    fn chunk_score(&mut self, chunk: Range<usize>) -> f32 {
        let chunk_start = chunk.start;
        let (mut l, mut r) = (chunk.start, chunk.end);
        if r - l == 1 {
            return self.probe(l, Half::Left, chunk_start);
        }
        let mut best = f32::NEG_INFINITY;
        while r - l > 1 {
            let c = l + (r - l) / 2;
            let left = self.probe(l + (c - l) / 2, Half::Left, chunk_start);
            let right = self.probe(c + (r - c) / 2, Half::Right, chunk_start);
            best = best.max(left).max(right);
            if right > left {
                l = c;
            } else {
                r = c;
            }
        }
        best
    }

    /// max over rows and the group's heads of `row · RoPE(key at key_pos)`.
    fn probe(&mut self, key_pos: usize, half: Half, chunk_start: usize) -> f32 {
        let block = self.block;
        let (h_count, d, g) = (block.shape.n_heads, block.shape.head_dim, block.shape.group());
        let (cos, sin) = block.rope.row(self.positions.probe(key_pos, half, chunk_start));
        let style = block.rope.config().style;
        let mut best = f32::NEG_INFINITY;
        for kv_head in self.kv_heads.clone() {
            rotate_into(block.kv.key(key_pos, kv_head), &mut self.key, cos, sin, style);
            for r in 0..self.rows.n_rows {
                for h in kv_head * g..(kv_head + 1) * g {
                    let row = &self.rows.values[(r * h_count + h) * d..][..d];
                    best = best.max(dot(row, &self.key));
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hip::{AttnShape, FirstLayers, PruningRope, VecKv};
    use crate::rope::{RopeConfig, RopeScaling, RopeStyle, RopeTable};

    /// A table that rotates nothing (RoPE dim 0), so scores are plain, hand-computable dot
    /// products.
    fn no_rope() -> RopeTable {
        RopeTable::new(RopeConfig { theta: 10000.0, dim: 0, style: RopeStyle::Adjacent, scaling: RopeScaling::None })
    }

    /// One KV head of dim 1 whose key at position i is `keys[i]`.
    fn kv_of(keys: &[f32]) -> VecKv {
        let mut kv = VecKv::new(1, 1);
        for &k in keys {
            kv.push(&[k], &[0.0]).unwrap();
        }
        kv
    }

    const SHAPE_1: AttnShape = AttnShape { n_heads: 1, n_kv_heads: 1, head_dim: 1 };

    /// The descent score of `chunk` for the single query 1.0 at the last position, keys `keys`.
    fn descent_score(keys: &[f32], chunk: Range<usize>) -> f32 {
        let kv = kv_of(keys);
        let rope = no_rope();
        let block = QueryBlock { layer: 0, shape: SHAPE_1, q: &[1.0], pos_start: keys.len() - 1, kv: &kv, rope: &rope };
        let positions =
            PruningPositions { strategy: PruningRope::Plain, n_sink: 0, n_window: 1, chunk_size: 8, n_chunks: 1 };
        let rows = QueryRows::new(&block, 1, &positions);
        let mut scorer = Scorer { block: &block, rows: &rows, positions, key: vec![0.0], kv_heads: 0..1 };
        scorer.chunk_score(chunk)
    }

    fn tiny_config(chunk_sizes: Vec<usize>, stage_k: Vec<usize>, k: usize) -> HipConfig {
        let n = chunk_sizes.len();
        HipConfig {
            n_sink: 2,
            n_window: 2,
            chunk_sizes,
            stage_k,
            k,
            query_group: vec![1; n],
            refresh: vec![1; n],
            first_layers: FirstLayers { count: 0, pruning_rope: PruningRope::Plain, k: None },
            ..HipConfig::default()
        }
    }

    #[test]
    fn the_descent_follows_the_higher_probe_and_keeps_the_running_max() {
        // Chunk [0, 8): probes 2 (5) vs 6 (1) → [0, 4); 1 (0) vs 3 (9) → [2, 4); 2 vs 3. Max 9.
        assert_eq!(descent_score(&[0., 0., 5., 9., 0., 0., 1., 0.], 0..8), 9.0);
        // Probes 2 (0) vs 6 (1) → [4, 8); 5 vs 7 tie → left [4, 6); 4 vs 5. Key 3 is never
        // probed: the greedy descent misses it (the recall weakness of DESIGN.md §4.7).
        let keys = [0., 0., 0., 9., 0., 0., 1., 0.];
        assert_eq!(descent_score(&keys, 0..8), 1.0);
        // A one-token chunk is scored by its token.
        assert_eq!(descent_score(&keys, 3..4), 9.0);
        // [3, 6): c = 4, probes 3 (9) vs 5 (0). [2, 5): c = 3, probes 2 vs 4, both 0.
        assert_eq!(descent_score(&keys, 3..6), 9.0);
        assert_eq!(descent_score(&keys, 2..5), 0.0);
    }

    #[test]
    fn top_k_prefers_higher_scores_then_lower_starts() {
        let scored = vec![(1.0, 40), (3.0, 10), (1.0, 20), (3.0, 50), (-0.0, 0), (0.0, 30)];
        assert_eq!(keep_best(&mut scored.clone(), 2), [10, 50]);
        assert_eq!(keep_best(&mut scored.clone(), 3), [10, 20, 50]);
        // −0 and +0 are equal scores: the lower start wins.
        assert_eq!(keep_best(&mut scored.clone(), 5), [0, 10, 20, 40, 50]);
        assert_eq!(keep_best(&mut scored.clone(), 9), [0, 10, 20, 30, 40, 50]);
    }

    #[test]
    fn nan_products_never_win_a_probe() {
        assert_eq!(descent_score(&[f32::NAN, 1.0], 0..1), f32::NEG_INFINITY);
        assert_eq!(descent_score(&[f32::NAN, 1.0], 0..2), 1.0);
    }

    #[test]
    fn stages_keep_their_budget_on_the_grid_anchored_at_the_sink() {
        // n_sink 2, window 2; query at 25 → w = 24; candidates [2, 24): stage-0 chunks of 8 at
        // 2, 10, 18 (the last clipped to [18, 24)).
        let mut keys = vec![0.0f32; 26];
        keys[4] = 1.0;
        keys[13] = 5.0;
        keys[20] = 3.0;
        let kv = kv_of(&keys);
        let rope = no_rope();
        let block = QueryBlock { layer: 0, shape: SHAPE_1, q: &[1.0], pos_start: 25, kv: &kv, rope: &rope };
        let cfg = tiny_config(vec![8, 4], vec![16], 4);
        let s0 = run_stage(&cfg, &block, 0, None).unwrap();
        // Descents: [2, 10) probes 4, 8, 3, 5, 2, 3 → 1; [10, 18) probes 12, 16, 11, 13, 12, 13
        // → 5; [18, 24) probes 19, 22, 18, 20, 19, 20 → 3. Stage 0 keeps 16 / 8 = 2 chunks.
        assert_eq!((s0.chunk_size(), s0.end(), s0.starts(0)), (8, 24, &[10, 18][..]));
        // Stage 1 splits them into [10,14) [14,18) [18,22) [22,24); their probes 11 13 | 15 17 |
        // 19 21 | 22 23 score 5, 0, 0, 0 (key 20 is missed), and it keeps 4 / 4 = 1 chunk.
        let s1 = run_stage(&cfg, &block, 1, Some(&s0)).unwrap();
        assert_eq!(s1.starts(0), [10]);
        let mask = estimate_mask(&cfg, &block).unwrap();
        assert_eq!(mask, s1.into_mask());
        assert_eq!((mask.block_k(), mask.window_start(), mask.blocks(0)), (4, 24, &[10][..]));
        assert!(mask.covers(0, 0) && mask.covers(0, 1) && mask.covers(0, 13) && mask.covers(0, 24));
        assert!(!mask.covers(0, 2) && !mask.covers(0, 9) && !mask.covers(0, 14) && !mask.covers(0, 23));

        // Wrong inputs are errors, not panics.
        let s1 = run_stage(&cfg, &block, 1, Some(&s0)).unwrap();
        assert!(matches!(run_stage(&cfg, &block, 1, None), Err(HipError::StageInput { stage: 1, .. })));
        assert!(matches!(run_stage(&cfg, &block, 0, Some(&s0)), Err(HipError::StageInput { stage: 0, .. })));
        assert!(matches!(run_stage(&cfg, &block, 1, Some(&s1)), Err(HipError::StageInput { stage: 1, .. })));
        assert!(matches!(run_stage(&cfg, &block, 2, Some(&s1)), Err(HipError::StageInput { stage: 2, .. })));
    }

    #[test]
    fn a_window_start_before_the_sink_leaves_no_candidates() {
        let kv = kv_of(&[1.0; 4]);
        let rope = no_rope();
        let block = QueryBlock { layer: 0, shape: SHAPE_1, q: &[1.0], pos_start: 2, kv: &kv, rope: &rope };
        let cfg = HipConfig { n_sink: 4, ..tiny_config(vec![2], vec![], 2) };
        // w = 2 − 2 + 1 = 1: the sink is clipped to [0, 1) and the window is [1, 2].
        let mask = estimate_mask(&cfg, &block).unwrap();
        assert_eq!((mask.window_start(), mask.sink_range(), mask.blocks(0)), (1, 0..1, &[][..]));
    }

    #[test]
    fn mask_new_rejects_broken_invariants() {
        assert!(Mask::new(4, 4, 20, vec![vec![4, 8, 16]]).is_ok());
        for groups in [vec![vec![0]], vec![vec![20]], vec![vec![6]], vec![vec![8, 8]], vec![vec![8, 4]], vec![]] {
            assert!(matches!(Mask::new(4, 4, 20, groups.clone()), Err(HipError::InvalidMask { .. })), "{groups:?}");
        }
        assert!(Mask::new(4, 0, 20, vec![vec![]]).is_err());
    }

    #[test]
    fn block_input_errors_are_reported() {
        let kv = kv_of(&[0.0; 4]);
        let rope = no_rope();
        let cfg = tiny_config(vec![2], vec![], 2);
        let q = [1.0, 1.0];
        let past = QueryBlock { layer: 0, shape: SHAPE_1, q: &q, pos_start: 3, kv: &kv, rope: &rope };
        assert!(matches!(estimate_mask(&cfg, &past), Err(HipError::QueriesPastKv { pos_end: 5, kv_len: 4, .. })));
        let bad_shape =
            QueryBlock { shape: AttnShape { n_heads: 3, n_kv_heads: 2, head_dim: 1 }, pos_start: 0, ..past };
        assert!(matches!(estimate_mask(&cfg, &bad_shape), Err(HipError::Shape { .. })));
        let empty = QueryBlock { q: &[], pos_start: 0, ..past };
        assert!(matches!(estimate_mask(&cfg, &empty), Err(HipError::Shape { .. })));
        let wrong_kv = QueryBlock { shape: AttnShape { n_heads: 2, n_kv_heads: 2, head_dim: 1 }, pos_start: 0, ..past };
        assert!(matches!(estimate_mask(&cfg, &wrong_kv), Err(HipError::Shape { .. })));

        // Relative pruning rotates queries at n_window + 1, which the table must cover.
        let mut rope =
            RopeTable::new(RopeConfig { theta: 1e4, dim: 2, style: RopeStyle::Adjacent, scaling: RopeScaling::None });
        rope.ensure(4);
        let mut kv = VecKv::new(1, 2);
        for _ in 0..4 {
            kv.push(&[1.0, 0.0], &[0.0, 1.0]).unwrap();
        }
        let shape = AttnShape { n_heads: 1, n_kv_heads: 1, head_dim: 2 };
        let block = QueryBlock { layer: 0, shape, q: &[1.0, 0.0], pos_start: 3, kv: &kv, rope: &rope };
        let far = HipConfig { n_window: rope.len() + 5, pruning_rope: PruningRope::Relative, ..cfg.clone() };
        let needed = rope.len() + 7;
        assert!(
            matches!(estimate_mask(&far, &block), Err(HipError::RopeTableTooShort { needed: n, .. }) if n == needed)
        );
        let narrow = AttnShape { n_heads: 1, n_kv_heads: 1, head_dim: 1 };
        let mut kv1 = VecKv::new(1, 1);
        kv1.push(&[1.0], &[1.0]).unwrap();
        let block = QueryBlock { layer: 0, shape: narrow, q: &[1.0], pos_start: 0, kv: &kv1, rope: &rope };
        assert!(matches!(estimate_mask(&cfg, &block), Err(HipError::Shape { .. })), "RoPE wider than the head");
    }
}
