//! Attention over the paged, un-rotated KV cache: dense causal, or HiP block-sparse.
//!
//! Shapes (DESIGN notation): queries `[rows][H·d]`, cache `[page][layer][K|V][slot][Hkv][d]`,
//! GQA group `g = H / Hkv`; query head `h` reads KV head `h / g`.
//!
//! Both modes run the same kernel. A query tile attends to a list of **key spans**: runs of
//! consecutive cache positions, each with the RoPE position of its first key. Dense attention is
//! one span `[0, end)` at true positions; HiP attention is the sink, the selected blocks and the
//! window that `core::hip` chose, with the positions of its BSA RoPE strategy
//! (`hip::rope_strategy::bsa_key_spans`). Causality is always by true position: a key is seen by
//! the queries at or after it.
//!
//! Work is cut into items of (sequence, KV head, query tile, share of the spans). Each item runs
//! a flash-style pass: key tiles of up to 64 positions are gathered from their pages and rotated
//! as they are gathered, then every query row of the group scores them with an online softmax.
//! Few queries over many keys (decode) are split over the keys so that all threads work; the
//! partial softmax states are merged at the end.

use std::ops::Range;

use infinihip_core::hip::rope_strategy::{bsa_key_spans, KeySpan};
use infinihip_core::hip::{estimate_mask, AttnShape, HipConfig, KvSource, Mask, QueryBlock};
use infinihip_core::rope::{rotate_into, RopeTable};
use rayon::prelude::*;

use super::simd;
use super::{CpuKvStore, CpuKvView};
use crate::backend::{AttentionShape, BatchPlan, SeqSlice};
use crate::error::EngineError;
use crate::hip_state::HipSeqState;

/// Query tokens per dense item.
const Q_TILE: usize = 16;
const K_TILE: usize = 64;
/// Key shares shorter than this are not split further.
const MIN_SPLIT_KEYS: usize = 512;

/// One unit of parallel work.
struct Item {
    seq: usize,
    kv_head: usize,
    /// Query tokens `t0..t1` of the sequence's step.
    t0: usize,
    t1: usize,
    /// The item's spans are `spans[span_range]`.
    spans: Range<usize>,
}

/// Online-softmax state of an item's rows: running max, running sum and weighted values.
struct Softmax {
    m: Vec<f32>,
    l: Vec<f32>,
    acc: Vec<f32>,
}

impl Softmax {
    fn new(n_rows: usize, d: usize) -> Self {
        Self { m: vec![f32::NEG_INFINITY; n_rows], l: vec![0f32; n_rows], acc: vec![0f32; n_rows * d] }
    }

    /// Folds in row `r`'s scores `s` (overwritten with their weights) of keys whose values are
    /// `v_rows[..s.len()]`. `D` is the head dimension when it is known at compile time (the
    /// row's accumulator then stays in registers across the keys), 0 otherwise.
    #[inline(always)]
    fn update<const FUSED: bool, const D: usize>(&mut self, r: usize, s: &mut [f32], v_rows: &[&[f32]]) {
        if s.is_empty() {
            return;
        }
        let d = self.acc.len() / self.m.len();
        let tile_max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let m_new = self.m[r].max(tile_max);
        let correction = simd::exp(self.m[r] - m_new);
        for sj in s.iter_mut() {
            *sj = simd::exp(*sj - m_new);
        }
        let a = &mut self.acc[r * d..(r + 1) * d];
        if D == 0 {
            if correction != 1.0 {
                simd::scale(a, correction);
            }
            for (&p, v) in s.iter().zip(v_rows) {
                simd::axpy::<FUSED>(p, v, a);
            }
        } else {
            let mut acc: [f32; D] = std::array::from_fn(|l| a[l] * correction);
            for (&p, v) in s.iter().zip(v_rows) {
                let v: &[f32; D] = v[..D].try_into().expect("head dimension D");
                for l in 0..D {
                    acc[l] = simd::madd::<FUSED>(p, v[l], acc[l]);
                }
            }
            a.copy_from_slice(&acc);
        }
        self.l[r] = self.l[r] * correction + simd::sum(s);
        self.m[r] = m_new;
    }
}

/// Everything the items of one call share.
struct Call<'a> {
    store: &'a CpuKvStore,
    layer: usize,
    q: &'a [f32],
    plan: &'a BatchPlan,
    shape: AttentionShape,
    rope: &'a RopeTable,
}

impl Call<'_> {
    fn kv(&self, seq: &SeqSlice) -> CpuKvView<'_> {
        self.store.view(self.layer, self.plan.pages(seq), self.plan.page_size, seq.end_pos())
    }

    fn hip_shape(&self) -> AttnShape {
        AttnShape { n_heads: self.shape.n_heads, n_kv_heads: self.shape.n_kv_heads, head_dim: self.shape.head_dim }
    }

    /// The step's queries `[n][H][d]` of tokens `t0..t1` of `seq`.
    fn queries(&self, seq: &SeqSlice, t0: usize, t1: usize) -> &[f32] {
        let width = self.shape.n_heads * self.shape.head_dim;
        &self.q[(seq.row_start + t0) * width..(seq.row_start + t1) * width]
    }
}

/// Attention of every sequence of the step: dense where `hip[i]` is `None`, HiP otherwise.
#[allow(clippy::too_many_arguments)]
pub(super) fn attention(
    store: &CpuKvStore,
    layer: usize,
    q: &[f32],
    plan: &BatchPlan,
    shape: AttentionShape,
    rope: &RopeTable,
    hip: &mut [Option<&mut HipSeqState>],
    out: &mut [f32],
) -> Result<(), EngineError> {
    let call = Call { store, layer, q, plan, shape, rope };
    let masks = hip_masks(&call, hip)?;
    let (items, spans) = plan_items(&call, &masks);
    let partials: Vec<Softmax> = items.par_iter().map(|it| attend_item(&call, it, &spans[it.spans.clone()])).collect();
    merge_into(out, &items, &partials, plan, shape);
    Ok(())
}

/// A HiP sequence's masks for this step: one per query block (tokens `range` of the step).
struct SeqMasks {
    config: std::sync::Arc<HipConfig>,
    blocks: Vec<(Range<usize>, Mask)>,
}

/// The HiP masks of the step, per sequence (`None` for dense ones): one per query block of
/// `b_q` tokens in prefill (estimated in parallel), or the decode cache's mask for one token.
fn hip_masks(call: &Call<'_>, hip: &mut [Option<&mut HipSeqState>]) -> Result<Vec<Option<SeqMasks>>, EngineError> {
    let mut masks = Vec::with_capacity(call.plan.seqs.len());
    for (seq, state) in call.plan.seqs.iter().zip(hip.iter_mut()) {
        let Some(state) = state else {
            masks.push(None);
            continue;
        };
        let config = state.config().clone();
        let kv = call.kv(seq);
        let block_at = |t0: usize, t1: usize| QueryBlock {
            layer: call.layer,
            shape: call.hip_shape(),
            q: call.queries(seq, t0, t1),
            pos_start: seq.pos_start + t0,
            kv: &kv,
            rope: call.rope,
        };
        let cfg = &*config;
        let (bounds, single) = seq.hip_query_blocks(cfg.b_q);
        let mut blocks = bounds
            .into_par_iter()
            .map(|r| estimate_mask(cfg, &block_at(r.start, r.end)).map(|m| (r, m)))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(t) = single {
            // A sampled last token starts a fresh decode cache, so that the decode steps after
            // it continue its refresh cycle.
            let cache = state.layer_mut(call.layer);
            if seq.n_tokens > 1 {
                cache.reset();
            }
            blocks.push((t..t + 1, cache.step(cfg, &block_at(t, t + 1))?.mask));
        }
        masks.push(Some(SeqMasks { blocks, config }));
    }
    Ok(masks)
}

/// Cuts the step into items and lays out their key spans.
fn plan_items(call: &Call<'_>, masks: &[Option<SeqMasks>]) -> (Vec<Item>, Vec<KeySpan>) {
    let plan = call.plan;
    let n_kv_heads = call.shape.n_kv_heads;
    let threads = rayon::current_num_threads();
    // Query tiles of every sequence: (sequence, its tokens, the HiP config and mask if any).
    type Tile<'m> = (usize, Range<usize>, Option<(&'m HipConfig, &'m Mask)>);
    let mut tiles: Vec<Tile<'_>> = Vec::new();
    for (si, seq) in plan.seqs.iter().enumerate() {
        match &masks[si] {
            None => {
                for t0 in (0..seq.n_tokens).step_by(Q_TILE) {
                    tiles.push((si, t0..(t0 + Q_TILE).min(seq.n_tokens), None));
                }
            }
            Some(m) => tiles.extend(m.blocks.iter().map(|(r, mask)| (si, r.clone(), Some((&*m.config, mask))))),
        }
    }
    let wanted_splits = (4 * threads).div_ceil((tiles.len() * n_kv_heads).max(1));

    let mut items = Vec::new();
    let mut spans = Vec::new();
    let mut tile_spans = Vec::new();
    for (si, range, mask) in tiles {
        let seq = &plan.seqs[si];
        let p_last = seq.pos_start + range.end - 1;
        for kv_head in 0..n_kv_heads {
            match mask {
                None => {
                    tile_spans.clear();
                    tile_spans.push(KeySpan { keys: 0..p_last + 1, rope_start: 0 });
                }
                Some((cfg, mask)) => {
                    bsa_key_spans(cfg.bsa_rope, mask, mask.group_of_kv_head(kv_head), p_last, &mut tile_spans);
                }
            }
            let n_keys: usize = tile_spans.iter().map(|s| s.keys.len()).sum();
            let splits = wanted_splits.min(n_keys / MIN_SPLIT_KEYS).max(1);
            for share in split_spans(&tile_spans, splits) {
                let start = spans.len();
                spans.extend(share);
                items.push(Item { seq: si, kv_head, t0: range.start, t1: range.end, spans: start..spans.len() });
            }
        }
    }
    (items, spans)
}

/// Cuts `spans` into `n` shares of about equal key counts, in order.
fn split_spans(spans: &[KeySpan], n: usize) -> Vec<Vec<KeySpan>> {
    let total: usize = spans.iter().map(|s| s.keys.len()).sum();
    let per_share = total.div_ceil(n.max(1)).max(1);
    let mut shares = vec![Vec::new()];
    let mut room = per_share;
    for span in spans {
        let mut keys = span.keys.clone();
        while !keys.is_empty() {
            if room == 0 {
                shares.push(Vec::new());
                room = per_share;
            }
            let take = room.min(keys.len());
            let rope_start = span.rope_start + (keys.start - span.keys.start);
            shares
                .last_mut()
                .expect("one share at least")
                .push(KeySpan { keys: keys.start..keys.start + take, rope_start });
            keys.start += take;
            room -= take;
        }
    }
    shares
}

/// Dispatches to a copy of `attend_item_body` compiled for AVX2 when the CPU has it.
fn attend_item(call: &Call<'_>, it: &Item, spans: &[KeySpan]) -> Softmax {
    #[cfg(target_arch = "x86_64")]
    if simd::has_avx2_fma() {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { attend_item_avx2(call, it, spans) };
    }
    attend_item_body::<false, 0>(call, it, spans)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_item_avx2(call: &Call<'_>, it: &Item, spans: &[KeySpan]) -> Softmax {
    // The common head dimensions get a copy whose value accumulators live in registers.
    match call.shape.head_dim {
        64 => attend_item_body::<true, 64>(call, it, spans),
        128 => attend_item_body::<true, 128>(call, it, spans),
        _ => attend_item_body::<true, 0>(call, it, spans),
    }
}

#[inline(always)]
fn attend_item_body<const FUSED: bool, const D: usize>(call: &Call<'_>, it: &Item, spans: &[KeySpan]) -> Softmax {
    let shape = call.shape;
    let seq = &call.plan.seqs[it.seq];
    let d = shape.head_dim;
    let g = shape.n_heads / shape.n_kv_heads;
    let style = call.rope.config().style;
    let n_rows = (it.t1 - it.t0) * g;

    // Rotated, scaled queries of the item at their true positions: row r = (token t0 + r / g,
    // head kv_head·g + r % g).
    let queries = call.queries(seq, it.t0, it.t1);
    let mut qr = vec![0f32; n_rows * d];
    let mut row_pos = Vec::with_capacity(n_rows);
    for t in 0..it.t1 - it.t0 {
        let pos = seq.pos_start + it.t0 + t;
        let (cos, sin) = call.rope.row(pos);
        for j in 0..g {
            let h = it.kv_head * g + j;
            let dst = &mut qr[row_pos.len() * d..][..d];
            rotate_into(&queries[(t * shape.n_heads + h) * d..][..d], dst, cos, sin, style);
            simd::scale(dst, shape.scale);
            row_pos.push(pos);
        }
    }

    let mut state = Softmax::new(n_rows, d);
    // Few rows (decode): score key by key. Many rows (prefill): transpose the tile once so that
    // each row scores it with broadcast-multiply-adds and no horizontal sums.
    let transpose = n_rows > 8;
    let mut k_tile = vec![0f32; d * K_TILE];
    let mut k_rot = vec![0f32; d];
    let mut v_rows: [&[f32]; K_TILE] = [&[]; K_TILE];
    let mut tile_pos = [0usize; K_TILE];
    let mut scores = vec![[0f32; K_TILE]; n_rows];
    let kv = call.kv(seq);
    // Tiles are filled with up to K_TILE keys taken in order from the spans, so that short
    // spans (HiP's selected blocks of 8 tokens) still make full tiles. Keys come in increasing
    // position order, so the keys a row may see (position ≤ its own) are a prefix of the tile.
    let mut keys =
        spans.iter().flat_map(|span| span.keys.clone().map(move |pos| (pos, span.rope_start + pos - span.keys.start)));
    loop {
        let mut tile_len = 0;
        for (pos, rope_pos) in keys.by_ref().take(K_TILE) {
            // Keys are rotated to their assigned positions as they are gathered; values are
            // read in place.
            let (cos, sin) = call.rope.row(rope_pos);
            let key = kv.key(pos, it.kv_head);
            if transpose {
                rotate_into(key, &mut k_rot, cos, sin, style);
                for (c, &v) in k_rot.iter().enumerate() {
                    k_tile[c * K_TILE + tile_len] = v;
                }
            } else {
                rotate_into(key, &mut k_tile[tile_len * d..(tile_len + 1) * d], cos, sin, style);
            }
            v_rows[tile_len] = kv.value(pos, it.kv_head);
            tile_pos[tile_len] = pos;
            tile_len += 1;
        }
        if tile_len == 0 {
            break;
        }
        for r in 0..n_rows {
            // Causality by true position: keys at positions ≤ the query's own.
            let visible = tile_pos[..tile_len].partition_point(|&p| p <= row_pos[r]);
            if visible == 0 {
                continue;
            }
            let s = &mut scores[r];
            let qv = &qr[r * d..(r + 1) * d];
            if transpose {
                // A local accumulator, so that it stays in registers across the components.
                let mut acc = [0f32; K_TILE];
                for (c, &qc) in qv.iter().enumerate() {
                    let k_c: &[f32; K_TILE] = k_tile[c * K_TILE..(c + 1) * K_TILE].try_into().expect("tile row");
                    for (a, &kj) in acc.iter_mut().zip(k_c) {
                        *a = simd::madd::<FUSED>(qc, kj, *a);
                    }
                }
                *s = acc;
            } else {
                for (j, sj) in s[..visible].iter_mut().enumerate() {
                    *sj = simd::dot::<FUSED>(qv, &k_tile[j * d..(j + 1) * d]);
                }
            }
            state.update::<FUSED, D>(r, &mut s[..visible], &v_rows);
        }
    }
    state
}

/// Combines the partial softmax states of each row's key shares and writes `acc / l`.
fn merge_into(out: &mut [f32], items: &[Item], partials: &[Softmax], plan: &BatchPlan, shape: AttentionShape) {
    let d = shape.head_dim;
    let g = shape.n_heads / shape.n_kv_heads;
    let q_width = shape.n_heads * d;
    // Items of the same (seq, kv_head, t0) are adjacent.
    let mut i = 0;
    let mut m_tot = Vec::new();
    while i < items.len() {
        let first = &items[i];
        let mut j = i + 1;
        while j < items.len() && (items[j].seq, items[j].kv_head, items[j].t0) == (first.seq, first.kv_head, first.t0) {
            j += 1;
        }
        let seq = &plan.seqs[first.seq];
        let n_rows = (first.t1 - first.t0) * g;
        m_tot.clear();
        m_tot.extend((0..n_rows).map(|r| partials[i..j].iter().map(|p| p.m[r]).fold(f32::NEG_INFINITY, f32::max)));
        for (r, &m_row) in m_tot.iter().enumerate() {
            let t = first.t0 + r / g;
            let h = first.kv_head * g + r % g;
            let dst = &mut out[(seq.row_start + t) * q_width + h * d..][..d];
            dst.fill(0.0);
            let mut l = 0f32;
            for p in &partials[i..j] {
                if p.l[r] == 0.0 {
                    continue;
                }
                let w = simd::exp(p.m[r] - m_row);
                l += p.l[r] * w;
                simd::axpy::<false>(w, &p.acc[r * d..(r + 1) * d], dst);
            }
            // Every query sees at least itself (the window always holds it), so l > 0.
            simd::scale(dst, 1.0 / l);
        }
        i = j;
    }
}
