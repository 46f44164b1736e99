//! Host planning of the dense attention kernels (`kernels/attention.cu`): which block computes
//! which rows over which keys, laid out once per step and reused by every layer.
//!
//! A sequence's new tokens give `n_tokens · g` **flat rows** f = t·g + j (token t, head j of a
//! GQA group of g = H / Hkv query heads). Consecutive flat rows are cut into groups of `ROWS`
//! (4 for a decode step, 64 for a prefill chunk on tensor cores), and each group's causal key range
//! `[0, pos_start + last token + 1)` is split into `n_split` shares so that the whole step
//! launches enough blocks to fill the GPU (split-K, flash-decoding style). Each work item is
//! launched once per KV head. `n_splits[row·H + h]` tells the combine kernel how many partials
//! each (row, head) has.
//!
//! Decode sequences (one new token) go to the faster `decode_partial` kernel
//! (`kernels/decode.cu`) as one [`DecodeSeq`] each, whenever it supports the RoPE layout
//! ([`fast_decode_supported`]); otherwise they are planned as `ROWS = 4` work items.

use cudarc::driver::CudaSlice;

use crate::error::CudaError;
use crate::ops::{AttnStep, StepMasks};
use crate::runtime::Gpu;

/// A run of consecutive new tokens of one sequence that share a key list, as the kernels read
/// it: a dense sequence's whole step, or one HiP query block (see `kernels/attention.cu` and
/// `key_position` in `kernels/common.cuh`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SeqDesc {
    pub row_start: i32,
    pub n_tokens: i32,
    pub pos_start: i32,
    pub page_start: i32,
    /// n_s: the key list starts with positions `[0, n_sink)` (dense: the end of the run).
    pub n_sink: i32,
    /// w: the window `[w, p]` ends the list (dense: the end of the run, so no window).
    pub window_start: i32,
    /// Index of the run's HiP mask in the step's mask arrays, or −1.
    pub mask: i32,
    /// 1: keys at streaming RoPE positions (HiP §4.5), 0: at their own.
    pub rope_streaming: i32,
}
const _: () = assert!(std::mem::size_of::<SeqDesc>() == 32);

impl SeqDesc {
    /// A dense run: every key up to each token's own position.
    pub fn dense(row_start: i32, n_tokens: i32, pos_start: i32, page_start: i32) -> Self {
        let end = pos_start + n_tokens;
        Self { row_start, n_tokens, pos_start, page_start, n_sink: end, window_start: end, mask: -1, rope_streaming: 0 }
    }

    /// Keys the list of token `t` of the run can hold, with at most `max_selected` selected
    /// tokens in its mask: sink, selection, and the window up to the token.
    pub fn max_keys(&self, t: usize, max_selected: usize) -> usize {
        let end = self.pos_start as usize + t + 1;
        let sel = if self.mask >= 0 { max_selected } else { 0 };
        (self.n_sink.max(0) as usize).min(end) + sel + end.saturating_sub(self.window_start.max(0) as usize)
    }
}
// SAFETY: plain #[repr(C)] integers, mirrored by the kernel's struct.
unsafe impl cudarc::driver::DeviceRepr for SeqDesc {}

/// One decode sequence of `decode_partial` (see `kernels/decode.cu` for the key list it
/// reads): dense decode sets `n_sink = window_start = pos + 1` and `mask = -1`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DecodeSeq {
    pub row: i32,
    pub pos: i32,
    pub page_start: i32,
    pub n_sink: i32,
    pub window_start: i32,
    pub mask: i32,
    pub rope_streaming: i32,
    pub split_len: i32,
}
const _: () = assert!(std::mem::size_of::<DecodeSeq>() == 32);
// SAFETY: plain #[repr(C)] integers, mirrored by the kernel's struct.
unsafe impl cudarc::driver::DeviceRepr for DecodeSeq {}

/// Whether `decode_partial` handles a RoPE layout: adjacent pairs always; halves when the
/// rotated half is a whole number of 8-component lane slices.
pub fn fast_decode_supported(rope_half: usize, rope_adjacent: bool) -> bool {
    rope_adjacent || rope_half.is_multiple_of(8)
}

/// Dynamic shared memory of a `decode_partial` block over `n_kv_heads` heads: each warp's
/// cp.async ring of `DECODE_STAGES` stages of `DECODE_FIELDS` 16-byte slots a lane
/// (`kernels/decode.cu`).
pub fn decode_smem_bytes(n_kv_heads: usize) -> usize {
    const STAGES: usize = 6;
    const FIELDS: usize = 4;
    n_kv_heads * STAGES * FIELDS * 32 * 16
}

/// The most splits of one decode sequence: `attn_combine` weighs every split of a head in
/// shared memory (`COMBINE_MAX_SPLITS`).
pub const MAX_DECODE_SPLITS: usize = 1024;

/// Warps of `decode_partial` resident on one multiprocessor: 128 registers a thread (its
/// launch bounds) fill the 64K-register file at 16 warps.
const DECODE_WARPS_PER_SM: usize = 16;

/// Splits of a decode sequence of `n_keys` keys (at most) when `n_seqs` sequences of
/// `n_kv_heads` heads (a warp each) share the GPU: one wave of blocks, as many as fit on the
/// multiprocessors at once, at most `MAX_DECODE_SPLITS`, each a multiple of 16 keys. Fewer
/// blocks leave warps missing to hide the memory latency (SmolLM2's 3 KV heads at 256 splits
/// read 1M keys at a third of PyTorch's speed); more make a second, ragged wave. Short key
/// lists (HiP's few thousand) are cut as fine as that. Returns `(split_len, n_splits)`.
pub fn decode_splits(n_keys: usize, n_seqs: usize, n_kv_heads: usize, n_sms: usize) -> (usize, usize) {
    let blocks_per_sm = (DECODE_WARPS_PER_SM / n_kv_heads.max(1)).max(1);
    let wanted = (blocks_per_sm * n_sms.max(1)).div_ceil(n_seqs.max(1)).clamp(1, MAX_DECODE_SPLITS);
    let split_len = n_keys.div_ceil(wanted).max(1).next_multiple_of(16);
    (split_len, n_keys.div_ceil(split_len).max(1))
}

/// One work item of `attn_prefill_tc`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AttnCta {
    pub seq: i32,
    pub f0: i32,
    pub k0: i32,
    pub k1: i32,
    pub split: i32,
}
const _: () = assert!(std::mem::size_of::<AttnCta>() == 20);
// SAFETY: plain #[repr(C)] integers, mirrored by the kernel's struct.
unsafe impl cudarc::driver::DeviceRepr for AttnCta {}

/// Flat rows per work item (`attn_prefill_tc`: four warps of 16 rows).
pub const TILE_ROWS: usize = 64;
/// A split holds at least this many keys: shorter ones cost more in partials than they save.
pub const MIN_SPLIT_KEYS: usize = 256;
/// The most splits of one group; bounds the partials buffer.
pub const MAX_SPLITS: usize = 64;

/// The work of one step: items for each kernel shape, and the split counts for the combine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttnPlan {
    /// Sequences with one new token, for `decode_partial` (when `fast_decode`).
    pub decode_seqs: Vec<DecodeSeq>,
    /// Work items of every other run, for `attn_prefill_tc` (`TILE_ROWS` flat rows each).
    pub prefill: Vec<AttnCta>,
    /// Splits of each (row, head), `[rows][H]`.
    pub n_splits: Vec<i32>,
    /// The largest entry of `n_splits`: the stride of the partials.
    pub max_splits: usize,
}

/// Plans a step of `seqs` (rows `0..n_rows` in total) for `n_heads` query and `n_kv_heads` KV
/// heads on a GPU of `n_sms` multiprocessors; decode sequences go to `decode_partial` when
/// `fast_decode` (see [`fast_decode_supported`]). Runs with a HiP mask select at most
/// `max_selected` tokens (the kernels clip each split to the mask's true count).
pub fn plan(
    seqs: &[SeqDesc],
    n_rows: usize,
    n_heads: usize,
    n_kv_heads: usize,
    n_sms: usize,
    fast_decode: bool,
    max_selected: usize,
) -> AttnPlan {
    let g = n_heads / n_kv_heads.max(1);
    let groups: usize = seqs.iter().map(|s| (s.n_tokens as usize * g).div_ceil(TILE_ROWS)).sum();
    // Enough blocks for about two waves over the multiprocessors.
    let target_blocks = 2 * n_sms.max(1);
    let wanted_splits = target_blocks.div_ceil((groups * n_kv_heads).max(1)).clamp(1, MAX_SPLITS);

    let mut out = AttnPlan { n_splits: vec![0; n_rows * n_heads], max_splits: 1, ..AttnPlan::default() };
    let n_decode = seqs.iter().filter(|s| s.n_tokens == 1).count();
    for (si, s) in seqs.iter().enumerate() {
        if fast_decode && s.n_tokens == 1 {
            let n_keys = s.max_keys(0, max_selected);
            let (split_len, splits) = decode_splits(n_keys, n_decode, n_kv_heads, n_sms);
            out.max_splits = out.max_splits.max(splits);
            out.decode_seqs.push(DecodeSeq {
                row: s.row_start,
                pos: s.pos_start,
                page_start: s.page_start,
                n_sink: s.n_sink.min(s.pos_start + 1),
                window_start: s.window_start,
                mask: s.mask,
                rope_streaming: s.rope_streaming,
                split_len: split_len as i32,
            });
            let row = s.row_start as usize;
            out.n_splits[row * n_heads..(row + 1) * n_heads].fill(splits as i32);
            continue;
        }
        let n_flat = s.n_tokens as usize * g;
        for f0 in (0..n_flat).step_by(TILE_ROWS) {
            let f1 = (f0 + TILE_ROWS).min(n_flat);
            let key_end = s.max_keys((f1 - 1) / g, max_selected);
            let splits = wanted_splits.min(key_end.div_ceil(MIN_SPLIT_KEYS)).max(1);
            let chunk = key_end.div_ceil(splits);
            let splits = key_end.div_ceil(chunk);
            out.max_splits = out.max_splits.max(splits);
            for split in 0..splits {
                out.prefill.push(AttnCta {
                    seq: si as i32,
                    f0: f0 as i32,
                    k0: (split * chunk) as i32,
                    k1: ((split + 1) * chunk).min(key_end) as i32,
                    split: split as i32,
                });
            }
            for f in f0..f1 {
                let row = s.row_start as usize + f / g;
                for kvh in 0..n_kv_heads {
                    out.n_splits[row * n_heads + kvh * g + f % g] = splits as i32;
                }
            }
        }
    }
    out
}

/// An [`AttnPlan`] and its runs on the device, for [`crate::ops::AttnStep`]: laid out once
/// and reused by every layer whose runs are the same.
pub struct DevicePlan {
    pub runs: Vec<SeqDesc>,
    pub plan: AttnPlan,
    runs_dev: CudaSlice<SeqDesc>,
    decode_seqs: CudaSlice<DecodeSeq>,
    prefill: CudaSlice<AttnCta>,
    n_splits: CudaSlice<i32>,
    n_rows: usize,
}

impl DevicePlan {
    /// Plans `runs` (see [`plan`]) and uploads the result.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        gpu: &Gpu,
        runs: Vec<SeqDesc>,
        n_rows: usize,
        n_heads: usize,
        n_kv_heads: usize,
        fast_decode: bool,
        max_selected: usize,
    ) -> Result<Self, CudaError> {
        let plan = plan(&runs, n_rows, n_heads, n_kv_heads, gpu.info().multiprocessors, fast_decode, max_selected);
        Ok(Self {
            runs_dev: gpu.upload(&runs)?,
            decode_seqs: gpu.upload(&plan.decode_seqs)?,
            prefill: gpu.upload(&plan.prefill)?,
            n_splits: gpu.upload(&plan.n_splits)?,
            runs,
            plan,
            n_rows,
        })
    }

    /// Partial-result slots the step needs: `(acc values, ml values)` for heads of dim `d`.
    pub fn scratch_len(&self, n_heads: usize, d: usize) -> (usize, usize) {
        let slots = self.n_rows * n_heads * self.plan.max_splits;
        (slots * d, slots * 2)
    }

    /// The step for `gpu.attention` over the pages `page_ids`, with the runs' masks.
    pub fn step<'a>(&'a self, page_ids: &'a CudaSlice<u32>, masks: Option<StepMasks<'a>>) -> AttnStep<'a> {
        AttnStep {
            seqs: &self.runs_dev,
            n_seqs: self.runs.len(),
            page_ids,
            decode_seqs: &self.decode_seqs,
            n_decode_seqs: self.plan.decode_seqs.len(),
            prefill: &self.prefill,
            n_prefill: self.plan.prefill.len(),
            n_splits: &self.n_splits,
            max_splits: self.plan.max_splits,
            n_rows: self.n_rows,
            masks,
        }
    }
}

/// Parameters of `attn_prefill_tc_*`: device pointers and sizes.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttnParams {
    pub q: u64,
    pub kv: u64,
    pub page_ids: u64,
    pub seqs: u64,
    pub ctas: u64,
    pub cos: u64,
    pub sin: u64,
    pub part_acc: u64,
    pub part_ml: u64,
    pub mask_blocks: u64,
    pub mask_tokens: u64,
    pub n_heads: i32,
    pub n_kv_heads: i32,
    pub n_layers: i32,
    pub layer: i32,
    pub page_size: i32,
    pub rope_half: i32,
    pub rope_adjacent: i32,
    pub max_splits: i32,
    pub max_blocks: i32,
    pub block_k: i32,
    pub scale: f32,
    pub pad: i32,
}
const _: () = assert!(std::mem::size_of::<AttnParams>() == 136);

/// Parameters of `decode_partial_*`: device pointers and sizes (mirrors `kernels/decode.cu`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct DecodeParams {
    pub q: u64,
    pub kv: u64,
    pub page_ids: u64,
    pub seqs: u64,
    pub mask_blocks: u64,
    pub mask_tokens: u64,
    pub cos: u64,
    pub sin: u64,
    pub part_acc: u64,
    pub part_ml: u64,
    pub n_heads: i32,
    pub n_kv_heads: i32,
    pub n_layers: i32,
    pub layer: i32,
    pub page_size: i32,
    pub rope_half: i32,
    pub rope_adjacent: i32,
    pub max_splits: i32,
    pub max_blocks: i32,
    pub block_k: i32,
    pub scale: f32,
    pub pad: i32,
}
const _: () = assert!(std::mem::size_of::<DecodeParams>() == 128);
// SAFETY: a plain #[repr(C)] struct of integers, mirrored field for field by the kernel's
// `DecodeParams`.
unsafe impl cudarc::driver::DeviceRepr for DecodeParams {}

// SAFETY: a plain #[repr(C)] struct of integers, mirrored field for field by the kernel's
// `AttnParams`.
unsafe impl cudarc::driver::DeviceRepr for AttnParams {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks the invariants the kernels rely on: every (row, head) of the step is covered by
    /// exactly `n_splits` items whose key ranges tile its causal range, in split order.
    fn check(seqs: &[SeqDesc], n_heads: usize, n_kv_heads: usize, n_sms: usize) -> AttnPlan {
        let n_rows: usize = seqs.iter().map(|s| s.n_tokens as usize).sum();
        let p = plan(seqs, n_rows, n_heads, n_kv_heads, n_sms, false, 0);
        let g = n_heads / n_kv_heads;
        for (si, s) in seqs.iter().enumerate() {
            let (rows, items) = (TILE_ROWS, &p.prefill);
            for f in 0..s.n_tokens as usize * g {
                let t = f / g;
                let mine: Vec<_> = items
                    .iter()
                    .filter(|c| c.seq == si as i32 && (c.f0 as usize..c.f0 as usize + rows).contains(&f))
                    .collect();
                let row = s.row_start as usize + t;
                for kvh in 0..n_kv_heads {
                    assert_eq!(p.n_splits[row * n_heads + kvh * g + f % g] as usize, mine.len());
                }
                assert!(mine.len() <= p.max_splits);
                // Splits in order, contiguous from 0, covering at least the row's keys.
                let mut next = 0;
                for (i, c) in mine.iter().enumerate() {
                    assert_eq!(c.split as usize, i);
                    assert_eq!(c.k0, next);
                    assert!(c.k1 > c.k0);
                    next = c.k1;
                }
                assert!(next as usize > s.pos_start as usize + t, "row {f} of seq {si} misses its own key");
            }
        }
        p
    }

    #[test]
    fn decode_splits_long_contexts_and_not_short_ones() {
        let seq = |pos| SeqDesc::dense(0, 1, pos, 0);
        // SmolLM2 shapes: 9 heads, 3 KV heads. 8191 keys before the new one: 32 splits of 256.
        let p = check(&[seq(8191)], 9, 3, 132);
        assert_eq!(p.prefill.len(), 32);
        assert_eq!(p.max_splits, 32);
        assert!(p.decode_seqs.is_empty());
        // A short context is one split.
        let p = check(&[seq(10)], 9, 3, 132);
        assert_eq!((p.prefill.len(), p.max_splits), (1, 1));
        // Llama-3.1-8B shapes, g = 4: still one block per token.
        let p = check(&[seq(100_000)], 32, 8, 132);
        assert_eq!(p.prefill.len() % 33, 0, "{}", p.prefill.len());
    }

    #[test]
    fn mixed_batches_cover_every_row_and_head() {
        let seqs = [
            SeqDesc::dense(0, 1, 5000, 0),
            SeqDesc::dense(1, 37, 300, 80),
            SeqDesc::dense(38, 1, 0, 90),
            SeqDesc::dense(39, 512, 0, 91),
        ];
        check(&seqs, 9, 3, 132);
        check(&seqs, 32, 8, 132);
        check(&seqs, 14, 2, 132);
        check(&seqs, 8, 8, 1);
    }

    #[test]
    fn masked_runs_are_planned_for_their_largest_key_list() {
        // A HiP prefill block (64 tokens from 40,000, window from 38,977) and a decode step
        // (window from 48,977), both masks selecting up to 2,048 tokens, beside a dense run.
        let block = SeqDesc {
            n_sink: 256,
            window_start: 38_977,
            mask: 0,
            rope_streaming: 1,
            ..SeqDesc::dense(0, 64, 40_000, 0)
        };
        let step = SeqDesc {
            n_sink: 256,
            window_start: 48_977,
            mask: 1,
            rope_streaming: 1,
            ..SeqDesc::dense(64, 1, 50_000, 800)
        };
        let dense = SeqDesc::dense(65, 16, 300, 900);
        assert_eq!(block.max_keys(63, 2048), 256 + 2048 + (40_064 - 38_977));
        assert_eq!(step.max_keys(0, 2048), 256 + 2048 + (50_001 - 48_977));
        assert_eq!(dense.max_keys(15, 2048), 316);
        let p = plan(&[block, step, dense], 81, 9, 3, 132, true, 2048);
        let d = p.decode_seqs[0];
        assert_eq!((d.n_sink, d.window_start, d.mask, d.rope_streaming), (256, 48_977, 1, 1));
        let splits = p.n_splits[64 * 9] as usize;
        assert!(splits * d.split_len as usize >= step.max_keys(0, 2048));
        // Each group of 64 flat rows (21⅓ tokens of 3 heads) tiles the largest list among its
        // tokens: [0, n_s + K + the window up to its last token).
        for f0 in [0, 64, 128] {
            let mut next = 0;
            for c in p.prefill.iter().filter(|c| c.seq == 0 && c.f0 == f0) {
                assert_eq!(c.k0, next);
                next = c.k1;
            }
            let last_token = ((f0 + 64).min(192) - 1) / 3;
            assert_eq!(next as usize, block.max_keys(last_token as usize, 2048), "rows from {f0}");
        }
    }

    #[test]
    fn fast_decode_splits_cover_every_key_once() {
        let seqs = [SeqDesc::dense(0, 1, 1_048_575, 0), SeqDesc::dense(1, 37, 300, 80), SeqDesc::dense(38, 1, 0, 90)];
        let p = plan(&seqs, 39, 32, 8, 132, true, 0);
        assert!(p.prefill.iter().all(|c| c.seq == 1), "decode steps go to decode_partial");
        assert_eq!(p.decode_seqs.len(), 2);
        for d in &p.decode_seqs {
            let n_keys = d.pos as usize + 1;
            assert_eq!((d.n_sink as usize, d.window_start as usize, d.mask), (n_keys, n_keys, -1));
            let splits = p.n_splits[d.row as usize * 32] as usize;
            assert!(splits <= p.max_splits && d.split_len % 16 == 0);
            assert!(splits * d.split_len as usize >= n_keys && (splits - 1) * (d.split_len as usize) < n_keys);
        }
        // Llama-3.1-8B's 8 KV heads, two blocks an SM: 1M keys over two decode sequences in
        // 132 splits each; HiP's ~3.3K keys in 208 splits of 16. SmolLM2's 3 KV heads, five
        // blocks an SM: 1M keys of one sequence in 660 splits.
        assert_eq!(decode_splits(1 << 20, 2, 8, 132), (7952, 132));
        assert_eq!(decode_splits(3328, 1, 8, 132), (16, 208));
        assert_eq!(decode_splits(1 << 20, 1, 3, 132), (1600, 656));
        assert_eq!(decode_splits(10, 1, 8, 132), (16, 1));
        assert!(
            fast_decode_supported(64, true) && fast_decode_supported(32, false) && !fast_decode_supported(12, false)
        );
    }
}
