//! HiP on the GPU, driven by a [`HipConfig`] (DESIGN.md §4.2–4.5): the pruning stages of
//! query blocks on the device ([`HipStages`]), the per-request decode mask cache
//! ([`GpuDecodeCache`], §4.4), and the masked key lists that block-sparse attention reads
//! ([`masked_run`]: the attention kernels of `infinihip_cuda::attention` with a mask).
//!
//! A query block ([`HipSeq`]) is a decode step's one query or `b_q` consecutive queries of a
//! prefill chunk. A stage reads the previous stage's kept chunks from device memory, so a whole
//! mask estimation is a chain of launches with no host round trip. The CPU reference is
//! `infinihip_core::hip` (`run_stage`, `estimate_mask`, `block_sparse_attention`);
//! [`oracle_check`] compares the two on fresh random inputs (crates/engine/tests/gpu_hip.rs,
//! and `infinihip bench attention` before it times anything).

use infinihip_core::hip::{
    block_sparse_attention, estimate_mask, first_stage_to_refresh, run_stage, AttnShape as HipShape, BsaRope,
    HeadReduction, HipConfig, HipError, PruningRope, QueryBlock, VecKv,
};
use infinihip_core::rope::{RopeConfig, RopeScaling, RopeStyle, RopeTable};
use infinihip_cuda::attention::{DevicePlan, SeqDesc};
use infinihip_cuda::hip::{scoring_row_values, HipInputs, HipScratch, HipSeq, HipStage, PruningStrategy, StageOutput};
use infinihip_cuda::ops::{AttnScratch, AttnShape, KvGeometry, StepMasks};
use infinihip_cuda::oracle::{rel_err, SplitMix64, ORACLE_REL_TOL};
use infinihip_cuda::{bf16, CudaError, CudaSlice, Gpu};

use crate::backend::SeqSlice;

fn strategy(rope: PruningRope) -> PruningStrategy {
    match rope {
        PruningRope::Relative => PruningStrategy::Relative,
        PruningRope::ChunkIndexed => PruningStrategy::ChunkIndexed,
        PruningRope::Plain => PruningStrategy::Plain,
    }
}

/// The window end `w` of a query block whose first query is at `pos` (DESIGN.md §4.2).
pub fn window_end(cfg: &HipConfig, pos: usize) -> usize {
    (pos + 1).saturating_sub(cfg.n_window)
}

/// The pruning entry of a query block of `layer`: `n_q` queries from activation row `row` and
/// position `pos`, candidates before `window_end`.
pub fn hip_entry(
    cfg: &HipConfig,
    layer: usize,
    row: usize,
    pos: usize,
    n_q: usize,
    page_start: usize,
    window_end: usize,
) -> HipSeq {
    HipSeq {
        row: row as i32,
        pos: pos as i32,
        page_start: page_start as i32,
        window_end: window_end as i32,
        n_q: n_q as i32,
        strategy: strategy(cfg.pruning_rope_at(layer, pos + n_q.max(1) - 1)) as i32,
        pad: [0; 2],
    }
}

/// The key list of a query block for the attention kernels: the sink, the selected tokens of
/// mask `mask` of the step, and the window, at the RoPE positions of `cfg.bsa_rope`.
pub fn masked_run(cfg: &HipConfig, entry: &HipSeq, mask: usize) -> SeqDesc {
    SeqDesc {
        row_start: entry.row,
        n_tokens: entry.n_q,
        pos_start: entry.pos,
        page_start: entry.page_start,
        n_sink: (cfg.n_sink as i32).min(entry.window_end),
        window_start: entry.window_end,
        mask: mask as i32,
        rope_streaming: (cfg.bsa_rope == BsaRope::Streaming) as i32,
    }
}

/// Chunks stage `s` keeps at most, over every layer of a model of `n_layers` layers (the first
/// layers may have a budget of their own): the stride of its outputs.
pub fn stage_stride(cfg: &HipConfig, s: usize, n_layers: usize) -> usize {
    (0..n_layers.max(1)).map(|l| cfg.stage_budget(s, l) / cfg.chunk_sizes[s]).max().unwrap_or(0).max(1)
}

/// What [`HipStages::refresh`] needs for `n` blocks of up to `max_n_q` queries of `layer`,
/// `heads` = (H, d), window ends at most `max_window_end`: each stage's most candidates per
/// block, and the scratch's candidates and scoring-row values.
fn scratch_sizes(
    cfg: &HipConfig,
    layer: usize,
    n: usize,
    max_n_q: usize,
    (n_heads, head_dim): (usize, usize),
    max_window_end: usize,
) -> (Vec<usize>, usize, usize) {
    let max_cand: Vec<usize> = cfg
        .chunk_sizes
        .iter()
        .enumerate()
        .map(|(s, &l_c)| {
            let cand = match s {
                0 => max_window_end.saturating_sub(cfg.n_sink).div_ceil(l_c),
                _ => (cfg.stage_budget(s - 1, layer) / cfg.chunk_sizes[s - 1]) * (cfg.chunk_sizes[s - 1] / l_c),
            };
            cand.max(1)
        })
        .collect();
    // The stage that averages the fewest queries has the most scoring rows.
    let min_qg = cfg.query_group.iter().copied().min().unwrap_or(1).max(1);
    let rows = scoring_row_values(n, max_n_q, min_qg, n_heads, head_dim);
    let candidates = n * max_cand.iter().copied().max().unwrap_or(1);
    (max_cand, candidates, rows)
}

/// The pruning entries of the query blocks of `seq`'s step (`SeqSlice::hip_query_blocks` with
/// the config's `b_q`), each with the window end of its first query: a prefill chunk's blocks,
/// whose masks are estimated afresh. The token that gets a decode step's mask is not among
/// them: its offset in the step, if there is one, comes second.
pub fn block_entries(cfg: &HipConfig, layer: usize, seq: &SeqSlice) -> (Vec<HipSeq>, Option<usize>) {
    let (blocks, single) = seq.hip_query_blocks(cfg.b_q);
    let entries = blocks
        .iter()
        .map(|r| {
            let pos = seq.pos_start + r.start;
            hip_entry(cfg, layer, seq.row_start + r.start, pos, r.len(), seq.page_start, window_end(cfg, pos))
        })
        .collect();
    (entries, single)
}

/// The pruning stages' outputs of a batch of query blocks of one layer, on the device, with
/// their scratch. Outputs grow to the batch and are kept between calls, so a decode cache can
/// recompute only its later stages.
pub struct HipStages {
    stages: Vec<StageOutput>,
    scratch: HipScratch,
}

impl HipStages {
    pub fn new(gpu: &Gpu) -> Result<Self, CudaError> {
        Ok(Self { stages: Vec::new(), scratch: HipScratch::new(gpu, 1, 1)? })
    }

    /// Recomputes stages `from..n_stages` of `layer` for the `inp.n_seqs` blocks of `inp`, whose
    /// window ends are at most `max_window_end`; outputs have the strides of [`stage_stride`]
    /// for `n_layers` layers. Stages before `from` must hold this batch's earlier output.
    #[allow(clippy::too_many_arguments)]
    pub fn refresh(
        &mut self,
        gpu: &Gpu,
        inp: &HipInputs<'_>,
        cfg: &HipConfig,
        layer: usize,
        n_layers: usize,
        max_window_end: usize,
        from: usize,
    ) -> Result<(), CudaError> {
        if cfg.head_reduction != HeadReduction::Shared {
            return Err(CudaError::Unsupported {
                kernel: "hip_stage_scores",
                what: "per-KV-head masks (head_reduction per_kv_head); the GPU kernels share one mask over heads"
                    .into(),
            });
        }
        let n = inp.n_seqs;
        let n_stages = cfg.n_stages();
        let fits = |s: usize, out: &StageOutput| {
            out.stride == stage_stride(cfg, s, n_layers)
                && out.starts.len() >= n * out.stride
                && out.counts.len() >= 2 * n
        };
        if self.stages.len() != n_stages || self.stages.iter().enumerate().any(|(s, o)| !fits(s, o)) {
            if from > 0 {
                return Err(CudaError::Unsupported {
                    kernel: "hip_stage_scores",
                    what: format!("a refresh from stage {from} of outputs that were never computed"),
                });
            }
            self.stages = (0..n_stages)
                .map(|s| StageOutput::new(gpu, n.next_power_of_two(), stage_stride(cfg, s, n_layers)))
                .collect::<Result<_, _>>()?;
        }
        let heads = (inp.shape.n_heads, inp.shape.head_dim);
        let (max_cand, candidates, rows) = scratch_sizes(cfg, layer, n, inp.max_n_q, heads, max_window_end);
        self.scratch.ensure(gpu, candidates, rows)?;
        for s in from..n_stages {
            let l_c = cfg.chunk_sizes[s];
            let (before, rest) = self.stages.split_at_mut(s);
            let stage = HipStage {
                chunk_size: l_c,
                n_keep: cfg.stage_budget(s, layer) / l_c,
                query_group: cfg.query_group[s],
                max_cand: max_cand[s],
                prev: if s == 0 { None } else { Some((&before[s - 1], cfg.chunk_sizes[s - 1])) },
            };
            gpu.hip_stage(inp, &stage, &mut self.scratch, &mut rest[0])?;
        }
        Ok(())
    }

    /// Device bytes that [`refresh`](Self::refresh) grows a fresh `HipStages` to for `n` blocks
    /// of up to `max_n_q` queries of `layer` (outputs strided for `n_layers` layers), `heads` =
    /// (H, d), window ends at most `max_window_end`: for callers that check memory first.
    pub fn device_bytes(
        cfg: &HipConfig,
        layer: usize,
        n_layers: usize,
        n: usize,
        max_n_q: usize,
        heads: (usize, usize),
        max_window_end: usize,
    ) -> usize {
        let (_, candidates, rows) = scratch_sizes(cfg, layer, n, max_n_q, heads, max_window_end);
        let outputs: usize = (0..cfg.n_stages())
            .map(|s| StageOutput::bytes(n.next_power_of_two(), stage_stride(cfg, s, n_layers)))
            .sum();
        outputs + HipScratch::bytes(candidates, rows)
    }

    /// The output of stage `s`: kept starts `[block][stride]` and counts `[block][2]`.
    pub fn stage(&self, s: usize) -> Option<&StageOutput> {
        self.stages.get(s)
    }

    /// The last stage's output: the blocks' masks.
    pub fn masks(&self) -> Result<&StageOutput, CudaError> {
        self.stages
            .last()
            .ok_or(CudaError::Unsupported { kernel: "hip_stage_scores", what: "no stage computed".into() })
    }
}

/// One request's decode mask cache of one layer on the device (DESIGN.md §4.4; the CPU's is
/// `DecodeMaskCache`): the stage outputs of its single query, the step counter that the
/// refresh schedule reads, and the window end `w` that the last stage-0 refresh saw.
pub struct GpuDecodeCache {
    stages: HipStages,
    entry: CudaSlice<HipSeq>,
    step: u64,
    window_end: usize,
}

impl GpuDecodeCache {
    pub fn new(gpu: &Gpu) -> Result<Self, CudaError> {
        Ok(Self { stages: HipStages::new(gpu)?, entry: gpu.upload(&[HipSeq::default()])?, step: 0, window_end: 0 })
    }

    /// Forgets the cached stages: the next step recomputes all of them.
    pub fn reset(&mut self) {
        self.step = 0;
    }

    /// One decode step of the query at activation row `row` and position `pos`: recomputes the
    /// stages the schedule names (all of them at the first step, or when the sequence moved
    /// back before the cached candidates) and returns the query's pruning entry, whose window
    /// end is the one its mask was estimated with. `inp.seqs` is ignored (the cache has its
    /// own).
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        gpu: &Gpu,
        inp: &HipInputs<'_>,
        cfg: &HipConfig,
        layer: usize,
        n_layers: usize,
        row: usize,
        pos: usize,
        page_start: usize,
    ) -> Result<HipSeq, CudaError> {
        if self.window_end > pos {
            self.step = 0;
        }
        let from = if self.step == 0 { Some(0) } else { first_stage_to_refresh(&cfg.refresh, self.step) };
        if from == Some(0) {
            self.window_end = window_end(cfg, pos);
        }
        let entry = hip_entry(cfg, layer, row, pos, 1, page_start, self.window_end);
        if let Some(from) = from {
            gpu.upload_into(&[entry], &mut self.entry)?;
            let inp = HipInputs { seqs: &self.entry, n_seqs: 1, max_n_q: 1, ..*inp };
            self.stages.refresh(gpu, &inp, cfg, layer, n_layers, self.window_end, from)?;
        }
        self.step += 1;
        Ok(entry)
    }

    /// The mask of the last step.
    pub fn mask(&self) -> Result<&StageOutput, CudaError> {
        self.stages.masks()
    }
}

/// Tokens per page of [`oracle_check`]'s store.
const CHECK_PAGE: usize = 64;

/// Sequence `b`'s first `n` positions as f32 keys and values, from a one-layer store of
/// `CHECK_PAGE`-token pages `[K|V][slot][Hkv][d]`, `pages_per_seq` pages a sequence.
fn host_kv(store: &[bf16], b: usize, pages_per_seq: usize, n: usize, hkv: usize, d: usize) -> Result<VecKv, String> {
    let width = hkv * d;
    let mut kv = VecKv::new(hkv, d);
    for pos in 0..n {
        let page = b * pages_per_seq + pos / CHECK_PAGE;
        let k0 = page * 2 * CHECK_PAGE * width + (pos % CHECK_PAGE) * width;
        let v0 = k0 + CHECK_PAGE * width;
        let k: Vec<f32> = store[k0..k0 + width].iter().map(|x| x.to_f32()).collect();
        let v: Vec<f32> = store[v0..v0 + width].iter().map(|x| x.to_f32()).collect();
        kv.push(&k, &v).map_err(|e| e.to_string())?;
    }
    Ok(kv)
}

/// Checks HiP on the GPU against the CPU reference on fresh random inputs from `seed`: `heads`
/// = (H, Hkv, d), the knobs of `layer` of the default preset, one query block of `n_q` queries
/// per sequence whose last query is at each of `positions` (each at least `n_window` + `n_q`).
/// Every stage's kept chunks must equal `run_stage`'s (chained on the CPU's own outputs), and
/// block-sparse attention with the GPU masks must match `block_sparse_attention` within
/// [`ORACLE_REL_TOL`] under streaming and plain BSA RoPE (the output poisoned with NaN first).
/// Returns one line per check, or the first failure.
pub fn oracle_check(
    gpu: &Gpu,
    seed: u64,
    heads: (usize, usize, usize),
    layer: usize,
    positions: &[usize],
    n_q: usize,
) -> Result<Vec<String>, String> {
    let cuda = |e: CudaError| e.to_string();
    let cpu_err = |e: HipError| e.to_string();
    let mut rng = SplitMix64::new(seed);
    let mut lines = Vec::new();
    let (h, hkv, d) = heads;
    let what = format!("HiP {h}q/{hkv}kv/d{d} layer {layer}, blocks of {n_q}");
    let rope_cfg = RopeConfig { theta: 100_000.0, dim: d, style: RopeStyle::Adjacent, scaling: RopeScaling::None };
    let mut table = RopeTable::new(rope_cfg);
    let cfg = HipConfig::default();
    let max_pos = positions.iter().copied().max().ok_or("no positions")?;
    table.ensure(max_pos.max(cfg.n_window + 1) + 1);
    let (cos, sin) = table.rows(0..table.len());

    let pages_per_seq = (max_pos + 1).div_ceil(CHECK_PAGE);
    let geometry = KvGeometry {
        n_layers: 1,
        n_kv_heads: hkv,
        head_dim: d,
        page_size: CHECK_PAGE,
        capacity_pages: pages_per_seq * positions.len(),
    };
    let store: Vec<bf16> = (0..geometry.total_elems()).map(|_| rng.nonzero_bf16()).collect();
    let n_rows = positions.len() * n_q;
    let q: Vec<bf16> = (0..n_rows * h * d).map(|_| rng.nonzero_bf16()).collect();
    let page_ids: Vec<u32> = (0..geometry.capacity_pages as u32).collect();
    let first = |p: usize| p + 1 - n_q;
    let seqs: Vec<HipSeq> = positions
        .iter()
        .enumerate()
        .map(|(b, &p)| hip_entry(&cfg, layer, b * n_q, first(p), n_q, b * pages_per_seq, window_end(&cfg, first(p))))
        .collect();
    let store_dev = gpu.upload(&store).map_err(cuda)?;
    let q_dev = gpu.upload(&q).map_err(cuda)?;
    let pages_dev = gpu.upload(&page_ids).map_err(cuda)?;
    let seqs_dev = gpu.upload(&seqs).map_err(cuda)?;
    let cos_dev = gpu.upload(cos).map_err(cuda)?;
    let sin_dev = gpu.upload(sin).map_err(cuda)?;
    let shape = AttnShape {
        n_heads: h,
        n_kv_heads: hkv,
        head_dim: d,
        scale: 1.0 / (d as f32).sqrt(),
        rope_half: table.half(),
        rope_adjacent: true,
    };
    // The store holds one layer (index 0); the HiP knobs are those of `layer`.
    let inp = HipInputs {
        store: &store_dev,
        geometry,
        layer: 0,
        q: &q_dev,
        page_ids: &pages_dev,
        seqs: &seqs_dev,
        n_seqs: seqs.len(),
        cos: &cos_dev,
        sin: &sin_dev,
        shape,
        n_sink: cfg.n_sink,
        n_window: cfg.n_window,
        max_n_q: n_q,
    };
    let max_w = seqs.iter().map(|s| s.window_end as usize).max().unwrap_or(0);
    let mut stages = HipStages::new(gpu).map_err(cuda)?;
    stages.refresh(gpu, &inp, &cfg, layer, layer + 1, max_w, 0).map_err(cuda)?;

    let kvs: Vec<VecKv> = positions
        .iter()
        .enumerate()
        .map(|(b, &pos)| host_kv(&store, b, pages_per_seq, pos + 1, hkv, d))
        .collect::<Result<_, _>>()?;
    let width = h * d;
    let queries: Vec<Vec<f32>> = (0..positions.len())
        .map(|b| q[b * n_q * width..(b + 1) * n_q * width].iter().map(|x| x.to_f32()).collect())
        .collect();
    let block = |b: usize| QueryBlock {
        layer,
        shape: HipShape { n_heads: h, n_kv_heads: hkv, head_dim: d },
        q: &queries[b],
        pos_start: first(positions[b]),
        kv: &kvs[b],
        rope: &table,
    };
    for (b, &pos) in positions.iter().enumerate() {
        let mut prev = None;
        for s in 0..cfg.n_stages() {
            let cpu = run_stage(&cfg, &block(b), s, prev.as_ref()).map_err(cpu_err)?;
            let out = stages.stage(s).ok_or("a stage missing")?;
            let counts = gpu.download(&out.counts, 2 * positions.len()).map_err(cuda)?;
            let starts = gpu.download(&out.starts, positions.len() * out.stride).map_err(cuda)?;
            let n = (counts[2 * b].max(0) as usize).min(out.stride);
            let got: Vec<usize> = starts[b * out.stride..b * out.stride + n].iter().map(|&x| x as usize).collect();
            let want = cpu.starts(0);
            let tokens: usize = want.iter().map(|&st| cpu.range(st).len()).sum();
            if got.len() != want.len() {
                return Err(format!(
                    "{what}: seq {b} stage {s}: {} chunks kept on the GPU, {} on the CPU",
                    got.len(),
                    want.len()
                ));
            }
            if let Some(i) = got.iter().zip(want).position(|(x, y)| x != y) {
                return Err(format!(
                    "{what}: seq {b} stage {s}: kept chunk {i} starts at {} on the GPU, {} on the CPU",
                    got[i], want[i]
                ));
            }
            if counts[2 * b + 1] as usize != tokens {
                return Err(format!(
                    "{what}: seq {b} stage {s}: {} tokens on the GPU, {tokens} on the CPU",
                    counts[2 * b + 1]
                ));
            }
            lines.push(format!(
                "{what}: seq {b} (p = {pos}) stage {s}: the {n} kept chunks ({tokens} tokens) equal the CPU's"
            ));
            prev = Some(cpu);
        }
    }

    let masks = stages.masks().map_err(cuda)?;
    for bsa_rope in [BsaRope::Streaming, BsaRope::Plain] {
        let cfg = HipConfig { bsa_rope, ..cfg.clone() };
        let runs: Vec<SeqDesc> = seqs.iter().enumerate().map(|(i, e)| masked_run(&cfg, e, i)).collect();
        let plan = DevicePlan::new(gpu, runs, n_rows, h, hkv, true, cfg.layer_params(layer).k).map_err(cuda)?;
        let (acc, ml) = plan.scratch_len(h, d);
        let mut scratch =
            AttnScratch { acc: gpu.alloc_zeros(acc).map_err(cuda)?, ml: gpu.alloc_zeros(ml).map_err(cuda)? };
        let mut out = gpu.upload(&vec![bf16::NAN; q.len()]).map_err(cuda)?;
        let step_masks = StepMasks { masks, n_masks: seqs.len(), block_k: cfg.block_k() };
        let step = plan.step(&pages_dev, Some(step_masks));
        gpu.attention(&store_dev, geometry, 0, &q_dev, &step, shape, &cos_dev, &sin_dev, &mut scratch, &mut out)
            .map_err(cuda)?;
        let got: Vec<f32> = gpu.download(&out, q.len()).map_err(cuda)?.iter().map(|x| x.to_f32()).collect();
        let mut want = vec![0f32; q.len()];
        for b in 0..positions.len() {
            let mask = estimate_mask(&cfg, &block(b)).map_err(cpu_err)?;
            block_sparse_attention(&cfg, &block(b), &mask, &mut want[b * n_q * width..(b + 1) * n_q * width])
                .map_err(cpu_err)?;
        }
        let err = rel_err(&got, &want);
        if err.is_nan() || err > ORACLE_REL_TOL {
            return Err(format!(
                "{what}: block-sparse attention ({bsa_rope:?} RoPE) differs from the CPU's by {err:.3e}"
            ));
        }
        lines.push(format!("{what}: block-sparse attention ({bsa_rope:?} RoPE): relative error {err:.2e}"));
    }
    Ok(lines)
}
