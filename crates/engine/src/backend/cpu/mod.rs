//! The CPU backend: f32 activations, f32 accumulation, weights used in place from the mmap'd
//! GGUF file, parallel with rayon on a pool of its own.
//!
//! This is the readable reference that every GPU kernel is checked against; speed comes from
//! the matmul (fused dequantise-dot for decode, panel GEMM for prefill) and a flash-style
//! attention loop, not from tricks that change results.

mod attention;
mod matmul;
mod simd;

use infinihip_core::hip::KvSource;
use infinihip_core::quant;
use infinihip_core::rope::{RopeConfig, RopeTable};
use rayon::prelude::*;

use super::{AttentionShape, Backend, BatchPlan, TensorRef};
use crate::error::EngineError;
use crate::hip_state::HipSeqState;
use crate::kv::{KvLayout, PageId};
use matmul::QuantMatrix;

/// The CPU backend and its thread pool.
pub struct CpuBackend {
    pool: rayon::ThreadPool,
}

impl CpuBackend {
    /// `threads = 0` uses one thread per available core.
    pub fn new(threads: usize) -> Result<Self, EngineError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("infinihip-cpu-{i}"))
            .build()
            .map_err(|e| EngineError::InvalidRequest { what: format!("cannot start {threads} CPU threads: {e}") })?;
        Ok(Self { pool })
    }

    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }
}

/// A weight matrix borrowed from the GGUF file.
pub struct CpuMatrix {
    tensor: TensorRef,
    n_out: usize,
    n_in: usize,
}

impl CpuMatrix {
    fn view(&self) -> QuantMatrix<'_> {
        QuantMatrix { ty: self.tensor.info().ty, bytes: self.tensor.bytes(), n_out: self.n_out, n_in: self.n_in }
    }
}

/// A row-major f32 matrix whose row count can change within its allocation.
#[derive(Debug, Clone)]
pub struct CpuAct {
    data: Vec<f32>,
    rows: usize,
    cols: usize,
}

impl CpuAct {
    pub fn from_vec(data: Vec<f32>, rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "CpuAct::from_vec: data does not match {rows}×{cols}");
        Self { data, rows, cols }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.data[..self.rows * self.cols]
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data[..self.rows * self.cols]
    }
}

/// K and V of every page, allocated on first write. Page `p` holds
/// `[layer][K|V][slot][Hkv][d]` f32 values.
pub struct CpuKvStore {
    layout: KvLayout,
    pages: Vec<Vec<f32>>,
}

impl CpuKvStore {
    fn page(&self, id: PageId) -> &[f32] {
        &self.pages[id.0 as usize]
    }

    fn offset(&self, layer: usize, is_value: bool, slot: usize, kv_head: usize) -> usize {
        let l = &self.layout;
        (2 * layer + is_value as usize) * l.layer_page_elems() + (slot * l.n_kv_heads + kv_head) * l.head_dim
    }

    fn key<'a>(&self, page: &'a [f32], layer: usize, slot: usize, kv_head: usize) -> &'a [f32] {
        &page[self.offset(layer, false, slot, kv_head)..][..self.layout.head_dim]
    }

    fn value<'a>(&self, page: &'a [f32], layer: usize, slot: usize, kv_head: usize) -> &'a [f32] {
        &page[self.offset(layer, true, slot, kv_head)..][..self.layout.head_dim]
    }

    /// Bytes of host memory held by written pages.
    pub fn resident_bytes(&self) -> usize {
        self.pages.iter().map(|p| p.len() * 4).sum()
    }

    /// Layer `layer` of the sequence whose pages are `pages` (positions `0..len`), as
    /// `core::hip` reads keys and values.
    pub fn view<'a>(&'a self, layer: usize, pages: &'a [PageId], page_size: usize, len: usize) -> CpuKvView<'a> {
        CpuKvView { store: self, layer, pages, page_size, len }
    }
}

/// One layer of one sequence's pages: un-rotated keys and values by absolute position.
pub struct CpuKvView<'a> {
    store: &'a CpuKvStore,
    layer: usize,
    pages: &'a [PageId],
    page_size: usize,
    len: usize,
}

impl KvSource for CpuKvView<'_> {
    fn len(&self) -> usize {
        self.len
    }
    fn n_kv_heads(&self) -> usize {
        self.store.layout.n_kv_heads
    }
    fn head_dim(&self) -> usize {
        self.store.layout.head_dim
    }
    fn key(&self, pos: usize, kv_head: usize) -> &[f32] {
        let page = self.store.page(self.pages[pos / self.page_size]);
        self.store.key(page, self.layer, pos % self.page_size, kv_head)
    }
    fn value(&self, pos: usize, kv_head: usize) -> &[f32] {
        let page = self.store.page(self.pages[pos / self.page_size]);
        self.store.value(page, self.layer, pos % self.page_size, kv_head)
    }
}

fn shape_err(op: &'static str, detail: String) -> EngineError {
    EngineError::Shape { op, detail }
}

fn check_same(op: &'static str, a: &CpuAct, b: &CpuAct) -> Result<(), EngineError> {
    if (a.rows, a.cols) != (b.rows, b.cols) {
        return Err(shape_err(op, format!("{}×{} vs {}×{}", a.rows, a.cols, b.rows, b.cols)));
    }
    Ok(())
}

/// Row-parallel map over two activation matrices of the same row count.
fn for_each_row(out: &mut CpuAct, x: &CpuAct, f: impl Fn(&[f32], &mut [f32]) + Sync) {
    let (xc, oc) = (x.cols, out.cols);
    let rows = x.rows;
    let src = x.as_slice();
    let dst = out.as_mut_slice();
    if rows <= 2 {
        for (s, d) in src.chunks_exact(xc).zip(dst.chunks_exact_mut(oc)) {
            f(s, d);
        }
    } else {
        src.par_chunks_exact(xc).zip(dst.par_chunks_exact_mut(oc)).for_each(|(s, d)| f(s, d));
    }
}

impl Backend for CpuBackend {
    type Matrix = CpuMatrix;
    type Vector = Vec<f32>;
    type Act = CpuAct;
    type KvStore = CpuKvStore;
    type Rope = RopeTable;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn run_step<R: Send>(&self, step: impl FnOnce() -> R + Send) -> R {
        self.pool.install(step)
    }

    fn load_matrix(&self, tensor: &TensorRef) -> Result<CpuMatrix, EngineError> {
        let [n_in, n_out] = tensor.matrix_dims()?;
        Ok(CpuMatrix { tensor: tensor.clone(), n_out, n_in })
    }

    fn load_vector(&self, values: &[f32]) -> Result<Vec<f32>, EngineError> {
        Ok(values.to_vec())
    }

    fn new_kv_store(&self, layout: KvLayout, capacity_pages: usize) -> Result<CpuKvStore, EngineError> {
        Ok(CpuKvStore { layout, pages: vec![Vec::new(); capacity_pages] })
    }

    fn new_rope(&self, config: &RopeConfig) -> Result<RopeTable, EngineError> {
        Ok(RopeTable::new(config.clone()))
    }

    fn ensure_rope(&self, rope: &mut RopeTable, n_positions: usize) -> Result<(), EngineError> {
        rope.ensure(n_positions);
        Ok(())
    }

    fn new_act(&self, rows: usize, cols: usize) -> Result<CpuAct, EngineError> {
        Ok(CpuAct { data: vec![0.0; rows * cols], rows, cols })
    }

    fn set_rows(&self, act: &mut CpuAct, rows: usize) -> Result<(), EngineError> {
        if rows * act.cols > act.data.len() {
            act.data.resize(rows * act.cols, 0.0);
        }
        act.rows = rows;
        Ok(())
    }

    fn to_host(&self, act: &CpuAct) -> Result<Vec<f32>, EngineError> {
        Ok(act.as_slice().to_vec())
    }

    fn embed(&self, table: &CpuMatrix, tokens: &[u32], out: &mut CpuAct) -> Result<(), EngineError> {
        if out.rows != tokens.len() || out.cols != table.n_in {
            return Err(shape_err("embed", format!("{} tokens into {}×{}", tokens.len(), out.rows, out.cols)));
        }
        let w = table.view();
        let row_bytes = w.n_in / w.ty.block_elems() * w.ty.block_bytes();
        for (&id, dst) in tokens.iter().zip(out.as_mut_slice().chunks_exact_mut(w.n_in)) {
            if id as usize >= w.n_out {
                return Err(EngineError::TokenOutOfRange { id, vocab: w.n_out });
            }
            let src = &w.bytes[id as usize * row_bytes..][..row_bytes];
            quant::dequantize(w.ty, src, dst).map_err(|e| shape_err("embed", e.to_string()))?;
        }
        Ok(())
    }

    fn rms_norm(&self, x: &CpuAct, weight: &Vec<f32>, eps: f32, out: &mut CpuAct) -> Result<(), EngineError> {
        check_same("rms_norm", x, out)?;
        if weight.len() != x.cols {
            return Err(shape_err("rms_norm", format!("weight of {} for width {}", weight.len(), x.cols)));
        }
        self.pool.install(|| {
            for_each_row(out, x, |s, d| {
                let mean_sq = simd::dot::<false>(s, s) / s.len() as f32;
                let inv = 1.0 / (mean_sq + eps).sqrt();
                for ((o, &v), &w) in d.iter_mut().zip(s).zip(weight) {
                    *o = v * inv * w;
                }
            })
        });
        Ok(())
    }

    fn matmul(&self, x: &CpuAct, w: &CpuMatrix, out: &mut CpuAct) -> Result<(), EngineError> {
        if x.cols != w.n_in || out.cols != w.n_out || out.rows != x.rows {
            return Err(shape_err(
                "matmul",
                format!("{}×{} · ({}×{})ᵀ into {}×{}", x.rows, x.cols, w.n_out, w.n_in, out.rows, out.cols),
            ));
        }
        let rows = x.rows;
        self.pool.install(|| matmul::matmul(x.as_slice(), rows, &w.view(), out.as_mut_slice()));
        Ok(())
    }

    fn add_bias(&self, x: &mut CpuAct, bias: &Vec<f32>) -> Result<(), EngineError> {
        if bias.len() != x.cols {
            return Err(shape_err("add_bias", format!("bias of {} for width {}", bias.len(), x.cols)));
        }
        let cols = x.cols;
        for row in x.as_mut_slice().chunks_exact_mut(cols) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
        Ok(())
    }

    fn add_assign(&self, x: &mut CpuAct, y: &CpuAct) -> Result<(), EngineError> {
        check_same("add_assign", x, y)?;
        for (a, b) in x.as_mut_slice().iter_mut().zip(y.as_slice()) {
            *a += b;
        }
        Ok(())
    }

    fn swiglu(&self, gate: &mut CpuAct, up: &CpuAct) -> Result<(), EngineError> {
        check_same("swiglu", gate, up)?;
        self.pool.install(|| {
            gate.as_mut_slice().par_chunks_mut(4096).zip(up.as_slice().par_chunks(4096)).for_each(|(g, u)| {
                for (gv, &uv) in g.iter_mut().zip(u) {
                    let s = *gv / (1.0 + simd::exp(-*gv));
                    *gv = s * uv;
                }
            })
        });
        Ok(())
    }

    fn gather_rows(&self, x: &CpuAct, rows: &[usize], out: &mut CpuAct) -> Result<(), EngineError> {
        if out.rows != rows.len() || out.cols != x.cols || rows.iter().any(|&r| r >= x.rows) {
            return Err(shape_err("gather_rows", format!("rows {rows:?} of {}×{}", x.rows, x.cols)));
        }
        let cols = x.cols;
        for (i, &r) in rows.iter().enumerate() {
            out.data[i * cols..(i + 1) * cols].copy_from_slice(&x.data[r * cols..(r + 1) * cols]);
        }
        Ok(())
    }

    fn kv_write(
        &self,
        store: &mut CpuKvStore,
        layer: usize,
        k: &CpuAct,
        v: &CpuAct,
        plan: &BatchPlan,
    ) -> Result<(), EngineError> {
        let width = store.layout.token_elems();
        if k.cols != width || v.cols != width || k.rows != plan.n_rows() || v.rows != k.rows {
            return Err(shape_err(
                "kv_write",
                format!("K {}×{}, V {}×{}, width {width}", k.rows, k.cols, v.rows, v.cols),
            ));
        }
        let page_elems = store.layout.page_elems();
        for seq in &plan.seqs {
            for t in 0..seq.n_tokens {
                let (page, slot) = plan.locate(seq, seq.pos_start + t);
                let ko = store.offset(layer, false, slot, 0);
                let vo = store.offset(layer, true, slot, 0);
                let data = store
                    .pages
                    .get_mut(page.0 as usize)
                    .ok_or_else(|| shape_err("kv_write", format!("page {} outside the store", page.0)))?;
                if data.is_empty() {
                    data.resize(page_elems, 0.0);
                }
                let row = seq.row_start + t;
                data[ko..ko + width].copy_from_slice(&k.data[row * width..(row + 1) * width]);
                data[vo..vo + width].copy_from_slice(&v.data[row * width..(row + 1) * width]);
            }
        }
        Ok(())
    }

    fn attention(
        &self,
        store: &CpuKvStore,
        layer: usize,
        q: &CpuAct,
        plan: &BatchPlan,
        shape: AttentionShape,
        rope: &RopeTable,
        hip: &mut [Option<&mut HipSeqState>],
        out: &mut CpuAct,
    ) -> Result<(), EngineError> {
        let width = shape.n_heads * shape.head_dim;
        if q.cols != width || out.cols != width || q.rows != plan.n_rows() || out.rows != q.rows {
            return Err(shape_err("attention", format!("q {}×{}, out {}×{}", q.rows, q.cols, out.rows, out.cols)));
        }
        if rope.len() < plan.max_end_pos() {
            return Err(shape_err("attention", format!("RoPE table covers {} positions", rope.len())));
        }
        for seq in &plan.seqs {
            if let Some(p) = plan.pages(seq)[..seq.end_pos().div_ceil(plan.page_size)]
                .iter()
                .find(|p| store.pages.get(p.0 as usize).is_none_or(|d| d.is_empty()))
            {
                return Err(shape_err("attention", format!("page {} was never written", p.0)));
            }
        }
        if hip.len() != plan.seqs.len() {
            return Err(shape_err("attention", format!("{} HiP states for {} sequences", hip.len(), plan.seqs.len())));
        }
        let rows = q.rows * q.cols;
        self.pool.install(|| {
            attention::attention(store, layer, &q.data[..rows], plan, shape, rope, hip, &mut out.data[..rows])
        })
    }
}
