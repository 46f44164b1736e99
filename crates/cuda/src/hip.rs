//! HiP mask estimation on the GPU (DESIGN.md §4.2): the pruning stages of query blocks (a
//! decode step's one query, or b_q queries of a prefill chunk), `kernels/hip.cu`: the block's
//! scoring rows, the candidates' descent scores, then an exact top-k on the device.
//! Block-sparse attention over the resulting masks is the dense attention kernels' key list
//! with a mask (`ops::StepMasks`).
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

use crate::error::CudaError;
use crate::ops::{AttnShape, DeviceAddr, KvGeometry};
use crate::runtime::Gpu;

/// One query block of the pruning kernels.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HipSeq {
    /// Activation row of the block's first query.
    pub row: i32,
    /// Position of the block's first query.
    pub pos: i32,
    /// The sequence's pages are `page_ids[page_start..]`.
    pub page_start: i32,
    /// w: the candidates lie in `[n_sink, w)` (for a decode query, stage 0 sets it and it
    /// stays until the next stage-0 refresh, DESIGN.md §4.4).
    pub window_end: i32,
    /// Queries in the block (rows `row..row + n_q`, positions `pos..`).
    pub n_q: i32,
    /// The pruning RoPE strategy (`PruningStrategy as i32`).
    pub strategy: i32,
    pub pad: [i32; 2],
}
const _: () = assert!(std::mem::size_of::<HipSeq>() == 32);
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
    rows: u64,
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
    head_dim: i32,
    query_group: i32,
    max_rows: i32,
}
const _: () = assert!(std::mem::size_of::<HipStageParams>() == 152);
// SAFETY: a plain #[repr(C)] struct of integers, mirrored field for field by the kernel's.
unsafe impl cudarc::driver::DeviceRepr for HipStageParams {}

/// Candidates a warp of `hip_stage_scores_c4` descends in lockstep; stages with fewer than
/// `LOCKSTEP_MIN_CANDIDATES` candidates in all use `hip_stage_scores_c1` (one a warp), whose
/// more warps hide the latency of the descent's sequential key loads (decode refreshes ran
/// twice as long with four a warp).
const CANDS: usize = 4;
const LOCKSTEP_MIN_CANDIDATES: usize = 1 << 15;
/// Warps per block of `hip_stage_scores` at most (fewer when their probe keys would not fit
/// in 48 KiB of shared memory).
const MAX_SCORE_WARPS: usize = 4;
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
    /// The most queries of one entry (1 for decode steps, b_q for prefill blocks).
    pub max_n_q: usize,
}

/// One stage: its chunk size, what it keeps, and where its input and output live.
pub struct HipStage<'a> {
    pub chunk_size: usize,
    /// Chunks kept (`budget / chunk_size`).
    pub n_keep: usize,
    /// Queries averaged into one scoring row.
    pub query_group: usize,
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

    /// Device bytes of `new(gpu, n_seqs, stride)`: i32 starts and counts.
    pub fn bytes(n_seqs: usize, stride: usize) -> usize {
        4 * (n_seqs * stride + n_seqs * 2)
    }
}

/// Scratch of a stage: rank keys and starts per candidate (`[seq][max_cand]`), and the
/// scoring rows (`[seq][d][rows·H]` f32).
pub struct HipScratch {
    pub keys: CudaSlice<u64>,
    pub starts: CudaSlice<i32>,
    pub rows: CudaSlice<f32>,
}

impl HipScratch {
    /// Room for `candidates` candidates and `row_values` scoring-row values in all.
    pub fn new(gpu: &Gpu, candidates: usize, row_values: usize) -> Result<Self, CudaError> {
        Ok(Self {
            keys: gpu.alloc_zeros(candidates)?,
            starts: gpu.alloc_zeros(candidates)?,
            rows: gpu.alloc_zeros(row_values)?,
        })
    }

    /// Device bytes that `ensure` grows empty buffers to: a u64 rank key and an i32 start per
    /// candidate, f32 row values, each rounded up to a power of two.
    pub fn bytes(candidates: usize, row_values: usize) -> usize {
        12 * candidates.next_power_of_two() + 4 * row_values.next_power_of_two()
    }

    /// Grows the buffers (contents are not kept) to the given sizes.
    pub fn ensure(&mut self, gpu: &Gpu, candidates: usize, row_values: usize) -> Result<(), CudaError> {
        if self.keys.len() < candidates {
            self.keys = gpu.alloc_zeros(candidates.next_power_of_two())?;
            self.starts = gpu.alloc_zeros(candidates.next_power_of_two())?;
        }
        if self.rows.len() < row_values {
            self.rows = gpu.alloc_zeros(row_values.next_power_of_two())?;
        }
        Ok(())
    }
}

/// Scoring-row values a stage of `query_group` needs for `n_seqs` entries of up to `max_n_q`
/// queries: `[seq][d][rows·H]`.
pub fn scoring_row_values(n_seqs: usize, max_n_q: usize, query_group: usize, n_heads: usize, head_dim: usize) -> usize {
    n_seqs * head_dim * max_n_q.div_ceil(query_group.max(1)) * n_heads
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
        if s.n_kv_heads == 0
            || !s.n_heads.is_multiple_of(s.n_kv_heads)
            || d != inp.geometry.head_dim
            || 2 * s.rope_half > d
        {
            return Err(unsupported(K, format!("{} heads over {} KV heads of dim {d}", s.n_heads, s.n_kv_heads)));
        }
        let elems = inp.n_seqs * stage.max_cand;
        if scratch.keys.len() < elems || scratch.starts.len() < elems {
            return Err(unsupported(K, format!("scratch for {elems} candidates holds {}", scratch.keys.len())));
        }
        if stage.query_group == 0 || inp.max_n_q == 0 {
            return Err(unsupported(K, format!("query group {} of {} queries", stage.query_group, inp.max_n_q)));
        }
        let max_rows = inp.max_n_q.div_ceil(stage.query_group);
        let row_values = scoring_row_values(inp.n_seqs, inp.max_n_q, stage.query_group, s.n_heads, d);
        if scratch.rows.len() < row_values {
            return Err(unsupported(
                K,
                format!("scratch for {row_values} scoring-row values holds {}", scratch.rows.len()),
            ));
        }
        if out.stride < stage.n_keep || out.starts.len() < inp.n_seqs * out.stride || out.counts.len() < 2 * inp.n_seqs
        {
            return Err(unsupported(
                "hip_topk",
                format!("output of stride {} for {} chunks", out.stride, stage.n_keep),
            ));
        }
        if inp.seqs.len() < inp.n_seqs {
            return Err(unsupported(K, format!("{} sequences", inp.n_seqs)));
        }
        if inp.n_seqs == 0 || stage.max_cand == 0 {
            return Ok(());
        }
        let (ratio, prev_starts, prev_counts, prev_stride) = match stage.prev {
            None => (0, 0, 0, 0),
            Some((prev, prev_chunk)) => {
                if !prev_chunk.is_multiple_of(stage.chunk_size) || prev.starts.len() < inp.n_seqs * prev.stride {
                    return Err(unsupported(
                        K,
                        format!("input chunks of {prev_chunk} for chunks of {}", stage.chunk_size),
                    ));
                }
                (
                    prev_chunk / stage.chunk_size,
                    prev.starts.addr(self.stream()),
                    prev.counts.addr(self.stream()),
                    prev.stride,
                )
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
            rows: addr(&scratch.rows),
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
            head_dim: int(K, d)?,
            query_group: int(K, stage.query_group)?,
            max_rows: int(K, max_rows)?,
        };
        let n_seqs = u32::try_from(inp.n_seqs).map_err(|_| unsupported(K, "grid".into()))?;
        let mut l = self.launch("hip_pool_queries")?;
        l.args.arg(&p);
        let cfg = LaunchConfig { grid_dim: (n_seqs, max_rows as u32, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: `p` mirrors the kernel's HipStageParams; the rows buffer was checked above;
        // the entries' query rows are the caller's (as for `attention`).
        unsafe { l.run(cfg) }?;

        let (kernel, cands) = if inp.n_seqs * stage.max_cand >= LOCKSTEP_MIN_CANDIDATES {
            ("hip_stage_scores_c4", CANDS)
        } else {
            ("hip_stage_scores_c1", 1)
        };
        // Each warp stages 2·cands rotated probe keys of every KV head.
        let per_warp = 2 * cands * s.n_kv_heads * (d + 1) * 4;
        let warps = ((48 << 10) / per_warp).min(MAX_SCORE_WARPS);
        if warps == 0 {
            return Err(unsupported(K, format!("{per_warp} bytes of probe keys per warp (48 KiB at most)")));
        }
        let smem = warps * per_warp;
        let grid = (
            u32::try_from(stage.max_cand.div_ceil(cands * warps)).map_err(|_| unsupported(K, "grid".into()))?,
            n_seqs,
            1,
        );
        let mut l = self.launch(kernel)?;
        l.args.arg(&p);
        let cfg = LaunchConfig { grid_dim: grid, block_dim: (32 * warps as u32, 1, 1), shared_mem_bytes: smem as u32 };
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
        let cfg = LaunchConfig { grid_dim: (n_seqs, 1, 1), block_dim: (TOPK_THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: buffer sizes checked above.
        unsafe { l.run(cfg) }
    }
}
