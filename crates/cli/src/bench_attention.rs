//! `infinihip bench attention`: per-layer attention latency on the GPU against context length
//! (DESIGN.md §8), for one decode step and one prefill chunk, with the bytes and FLOPs floor
//! beside every figure.
//!
//! Each case is one layer of one step: `batch` sequences of `context` keys each (the KV of one
//! layer, bf16, in the paged layout of `infinihip_cuda::attention`), and `n_q` new queries per
//! sequence at the end of the context (1 for decode, `--prefill-queries` for a prefill chunk).
//! The KV and queries are filled on the device with uniform values in ±1 (gigabytes: a host
//! upload would take longer than the benchmark). The step's plan is uploaded once, outside the
//! timed region, as the engine does once per step for all layers.
//!
//! HiP (`--hip-presets`, the knobs of `--hip-layer`) runs on the same KV and queries, built as
//! the CUDA backend builds a step of one layer. Decode: each step kind of the refresh schedule
//! is timed on its own (refresh from stage 0, 1 or 2, then block-sparse attention; or attention
//! with the cached mask), and the headline row averages them over one refresh cycle of the
//! preset (DESIGN.md §4.4). Prefill chunk: the chunk's query blocks of `b_q` each get a mask
//! estimated afresh, then block-sparse attention; the headline row times both, the `pruning`
//! and `attention` rows each part alone.
//!
//! Before anything is timed, every kernel is checked against the CPU oracle on fresh random
//! inputs of a small size, in the same run: dense attention against
//! `infinihip_core::hip::dense_causal_attention` (outputs poisoned with NaN first,
//! ‖gpu − cpu‖ / ‖cpu‖ ≤ 1e-2 for bf16 storage), and HiP decode and prefill blocks with
//! `infinihip_engine::hip_gpu::oracle_check` (masks equal to the CPU's at every stage).
//!
//! Timing: CUDA events around the kernels of one layer, L2 flushed before each repetition, the
//! median of `--reps` after `--warmup` untimed runs. Rows of external baselines (PyTorch SDPA,
//! `bench/sdpa_baseline.py`) can be merged with `--merge`, so that one table, JSON and plot hold
//! every method measured in one device session.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use half::bf16;
use infinihip_core::hip::{dense_causal_attention, AttnShape as HipShape, QueryBlock, VecKv};
use infinihip_core::hip::{first_stage_to_refresh, HipConfig};
use infinihip_core::rope::{RopeConfig, RopeScaling, RopeStyle, RopeTable};
use infinihip_cuda::attention::{DevicePlan, SeqDesc};
use infinihip_cuda::hip::{HipInputs, HipSeq};
use infinihip_cuda::ops::{AttnScratch, AttnShape, AttnStep, KvGeometry, StepMasks};
use infinihip_cuda::oracle::{rel_err, SplitMix64, ORACLE_REL_TOL};
use infinihip_cuda::timing::{median, Timer};
use infinihip_cuda::{CudaError, CudaSlice, Gpu};
use infinihip_engine::backend::SeqSlice;
use infinihip_engine::hip_gpu::{block_entries, hip_entry, masked_run, oracle_check, window_end, HipStages};
use serde::{Deserialize, Serialize};

/// HBM bandwidth and bf16 tensor-core rate of the H100 the floors are quoted against
/// (DESIGN.md §6: ~3 TB/s device copies, 840 TFLOP/s cuBLAS bf16).
const FLOOR_BYTES_PER_S: f64 = 3.0e12;
const FLOOR_FLOPS_PER_S: f64 = 840e12;
/// Tokens per KV page in the benchmark's store.
const PAGE_SIZE: usize = 64;
/// Memory kept free beside a case's buffers (partials, cuBLAS, the flush buffer).
const HEADROOM_BYTES: usize = 3 << 30;

/// Head shapes of the models the issue names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HeadShape {
    /// Llama-3.1-8B: 32 query heads, 8 KV heads, d = 128.
    Llama8b,
    /// SmolLM2-135M: 9 query heads, 3 KV heads, d = 64.
    Smollm2,
}

impl HeadShape {
    fn heads(self) -> (usize, usize, usize) {
        match self {
            HeadShape::Llama8b => (32, 8, 128),
            HeadShape::Smollm2 => (9, 3, 64),
        }
    }

    fn rope_theta(self) -> f32 {
        match self {
            HeadShape::Llama8b => 500_000.0,
            HeadShape::Smollm2 => 100_000.0,
        }
    }

    fn name(self) -> &'static str {
        match self {
            HeadShape::Llama8b => "llama-3.1-8b",
            HeadShape::Smollm2 => "smollm2",
        }
    }
}

/// The flags of `bench attention`.
#[derive(Debug, clap::Args, Clone)]
pub struct AttentionBenchArgs {
    /// Context lengths (keys per sequence), comma-separated; k = 1024, m = 1024². Cases that
    /// do not fit in GPU memory are skipped with a message.
    #[arg(long, value_name = "LIST", default_value = "32k,128k,256k,512k,1m,2m,3m",
          value_parser = crate::eval::options::parse_lengths)]
    pub contexts: crate::eval::options::Lengths,
    /// Batch sizes, comma-separated.
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "1,8")]
    pub batches: Vec<usize>,
    /// Head shapes, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "llama8b,smollm2")]
    pub shapes: Vec<HeadShape>,
    /// HiP presets timed beside dense, for decode and the prefill chunk (`--hip-presets=` for
    /// dense only).
    #[arg(long, value_delimiter = ',', default_value = "default,flash", value_name = "LIST")]
    pub hip_presets: Vec<String>,
    /// The layer whose HiP knobs are timed (layers 0–2 use chunk-indexed pruning and k = 4096,
    /// the others relative pruning and k = 2048).
    #[arg(long, default_value_t = 3)]
    pub hip_layer: usize,
    /// Queries per sequence of the prefill chunk (0 = no prefill rows).
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub prefill_queries: usize,
    /// Largest batch timed for the prefill chunk (its cost grows with batch × queries).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub prefill_max_batch: usize,
    /// Timed repetitions per case; the median is reported.
    #[arg(long, default_value_t = 20)]
    pub reps: usize,
    /// Untimed runs before the timed ones.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Timed repetitions of a prefill chunk (seconds each at long contexts), after one untimed.
    #[arg(long, default_value_t = 5)]
    pub prefill_reps: usize,
    /// Rows measured elsewhere in the same session (e.g. by bench/sdpa_baseline.py), in this
    /// command's JSON format, to merge into the table, JSON and plot.
    #[arg(long, value_name = "PATH")]
    pub merge: Vec<PathBuf>,
    /// Write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Write an SVG plot of latency against context length to this file.
    #[arg(long, value_name = "PATH")]
    pub plot: Option<PathBuf>,
    /// Measure nothing: print the table of this earlier report (and write --plot), with no GPU.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["merge", "json"])]
    pub from_json: Option<PathBuf>,
}

impl AttentionBenchArgs {
    /// Untimed and timed runs of a case of `n_q` queries per sequence: `--warmup` and `--reps`
    /// for decode, one and `--prefill-reps` for a prefill chunk.
    fn reps_for(&self, n_q: usize) -> (usize, usize) {
        if n_q == 1 {
            (self.warmup, self.reps)
        } else {
            (1, self.prefill_reps.max(1))
        }
    }
}

/// One measurement.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Row {
    /// `decode` or `prefill_chunk`.
    pub phase: String,
    pub context: usize,
    pub batch: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// `dense`, `hip-default`, `hip-flash`, `torch-sdpa-flash`, `torch-sdpa-cudnn`.
    pub method: String,
    pub latency_us: f64,
    /// Queries per sequence (1 for decode).
    #[serde(default)]
    pub queries: usize,
    /// What the figure covers when it is not a plain step (e.g. a HiP refresh step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// The physical floor of the case: max(bytes / 3 TB/s, FLOPs / 840 TFLOP/s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor_us: Option<f64>,
}

/// The JSON file.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub device: String,
    pub commit: String,
    pub command: String,
    pub rows: Vec<Row>,
}

impl Report {
    /// The same device, commit and command, with no rows.
    fn clone_meta(&self) -> Self {
        Self {
            device: self.device.clone(),
            commit: self.commit.clone(),
            command: self.command.clone(),
            rows: Vec::new(),
        }
    }
}

/// The case a row measures: phase, heads (H, Hkv, d), batch, keys and new queries per sequence.
#[derive(Debug, Clone, Copy)]
struct CaseId {
    phase: &'static str,
    heads: (usize, usize, usize),
    batch: usize,
    context: usize,
    n_q: usize,
}

impl CaseId {
    fn row(&self, method: &str, variant: Option<String>, latency_us: f64, floor_us: f64) -> Row {
        let (h, hkv, d) = self.heads;
        Row {
            phase: self.phase.to_string(),
            context: self.context,
            batch: self.batch,
            q_heads: h,
            kv_heads: hkv,
            head_dim: d,
            method: method.to_string(),
            latency_us,
            queries: self.n_q,
            variant,
            floor_us: Some(floor_us),
        }
    }
}

/// Bytes dense attention must read (K and V of every sequence once, bf16) and the FLOPs of its
/// two matrix products (2·d per query-key pair each), for `n_q` queries at the end of a causal
/// context of `context` keys.
fn dense_floor_us(batch: usize, context: usize, n_q: usize, heads: (usize, usize, usize)) -> f64 {
    let (h, hkv, d) = heads;
    let bytes = (batch * context * hkv * d * 2 * 2) as f64;
    // Query t of the chunk sees context − n_q + t + 1 keys.
    let pairs = batch as f64 * n_q as f64 * (context as f64 - (n_q as f64 - 1.0) / 2.0);
    let flops = 4.0 * pairs * (h * d) as f64;
    (bytes / FLOOR_BYTES_PER_S).max(flops / FLOOR_FLOPS_PER_S) * 1e6
}

pub fn attention(args: &AttentionBenchArgs) -> Result<()> {
    if let Some(path) = &args.from_json {
        let report = read_report(path)?;
        println!("{}", table(&report.rows));
        if let Some(plot_path) = &args.plot {
            write(plot_path, &plot(&report))?;
        }
        return Ok(());
    }
    ensure!(args.reps > 0, "--reps must be at least 1");
    ensure!(!args.batches.is_empty() && args.batches.iter().all(|&b| b > 0), "--batches must be positive");
    infinihip_cuda::check_libraries().context("bench attention needs a CUDA GPU")?;
    let gpu = Gpu::new(0).context("opening GPU 0")?;
    let info = gpu.info().clone();
    eprintln!("bench attention: {} ({} SMs, {:.0} GiB)", info.name, info.multiprocessors, gib(info.total_memory_bytes));

    let mut presets = Vec::new();
    for name in args.hip_presets.iter().filter(|n| !n.is_empty()) {
        presets.push((name.clone(), HipConfig::preset(name).context("--hip-presets")?));
    }
    for &shape in &args.shapes {
        check_dense(&gpu, shape, args.prefill_queries.clamp(1, 256))
            .with_context(|| format!("dense attention of {} shapes against the CPU oracle", shape.name()))?;
        // Decode steps are blocks of one query; a prefill chunk's are of the presets' b_q.
        let mut block_sizes: Vec<usize> = Vec::new();
        if !presets.is_empty() {
            block_sizes.push(1);
        }
        if args.prefill_queries > 0 {
            block_sizes.extend(presets.iter().map(|(_, cfg)| cfg.b_q));
        }
        block_sizes.sort_unstable();
        block_sizes.dedup();
        for n_q in block_sizes {
            let seed = clock_seed();
            let lines = oracle_check(&gpu, seed, shape.heads(), args.hip_layer, &[40_000, 30_000], n_q)
                .map_err(|e| anyhow::anyhow!("HiP blocks of {n_q} against the CPU oracle (seed {seed}): {e}"))?;
            eprintln!(
                "  check {} (seed {seed}): {} checks passed; {}",
                shape.name(),
                lines.len(),
                lines[lines.len() - 1]
            );
        }
    }

    let mut timer = Timer::new(&gpu, 256 << 20)?;
    let mut rows = Vec::new();
    let mut push = |row: Row| {
        eprintln!("  {}", row_line(&row));
        rows.push(row);
    };
    for &shape in &args.shapes {
        let heads = shape.heads();
        let max_context = args.contexts.0.iter().copied().max().unwrap_or(0);
        let rope = DeviceRope::new(&gpu, shape, max_context)?;
        for &batch in &args.batches {
            for &context in &args.contexts.0 {
                let mut phases = vec![("decode", 1)];
                if args.prefill_queries > 0 && batch <= args.prefill_max_batch {
                    phases.push(("prefill_chunk", args.prefill_queries.min(context)));
                }
                for (phase, n_q) in phases {
                    let id = CaseId { phase, heads, batch, context, n_q };
                    // The HiP runs of the presets follow one another: the largest adds to dense.
                    let hip_need = presets
                        .iter()
                        .map(|(_, cfg)| HipRun::bytes(cfg, args.hip_layer, id, info.multiprocessors))
                        .max()
                        .unwrap_or(0);
                    let need = DenseCase::bytes(shape, batch, context, n_q, info.multiprocessors) + hip_need;
                    let free = gpu.free_memory_bytes()?;
                    if need + HEADROOM_BYTES > free {
                        eprintln!(
                            "  skip {phase} {} batch {batch} context {context}: needs {:.1} GiB, {:.1} GiB free",
                            shape.name(),
                            gib(need),
                            gib(free)
                        );
                        continue;
                    }
                    let mut case = DenseCase::filled(&gpu, shape, batch, context, n_q, 0x5eed ^ context as u64)?;
                    let (warmup, reps) = args.reps_for(n_q);
                    let times = timer.time_us(&gpu, warmup, reps, || case.run(&gpu, &rope))?;
                    push(id.row("dense", None, median(&times), dense_floor_us(batch, context, n_q, heads)));
                    for preset in &presets {
                        time_hip(&gpu, &mut timer, args, &case, &rope, id, preset)?.into_iter().for_each(&mut push);
                    }
                }
            }
        }
    }

    for path in &args.merge {
        let other = read_report(path).context("--merge")?;
        if other.device != info.name {
            eprintln!("note: {} was measured on {}, this run on {}", path.display(), other.device, info.name);
        }
        for mut row in other.rows {
            if row.floor_us.is_none() && row.method.starts_with("torch") {
                let heads = (row.q_heads, row.kv_heads, row.head_dim);
                row.floor_us = Some(dense_floor_us(row.batch, row.context, row.queries.max(1), heads));
            }
            rows.push(row);
        }
    }
    rows.sort_by(|a, b| {
        (&a.phase, b.q_heads, a.batch, a.context, &a.method, &a.variant)
            .cmp(&(&b.phase, a.q_heads, b.batch, b.context, &b.method, &b.variant))
    });

    println!("{}", table(&rows));
    let report = Report {
        device: info.name.clone(),
        commit: env!("INFINIHIP_COMMIT").to_string(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        rows,
    };
    if let Some(path) = &args.json {
        write(path, &serde_json::to_string_pretty(&report)?)?;
    }
    if let Some(path) = &args.plot {
        write(path, &plot(&report))?;
    }
    Ok(())
}

fn read_report(path: &Path) -> Result<Report> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a bench attention report", path.display()))
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |t| t.as_nanos() as u64)
}

/// Times HiP of `preset` (its name and config) on the KV and queries of dense case `id`, with the
/// knobs of `--hip-layer`. Rows: the headline figure (no variant), then its parts, every one with
/// the floor of the blocks' attention ([`hip_floor_us`]).
fn time_hip(
    gpu: &Gpu,
    timer: &mut Timer,
    args: &AttentionBenchArgs,
    case: &DenseCase,
    rope: &DeviceRope,
    id: CaseId,
    preset: &(String, HipConfig),
) -> Result<Vec<Row>> {
    let (name, cfg) = preset;
    let mut run = HipRun::new(gpu, case, rope, cfg, args.hip_layer, id)?;
    let reps = args.reps_for(id.n_q);
    let timed =
        if id.n_q == 1 { hip_decode_times(&mut run, timer, reps)? } else { hip_prefill_times(&mut run, timer, reps)? };
    let (method, floor) = (format!("hip-{name}"), hip_floor_us(cfg, run.layer, &run.entries, id.heads));
    Ok(timed.into_iter().map(|(variant, us)| id.row(&method, variant, us, floor)).collect())
}

/// HiP decode: the four step kinds (refresh from stage 0, 1 or 2, then block-sparse attention;
/// or attention alone with the cached mask), each on its own, after their mean over one refresh
/// cycle of the preset's schedule (DESIGN.md §4.4).
fn hip_decode_times(run: &mut HipRun, timer: &mut Timer, reps: (usize, usize)) -> Result<Vec<(Option<String>, f64)>> {
    let cfg = run.cfg;
    let n_stages = cfg.n_stages();
    // Step kinds: Some(s) refreshes stages s.. first; None attends with the cached mask.
    let kinds: Vec<Option<usize>> = (0..n_stages).map(Some).chain([None]).collect();
    let kind_us = kinds.iter().map(|&from| run.time(timer, reps, from, true)).collect::<Result<Vec<f64>>>()?;
    let cycle = cfg.refresh.iter().fold(1u64, |a, &r| lcm(a, r as u64));
    let amortised = (0..cycle)
        .map(|step| match first_stage_to_refresh(&cfg.refresh, step) {
            Some(s) => kind_us[s],
            None => kind_us[n_stages],
        })
        .sum::<f64>()
        / cycle as f64;
    let mut timed = vec![(None, amortised)];
    for (from, us) in kinds.iter().zip(kind_us) {
        let variant = match from {
            Some(0) => "refresh all stages".to_string(),
            Some(s) if s + 1 == n_stages => format!("refresh stage {s}"),
            Some(s) => format!("refresh stages {s}-{}", n_stages - 1),
            None => "cached mask".to_string(),
        };
        timed.push((Some(variant), us));
    }
    Ok(timed)
}

/// A HiP prefill chunk, as the backend runs it: every block's mask estimated afresh (all
/// stages), then block-sparse attention with the masks; then `pruning` and `attention` alone.
fn hip_prefill_times(run: &mut HipRun, timer: &mut Timer, reps: (usize, usize)) -> Result<Vec<(Option<String>, f64)>> {
    Ok(vec![
        (None, run.time(timer, reps, Some(0), true)?),
        (Some("pruning".to_string()), run.time(timer, reps, Some(0), false)?),
        (Some("attention".to_string()), run.time(timer, reps, None, true)?),
    ])
}

/// HiP on the KV and queries of a dense case, laid out as the CUDA backend lays out a step of
/// one layer (`HipStepInputs::runs` in crates/engine/src/backend/cuda.rs): one pruning entry per
/// query block, the stages refreshed for all blocks in one batch, and one masked run per block
/// in the attention plan, reading the stages' masks in place. (The backend refreshes each
/// sequence's blocks apart and copies their masks into the step's: the same work at batch 1,
/// less one copy.) The store holds one layer (index 0); the knobs are those of `layer`, and
/// stage outputs are strided for layers `0..=layer`.
struct HipRun<'a> {
    gpu: &'a Gpu,
    case: &'a DenseCase,
    rope: &'a DeviceRope,
    cfg: &'a HipConfig,
    layer: usize,
    entries: Vec<HipSeq>,
    entries_dev: CudaSlice<HipSeq>,
    /// The pruning inputs' most queries per block.
    max_n_q: usize,
    max_window_end: usize,
    stages: HipStages,
    plan: DevicePlan,
    scratch: AttnScratch,
    out: CudaSlice<bf16>,
}

impl<'a> HipRun<'a> {
    /// The pruning entries of case `id`'s query blocks, and the pruning inputs' `max_n_q`.
    /// Decode: each sequence's query, as its decode cache enters it at a refresh from stage 0
    /// (`GpuDecodeCache::step`). Prefill chunk: a chunk inside a prompt (its last token is not
    /// sampled), cut into query blocks on the absolute grid of `b_q` (`block_entries`), with
    /// the backend's `max_n_q` of `b_q`.
    fn entries(cfg: &HipConfig, layer: usize, id: CaseId) -> (Vec<HipSeq>, usize) {
        let pages = id.context.div_ceil(PAGE_SIZE);
        let pos_start = id.context - id.n_q;
        let mut entries = Vec::new();
        for b in 0..id.batch {
            let (row_start, page_start) = (b * id.n_q, b * pages);
            if id.n_q == 1 {
                let w = window_end(cfg, pos_start);
                entries.push(hip_entry(cfg, layer, row_start, pos_start, 1, page_start, w));
            } else {
                let seq = SeqSlice {
                    row_start,
                    n_tokens: id.n_q,
                    pos_start,
                    page_start,
                    page_end: page_start + pages,
                    last_row_sampled: false,
                };
                entries.extend(block_entries(cfg, layer, &seq).0);
            }
        }
        (entries, if id.n_q == 1 { 1 } else { cfg.b_q })
    }

    /// The attention runs of the blocks, block `i` reading mask `i`.
    fn runs(cfg: &HipConfig, entries: &[HipSeq]) -> Vec<SeqDesc> {
        entries.iter().enumerate().map(|(i, e)| masked_run(cfg, e, i)).collect()
    }

    /// Device memory a run takes beside its dense case, for the skip test: the output, the
    /// attention partials and the pruning stages.
    fn bytes(cfg: &HipConfig, layer: usize, id: CaseId, n_sms: usize) -> usize {
        let (h, _, d) = id.heads;
        let (entries, max_n_q) = Self::entries(cfg, layer, id);
        let max_w = entries.iter().map(|e| e.window_end as usize).max().unwrap_or(0);
        let n_rows = id.batch * id.n_q;
        let runs = Self::runs(cfg, &entries);
        n_rows * h * d * 2
            + partials_bytes(&runs, n_rows, id.heads, n_sms, cfg.layer_params(layer).k)
            + HipStages::device_bytes(cfg, layer, layer + 1, entries.len(), max_n_q, (h, d), max_w)
    }

    /// The run of preset `cfg` of `layer` on dense case `id`, its blocks' masks computed once
    /// (for the steps that attend with them alone).
    fn new(
        gpu: &'a Gpu,
        case: &'a DenseCase,
        rope: &'a DeviceRope,
        cfg: &'a HipConfig,
        layer: usize,
        id: CaseId,
    ) -> Result<Self> {
        let (h, hkv, d) = id.heads;
        let (entries, max_n_q) = Self::entries(cfg, layer, id);
        let runs = Self::runs(cfg, &entries);
        let plan = DevicePlan::new(gpu, runs, id.batch * id.n_q, h, hkv, true, cfg.layer_params(layer).k)?;
        let (acc, ml) = plan.scratch_len(h, d);
        let mut run = Self {
            gpu,
            case,
            rope,
            cfg,
            layer,
            entries_dev: gpu.upload(&entries)?,
            max_window_end: entries.iter().map(|e| e.window_end as usize).max().unwrap_or(0),
            entries,
            max_n_q,
            stages: HipStages::new(gpu)?,
            plan,
            scratch: AttnScratch { acc: gpu.alloc_zeros(acc)?, ml: gpu.alloc_zeros(ml)? },
            out: gpu.alloc_zeros(id.batch * id.n_q * h * d)?,
        };
        run.prune(0)?;
        Ok(run)
    }

    /// Recomputes the blocks' pruning stages `from..`.
    fn prune(&mut self, from: usize) -> Result<(), CudaError> {
        let (case, rope, cfg) = (self.case, self.rope, self.cfg);
        let inp = HipInputs {
            store: &case.inputs.store,
            geometry: case.inputs.geometry,
            layer: 0,
            q: &case.inputs.q,
            page_ids: &case.inputs.page_ids,
            seqs: &self.entries_dev,
            n_seqs: self.entries.len(),
            cos: &rope.cos,
            sin: &rope.sin,
            shape: rope.shape_of(case.inputs.heads),
            n_sink: cfg.n_sink,
            n_window: cfg.n_window,
            max_n_q: self.max_n_q,
        };
        self.stages.refresh(self.gpu, &inp, cfg, self.layer, self.layer + 1, self.max_window_end, from)
    }

    /// Block-sparse attention of the blocks with their current masks.
    fn attend(&mut self) -> Result<(), CudaError> {
        let masks = StepMasks { masks: self.stages.masks()?, n_masks: self.entries.len(), block_k: self.cfg.block_k() };
        let step = self.plan.step(&self.case.inputs.page_ids, Some(masks));
        self.case.inputs.attend(self.gpu, self.rope, &step, &mut self.scratch, &mut self.out)
    }

    /// The median time of pruning from stage `from` (if any), then attention with the masks (if
    /// `attend`), over `reps` = (untimed, timed) runs.
    fn time(&mut self, timer: &mut Timer, reps: (usize, usize), from: Option<usize>, attend: bool) -> Result<f64> {
        let gpu = self.gpu;
        let times = timer.time_us(gpu, reps.0, reps.1, || {
            if let Some(s) = from {
                self.prune(s)?;
            }
            if attend {
                self.attend()?;
            }
            Ok(())
        })?;
        Ok(median(&times))
    }
}

/// The floor of block-sparse attention of the query blocks `entries` with the knobs of `layer`
/// (DESIGN.md §4.1), heads (H, Hkv, d): the larger of the bytes each block must read, the K and V
/// (bf16) of its sink, selected tokens and window up to its last query, over
/// `FLOOR_BYTES_PER_S`, and the FLOPs of its queries, each over its own key list (4·d per key
/// and head, as the dense floor), over `FLOOR_FLOPS_PER_S`. Decode is bound by the bytes; so is
/// a chunk's 64-query block (its FLOPs floor is 64·(H/Hkv)·3/840 of the bytes one: 0.9 for
/// Llama, 0.7 for SmolLM2), but larger `b_q` or GQA groups tip it. The pruning stages' reads are
/// not counted: every row of a case, `pruning` included, carries this floor.
fn hip_floor_us(cfg: &HipConfig, layer: usize, entries: &[HipSeq], (h, hkv, d): (usize, usize, usize)) -> f64 {
    let k = cfg.layer_params(layer).k;
    let (mut bytes, mut flops) = (0.0, 0.0);
    for e in entries {
        let (pos, n_q, w) = (e.pos as usize, e.n_q as usize, e.window_end as usize);
        // Sink and selected tokens lie before w; query pos + t sees the window [w, pos + t].
        let before = cfg.n_sink.min(w) + k.min(w.saturating_sub(cfg.n_sink));
        bytes += ((before + pos + n_q - w) * hkv * d * 2 * 2) as f64;
        let pairs = n_q * (before + pos + 1 - w) + n_q * (n_q - 1) / 2;
        flops += 4.0 * pairs as f64 * (h * d) as f64;
    }
    (bytes / FLOOR_BYTES_PER_S).max(flops / FLOOR_FLOPS_PER_S) * 1e6
}

fn lcm(a: u64, b: u64) -> u64 {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    a / gcd(a, b) * b
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// cos/sin tables `[position][d/2]` on the device, computed in f64 on the host in parallel.
struct DeviceRope {
    cos: CudaSlice<f32>,
    sin: CudaSlice<f32>,
    half: usize,
}

fn rope_config(shape: HeadShape) -> RopeConfig {
    RopeConfig {
        theta: shape.rope_theta(),
        dim: shape.heads().2,
        style: RopeStyle::Adjacent,
        scaling: RopeScaling::None,
    }
}

impl DeviceRope {
    /// The table of `shape` for positions `0..positions` (computed on the host in parallel).
    fn new(gpu: &Gpu, shape: HeadShape, positions: usize) -> Result<Self> {
        let mut table = RopeTable::new(rope_config(shape));
        table.ensure(positions);
        Self::from_table(gpu, &table, positions)
    }

    /// The kernels' attention shape for heads (H, Hkv, d) rotated with this table.
    fn shape_of(&self, (h, hkv, d): (usize, usize, usize)) -> AttnShape {
        AttnShape {
            n_heads: h,
            n_kv_heads: hkv,
            head_dim: d,
            scale: 1.0 / (d as f32).sqrt(),
            rope_half: self.half,
            rope_adjacent: true,
        }
    }

    /// The first `positions` rows of a host `RopeTable` (covering them).
    fn from_table(gpu: &Gpu, table: &RopeTable, positions: usize) -> Result<Self> {
        let (cos, sin) = table.rows(0..positions);
        Ok(Self { cos: gpu.upload(cos)?, sin: gpu.upload(sin)?, half: table.half() })
    }
}

/// What one layer's attention reads on the device: the KV store, the queries and the pages.
struct LayerInputs {
    heads: (usize, usize, usize),
    geometry: KvGeometry,
    store: CudaSlice<bf16>,
    q: CudaSlice<bf16>,
    page_ids: CudaSlice<u32>,
}

impl LayerInputs {
    /// Attention of the queries over the KV with `step` (dense or masked runs) into `out`.
    fn attend(
        &self,
        gpu: &Gpu,
        rope: &DeviceRope,
        step: &AttnStep<'_>,
        scratch: &mut AttnScratch,
        out: &mut CudaSlice<bf16>,
    ) -> Result<(), CudaError> {
        let shape = rope.shape_of(self.heads);
        gpu.attention(&self.store, self.geometry, 0, &self.q, step, shape, &rope.cos, &rope.sin, scratch, out)
    }
}

/// Device bytes of the attention partials of a step of `runs` (`n_rows` rows, heads (H, Hkv,
/// d)): f32 accumulators and (m, l) per head, row and split.
fn partials_bytes(
    runs: &[SeqDesc],
    n_rows: usize,
    (h, hkv, d): (usize, usize, usize),
    n_sms: usize,
    max_selected: usize,
) -> usize {
    let p = infinihip_cuda::attention::plan(runs, n_rows, h, hkv, n_sms, true, max_selected);
    n_rows * h * p.max_splits * (d + 2) * 4
}

/// One dense attention case on the device: its inputs, plan, scratch and output.
struct DenseCase {
    inputs: LayerInputs,
    out: CudaSlice<bf16>,
    plan: DevicePlan,
    n_rows: usize,
    scratch: AttnScratch,
}

impl DenseCase {
    fn layout(shape: HeadShape, batch: usize, context: usize, n_q: usize) -> (KvGeometry, Vec<SeqDesc>) {
        let (_, hkv, d) = shape.heads();
        let pages = context.div_ceil(PAGE_SIZE);
        let geometry = KvGeometry {
            n_layers: 1,
            n_kv_heads: hkv,
            head_dim: d,
            page_size: PAGE_SIZE,
            capacity_pages: batch * pages,
        };
        let seqs = (0..batch)
            .map(|b| SeqDesc::dense((b * n_q) as i32, n_q as i32, (context - n_q) as i32, (b * pages) as i32))
            .collect();
        (geometry, seqs)
    }

    /// Device memory a case takes, for the skip test.
    fn bytes(shape: HeadShape, batch: usize, context: usize, n_q: usize, n_sms: usize) -> usize {
        let (h, _, d) = shape.heads();
        let (geometry, seqs) = Self::layout(shape, batch, context, n_q);
        let rows = batch * n_q;
        geometry.total_elems() * 2 + rows * h * d * 4 + partials_bytes(&seqs, rows, shape.heads(), n_sms, 0)
    }

    /// A case whose KV and queries are uniform in ±1 from `seed`, filled on the device.
    fn filled(gpu: &Gpu, shape: HeadShape, batch: usize, context: usize, n_q: usize, seed: u64) -> Result<Self> {
        let mut case = Self::empty(gpu, shape, batch, context, n_q)?;
        let (store_len, q_len) = (case.inputs.geometry.total_elems(), case.n_rows * shape.heads().0 * shape.heads().2);
        gpu.fill_uniform(&mut case.inputs.store, store_len, seed, -1.0, 1.0)?;
        gpu.fill_uniform(&mut case.inputs.q, q_len, seed ^ 0xabcdef, -1.0, 1.0)?;
        Ok(case)
    }

    fn empty(gpu: &Gpu, shape: HeadShape, batch: usize, context: usize, n_q: usize) -> Result<Self> {
        let heads = shape.heads();
        let (h, hkv, d) = heads;
        let (geometry, seqs) = Self::layout(shape, batch, context, n_q);
        let n_rows = batch * n_q;
        let plan = DevicePlan::new(gpu, seqs, n_rows, h, hkv, true, 0)?;
        let page_ids: Vec<u32> = (0..geometry.capacity_pages as u32).collect();
        let (acc, ml) = plan.scratch_len(h, d);
        Ok(Self {
            inputs: LayerInputs {
                heads,
                geometry,
                store: gpu.alloc_zeros(geometry.total_elems())?,
                q: gpu.alloc_zeros(n_rows * h * d)?,
                page_ids: gpu.upload(&page_ids)?,
            },
            out: gpu.alloc_zeros(n_rows * h * d)?,
            plan,
            n_rows,
            scratch: AttnScratch { acc: gpu.alloc_zeros(acc)?, ml: gpu.alloc_zeros(ml)? },
        })
    }

    fn run(&mut self, gpu: &Gpu, rope: &DeviceRope) -> Result<(), CudaError> {
        let step = self.plan.step(&self.inputs.page_ids, None);
        self.inputs.attend(gpu, rope, &step, &mut self.scratch, &mut self.out)
    }
}

/// Dense decode (batch 2) and a prefill chunk of `n_q` queries (batch 1) on a random
/// 3,000-key context, against `dense_causal_attention`.
fn check_dense(gpu: &Gpu, shape: HeadShape, n_q: usize) -> Result<()> {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |t| t.as_nanos() as u64);
    let mut rng = SplitMix64::new(seed);
    let (h, hkv, d) = shape.heads();
    let context = 3000;
    let mut table = RopeTable::new(rope_config(shape));
    table.ensure(context);
    let rope = DeviceRope::from_table(gpu, &table, context)?;
    for (batch, n_q) in [(2, 1), (1, n_q)] {
        let mut case = DenseCase::empty(gpu, shape, batch, context, n_q)?;
        // Host store in the device layout [page][K|V][slot][Hkv][d] (one layer).
        let store: Vec<bf16> = (0..case.inputs.geometry.total_elems()).map(|_| rng.signed_bf16()).collect();
        let q: Vec<bf16> = (0..case.n_rows * h * d).map(|_| rng.signed_bf16()).collect();
        gpu.upload_into(&store, &mut case.inputs.store)?;
        gpu.upload_into(&q, &mut case.inputs.q)?;
        gpu.upload_into(&vec![bf16::NAN; q.len()], &mut case.out)?;
        case.run(gpu, &rope)?;
        let got: Vec<f32> = gpu.download(&case.out, q.len())?.iter().map(|x| x.to_f32()).collect();

        let mut want = vec![0f32; q.len()];
        for b in 0..batch {
            let kv = host_kv(&store, b, context, hkv, d);
            let rows = b * n_q * h * d..(b + 1) * n_q * h * d;
            let qf: Vec<f32> = q[rows.clone()].iter().map(|x| x.to_f32()).collect();
            let block = QueryBlock {
                layer: 0,
                shape: HipShape { n_heads: h, n_kv_heads: hkv, head_dim: d },
                q: &qf,
                pos_start: context - n_q,
                kv: &kv,
                rope: &table,
            };
            dense_causal_attention(&block, None, &mut want[rows])?;
        }
        let err = rel_err(&got, &want);
        eprintln!("  check dense {} batch {batch} queries {n_q}: rel err {err:.2e} (seed {seed})", shape.name());
        if err.is_nan() || err > ORACLE_REL_TOL {
            bail!(
                "dense attention ({} queries) differs from the CPU oracle: rel err {err:.2e} > {ORACLE_REL_TOL}",
                n_q
            );
        }
    }
    Ok(())
}

/// Sequence `b`'s keys and values as f32, from a one-layer host store of `PAGE_SIZE`-token
/// pages laid out `[page][K|V][slot][Hkv][d]`, sequences' pages consecutive.
pub(crate) fn host_kv(store: &[bf16], b: usize, context: usize, hkv: usize, d: usize) -> VecKv {
    let width = hkv * d;
    let pages = context.div_ceil(PAGE_SIZE);
    let page_elems = 2 * PAGE_SIZE * width;
    let mut kv = VecKv::new(hkv, d);
    for pos in 0..context {
        let page = b * pages + pos / PAGE_SIZE;
        let k0 = page * page_elems + (pos % PAGE_SIZE) * width;
        let v0 = k0 + PAGE_SIZE * width;
        let k: Vec<f32> = store[k0..k0 + width].iter().map(|x| x.to_f32()).collect();
        let v: Vec<f32> = store[v0..v0 + width].iter().map(|x| x.to_f32()).collect();
        kv.push(&k, &v).expect("rows of Hkv·d values");
    }
    kv
}

fn shape_label(q_heads: usize, kv_heads: usize, head_dim: usize) -> String {
    match (q_heads, kv_heads, head_dim) {
        (32, 8, 128) => "llama-3.1-8b".to_string(),
        (9, 3, 64) => "smollm2".to_string(),
        (h, k, d) => format!("{h}q/{k}kv/d{d}"),
    }
}

fn method_label(r: &Row) -> String {
    match &r.variant {
        Some(v) => format!("{} ({v})", r.method),
        None => r.method.clone(),
    }
}

fn context_label(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{}M", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{}K", n >> 10)
    } else {
        n.to_string()
    }
}

fn row_line(r: &Row) -> String {
    let floor = r.floor_us.map_or(String::new(), |f| format!("  floor {f:>10.1} µs ({:>5.1}×)", r.latency_us / f));
    format!(
        "{:<13} {:<13} b{:<2} q{:<5} {:>5}  {:<28} {:>12.1} µs{floor}",
        r.phase,
        shape_label(r.q_heads, r.kv_heads, r.head_dim),
        r.batch,
        r.queries,
        context_label(r.context),
        method_label(r),
        r.latency_us
    )
}

/// The table printed last: one line per row, grouped by phase, shape and batch.
fn table(rows: &[Row]) -> String {
    let mut s = format!(
        "{:<13} {:<13} {:<3} {:<6} {:>5}  {:<28} {:>15}  {}\n",
        "phase", "shape", "b", "q", "ctx", "method", "latency", "floor (latency / floor)"
    );
    for r in rows {
        let _ = writeln!(s, "{}", row_line(r));
    }
    s
}

/// The SVG plot: one panel per (phase, shape, batch), latency against context on log–log axes,
/// one polyline per method. HiP's per-step-kind rows (those with a variant) stay in the table
/// and the JSON; the plot shows the amortised figure, so that its lines can be told apart.
fn plot(report: &Report) -> String {
    let headline: Vec<Row> = report.rows.iter().filter(|r| r.variant.is_none()).cloned().collect();
    let report = &Report { rows: headline, ..report.clone_meta() };
    let mut panels: Vec<(String, usize, usize, usize, usize)> = Vec::new();
    for r in &report.rows {
        let key = (r.phase.clone(), r.q_heads, r.kv_heads, r.head_dim, r.batch);
        if !panels.contains(&key) {
            panels.push(key);
        }
    }
    const W: f64 = 460.0;
    const H: f64 = 300.0;
    const M: f64 = 56.0;
    let cols = 2;
    let n_rows = panels.len().div_ceil(cols).max(1);
    let (total_w, total_h) = (W * cols as f64, H * n_rows as f64 + 30.0);
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
    let mut methods: Vec<String> = Vec::new();
    for r in &report.rows {
        let m = method_label(r);
        if !methods.contains(&m) {
            methods.push(m);
        }
    }
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{total_w}\" height=\"{total_h}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"8\" y=\"18\" font-size=\"13\">{}: attention latency per layer (µs) against context, commit {}</text>\n",
        xml(&report.device),
        xml(&report.commit)
    );
    for (i, (phase, h, hkv, d, batch)) in panels.iter().enumerate() {
        let (ox, oy) = ((i % cols) as f64 * W, 30.0 + (i / cols) as f64 * H);
        let rows: Vec<&Row> = report
            .rows
            .iter()
            .filter(|r| {
                &r.phase == phase && r.q_heads == *h && r.kv_heads == *hkv && r.head_dim == *d && r.batch == *batch
            })
            .collect();
        let lx = |v: f64| v.max(1e-9).log2();
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for r in &rows {
            x0 = x0.min(lx(r.context as f64));
            x1 = x1.max(lx(r.context as f64));
            y0 = y0.min(r.latency_us.log10());
            y1 = y1.max(r.latency_us.log10());
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        let (y0, y1) = (y0.floor(), y1.ceil().max(y0.floor() + 1.0));
        let px = |x: f64| ox + M + (x - x0) / (x1 - x0) * (W - M - 16.0);
        let py = |y: f64| oy + H - 40.0 - (y - y0) / (y1 - y0) * (H - 80.0);
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" font-size=\"12\">{} · {} · batch {}</text>",
            ox + M,
            oy + 16.0,
            xml(phase),
            xml(&shape_label(*h, *hkv, *d)),
            batch
        );
        let _ = writeln!(
            s,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#888\"/>",
            px(x0),
            py(y1),
            px(x1) - px(x0),
            py(y0) - py(y1)
        );
        let mut y = y0;
        while y <= y1 + 1e-9 {
            let _ = writeln!(
                s,
                "<line x1=\"{}\" y1=\"{py}\" x2=\"{}\" y2=\"{py}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
                px(x0),
                px(x1),
                px(x0) - 4.0,
                py(y) + 4.0,
                latency_label(10f64.powf(y)),
                py = py(y)
            );
            y += 1.0;
        }
        let mut contexts: Vec<usize> = rows.iter().map(|r| r.context).collect();
        contexts.sort_unstable();
        contexts.dedup();
        for c in contexts {
            let x = px(lx(c as f64));
            let _ = writeln!(
                s,
                "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                py(y0) + 14.0,
                context_label(c)
            );
        }
        for (mi, m) in methods.iter().enumerate() {
            let mut pts: Vec<(usize, f64)> =
                rows.iter().filter(|r| &method_label(r) == m).map(|r| (r.context, r.latency_us)).collect();
            if pts.is_empty() {
                continue;
            }
            pts.sort_by_key(|p| p.0);
            let color = colors[mi % colors.len()];
            let path: Vec<String> =
                pts.iter().map(|&(c, l)| format!("{:.1},{:.1}", px(lx(c as f64)), py(l.log10()))).collect();
            let _ = writeln!(
                s,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\"/>",
                path.join(" ")
            );
            for &(c, l) in &pts {
                let _ = writeln!(
                    s,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{color}\"/>",
                    px(lx(c as f64)),
                    py(l.log10())
                );
            }
        }
        // Legend inside the panel, top left.
        let mut ly = py(y1) + 14.0;
        for (mi, m) in methods.iter().enumerate() {
            if rows.iter().any(|r| &method_label(r) == m) {
                let color = colors[mi % colors.len()];
                let _ = writeln!(
                    s,
                    "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"3\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{}</text>",
                    px(x0) + 6.0,
                    ly - 4.0,
                    px(x0) + 20.0,
                    ly,
                    xml(m)
                );
                ly += 13.0;
            }
        }
    }
    s.push_str("</svg>\n");
    s
}

fn latency_label(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.0} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.0} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(phase: &str, context: usize, method: &str, latency_us: f64) -> Row {
        Row {
            phase: phase.into(),
            context,
            batch: 1,
            q_heads: 32,
            kv_heads: 8,
            head_dim: 128,
            method: method.into(),
            latency_us,
            queries: 1,
            variant: None,
            floor_us: None,
        }
    }

    #[test]
    fn the_decode_floor_is_the_kv_read() {
        // 1M keys of 8 heads × 128 × (K, V) × 2 bytes = 4 GiB at 3 TB/s ≈ 1,432 µs.
        let f = dense_floor_us(1, 1 << 20, 1, (32, 8, 128));
        assert!((f - 1431.66).abs() < 0.1, "{f}");
        // A 32K chunk against 1M keys is compute-bound: 4·32768·(1M − 16K)·4096 FLOPs.
        let f = dense_floor_us(1, 1 << 20, 32768, (32, 8, 128));
        assert!((f / 1e3 - 659.7).abs() < 0.1, "{f}");
    }

    #[test]
    fn the_hip_floor_counts_each_block_s_sink_selection_and_window() {
        let cfg = HipConfig::default();
        let heads = (32, 8, 128);
        let case = |phase, n_q| CaseId { phase, heads, batch: 1, context: 1 << 20, n_q };
        // Decode: 256 + 2048 + 1024 keys of 8 heads × 128 × (K, V) × 2 bytes, at 3 TB/s.
        let (entries, max_n_q) = HipRun::entries(&cfg, 3, case("decode", 1));
        assert_eq!((entries.len(), max_n_q), (1, 1));
        let f = hip_floor_us(&cfg, 3, &entries, heads);
        assert!((f - 3328.0 * 4096.0 / 3e6).abs() < 1e-6, "{f}");
        // A 1024-query chunk: 16 blocks of 64 on the grid, each reading 1,087 window keys; the
        // bytes (74.1 µs) outweigh the FLOPs (67.1 µs).
        let (entries, max_n_q) = HipRun::entries(&cfg, 3, case("prefill_chunk", 1024));
        assert_eq!((entries.len(), max_n_q), (16, 64));
        assert!(entries.iter().enumerate().all(|(i, e)| e.row == 64 * i as i32 && e.n_q == 64));
        assert_eq!(entries[0].pos as usize, (1 << 20) - 1024);
        let f = hip_floor_us(&cfg, 3, &entries, heads);
        assert!((f - 16.0 * 3391.0 * 4096.0 / 3e6).abs() < 1e-6, "{f}");
    }

    #[test]
    fn hip_prefill_needs_little_memory_beside_dense() {
        // 1,024 queries against 3M keys, Llama heads, on 132 SMs: HiP's output, partials and
        // pruning buffers are tens of MiB, beside a 12 GiB KV store.
        let id = CaseId { phase: "prefill_chunk", heads: (32, 8, 128), batch: 1, context: 3 << 20, n_q: 1024 };
        for name in ["default", "flash"] {
            let cfg = HipConfig::preset(name).unwrap();
            let hip = HipRun::bytes(&cfg, 3, id, 132);
            let dense = DenseCase::bytes(HeadShape::Llama8b, 1, 3 << 20, 1024, 132);
            assert!(hip < 64 << 20 && hip < dense / 100, "{hip} B beside {dense} B");
        }
    }

    #[test]
    fn reports_round_trip_and_plot_every_panel() {
        let report = Report {
            device: "NVIDIA H100 80GB HBM3".into(),
            commit: "abc".into(),
            command: "infinihip bench attention".into(),
            rows: vec![
                row("decode", 32768, "dense", 20.0),
                row("decode", 1 << 20, "dense", 1500.0),
                row("decode", 1 << 20, "torch-sdpa-cudnn", 1443.0),
                row("prefill_chunk", 1 << 20, "dense", 2e6),
                Row { variant: Some("cached mask".into()), ..row("decode", 1 << 20, "hip-flash", 40.0) },
            ],
        };
        let json = serde_json::to_string(&report).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back.rows, report.rows);
        // Rows from the SDPA script carry only the required fields.
        let minimal = r#"{"device":"d","commit":"c","command":"x","rows":[{"phase":"decode","context":1024,
            "batch":8,"q_heads":9,"kv_heads":3,"head_dim":64,"method":"torch-sdpa-flash","latency_us":12.5}]}"#;
        let r: Report = serde_json::from_str(minimal).unwrap();
        assert_eq!((r.rows[0].queries, r.rows[0].variant.as_deref()), (0, None));
        let svg = plot(&report);
        assert_eq!(svg.matches("<polyline").count(), 3, "{svg}");
        assert!(!svg.contains("cached mask") && table(&report.rows).contains("hip-flash (cached mask)"));
        assert!(svg.contains("decode · llama-3.1-8b · batch 1") && svg.ends_with("</svg>\n"));
        assert!(table(&report.rows).contains("torch-sdpa-cudnn"));
    }
}
