//! Dense causal attention over the paged, un-rotated KV cache (the CPU reference).
//!
//! Shapes (DESIGN notation): queries `[rows][H·d]`, cache `[page][layer][K|V][slot][Hkv][d]`,
//! GQA group `g = H / Hkv`; query head `h` reads KV head `h / g`.
//!
//! Work is cut into items of (sequence, KV head, tile of 16 query tokens, key range). Each item
//! runs a flash-style pass: key tiles of 64 positions are gathered from their pages and rotated
//! to their positions once, then every query row of the group scores them with an online
//! softmax. Long contexts with few queries (decode) are split over key ranges so that all
//! threads work; the partial softmax states are merged at the end.

use infinihip_core::rope::{rotate_into, RopeTable};
use rayon::prelude::*;

use super::simd;
use super::CpuKvStore;
use crate::backend::{AttentionShape, BatchPlan, SeqSlice};

const Q_TILE: usize = 16;
const K_TILE: usize = 64;
/// Key ranges shorter than this are not split further.
const MIN_SPLIT_KEYS: usize = 512;

/// One unit of parallel work.
struct Item {
    seq: usize,
    kv_head: usize,
    /// Query tokens `t0..t1` of the sequence's step.
    t0: usize,
    t1: usize,
    /// Cache positions `k0..k1` this item covers (further limited by causality).
    k0: usize,
    k1: usize,
}

/// Online-softmax state of an item's rows: running max, running sum and weighted values.
struct Partial {
    m: Vec<f32>,
    l: Vec<f32>,
    acc: Vec<f32>,
}

/// The online softmax of one item, updated tile by tile.
struct Softmax {
    m: Vec<f32>,
    l: Vec<f32>,
    acc: Vec<f32>,
}

impl Softmax {
    /// Folds in row `r`'s scores `s` (overwritten with their weights) of keys whose values are
    /// `v_rows[..s.len()]`.
    #[inline(always)]
    fn update(&mut self, r: usize, s: &mut [f32], v_rows: &[&[f32]]) {
        if s.is_empty() {
            return;
        }
        let d = self.acc.len() / self.m.len();
        let tile_max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let m_new = self.m[r].max(tile_max);
        let correction = simd::exp(self.m[r] - m_new);
        let a = &mut self.acc[r * d..(r + 1) * d];
        if correction != 1.0 {
            simd::scale(a, correction);
        }
        for sj in s.iter_mut() {
            *sj = simd::exp(*sj - m_new);
        }
        for (&p, v) in s.iter().zip(v_rows) {
            simd::axpy(p, v, a);
        }
        self.l[r] = self.l[r] * correction + simd::sum(s);
        self.m[r] = m_new;
    }
}

pub(super) fn dense_attention(
    store: &CpuKvStore,
    layer: usize,
    q: &[f32],
    plan: &BatchPlan,
    shape: AttentionShape,
    rope: &RopeTable,
    out: &mut [f32],
) {
    let items = plan_items(plan, shape.n_kv_heads);
    let partials: Vec<Partial> =
        items.par_iter().map(|it| attend_item(store, layer, q, plan, &plan.seqs[it.seq], it, shape, rope)).collect();
    merge_into(out, &items, &partials, plan, shape);
}

fn plan_items(plan: &BatchPlan, n_kv_heads: usize) -> Vec<Item> {
    let threads = rayon::current_num_threads();
    let base_items: usize = plan.seqs.iter().map(|s| s.n_tokens.div_ceil(Q_TILE) * n_kv_heads).sum();
    let mut items = Vec::new();
    for (si, s) in plan.seqs.iter().enumerate() {
        let n_keys = s.end_pos();
        let wanted = (4 * threads).div_ceil(base_items.max(1));
        let splits = wanted.min(n_keys / MIN_SPLIT_KEYS).max(1);
        let split_len = n_keys.div_ceil(splits).div_ceil(K_TILE) * K_TILE;
        for kv_head in 0..n_kv_heads {
            for t0 in (0..s.n_tokens).step_by(Q_TILE) {
                let t1 = (t0 + Q_TILE).min(s.n_tokens);
                let last_pos = s.pos_start + t1 - 1;
                for k0 in (0..n_keys).step_by(split_len) {
                    if k0 > last_pos {
                        break;
                    }
                    items.push(Item { seq: si, kv_head, t0, t1, k0, k1: (k0 + split_len).min(n_keys) });
                }
            }
        }
    }
    items
}

/// Dispatches to a copy of `attend_item_body` compiled for AVX2 when the CPU has it.
#[allow(clippy::too_many_arguments)]
fn attend_item(
    store: &CpuKvStore,
    layer: usize,
    q: &[f32],
    plan: &BatchPlan,
    seq: &SeqSlice,
    it: &Item,
    shape: AttentionShape,
    rope: &RopeTable,
) -> Partial {
    #[cfg(target_arch = "x86_64")]
    if simd::has_avx2_fma() {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { attend_item_avx2(store, layer, q, plan, seq, it, shape, rope) };
    }
    attend_item_body(store, layer, q, plan, seq, it, shape, rope)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_item_avx2(
    store: &CpuKvStore,
    layer: usize,
    q: &[f32],
    plan: &BatchPlan,
    seq: &SeqSlice,
    it: &Item,
    shape: AttentionShape,
    rope: &RopeTable,
) -> Partial {
    attend_item_body(store, layer, q, plan, seq, it, shape, rope)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_item_body(
    store: &CpuKvStore,
    layer: usize,
    q: &[f32],
    plan: &BatchPlan,
    seq: &SeqSlice,
    it: &Item,
    shape: AttentionShape,
    rope: &RopeTable,
) -> Partial {
    let d = shape.head_dim;
    let g = shape.n_heads / shape.n_kv_heads;
    let q_width = shape.n_heads * d;
    let style = rope.config().style;
    let n_rows = (it.t1 - it.t0) * g;

    // Rotated, scaled queries of the item: row r = (token t0 + r / g, head kv_head·g + r % g).
    let mut qr = vec![0f32; n_rows * d];
    let mut row_pos = Vec::with_capacity(n_rows);
    for t in it.t0..it.t1 {
        let pos = seq.pos_start + t;
        for j in 0..g {
            let h = it.kv_head * g + j;
            let src = &q[(seq.row_start + t) * q_width + h * d..][..d];
            let dst = &mut qr[row_pos.len() * d..][..d];
            let (cos, sin) = rope.row(pos);
            rotate_into(src, dst, cos, sin, style);
            simd::scale(dst, shape.scale);
            row_pos.push(pos);
        }
    }

    let mut state = Softmax { m: vec![f32::NEG_INFINITY; n_rows], l: vec![0f32; n_rows], acc: vec![0f32; n_rows * d] };
    // Few rows (decode): score key by key. Many rows (prefill): transpose the tile once so that
    // each row scores it with broadcast-multiply-adds and no horizontal sums.
    let transpose = n_rows > 8;
    let mut k_tile = vec![0f32; d * K_TILE];
    let mut k_rot = vec![0f32; d];
    let mut v_rows: [&[f32]; K_TILE] = [&[]; K_TILE];
    let mut scores = vec![[0f32; K_TILE]; n_rows];

    let last_pos = seq.pos_start + it.t1 - 1;
    let k_end = it.k1.min(last_pos + 1);
    let pages = plan.pages(seq);
    let mut tile_start = it.k0;
    while tile_start < k_end {
        let tile_len = K_TILE.min(k_end - tile_start);
        // Keys are rotated to their positions as they are gathered; values are read in place.
        for j in 0..tile_len {
            let pos = tile_start + j;
            let page = store.page(pages[pos / plan.page_size]);
            let slot = pos % plan.page_size;
            let (cos, sin) = rope.row(pos);
            let key = store.key(page, layer, slot, it.kv_head);
            if transpose {
                rotate_into(key, &mut k_rot, cos, sin, style);
                for (c, &v) in k_rot.iter().enumerate() {
                    k_tile[c * K_TILE + j] = v;
                }
            } else {
                rotate_into(key, &mut k_tile[j * d..(j + 1) * d], cos, sin, style);
            }
            v_rows[j] = store.value(page, layer, slot, it.kv_head);
        }
        for r in 0..n_rows {
            let s = &mut scores[r];
            let qv = &qr[r * d..(r + 1) * d];
            if transpose {
                s.fill(0.0);
                for (c, &qc) in qv.iter().enumerate() {
                    let k_c: &[f32; K_TILE] = k_tile[c * K_TILE..(c + 1) * K_TILE].try_into().expect("tile row");
                    for (sj, &kj) in s.iter_mut().zip(k_c) {
                        *sj += qc * kj;
                    }
                }
            } else {
                for (j, sj) in s[..tile_len].iter_mut().enumerate() {
                    *sj = simd::dot(qv, &k_tile[j * d..(j + 1) * d]);
                }
            }
            // Causality: keys at positions ≤ the query's own.
            let visible = (row_pos[r] + 1).saturating_sub(tile_start).min(tile_len);
            state.update(r, &mut s[..visible], &v_rows);
        }
        tile_start += tile_len;
    }
    let Softmax { m, l, acc } = state;
    Partial { m, l, acc }
}

/// Combines the partial softmax states of each row's key ranges and writes `acc / l`.
fn merge_into(out: &mut [f32], items: &[Item], partials: &[Partial], plan: &BatchPlan, shape: AttentionShape) {
    let d = shape.head_dim;
    let g = shape.n_heads / shape.n_kv_heads;
    let q_width = shape.n_heads * d;
    // Items of the same (seq, kv_head, t0) are adjacent, in key order.
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
        for r in 0..n_rows {
            let t = first.t0 + r / g;
            let h = first.kv_head * g + r % g;
            let dst = &mut out[(seq.row_start + t) * q_width + h * d..][..d];
            dst.fill(0.0);
            let mut l = 0f32;
            for p in &partials[i..j] {
                if p.l[r] == 0.0 {
                    continue;
                }
                let w = simd::exp(p.m[r] - m_tot[r]);
                l += p.l[r] * w;
                simd::axpy(w, &p.acc[r * d..(r + 1) * d], dst);
            }
            // Every query sees at least itself, so l > 0.
            simd::scale(dst, 1.0 / l);
        }
        i = j;
    }
}
