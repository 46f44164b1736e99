//! HiP decode on the GPU (DESIGN.md §4.2–4.5): the pruning stages of one decode query per
//! sequence (`kernels/hip.cu`: scores, then an exact top-k on the device) and block-sparse
//! decode over sink + selected blocks + window (`decode_partial` of `kernels/decode.cu` with a
//! mask, then `attn_combine`).
//!
//! A stage reads the previous stage's kept chunk starts straight from device memory, so a
//! whole mask refresh is a chain of launches with no host round trip. The caller owns the
//! per-stage outputs (`[seq][stride]` starts and `[seq][2]` counts): they are the decode mask
//! cache of §4.4, kept across steps and recomputed from the stage the refresh schedule names.
//!
//! The kernels reproduce `infinihip_core::hip::run_stage` bit for bit (see the header of
//! `kernels/hip.cu`); crates/engine/tests/gpu_hip.rs checks masks for equality.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use half::bf16;

use crate::attention::{decode_splits, DecodeParams, DecodeSeq};
use crate::error::CudaError;
use crate::ops::{AttnScratch, AttnShape, DeviceAddr, KvGeometry};
use crate::runtime::Gpu;

/// One decode sequence of the pruning kernels.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HipSeq {
    /// Activation row of the query.
    pub row: i32,
    /// Query position p.
    pub pos: i32,
    /// The sequence's pages are `page_ids[page_start..]`.
    pub page_start: i32,
    /// w: the candidates lie in `[n_sink, w)` (stage 0 sets it; it stays until the next
    /// stage-0 refresh, DESIGN.md §4.4).
    pub window_end: i32,
}
const _: () = assert!(std::mem::size_of::<HipSeq>() == 16);
// SAFETY: plain #[repr(C)] integers, mirrored by the kernel's struct.
unsafe impl cudarc::driver::DeviceRepr for HipSeq {}

/// Positions of the pruning RoPE strategy (mirrors `infinihip_core::hip::PruningRope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruningStrategy {
    Relative = 0,
    ChunkIndexed = 1,
    Plain = 2,
}

/// Parameters of `hip_stage_scores` (mirrors `kernels/hip.cu`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct HipStageParams {
    q: u64,
    kv: u64,
    page_ids: u64,
    seqs: u64,
    cos: u64,
    sin: u64,
    prev_starts: u64,
    prev_counts: u64,
    keys: u64,
    starts: u64,
    n_heads: i32,
    n_kv_heads: i32,
    n_layers: i32,
    layer: i32,
    page_size: i32,
    rope_half: i32,
    rope_adjacent: i32,
    n_sink: i32,
    n_window: i32,
    chunk_size: i32,
    ratio: i32,
    prev_stride: i32,
    max_cand: i32,
    strategy: i32,
    head_dim: i32,
    pad: i32,
}
const _: () = assert!(std::mem::size_of::<HipStageParams>() == 144);
// SAFETY: a plain #[repr(C)] struct of integers, mirrored field for field by the kernel's.
unsafe impl cudarc::driver::DeviceRepr for HipStageParams {}

/// Warps per block of `hip_stage_scores` (`HIP_WARPS` in the kernel).
const HIP_WARPS: usize = 2;
/// Threads of `hip_topk` (`TOPK_THREADS`).
const TOPK_THREADS: u32 = 1024;

/// The device inputs shared by every stage of one step and layer.
pub struct HipInputs<'a> {
    pub store: &'a CudaSlice<bf16>,
    pub geometry: KvGeometry,
    pub layer: usize,
    /// Queries `[rows][H][d]`, un-rotated.
    pub q: &'a CudaSlice<bf16>,
    pub page_ids: &'a CudaSlice<u32>,
    pub seqs: &'a CudaSlice<HipSeq>,
    pub n_seqs: usize,
    pub cos: &'a CudaSlice<f32>,
    pub sin: &'a CudaSlice<f32>,
    pub shape: AttnShape,
    pub n_sink: usize,
    pub n_window: usize,
}

/// One stage: its chunk size, what it keeps, and where its input and output live.
pub struct HipStage<'a> {
    pub chunk_size: usize,
    /// Chunks kept (`budget / chunk_size`).
    pub n_keep: usize,
    pub strategy: PruningStrategy,
    /// Candidates per sequence at most (stage 0: the largest grid; later stages:
    /// `prev n_keep · ratio`); the scratch must hold `n_seqs · max_cand`.
    pub max_cand: usize,
    /// The previous stage's output and its chunk size (None for stage 0).
    pub prev: Option<(&'a StageOutput, usize)>,
}

/// What a stage keeps, per sequence: starts `[seq][stride]` ascending, counts `[seq][2]`
/// (chunks, tokens clipped at w).
pub struct StageOutput {
    pub starts: CudaSlice<i32>,
    pub counts: CudaSlice<i32>,
    pub stride: usize,
}

impl StageOutput {
    pub fn new(gpu: &Gpu, n_seqs: usize, stride: usize) -> Result<Self, CudaError> {
        Ok(Self { starts: gpu.alloc_zeros(n_seqs * stride)?, counts: gpu.alloc_zeros(n_seqs * 2)?, stride })
    }
}

/// Per-candidate scratch of a stage: rank keys and starts, `[seq][max_cand]`.
pub struct HipScratch {
    pub keys: CudaSlice<u64>,
    pub starts: CudaSlice<i32>,
}

impl HipScratch {
    pub fn new(gpu: &Gpu, elems: usize) -> Result<Self, CudaError> {
        Ok(Self { keys: gpu.alloc_zeros(elems)?, starts: gpu.alloc_zeros(elems)? })
    }
}

/// The block-sparse decode step of a batch: per sequence its query, window and mask index.
pub struct BsaDecode<'a> {
    /// `DecodeSeq`s with `mask` = the sequence's index in the mask arrays.
    pub seqs: &'a CudaSlice<DecodeSeq>,
    pub n_seqs: usize,
    pub mask: &'a StageOutput,
    pub block_k: usize,
    /// Split counts of each (row, head) for `attn_combine`, `[rows][H]`.
    pub n_splits: &'a CudaSlice<i32>,
    pub max_splits: usize,
    pub n_rows: usize,
}

/// Plans the block-sparse decode of one sequence: at most `n_sink_keys + k + window` keys,
/// split for `n_seqs` sequences on `n_sms` multiprocessors. Returns the sequence and its
/// split count.
#[allow(clippy::too_many_arguments)]
pub fn plan_bsa_seq(
    seq: HipSeq,
    mask_index: usize,
    n_sink: usize,
    k: usize,
    streaming: bool,
    n_seqs: usize,
    n_sms: usize,
) -> (DecodeSeq, usize) {
    let (pos, w) = (seq.pos as usize, seq.window_end as usize);
    let n_s = n_sink.min(w);
    let n_max = n_s + k + (pos + 1).saturating_sub(w);
    let (split_len, splits) = decode_splits(n_max, n_seqs, n_sms);
    let d = DecodeSeq {
        row: seq.row,
        pos: seq.pos,
        page_start: seq.page_start,
        n_sink: n_s as i32,
        window_start: seq.window_end,
        mask: mask_index as i32,
        rope_streaming: streaming as i32,
        split_len: split_len as i32,
    };
    (d, splits)
}

fn unsupported(kernel: &'static str, what: String) -> CudaError {
    CudaError::Unsupported { kernel, what }
}

fn int(kernel: &'static str, v: usize) -> Result<i32, CudaError> {
    i32::try_from(v).map_err(|_| unsupported(kernel, format!("{v} exceeds the kernel's int")))
}

impl Gpu {
    /// One pruning stage for every sequence: scores its candidates, then keeps the best
    /// `n_keep` into `out` (sorted by start). `out.stride` must be at least `n_keep`.
    pub fn hip_stage(
        &self,
        inp: &HipInputs<'_>,
        stage: &HipStage<'_>,
        scratch: &mut HipScratch,
        out: &mut StageOutput,
    ) -> Result<(), CudaError> {
        const K: &str = "hip_stage_scores";
        let s = inp.shape;
        let d = s.head_dim;
        if s.n_kv_heads == 0 || !s.n_heads.is_multiple_of(s.n_kv_heads) || d != inp.geometry.head_dim || 2 * s.rope_half > d {
            return Err(unsupported(K, format!("{} heads over {} KV heads of dim {d}", s.n_heads, s.n_kv_heads)));
        }
        let elems = inp.n_seqs * stage.max_cand;
        if scratch.keys.len() < elems || scratch.starts.len() < elems {
            return Err(unsupported(K, format!("scratch for {elems} candidates holds {}", scratch.keys.len())));
        }
        if out.stride < stage.n_keep || out.starts.len() < inp.n_seqs * out.stride || out.counts.len() < 2 * inp.n_seqs {
            return Err(unsupported("hip_topk", format!("output of stride {} for {} chunks", out.stride, stage.n_keep)));
        }
        if inp.seqs.len() < inp.n_seqs || inp.q.len() < inp.n_seqs * s.n_heads * d {
            return Err(unsupported(K, format!("{} sequences", inp.n_seqs)));
        }
        if inp.n_seqs == 0 || stage.max_cand == 0 {
            return Ok(());
        }
        let (ratio, prev_starts, prev_counts, prev_stride) = match stage.prev {
            None => (0, 0, 0, 0),
            Some((prev, prev_chunk)) => {
                if !prev_chunk.is_multiple_of(stage.chunk_size) || prev.starts.len() < inp.n_seqs * prev.stride {
                    return Err(unsupported(K, format!("input chunks of {prev_chunk} for chunks of {}", stage.chunk_size)));
                }
                (prev_chunk / stage.chunk_size, prev.starts.addr(self.stream()), prev.counts.addr(self.stream()), prev.stride)
            }
        };
        let stream = self.stream();
        let addr = |b: &dyn DeviceAddr| b.addr(stream);
        let p = HipStageParams {
            q: addr(inp.q),
            kv: addr(inp.store),
            page_ids: addr(inp.page_ids),
            seqs: addr(inp.seqs),
            cos: addr(inp.cos),
            sin: addr(inp.sin),
            prev_starts,
            prev_counts,
            keys: addr(&scratch.keys),
            starts: addr(&scratch.starts),
            n_heads: int(K, s.n_heads)?,
            n_kv_heads: int(K, s.n_kv_heads)?,
            n_layers: int(K, inp.geometry.n_layers)?,
            layer: int(K, inp.layer)?,
            page_size: int(K, inp.geometry.page_size)?,
            rope_half: int(K, s.rope_half)?,
            rope_adjacent: s.rope_adjacent as i32,
            n_sink: int(K, inp.n_sink)?,
            n_window: int(K, inp.n_window)?,
            chunk_size: int(K, stage.chunk_size)?,
            ratio: int(K, ratio)?,
            prev_stride: int(K, prev_stride)?,
            max_cand: int(K, stage.max_cand)?,
            strategy: stage.strategy as i32,
            head_dim: int(K, d)?,
            pad: 0,
        };
        let smem = (s.n_heads + HIP_WARPS * s.n_kv_heads) * (d + 1) * 4;
        if smem > 48 << 10 {
            return Err(unsupported(K, format!("{smem} bytes of shared memory (48 KiB at most)")));
        }
        let grid = (u32::try_from(stage.max_cand.div_ceil(HIP_WARPS)).map_err(|_| unsupported(K, "grid".into()))?, inp.n_seqs as u32, 1);
        let mut l = self.launch(K)?;
        l.args.arg(&p);
        let cfg = LaunchConfig { grid_dim: grid, block_dim: (32 * HIP_WARPS as u32, 1, 1), shared_mem_bytes: smem as u32 };
        // SAFETY: `p` mirrors the kernel's HipStageParams; sizes checked above; the plan's pages
        // and positions are the caller's (as for `attention`).
        unsafe { l.run(cfg) }?;

        let (max_cand, n_keep, stride, chunk) =
            (p.max_cand, int("hip_topk", stage.n_keep)?, int("hip_topk", out.stride)?, p.chunk_size);
        let mut l = self.launch("hip_topk")?;
        l.args
            .arg(&scratch.keys)
            .arg(&scratch.starts)
            .arg(inp.seqs)
            .arg(&mut out.starts)
            .arg(&mut out.counts)
            .arg(&max_cand)
            .arg(&n_keep)
            .arg(&stride)
            .arg(&chunk);
        let cfg = LaunchConfig { grid_dim: (inp.n_seqs as u32, 1, 1), block_dim: (TOPK_THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: buffer sizes checked above.
        unsafe { l.run(cfg) }
    }

    /// Block-sparse decode attention over each sequence's sink, mask and window, into `out`
    /// (`[rows][H·d]` bf16): `decode_partial` with the mask, then `attn_combine`.
    pub fn hip_bsa_decode(
        &self,
        inp: &HipInputs<'_>,
        bsa: &BsaDecode<'_>,
        scratch: &mut AttnScratch,
        out: &mut CudaSlice<bf16>,
    ) -> Result<(), CudaError> {
        const K: &str = "decode_partial";
        let s = inp.shape;
        let d = s.head_dim;
        let slots = bsa.n_rows * s.n_heads * bsa.max_splits;
        if scratch.acc.len() < slots * d || scratch.ml.len() < slots * 2 || out.len() < bsa.n_rows * s.n_heads * d {
            return Err(unsupported(K, format!("partials or output too small for {} rows", bsa.n_rows)));
        }
        if bsa.seqs.len() < bsa.n_seqs || bsa.mask.counts.len() < 2 * bsa.n_seqs || bsa.n_splits.len() < bsa.n_rows * s.n_heads {
            return Err(unsupported(K, format!("{} sequences", bsa.n_seqs)));
        }
        if !crate::attention::fast_decode_supported(s.rope_half, s.rope_adjacent) {
            return Err(unsupported(K, format!("halves RoPE over {} pairs", s.rope_half)));
        }
        if bsa.n_seqs == 0 {
            return Ok(());
        }
        let stream = self.stream();
        let addr = |b: &dyn DeviceAddr| b.addr(stream);
        let dp = DecodeParams {
            q: addr(inp.q),
            kv: addr(inp.store),
            page_ids: addr(inp.page_ids),
            seqs: addr(bsa.seqs),
            mask_blocks: addr(&bsa.mask.starts),
            mask_tokens: addr(&bsa.mask.counts),
            cos: addr(inp.cos),
            sin: addr(inp.sin),
            part_acc: addr(&scratch.acc),
            part_ml: addr(&scratch.ml),
            n_heads: int(K, s.n_heads)?,
            n_kv_heads: int(K, s.n_kv_heads)?,
            n_layers: int(K, inp.geometry.n_layers)?,
            layer: int(K, inp.layer)?,
            page_size: int(K, inp.geometry.page_size)?,
            rope_half: int(K, s.rope_half)?,
            rope_adjacent: s.rope_adjacent as i32,
            max_splits: int(K, bsa.max_splits)?,
            max_blocks: int(K, bsa.mask.stride)?,
            block_k: int(K, bsa.block_k)?,
            scale: s.scale,
            pad: 0,
        };
        self.decode_partial(&dp, s, bsa.n_seqs, bsa.max_splits)?;
        self.attn_combine(scratch, bsa.n_splits, out, bsa.max_splits, bsa.n_rows * s.n_heads, d)
    }
}
