//! The CUDA backend: the `Backend` ops on one GPU through `infinihip-cuda` (DESIGN.md §3, §6).
//!
//! Storage is bf16 (weights dequantised at load, activations, KV pages) and arithmetic f32;
//! matmuls are cuBLAS bf16 GEMMs with f32 accumulation, and the logits (`new_act_f32`) come out
//! of their GEMM as f32. The KV store is one device buffer of pages laid out as the CPU's:
//! `[page][layer][K|V][slot][Hkv][d]`, keys un-rotated.
//!
//! A step's `BatchPlan` is validated and uploaded once (page table, per-row page and slot, the
//! attention work items) and reused by every layer: ops compare the plan they get with the
//! cached one, which costs a comparison of page lists, not a transfer.
//!
//! Attention is one launch over **runs**: a dense sequence's step, or a HiP query block with
//! the mask the pruning kernels estimated for it (`hip_gpu`), read by the same kernels as a
//! key list of sink, selected blocks and window. A HiP prefill chunk's blocks are estimated
//! afresh in batched launches; a decode step's token (and a prompt's sampled last token) uses
//! the request's decode mask cache of the layer, held in its `HipSeqState`.
//!
//! Everything is queued on one stream; `to_host` waits for it, so kernel failures surface there
//! at the latest (`INFINIHIP_CUDA_SYNC=1` attributes them to the exact launch).

use std::sync::{Mutex, MutexGuard};

use half::bf16;
use infinihip_core::hip::HipConfig;
use infinihip_core::quant;
use infinihip_core::rope::{RopeConfig, RopeStyle, RopeTable};
use infinihip_cuda::attention::{self, DevicePlan, SeqDesc};
use infinihip_cuda::hip::{HipInputs, HipSeq, StageOutput};
use infinihip_cuda::ops::{AttnScratch, AttnShape, GemmOut, KvGeometry, StepMasks};
use infinihip_cuda::{CudaSlice, DeviceInfo, Gpu};
use rayon::prelude::*;

use super::{AttentionShape, Backend, BatchPlan, TensorRef};
use crate::error::EngineError;
use crate::hip_gpu::{block_entries, masked_run, stage_stride, GpuDecodeCache, HipStages};
use crate::hip_state::HipSeqState;
use crate::kv::KvLayout;

/// The CUDA backend on one device.
pub struct CudaBackend {
    gpu: Gpu,
    step: Mutex<StepCache>,
}

/// A weight matrix `[n_out][n_in]` in bf16.
pub struct CudaMatrix {
    data: CudaSlice<bf16>,
    n_out: usize,
    n_in: usize,
}

/// An f32 parameter vector.
pub struct CudaVector {
    data: CudaSlice<f32>,
    len: usize,
}

enum ActData {
    Bf16(CudaSlice<bf16>),
    F32(CudaSlice<f32>),
}

/// A row-major activation matrix on the device: bf16, or f32 for logits (`new_act_f32`).
pub struct CudaAct {
    data: ActData,
    rows: usize,
    cols: usize,
}

impl CudaAct {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    fn capacity_rows(&self) -> usize {
        let len = match &self.data {
            ActData::Bf16(d) => d.len(),
            ActData::F32(d) => d.len(),
        };
        len / self.cols.max(1)
    }

    fn bf16(&self, op: &'static str) -> Result<&CudaSlice<bf16>, EngineError> {
        match &self.data {
            ActData::Bf16(d) => Ok(d),
            ActData::F32(_) => Err(shape_err(op, "an f32 (logits) activation where bf16 is needed".to_string())),
        }
    }

    fn bf16_mut(&mut self, op: &'static str) -> Result<&mut CudaSlice<bf16>, EngineError> {
        match &mut self.data {
            ActData::Bf16(d) => Ok(d),
            ActData::F32(_) => Err(shape_err(op, "an f32 (logits) activation where bf16 is needed".to_string())),
        }
    }

    fn len(&self) -> usize {
        self.rows * self.cols
    }
}

/// K and V of every page in one device buffer.
pub struct CudaKvStore {
    data: CudaSlice<bf16>,
    geometry: KvGeometry,
}

impl CudaKvStore {
    /// Bytes of device memory the store holds.
    pub fn device_bytes(&self) -> usize {
        self.geometry.total_elems() * std::mem::size_of::<bf16>()
    }
}

/// RoPE tables on the device, `[position][half]` f32, grown with the host table.
pub struct CudaRope {
    table: RopeTable,
    cos: CudaSlice<f32>,
    sin: CudaSlice<f32>,
    /// Positions uploaded so far.
    positions: usize,
}

/// The step's plan on the device, and scratch buffers reused from step to step.
#[derive(Default)]
struct StepCache {
    plan: Option<PlanOnDevice>,
    attn: Option<AttnOnDevice>,
    scratch: Option<AttnScratch>,
    tokens: Option<CudaSlice<u32>>,
    rows: Option<CudaSlice<u32>>,
    hip: Option<HipStep>,
}

struct PlanOnDevice {
    plan: BatchPlan,
    n_rows: usize,
    /// The largest page id the plan names (checked against each store it is used with).
    max_page: Option<u32>,
    page_ids: CudaSlice<u32>,
    row_page: CudaSlice<u32>,
    row_slot: CudaSlice<u32>,
}

/// The attention plan of the last layer, reused while the runs stay the same.
struct AttnOnDevice {
    heads: (usize, usize),
    max_selected: usize,
    plan: DevicePlan,
}

/// HiP buffers of a step: the prefill blocks' pruning, their entries, and the masks that
/// the step's runs index (prefill blocks' and decode caches', copied side by side).
struct HipStep {
    stages: HipStages,
    entries: CudaSlice<HipSeq>,
    masks: StageOutput,
}

fn shape_err(op: &'static str, detail: String) -> EngineError {
    EngineError::Shape { op, detail }
}

fn check_host_len(values: &[f32], rows: usize, cols: usize) -> Result<(), EngineError> {
    if values.len() != rows * cols {
        return Err(shape_err("act_from_host", format!("{} values for {rows}×{cols}", values.len())));
    }
    Ok(())
}

fn check_same(op: &'static str, a: &CudaAct, b: &CudaAct) -> Result<(), EngineError> {
    if (a.rows, a.cols) != (b.rows, b.cols) {
        return Err(shape_err(op, format!("{}×{} vs {}×{}", a.rows, a.cols, b.rows, b.cols)));
    }
    Ok(())
}

/// Grows an index buffer to hold at least `len` values (contents are not kept).
fn ensure_buffer<'a>(
    gpu: &Gpu,
    slot: &'a mut Option<CudaSlice<u32>>,
    len: usize,
) -> Result<&'a mut CudaSlice<u32>, EngineError> {
    if slot.as_ref().is_none_or(|b| b.len() < len) {
        *slot = Some(gpu.alloc_zeros(len.next_power_of_two())?);
    }
    slot.as_mut().ok_or_else(|| shape_err("scratch", "buffer missing after allocation".to_string()))
}

impl CudaBackend {
    /// Opens CUDA device `ordinal` and compiles the kernels (or loads them from the cache). A
    /// missing library, device or header directory is an error, never a panic.
    pub fn new(ordinal: usize) -> Result<Self, EngineError> {
        Ok(Self { gpu: Gpu::new(ordinal)?, step: Mutex::new(StepCache::default()) })
    }

    pub fn device(&self) -> &DeviceInfo {
        self.gpu.info()
    }

    /// A bf16 activation matrix holding `values` (`[rows][cols]`, rounded to nearest): for
    /// tests and tools that start from host data.
    pub fn act_from_host(&self, values: &[f32], rows: usize, cols: usize) -> Result<CudaAct, EngineError> {
        check_host_len(values, rows, cols)?;
        let host: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
        Ok(CudaAct { data: ActData::Bf16(self.gpu.upload(&host)?), rows, cols })
    }

    /// As `act_from_host`, for an f32 matrix (the kind `new_act_f32` makes).
    pub fn act_f32_from_host(&self, values: &[f32], rows: usize, cols: usize) -> Result<CudaAct, EngineError> {
        check_host_len(values, rows, cols)?;
        Ok(CudaAct { data: ActData::F32(self.gpu.upload(values)?), rows, cols })
    }

    fn cache(&self) -> Result<MutexGuard<'_, StepCache>, EngineError> {
        self.step.lock().map_err(|_| shape_err("cuda step cache", "a previous step panicked".to_string()))
    }

    /// Uploads `plan` unless it is the one already on the device.
    fn ensure_plan(&self, cache: &mut StepCache, plan: &BatchPlan) -> Result<(), EngineError> {
        if cache.plan.as_ref().is_some_and(|p| p.plan == *plan) {
            return Ok(());
        }
        cache.plan = None;
        let n_rows = plan.n_rows();
        let mut row_page = vec![0u32; n_rows];
        let mut row_slot = vec![0u32; n_rows];
        let int = |what: &str, v: usize| {
            i32::try_from(v).map_err(|_| shape_err("cuda plan", format!("{what} = {v} exceeds the kernels' int")))
        };
        for seq in &plan.seqs {
            let bad = |what: String| shape_err("cuda plan", what);
            if seq.page_start > seq.page_end || seq.page_end > plan.page_ids.len() {
                return Err(bad(format!("pages {}..{} of {}", seq.page_start, seq.page_end, plan.page_ids.len())));
            }
            if plan.page_size == 0 || (seq.page_end - seq.page_start) * plan.page_size < seq.end_pos() {
                return Err(bad(format!(
                    "{} pages do not hold {} positions",
                    seq.page_end - seq.page_start,
                    seq.end_pos()
                )));
            }
            if seq.row_start + seq.n_tokens > n_rows {
                return Err(bad(format!("rows {}..{} of {n_rows}", seq.row_start, seq.row_start + seq.n_tokens)));
            }
            int("row", seq.row_start + seq.n_tokens)?;
            int("position", seq.end_pos())?;
            int("page index", seq.page_start)?;
            for t in 0..seq.n_tokens {
                let (page, slot) = plan.locate(seq, seq.pos_start + t);
                row_page[seq.row_start + t] = page.0;
                row_slot[seq.row_start + t] = slot as u32;
            }
        }
        let page_ids: Vec<u32> = plan.page_ids.iter().map(|p| p.0).collect();
        let gpu = &self.gpu;
        cache.plan = Some(PlanOnDevice {
            plan: plan.clone(),
            n_rows,
            max_page: page_ids.iter().copied().max(),
            page_ids: gpu.upload(&page_ids)?,
            row_page: gpu.upload(&row_page)?,
            row_slot: gpu.upload(&row_slot)?,
        });
        Ok(())
    }
}

/// Checks that every page the plan names lies in `store`.
fn check_pages(op: &'static str, plan: &PlanOnDevice, store: &CudaKvStore) -> Result<(), EngineError> {
    match plan.max_page {
        Some(p) if p as usize >= store.geometry.capacity_pages => {
            Err(shape_err(op, format!("page {p} outside a store of {} pages", store.geometry.capacity_pages)))
        }
        _ => Ok(()),
    }
}

impl Backend for CudaBackend {
    type Matrix = CudaMatrix;
    type Vector = CudaVector;
    type Act = CudaAct;
    type KvStore = CudaKvStore;
    type Rope = CudaRope;

    fn name(&self) -> &'static str {
        "cuda"
    }

    /// A HiP prefill step prunes one query block per 64 tokens in parallel, and the GEMMs want
    /// thousands of rows: 512-token steps left the GPU mostly idle.
    fn default_prefill_chunk(&self) -> usize {
        4096
    }

    fn device_memory_in_use(&self) -> Option<usize> {
        self.gpu.memory_in_use().ok()
    }

    fn run_step<R: Send>(&self, step: impl FnOnce() -> R + Send) -> R {
        step()
    }

    fn load_matrix(&self, tensor: &TensorRef) -> Result<CudaMatrix, EngineError> {
        let info = tensor.info();
        let [n_in, n_out] = tensor.matrix_dims()?;
        // Dequantise row by row in parallel: rows are whole blocks (checked by the model).
        let ty = info.ty;
        let row_bytes =
            ty.row_bytes(n_in as u64).filter(|b| *b as usize * n_out == tensor.bytes().len()).ok_or_else(|| {
                EngineError::TensorShape {
                    tensor: info.name.clone(),
                    found: info.dims.clone(),
                    expected: vec![n_in as u64, n_out as u64],
                }
            })? as usize;
        let mut host = vec![bf16::ZERO; n_in * n_out];
        host.par_chunks_mut(n_in.max(1)).zip(tensor.bytes().par_chunks(row_bytes.max(1))).try_for_each(
            |(dst, src)| {
                quant::dequantize_to_bf16(ty, src, dst)
                    .map_err(|e| EngineError::InvalidRequest { what: format!("tensor `{}`: {e}", info.name) })
            },
        )?;
        Ok(CudaMatrix { data: self.gpu.upload(&host)?, n_out, n_in })
    }

    fn load_vector(&self, values: &[f32]) -> Result<CudaVector, EngineError> {
        Ok(CudaVector { data: self.gpu.upload(values)?, len: values.len() })
    }

    fn new_kv_store(&self, layout: KvLayout, capacity_pages: usize) -> Result<CudaKvStore, EngineError> {
        let geometry = KvGeometry {
            n_layers: layout.n_layers,
            n_kv_heads: layout.n_kv_heads,
            head_dim: layout.head_dim,
            page_size: layout.page_size,
            capacity_pages,
        };
        Ok(CudaKvStore { data: self.gpu.alloc_zeros(geometry.total_elems())?, geometry })
    }

    fn new_rope(&self, config: &RopeConfig) -> Result<CudaRope, EngineError> {
        Ok(CudaRope {
            table: RopeTable::new(config.clone()),
            cos: self.gpu.alloc_zeros(1)?,
            sin: self.gpu.alloc_zeros(1)?,
            positions: 0,
        })
    }

    fn ensure_rope(&self, rope: &mut CudaRope, n_positions: usize) -> Result<(), EngineError> {
        rope.table.ensure(n_positions);
        let half = rope.table.half();
        let have = if half == 0 { 0 } else { rope.table.len() };
        if have <= rope.positions {
            return Ok(());
        }
        // The host table grows geometrically, so re-uploading it whole is amortised.
        let (cos, sin) = rope.table.rows(0..have);
        rope.cos = self.gpu.upload(cos)?;
        rope.sin = self.gpu.upload(sin)?;
        rope.positions = have;
        Ok(())
    }

    fn new_act(&self, rows: usize, cols: usize) -> Result<CudaAct, EngineError> {
        Ok(CudaAct { data: ActData::Bf16(self.gpu.alloc_zeros(rows * cols)?), rows, cols })
    }

    fn new_act_f32(&self, rows: usize, cols: usize) -> Result<CudaAct, EngineError> {
        Ok(CudaAct { data: ActData::F32(self.gpu.alloc_zeros(rows * cols)?), rows, cols })
    }

    fn set_rows(&self, act: &mut CudaAct, rows: usize) -> Result<(), EngineError> {
        if rows > act.capacity_rows() {
            let keep = act.len();
            let len = rows * act.cols;
            act.data = match &act.data {
                ActData::Bf16(old) => {
                    let mut new = self.gpu.alloc_zeros(len)?;
                    self.gpu.copy(old, &mut new, keep)?;
                    ActData::Bf16(new)
                }
                ActData::F32(old) => {
                    let mut new = self.gpu.alloc_zeros(len)?;
                    self.gpu.copy(old, &mut new, keep)?;
                    ActData::F32(new)
                }
            };
        }
        act.rows = rows;
        Ok(())
    }

    fn to_host(&self, act: &CudaAct) -> Result<Vec<f32>, EngineError> {
        Ok(match &act.data {
            ActData::Bf16(d) => self.gpu.download(d, act.len())?.into_iter().map(f32::from).collect(),
            ActData::F32(d) => self.gpu.download(d, act.len())?,
        })
    }

    fn embed(&self, table: &CudaMatrix, tokens: &[u32], out: &mut CudaAct) -> Result<(), EngineError> {
        if out.rows != tokens.len() || out.cols != table.n_in {
            return Err(shape_err("embed", format!("{} tokens into {}×{}", tokens.len(), out.rows, out.cols)));
        }
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= table.n_out) {
            return Err(EngineError::TokenOutOfRange { id, vocab: table.n_out });
        }
        let mut cache = self.cache()?;
        let buf = ensure_buffer(&self.gpu, &mut cache.tokens, tokens.len())?;
        self.gpu.upload_into(tokens, buf)?;
        let (rows, cols) = (out.rows, out.cols);
        match &mut out.data {
            ActData::Bf16(d) => self.gpu.embed(&table.data, buf, d, rows, cols)?,
            ActData::F32(d) => self.gpu.embed(&table.data, buf, d, rows, cols)?,
        }
        Ok(())
    }

    fn rms_norm(&self, x: &CudaAct, weight: &CudaVector, eps: f32, out: &mut CudaAct) -> Result<(), EngineError> {
        check_same("rms_norm", x, out)?;
        if weight.len != x.cols {
            return Err(shape_err("rms_norm", format!("weight of {} for width {}", weight.len, x.cols)));
        }
        let (rows, cols) = (x.rows, x.cols);
        let dst = out.bf16_mut("rms_norm")?;
        match &x.data {
            ActData::Bf16(d) => self.gpu.rms_norm(d, &weight.data, dst, rows, cols, eps)?,
            ActData::F32(d) => self.gpu.rms_norm(d, &weight.data, dst, rows, cols, eps)?,
        }
        Ok(())
    }

    fn matmul(&self, x: &CudaAct, w: &CudaMatrix, out: &mut CudaAct) -> Result<(), EngineError> {
        if x.cols != w.n_in || out.cols != w.n_out || out.rows != x.rows {
            return Err(shape_err(
                "matmul",
                format!("{}×{} · ({}×{})ᵀ into {}×{}", x.rows, x.cols, w.n_out, w.n_in, out.rows, out.cols),
            ));
        }
        let target = match &mut out.data {
            ActData::Bf16(d) => GemmOut::Bf16(d),
            ActData::F32(d) => GemmOut::F32(d),
        };
        self.gpu.gemm(x.bf16("matmul")?, &w.data, target, x.rows, w.n_out, w.n_in)?;
        Ok(())
    }

    fn add_bias(&self, x: &mut CudaAct, bias: &CudaVector) -> Result<(), EngineError> {
        if bias.len != x.cols {
            return Err(shape_err("add_bias", format!("bias of {} for width {}", bias.len, x.cols)));
        }
        let (rows, cols) = (x.rows, x.cols);
        self.gpu.add_bias(x.bf16_mut("add_bias")?, &bias.data, rows, cols)?;
        Ok(())
    }

    fn add_assign(&self, x: &mut CudaAct, y: &CudaAct) -> Result<(), EngineError> {
        check_same("add_assign", x, y)?;
        let n = x.len();
        let y = y.bf16("add_assign")?;
        match &mut x.data {
            ActData::Bf16(d) => self.gpu.add_assign(d, y, n)?,
            ActData::F32(d) => self.gpu.add_assign(d, y, n)?,
        }
        Ok(())
    }

    fn swiglu(&self, gate: &mut CudaAct, up: &CudaAct) -> Result<(), EngineError> {
        check_same("swiglu", gate, up)?;
        let n = gate.len();
        self.gpu.swiglu(gate.bf16_mut("swiglu")?, up.bf16("swiglu")?, n)?;
        Ok(())
    }

    fn gather_rows(&self, x: &CudaAct, rows: &[usize], out: &mut CudaAct) -> Result<(), EngineError> {
        if out.rows != rows.len() || out.cols != x.cols || rows.iter().any(|&r| r >= x.rows) {
            return Err(shape_err("gather_rows", format!("rows {rows:?} of {}×{}", x.rows, x.cols)));
        }
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let mut cache = self.cache()?;
        let buf = ensure_buffer(&self.gpu, &mut cache.rows, idx.len())?;
        self.gpu.upload_into(&idx, buf)?;
        let (n, cols) = (out.rows, out.cols);
        match (&x.data, &mut out.data) {
            (ActData::Bf16(src), ActData::Bf16(dst)) => self.gpu.gather_rows(src, buf, dst, n, cols)?,
            (ActData::F32(src), ActData::F32(dst)) => self.gpu.gather_rows(src, buf, dst, n, cols)?,
            _ => return Err(shape_err("gather_rows", "source and destination of different precisions".to_string())),
        }
        Ok(())
    }

    fn kv_write(
        &self,
        store: &mut CudaKvStore,
        layer: usize,
        k: &CudaAct,
        v: &CudaAct,
        plan: &BatchPlan,
    ) -> Result<(), EngineError> {
        let g = store.geometry;
        let width = g.n_kv_heads * g.head_dim;
        if k.cols != width || v.cols != width || k.rows != plan.n_rows() || v.rows != k.rows || layer >= g.n_layers {
            return Err(shape_err(
                "kv_write",
                format!("K {}×{}, V {}×{}, width {width}, layer {layer}", k.rows, k.cols, v.rows, v.cols),
            ));
        }
        if plan.page_size != g.page_size {
            return Err(shape_err(
                "kv_write",
                format!("plan pages of {} for a store of {}", plan.page_size, g.page_size),
            ));
        }
        let mut cache = self.cache()?;
        self.ensure_plan(&mut cache, plan)?;
        let p = cache.plan.as_ref().ok_or_else(|| shape_err("kv_write", "no plan".to_string()))?;
        check_pages("kv_write", p, store)?;
        self.gpu.kv_write(
            &mut store.data,
            g,
            layer,
            k.bf16("kv_write")?,
            v.bf16("kv_write")?,
            &p.row_page,
            &p.row_slot,
            p.n_rows,
        )?;
        Ok(())
    }

    fn attention(
        &self,
        store: &CudaKvStore,
        layer: usize,
        q: &CudaAct,
        plan: &BatchPlan,
        shape: AttentionShape,
        rope: &CudaRope,
        hip: &mut [Option<&mut HipSeqState>],
        out: &mut CudaAct,
    ) -> Result<(), EngineError> {
        let width = shape.n_heads * shape.head_dim;
        if q.cols != width || out.cols != width || q.rows != plan.n_rows() || out.rows != q.rows {
            return Err(shape_err("attention", format!("q {}×{}, out {}×{}", q.rows, q.cols, out.rows, out.cols)));
        }
        if hip.len() != plan.seqs.len() {
            return Err(shape_err("attention", format!("{} HiP states for {} sequences", hip.len(), plan.seqs.len())));
        }
        let half = rope.table.half();
        if half > 0 && rope.positions < plan.max_end_pos() {
            return Err(shape_err("attention", format!("RoPE table covers {} positions", rope.positions)));
        }
        if plan.page_size != store.geometry.page_size {
            return Err(shape_err(
                "attention",
                format!("plan pages of {} for a store of {}", plan.page_size, store.geometry.page_size),
            ));
        }
        let mut guard = self.cache()?;
        let cache = &mut *guard;
        self.ensure_plan(cache, plan)?;
        let StepCache { plan: Some(p), attn, scratch, hip: hip_step, .. } = cache else {
            return Err(shape_err("attention", "no plan".to_string()));
        };
        check_pages("attention", p, store)?;
        let attn_shape = AttnShape {
            n_heads: shape.n_heads,
            n_kv_heads: shape.n_kv_heads,
            head_dim: shape.head_dim,
            scale: shape.scale,
            rope_half: half,
            rope_adjacent: rope.table.config().style == RopeStyle::Adjacent,
        };
        let q_dev = q.bf16("attention")?;
        let step =
            HipStepInputs { backend: self, store, layer, q: q_dev, page_ids: &p.page_ids, shape: attn_shape, rope };
        let (runs, masks) = step.runs(plan, hip, hip_step)?;

        let heads = (shape.n_heads, shape.n_kv_heads);
        let max_selected = masks.as_ref().map_or(0, |m| m.max_selected);
        if attn.as_ref().is_none_or(|a| a.heads != heads || a.max_selected != max_selected || a.plan.runs != runs) {
            let fast_decode = attention::fast_decode_supported(half, attn_shape.rope_adjacent);
            *attn = Some(AttnOnDevice {
                heads,
                max_selected,
                plan: DevicePlan::new(
                    &self.gpu,
                    runs,
                    p.n_rows,
                    shape.n_heads,
                    shape.n_kv_heads,
                    fast_decode,
                    max_selected,
                )?,
            });
        }
        let a = attn.as_ref().ok_or_else(|| shape_err("attention", "no attention plan".to_string()))?;
        let need = a.plan.scratch_len(shape.n_heads, shape.head_dim);
        if scratch.as_ref().is_none_or(|s| s.acc.len() < need.0 || s.ml.len() < need.1) {
            *scratch = Some(AttnScratch {
                acc: self.gpu.alloc_zeros(need.0.next_power_of_two())?,
                ml: self.gpu.alloc_zeros(need.1.next_power_of_two())?,
            });
        }
        let scratch = scratch.as_mut().ok_or_else(|| shape_err("attention", "no scratch".to_string()))?;
        let step_masks = match (&masks, hip_step.as_ref()) {
            (Some(m), Some(h)) => Some(StepMasks { masks: &h.masks, n_masks: m.n_masks, block_k: m.block_k }),
            _ => None,
        };
        let step = a.plan.step(&p.page_ids, step_masks);
        self.gpu.attention(
            &store.data,
            store.geometry,
            layer,
            q_dev,
            &step,
            attn_shape,
            &rope.cos,
            &rope.sin,
            scratch,
            out.bf16_mut("attention")?,
        )?;
        Ok(())
    }
}

/// What the step's HiP masks are: how many, their block size, and the most tokens one selects.
struct MaskLayout {
    n_masks: usize,
    block_k: usize,
    max_selected: usize,
}

/// The inputs of one layer's attention that HiP's pruning reads.
struct HipStepInputs<'a> {
    backend: &'a CudaBackend,
    store: &'a CudaKvStore,
    layer: usize,
    q: &'a CudaSlice<bf16>,
    page_ids: &'a CudaSlice<u32>,
    shape: AttnShape,
    rope: &'a CudaRope,
}

impl HipStepInputs<'_> {
    fn pruning_inputs<'b>(
        &'b self,
        cfg: &HipConfig,
        entries: &'b CudaSlice<HipSeq>,
        n: usize,
        max_n_q: usize,
    ) -> HipInputs<'b> {
        HipInputs {
            store: &self.store.data,
            geometry: self.store.geometry,
            layer: self.layer,
            q: self.q,
            page_ids: self.page_ids,
            seqs: entries,
            n_seqs: n,
            cos: &self.rope.cos,
            sin: &self.rope.sin,
            shape: self.shape,
            n_sink: cfg.n_sink,
            n_window: cfg.n_window,
            max_n_q,
        }
    }

    /// The step's runs, one per dense sequence and one per HiP query block, and the HiP masks
    /// they index, estimated into `hip_step` (which grows to hold them).
    fn runs(
        &self,
        plan: &BatchPlan,
        hip: &mut [Option<&mut HipSeqState>],
        hip_step: &mut Option<HipStep>,
    ) -> Result<(Vec<SeqDesc>, Option<MaskLayout>), EngineError> {
        let gpu = &self.backend.gpu;
        let n_layers = self.store.geometry.n_layers;
        // The masks' layout: every HiP sequence of the step shares one block size and stride.
        let mut layout: Option<(MaskLayout, usize)> = None;
        for (seq, state) in plan.seqs.iter().zip(hip.iter()) {
            let Some(state) = state else { continue };
            let cfg = state.config();
            let last = cfg.n_stages() - 1;
            let (blocks, single) = seq.hip_query_blocks(cfg.b_q);
            let n = blocks.len() + single.is_some() as usize;
            let selected = (0..n_layers).map(|l| cfg.layer_params(l).k).max().unwrap_or(0);
            let stride = stage_stride(cfg, last, n_layers);
            match &mut layout {
                None => {
                    layout = Some((MaskLayout { n_masks: n, block_k: cfg.block_k(), max_selected: selected }, stride))
                }
                Some((m, st)) => {
                    if m.block_k != cfg.block_k() {
                        return Err(shape_err(
                            "attention",
                            format!(
                                "HiP sequences with blocks of {} and {} tokens in one step",
                                m.block_k,
                                cfg.block_k()
                            ),
                        ));
                    }
                    m.n_masks += n;
                    m.max_selected = m.max_selected.max(selected);
                    *st = (*st).max(stride);
                }
            }
        }
        let mut runs = Vec::with_capacity(plan.seqs.len());
        let Some((layout, stride)) = layout else {
            for seq in &plan.seqs {
                runs.push(SeqDesc::dense(
                    seq.row_start as i32,
                    seq.n_tokens as i32,
                    seq.pos_start as i32,
                    seq.page_start as i32,
                ));
            }
            return Ok((runs, None));
        };
        if hip_step.as_ref().is_none_or(|h| h.masks.stride != stride || h.masks.counts.len() < 2 * layout.n_masks) {
            let n = layout.n_masks.next_power_of_two();
            *hip_step = Some(HipStep {
                stages: HipStages::new(gpu)?,
                entries: gpu.upload(&vec![HipSeq::default(); n])?,
                masks: StageOutput::new(gpu, n, stride)?,
            });
        }
        let h = hip_step.as_mut().ok_or_else(|| shape_err("attention", "no HiP buffers".to_string()))?;
        let mut next_mask = 0;
        for (seq, state) in plan.seqs.iter().zip(hip.iter_mut()) {
            let Some(state) = state else {
                runs.push(SeqDesc::dense(
                    seq.row_start as i32,
                    seq.n_tokens as i32,
                    seq.pos_start as i32,
                    seq.page_start as i32,
                ));
                continue;
            };
            let cfg = state.config().clone();
            let (entries, single) = block_entries(&cfg, self.layer, seq);
            if !entries.is_empty() {
                if h.entries.len() < entries.len() {
                    h.entries = gpu.upload(&vec![HipSeq::default(); entries.len().next_power_of_two()])?;
                }
                gpu.upload_into(&entries, &mut h.entries)?;
                let max_w = entries.iter().map(|e| e.window_end as usize).max().unwrap_or(0);
                let inp = self.pruning_inputs(&cfg, &h.entries, entries.len(), cfg.b_q);
                h.stages.refresh(gpu, &inp, &cfg, self.layer, n_layers, max_w, 0)?;
                copy_masks(gpu, h.stages.masks()?, entries.len(), &mut h.masks, next_mask)?;
                runs.extend(entries.iter().enumerate().map(|(i, e)| masked_run(&cfg, e, next_mask + i)));
                next_mask += entries.len();
            }
            if let Some(t) = single {
                let slot = state.gpu_layer_mut(self.layer);
                if slot.is_none() {
                    *slot = Some(GpuDecodeCache::new(gpu)?);
                }
                let cache = slot.as_mut().ok_or_else(|| shape_err("attention", "no decode cache".to_string()))?;
                if seq.n_tokens > 1 {
                    // A sampled last token starts the decode cycle that the next steps continue.
                    cache.reset();
                }
                let inp = self.pruning_inputs(&cfg, &h.entries, 1, 1);
                let (row, pos) = (seq.row_start + t, seq.pos_start + t);
                let entry = cache.step(gpu, &inp, &cfg, self.layer, n_layers, row, pos, seq.page_start)?;
                copy_masks(gpu, cache.mask()?, 1, &mut h.masks, next_mask)?;
                runs.push(masked_run(&cfg, &entry, next_mask));
                next_mask += 1;
            }
        }
        Ok((runs, Some(layout)))
    }
}

/// Copies the first `n` masks of `src` to masks `at..at + n` of `dst` (strides may differ;
/// `dst`'s is at least `src`'s).
fn copy_masks(gpu: &Gpu, src: &StageOutput, n: usize, dst: &mut StageOutput, at: usize) -> Result<(), EngineError> {
    if src.stride > dst.stride {
        return Err(shape_err("attention", format!("masks of {} blocks into rows of {}", src.stride, dst.stride)));
    }
    if src.stride == dst.stride {
        gpu.copy_range(&src.starts, 0, &mut dst.starts, at * dst.stride, n * src.stride)?;
    } else {
        // Rows of a narrower source: one copy each (the counts say how many are valid).
        for i in 0..n {
            gpu.copy_range(&src.starts, i * src.stride, &mut dst.starts, (at + i) * dst.stride, src.stride)?;
        }
    }
    gpu.copy_range(&src.counts, 0, &mut dst.counts, 2 * at, 2 * n)?;
    Ok(())
}
