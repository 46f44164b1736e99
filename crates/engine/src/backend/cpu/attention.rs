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

use infinihip_core::rope::{rotate_with, RopeTable};
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
            dst.copy_from_slice(src);
            rotate(rope, dst, pos, style);
            simd::scale(dst, shape.scale);
            row_pos.push(pos);
        }
    }

    let mut m = vec![f32::NEG_INFINITY; n_rows];
    let mut l = vec![0f32; n_rows];
    let mut acc = vec![0f32; n_rows * d];
    let mut k_tile = vec![0f32; K_TILE * d];
    let mut v_tile = vec![0f32; K_TILE * d];
    let mut scores = [0f32; K_TILE];

    let last_pos = seq.pos_start + it.t1 - 1;
    let k_end = it.k1.min(last_pos + 1);
    let pages = plan.pages(seq);
    let mut tile_start = it.k0;
    while tile_start < k_end {
        let tile_len = K_TILE.min(k_end - tile_start);
        for j in 0..tile_len {
            let pos = tile_start + j;
            let page = store.page(pages[pos / plan.page_size]);
            let slot = pos % plan.page_size;
            let kd = &mut k_tile[j * d..(j + 1) * d];
            kd.copy_from_slice(store.key(page, layer, slot, it.kv_head));
            rotate(rope, kd, pos, style);
            v_tile[j * d..(j + 1) * d].copy_from_slice(store.value(page, layer, slot, it.kv_head));
        }
        for r in 0..n_rows {
            // Causality: keys at positions ≤ the query's own.
            let visible = (row_pos[r] + 1).saturating_sub(tile_start).min(tile_len);
            if visible == 0 {
                continue;
            }
            let qv = &qr[r * d..(r + 1) * d];
            let s = &mut scores[..visible];
            for (j, sj) in s.iter_mut().enumerate() {
                *sj = simd::dot(qv, &k_tile[j * d..(j + 1) * d]);
            }
            let tile_max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let m_new = m[r].max(tile_max);
            let correction = simd::exp(m[r] - m_new);
            let a = &mut acc[r * d..(r + 1) * d];
            if correction != 1.0 {
                simd::scale(a, correction);
            }
            let mut sum = 0f32;
            for sj in s.iter_mut() {
                *sj = simd::exp(*sj - m_new);
                sum += *sj;
            }
            for (j, &p) in s.iter().enumerate() {
                simd::axpy(p, &v_tile[j * d..(j + 1) * d], a);
            }
            l[r] = l[r] * correction + sum;
            m[r] = m_new;
        }
        tile_start += tile_len;
    }
    Partial { m, l, acc }
}

fn rotate(rope: &RopeTable, x: &mut [f32], pos: usize, style: infinihip_core::rope::RopeStyle) {
    let (cos, sin) = rope.row(pos);
    rotate_with(x, cos, sin, style);
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
        while j < items.len() && (items[j].seq, items[j].kv_head, items[j].t0) == (first.seq, first.kv_head, first.t0)
        {
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
