//! HiP decode on the GPU, driven by a [`HipConfig`] (DESIGN.md §4.2–4.5): one layer's decode
//! mask cache on the device and the launches that refresh and use it.
//!
//! [`HipDecodeLayer`] holds, for a batch of decode sequences, every pruning stage's kept
//! chunks (the cache of §4.4) in device memory. [`HipDecodeLayer::refresh`] recomputes stages
//! `from..n_stages` (each reading the previous stage's device output: no host round trip), and
//! [`HipDecodeLayer::attend`] runs block-sparse decode over sink + the last stage's blocks +
//! the window. The CPU reference is `infinihip_core::hip` (`run_stage`, `estimate_mask`,
//! `block_sparse_attention`); crates/engine/tests/gpu_hip.rs checks equality of masks and
//! bf16 agreement of outputs.
//!
//! [`oracle_check`] compares all of it with the CPU reference on fresh random inputs; the GPU
//! test and `infinihip bench attention` (before it times anything) both run it.
//!
//! Per-sequence inputs ([`HipSeq`]): the query row and position, the page start, and the window
//! end `w` that stage 0 saw (`max(0, p − n_window + 1)` at the last stage-0 refresh; it stays
//! until the next one, so the window grows between refreshes as in `DecodeMaskCache`).

use infinihip_core::hip::{
    block_sparse_attention, estimate_mask, run_stage, AttnShape as HipShape, BsaRope, HipConfig, HipError, PruningRope,
    QueryBlock, VecKv,
};
use infinihip_core::rope::{RopeConfig, RopeScaling, RopeStyle, RopeTable};
use infinihip_cuda::attention::DecodeSeq;
use infinihip_cuda::hip::{
    plan_bsa_seq, BsaDecode, HipInputs, HipScratch, HipSeq, HipStage, PruningStrategy, StageOutput,
};
use infinihip_cuda::ops::{AttnScratch, AttnShape, KvGeometry};
use infinihip_cuda::{bf16, CudaError, CudaSlice, Gpu};

fn strategy(rope: PruningRope) -> PruningStrategy {
    match rope {
        PruningRope::Relative => PruningStrategy::Relative,
        PruningRope::ChunkIndexed => PruningStrategy::ChunkIndexed,
        PruningRope::Plain => PruningStrategy::Plain,
    }
}

/// The window end `w` of a query at `pos` (DESIGN.md §4.2).
pub fn window_end(cfg: &HipConfig, pos: usize) -> usize {
    (pos + 1).saturating_sub(cfg.n_window)
}

/// One layer's decode mask cache for a batch of sequences, on the device.
pub struct HipDecodeLayer {
    layer: usize,
    stages: Vec<StageOutput>,
    scratch: HipScratch,
    max_cand: Vec<usize>,
}

impl HipDecodeLayer {
    /// Buffers for `n_seqs` sequences whose window ends are at most `max_window_end`.
    pub fn new(
        gpu: &Gpu,
        cfg: &HipConfig,
        layer: usize,
        n_seqs: usize,
        max_window_end: usize,
    ) -> Result<Self, CudaError> {
        let mut stages = Vec::new();
        let mut max_cand = Vec::new();
        for (s, &l_c) in cfg.chunk_sizes.iter().enumerate() {
            let n_keep = cfg.stage_budget(s, layer) / l_c;
            let cand = match s {
                0 => max_window_end.saturating_sub(cfg.n_sink).div_ceil(l_c),
                _ => (cfg.stage_budget(s - 1, layer) / cfg.chunk_sizes[s - 1]) * (cfg.chunk_sizes[s - 1] / l_c),
            };
            max_cand.push(cand.max(1));
            stages.push(StageOutput::new(gpu, n_seqs, n_keep.max(1))?);
        }
        let scratch_elems = n_seqs * max_cand.iter().copied().max().unwrap_or(1);
        Ok(Self { layer, stages, scratch: HipScratch::new(gpu, scratch_elems)?, max_cand })
    }

    /// Recomputes stages `from..n_stages` for every sequence of `inp`.
    pub fn refresh(
        &mut self,
        gpu: &Gpu,
        inp: &HipInputs<'_>,
        cfg: &HipConfig,
        pos_last: usize,
        from: usize,
    ) -> Result<(), CudaError> {
        let rope = strategy(cfg.pruning_rope_at(self.layer, pos_last));
        for s in from..cfg.n_stages() {
            let l_c = cfg.chunk_sizes[s];
            let (before, rest) = self.stages.split_at_mut(s);
            let stage = HipStage {
                chunk_size: l_c,
                n_keep: cfg.stage_budget(s, self.layer) / l_c,
                strategy: rope,
                max_cand: self.max_cand[s],
                prev: if s == 0 { None } else { Some((&before[s - 1], cfg.chunk_sizes[s - 1])) },
            };
            gpu.hip_stage(inp, &stage, &mut self.scratch, &mut rest[0])?;
        }
        Ok(())
    }

    /// The output of stage `s`: kept starts `[seq][stride]` and counts `[seq][2]`.
    pub fn stage(&self, s: usize) -> &StageOutput {
        &self.stages[s]
    }

    /// Block-sparse decode of every sequence over its sink, the cached mask and its window.
    pub fn attend(
        &self,
        gpu: &Gpu,
        inp: &HipInputs<'_>,
        plan: &BsaPlan,
        scratch: &mut AttnScratch,
        out: &mut CudaSlice<bf16>,
    ) -> Result<(), CudaError> {
        let mask =
            self.stages.last().ok_or(CudaError::Unsupported { kernel: "decode_partial", what: "no stages".into() })?;
        let bsa = BsaDecode {
            seqs: &plan.seqs,
            n_seqs: plan.n_seqs,
            mask,
            block_k: plan.block_k,
            n_splits: &plan.n_splits,
            max_splits: plan.max_splits,
            n_rows: plan.n_rows,
        };
        gpu.hip_bsa_decode(inp, &bsa, scratch, out)
    }
}

/// The block-sparse decode plan of one step: per sequence its key list bounds and splits.
pub struct BsaPlan {
    pub seqs: CudaSlice<DecodeSeq>,
    pub n_seqs: usize,
    pub n_splits: CudaSlice<i32>,
    pub max_splits: usize,
    pub n_rows: usize,
    pub block_k: usize,
}

impl BsaPlan {
    /// Plans `seqs` (mask index = position in `seqs`) of `layer` for `n_heads` query heads over
    /// `n_rows` activation rows, with the RoPE strategy of `cfg.bsa_rope`.
    pub fn new(
        gpu: &Gpu,
        cfg: &HipConfig,
        layer: usize,
        seqs: &[HipSeq],
        n_heads: usize,
        n_rows: usize,
    ) -> Result<Self, CudaError> {
        let k = cfg.layer_params(layer).k;
        let streaming = cfg.bsa_rope == BsaRope::Streaming;
        let n_sms = gpu.info().multiprocessors;
        let mut descs = Vec::with_capacity(seqs.len());
        let mut n_splits = vec![0i32; n_rows * n_heads];
        let mut max_splits = 1;
        for (i, s) in seqs.iter().enumerate() {
            let (d, splits) = plan_bsa_seq(*s, i, cfg.n_sink, k, streaming, seqs.len(), n_sms);
            let row = s.row as usize;
            if row >= n_rows {
                return Err(CudaError::Unsupported {
                    kernel: "decode_partial",
                    what: format!("row {row} of {n_rows}"),
                });
            }
            n_splits[row * n_heads..(row + 1) * n_heads].fill(splits as i32);
            max_splits = max_splits.max(splits);
            descs.push(d);
        }
        Ok(Self {
            seqs: gpu.upload(&descs)?,
            n_seqs: seqs.len(),
            n_splits: gpu.upload(&n_splits)?,
            max_splits,
            n_rows,
            block_k: cfg.block_k(),
        })
    }
}

/// SplitMix64 values in [-1, -1/64] ∪ [1/64, 1] as bf16 (never zero), for [`oracle_check`].
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn value(&mut self) -> bf16 {
        let u = (self.next() >> 40) as f32 / (1u64 << 24) as f32;
        let mag = 1.0 / 64.0 + u * (1.0 - 1.0 / 64.0);
        bf16::from_f32(if self.next() & 1 == 0 { mag } else { -mag })
    }
}

/// The bar of the device tool's METHOD.md for bf16 storage with f32 arithmetic.
pub const ORACLE_REL_TOL: f64 = 1e-2;

/// ‖gpu − cpu‖ / ‖cpu‖, or infinity when `gpu` holds a non-finite value (an unwritten output).
fn rel_err(gpu: &[f32], cpu: &[f32]) -> f64 {
    if gpu.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let (mut num, mut den) = (0f64, 0f64);
    for (&g, &c) in gpu.iter().zip(cpu) {
        num += (f64::from(g) - f64::from(c)).powi(2);
        den += f64::from(c).powi(2);
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
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

/// Checks HiP decode on the GPU against the CPU reference on fresh random inputs from `seed`:
/// `heads` = (H, Hkv, d), the knobs of `layer` of the default preset, one decode query per
/// sequence at `positions` (at least `n_window` each). Every stage's kept chunks must equal
/// `run_stage`'s (chained on the CPU's own outputs), and block-sparse decode with the GPU mask
/// must match `block_sparse_attention` within [`ORACLE_REL_TOL`] under streaming and plain BSA
/// RoPE (the output poisoned with NaN first). Returns one line per check, or the first failure.
pub fn oracle_check(
    gpu: &Gpu,
    seed: u64,
    heads: (usize, usize, usize),
    layer: usize,
    positions: &[usize],
) -> Result<Vec<String>, String> {
    let cuda = |e: CudaError| e.to_string();
    let cpu_err = |e: HipError| e.to_string();
    let mut rng = Rng(seed);
    let mut lines = Vec::new();
    let (h, hkv, d) = heads;
    let what = format!("HiP decode {h}q/{hkv}kv/d{d} layer {layer}");
    let rope_cfg = RopeConfig { theta: 100_000.0, dim: d, style: RopeStyle::Adjacent, scaling: RopeScaling::None };
    let mut table = RopeTable::new(rope_cfg);
    let max_pos = positions.iter().copied().max().ok_or("no positions")?;
    table.ensure(max_pos + 1);
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for p in 0..=max_pos {
        let (c, s) = table.row(p);
        cos.extend_from_slice(c);
        sin.extend_from_slice(s);
    }

    let pages_per_seq = (max_pos + 1).div_ceil(CHECK_PAGE);
    let geometry = KvGeometry {
        n_layers: 1,
        n_kv_heads: hkv,
        head_dim: d,
        page_size: CHECK_PAGE,
        capacity_pages: pages_per_seq * positions.len(),
    };
    let store: Vec<bf16> = (0..geometry.total_elems()).map(|_| rng.value()).collect();
    let q: Vec<bf16> = (0..positions.len() * h * d).map(|_| rng.value()).collect();
    let page_ids: Vec<u32> = (0..geometry.capacity_pages as u32).collect();
    let cfg = HipConfig::default();
    let seqs: Vec<HipSeq> = positions
        .iter()
        .enumerate()
        .map(|(b, &p)| HipSeq {
            row: b as i32,
            pos: p as i32,
            page_start: (b * pages_per_seq) as i32,
            window_end: window_end(&cfg, p) as i32,
        })
        .collect();
    let store_dev = gpu.upload(&store).map_err(cuda)?;
    let q_dev = gpu.upload(&q).map_err(cuda)?;
    let pages_dev = gpu.upload(&page_ids).map_err(cuda)?;
    let seqs_dev = gpu.upload(&seqs).map_err(cuda)?;
    let cos_dev = gpu.upload(&cos).map_err(cuda)?;
    let sin_dev = gpu.upload(&sin).map_err(cuda)?;
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
    };
    let max_w = seqs.iter().map(|s| s.window_end as usize).max().unwrap_or(0);
    let mut cache = HipDecodeLayer::new(gpu, &cfg, layer, seqs.len(), max_w).map_err(cuda)?;
    cache.refresh(gpu, &inp, &cfg, max_pos, 0).map_err(cuda)?;

    let kvs: Vec<VecKv> = positions
        .iter()
        .enumerate()
        .map(|(b, &pos)| host_kv(&store, b, pages_per_seq, pos + 1, hkv, d))
        .collect::<Result<_, _>>()?;
    let queries: Vec<Vec<f32>> =
        (0..positions.len()).map(|b| q[b * h * d..(b + 1) * h * d].iter().map(|x| x.to_f32()).collect()).collect();
    let block = |b: usize| QueryBlock {
        layer,
        shape: HipShape { n_heads: h, n_kv_heads: hkv, head_dim: d },
        q: &queries[b],
        pos_start: positions[b],
        kv: &kvs[b],
        rope: &table,
    };
    for (b, &pos) in positions.iter().enumerate() {
        let mut prev = None;
        for s in 0..cfg.n_stages() {
            let cpu = run_stage(&cfg, &block(b), s, prev.as_ref()).map_err(cpu_err)?;
            let out = cache.stage(s);
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
                "{what}: seq {b} (p = {pos}) stage {s}: the {} kept chunks ({tokens} tokens) equal the CPU's",
                n
            ));
            prev = Some(cpu);
        }
    }

    for bsa_rope in [BsaRope::Streaming, BsaRope::Plain] {
        let cfg = HipConfig { bsa_rope, ..cfg.clone() };
        let plan = BsaPlan::new(gpu, &cfg, layer, &seqs, h, seqs.len()).map_err(cuda)?;
        let slots = seqs.len() * h * plan.max_splits;
        let mut scratch = AttnScratch {
            acc: gpu.alloc_zeros(slots * d).map_err(cuda)?,
            ml: gpu.alloc_zeros(slots * 2).map_err(cuda)?,
        };
        let mut out = gpu.upload(&vec![bf16::NAN; q.len()]).map_err(cuda)?;
        cache.attend(gpu, &inp, &plan, &mut scratch, &mut out).map_err(cuda)?;
        let got: Vec<f32> = gpu.download(&out, q.len()).map_err(cuda)?.iter().map(|x| x.to_f32()).collect();
        let mut want = vec![0f32; q.len()];
        for b in 0..positions.len() {
            let mask = estimate_mask(&cfg, &block(b)).map_err(cpu_err)?;
            block_sparse_attention(&cfg, &block(b), &mask, &mut want[b * h * d..(b + 1) * h * d]).map_err(cpu_err)?;
        }
        let err = rel_err(&got, &want);
        if err.is_nan() || err > ORACLE_REL_TOL {
            return Err(format!("{what}: block-sparse decode ({bsa_rope:?} RoPE) differs from the CPU's by {err:.3e}"));
        }
        lines.push(format!("{what}: block-sparse decode ({bsa_rope:?} RoPE): relative error {err:.2e}"));
    }
    Ok(lines)
}
