//! Launchers: one function per kernel (same name), plus memory transfers and the cuBLAS GEMM.
//!
//! Each launcher checks that every buffer is large enough for the shapes it is given before
//! queuing the kernel, so a wrong shape is a [`CudaError::Unsupported`] naming the kernel,
//! never an out-of-bounds access on the device. Launches are asynchronous; transfers to the
//! host wait for the stream.

use cudarc::cublas::sys as blas_sys;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits};
use half::bf16;

use crate::attention::{AttnCta, AttnParams, DecodeParams, DecodeSeq, SeqDesc};
use crate::error::CudaError;
use crate::runtime::Gpu;

/// Threads per block of the row kernels.
const ROW_THREADS: u32 = 256;

fn too_small(kernel: &'static str, what: &str, have: usize, need: usize) -> CudaError {
    CudaError::Unsupported { kernel, what: format!("{what} holds {have} elements, {need} needed") }
}

fn check_len<T>(kernel: &'static str, what: &str, buf: &CudaSlice<T>, need: usize) -> Result<(), CudaError> {
    if buf.len() < need {
        return Err(too_small(kernel, what, buf.len(), need));
    }
    Ok(())
}

/// A size as the kernels' `int`.
fn int(kernel: &'static str, what: &str, v: usize) -> Result<i32, CudaError> {
    i32::try_from(v)
        .map_err(|_| CudaError::Unsupported { kernel, what: format!("{what} = {v} exceeds the kernel's int") })
}

fn rows_grid(rows: usize, kernel: &'static str) -> Result<LaunchConfig, CudaError> {
    let rows = u32::try_from(rows)
        .ok()
        .filter(|&r| r < (1 << 31))
        .ok_or_else(|| CudaError::Unsupported { kernel, what: format!("{rows} rows") })?;
    Ok(LaunchConfig { grid_dim: (rows, 1, 1), block_dim: (ROW_THREADS, 1, 1), shared_mem_bytes: 0 })
}

fn elems_grid(gpu: &Gpu, n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(ROW_THREADS as usize).clamp(1, 8 * gpu.info().multiprocessors) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (ROW_THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// A device buffer's address, for kernel parameter structs.
pub(crate) trait DeviceAddr {
    fn addr(&self, stream: &cudarc::driver::CudaStream) -> u64;
}

impl<T> DeviceAddr for CudaSlice<T> {
    fn addr(&self, stream: &cudarc::driver::CudaStream) -> u64 {
        self.device_ptr(stream).0
    }
}

/// The element types of the residual stream: bf16, or f32 (what the engine uses, so that the
/// running sum over layers is not rounded to bf16 at every addition). Names the instance of
/// each kernel that touches the stream.
pub trait ResidualElem: DeviceRepr + ValidAsZeroBits {
    const EMBED: &'static str;
    const RMS_NORM: &'static str;
    const ADD_ASSIGN: &'static str;
    const GATHER_ROWS: &'static str;
}

impl ResidualElem for bf16 {
    const EMBED: &'static str = "embed";
    const RMS_NORM: &'static str = "rms_norm";
    const ADD_ASSIGN: &'static str = "add_assign";
    const GATHER_ROWS: &'static str = "gather_rows";
}

impl ResidualElem for f32 {
    const EMBED: &'static str = "embed_f32";
    const RMS_NORM: &'static str = "rms_norm_f32";
    const ADD_ASSIGN: &'static str = "add_assign_f32";
    const GATHER_ROWS: &'static str = "gather_rows_f32";
}

/// Where a GEMM writes: bf16 activations, or f32 (logits).
pub enum GemmOut<'a> {
    Bf16(&'a mut CudaSlice<bf16>),
    F32(&'a mut CudaSlice<f32>),
}

/// The geometry of the paged KV store (see `kernels/attention.cu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvGeometry {
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub page_size: usize,
    pub capacity_pages: usize,
}

impl KvGeometry {
    /// Elements of one page: `[layer][K|V][slot][Hkv][d]`.
    pub fn page_elems(&self) -> usize {
        2 * self.n_layers * self.page_size * self.n_kv_heads * self.head_dim
    }

    pub fn total_elems(&self) -> usize {
        self.page_elems() * self.capacity_pages
    }
}

/// The device side of one attention step, as laid out by `attention::plan` and uploaded once.
pub struct AttnStep<'a> {
    pub seqs: &'a CudaSlice<SeqDesc>,
    pub n_seqs: usize,
    pub page_ids: &'a CudaSlice<u32>,
    /// Decode sequences for `decode_partial` (`attention::plan` with `fast_decode`).
    pub decode_seqs: &'a CudaSlice<DecodeSeq>,
    pub n_decode_seqs: usize,
    /// Work items of every other run, for `attn_prefill_tc`.
    pub prefill: &'a CudaSlice<AttnCta>,
    pub n_prefill: usize,
    pub n_splits: &'a CudaSlice<i32>,
    pub max_splits: usize,
    pub n_rows: usize,
    /// The HiP masks that runs with `SeqDesc::mask ≥ 0` index; `None` when every run is dense.
    pub masks: Option<StepMasks<'a>>,
}

/// HiP masks of a step: `n_masks` masks of selected block starts (`[mask][starts.stride]`,
/// ascending) and counts (`[mask][2]`: blocks, selected tokens), blocks of `block_k` tokens.
#[derive(Clone, Copy)]
pub struct StepMasks<'a> {
    pub masks: &'a crate::hip::StageOutput,
    pub n_masks: usize,
    pub block_k: usize,
}

/// The attention shape and RoPE of a layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    /// Rotated pairs per head (`RopeTable::half`).
    pub rope_half: usize,
    /// Adjacent pairs (GGUF llama) rather than halves (Qwen2).
    pub rope_adjacent: bool,
}

/// Scratch for the split partials of one step: `acc` `[rows·H·max_splits][d]`, `ml` `[..][2]`.
pub struct AttnScratch {
    pub acc: CudaSlice<f32>,
    pub ml: CudaSlice<f32>,
}

impl Gpu {
    /// A zeroed buffer of `len` elements (at least one, so that every buffer has an address).
    pub fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<CudaSlice<T>, CudaError> {
        self.stream().alloc_zeros(len.max(1)).map_err(self.driver_err("allocating device memory"))
    }

    /// A new buffer holding `src`.
    pub fn upload<T: DeviceRepr>(&self, src: &[T]) -> Result<CudaSlice<T>, CudaError> {
        if src.is_empty() {
            // SAFETY: a one-element buffer that nothing reads before it is written.
            return unsafe { self.stream().alloc(1) }.map_err(self.driver_err("allocating device memory"));
        }
        self.stream().clone_htod(src).map_err(self.driver_err("copying to the device"))
    }

    /// Copies `src` into the start of `dst`.
    pub fn upload_into<T: DeviceRepr>(&self, src: &[T], dst: &mut CudaSlice<T>) -> Result<(), CudaError> {
        if src.is_empty() {
            return Ok(());
        }
        check_len("upload", "the destination", dst, src.len())?;
        let mut view = dst.slice_mut(..src.len());
        self.stream().memcpy_htod(src, &mut view).map_err(self.driver_err("copying to the device"))
    }

    /// Copies the first `len` elements of `src` to the host (waits for the stream).
    pub fn download<T: DeviceRepr + Default + Clone>(
        &self,
        src: &CudaSlice<T>,
        len: usize,
    ) -> Result<Vec<T>, CudaError> {
        check_len("download", "the source", src, len)?;
        let mut out = vec![T::default(); len];
        if len > 0 {
            self.stream()
                .memcpy_dtoh(&src.slice(..len), &mut out)
                .map_err(|source| CudaError::Sync { last_kernel: self.last_kernel(), source })?;
            self.synchronize()?;
        }
        Ok(out)
    }

    /// Copies the first `len` elements of `src` into `dst`.
    pub fn copy<T: DeviceRepr>(&self, src: &CudaSlice<T>, dst: &mut CudaSlice<T>, len: usize) -> Result<(), CudaError> {
        self.copy_range(src, 0, dst, 0, len)
    }

    /// Copies `src[from..from + len]` to `dst[to..to + len]` (device to device).
    pub fn copy_range<T: DeviceRepr>(
        &self,
        src: &CudaSlice<T>,
        from: usize,
        dst: &mut CudaSlice<T>,
        to: usize,
        len: usize,
    ) -> Result<(), CudaError> {
        check_len("copy", "the source", src, from + len)?;
        check_len("copy", "the destination", dst, to + len)?;
        if len == 0 {
            return Ok(());
        }
        self.stream()
            .memcpy_dtod(&src.slice(from..from + len), &mut dst.slice_mut(to..to + len))
            .map_err(self.driver_err("copying on the device"))
    }

    /// `out[rows][n] = x[rows][k] · w[n][k]ᵀ` with bf16 inputs and f32 accumulation (cuBLAS).
    pub fn gemm(
        &self,
        x: &CudaSlice<bf16>,
        w: &CudaSlice<bf16>,
        out: GemmOut<'_>,
        rows: usize,
        n: usize,
        k: usize,
    ) -> Result<(), CudaError> {
        const OP: &str = "gemm";
        check_len(OP, "x", x, rows * k)?;
        check_len(OP, "w", w, n * k)?;
        let (m_i, n_i, k_i) = (int(OP, "n", n)?, int(OP, "rows", rows)?, int(OP, "k", k)?);
        if rows == 0 {
            return Ok(());
        }
        let stream = self.stream();
        let (x_ptr, _x) = x.device_ptr(stream);
        let (w_ptr, _w) = w.device_ptr(stream);
        let (alpha, beta) = (1f32, 0f32);
        // Row-major Y = X·Wᵀ is column-major Yᵀ = W·Xᵀ: cuBLAS sees W as a k×n column-major
        // matrix (transposed), X as k×rows, and writes Yᵀ as n×rows with leading dimension n.
        let (c_ptr, c_type, _c) = match out {
            GemmOut::Bf16(y) => {
                check_len(OP, "out", y, rows * n)?;
                let (p, s) = y.device_ptr_mut(stream);
                (p, blas_sys::cudaDataType::CUDA_R_16BF, s)
            }
            GemmOut::F32(y) => {
                check_len(OP, "out", y, rows * n)?;
                let (p, s) = y.device_ptr_mut(stream);
                (p, blas_sys::cudaDataType::CUDA_R_32F, s)
            }
        };
        // SAFETY: the buffers hold the sizes checked above; alpha and beta live across the call
        // (host pointer mode).
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.blas().handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                m_i,
                n_i,
                k_i,
                &alpha as *const f32 as *const _,
                w_ptr as *const _,
                blas_sys::cudaDataType::CUDA_R_16BF,
                k_i,
                x_ptr as *const _,
                blas_sys::cudaDataType::CUDA_R_16BF,
                k_i,
                &beta as *const f32 as *const _,
                c_ptr as *mut _,
                c_type,
                m_i,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|source| CudaError::Blas { op: "bf16 GEMM (cublasGemmEx)", source })
    }

    /// `out[t] = table[tokens[t]]`; token ids must be below the table's rows (checked by the
    /// caller, which knows the vocabulary).
    pub fn embed<T: ResidualElem>(
        &self,
        table: &CudaSlice<bf16>,
        tokens: &CudaSlice<u32>,
        out: &mut CudaSlice<T>,
        rows: usize,
        cols: usize,
    ) -> Result<(), CudaError> {
        let kernel = T::EMBED;
        check_len(kernel, "tokens", tokens, rows)?;
        check_len(kernel, "out", out, rows * cols)?;
        let cols_i = int(kernel, "cols", cols)?;
        if rows == 0 {
            return Ok(());
        }
        let mut l = self.launch(kernel)?;
        l.args.arg(table).arg(tokens).arg(out).arg(&cols_i);
        // SAFETY: argument types match the kernel; sizes checked above.
        unsafe { l.run(rows_grid(rows, kernel)?) }
    }

    /// `out[t] = x[t] / sqrt(mean(x[t]²) + eps) · weight`.
    pub fn rms_norm<T: ResidualElem>(
        &self,
        x: &CudaSlice<T>,
        weight: &CudaSlice<f32>,
        out: &mut CudaSlice<bf16>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<(), CudaError> {
        let kernel = T::RMS_NORM;
        check_len(kernel, "x", x, rows * cols)?;
        check_len(kernel, "weight", weight, cols)?;
        check_len(kernel, "out", out, rows * cols)?;
        let cols_i = int(kernel, "cols", cols)?;
        if rows == 0 {
            return Ok(());
        }
        let mut l = self.launch(kernel)?;
        l.args.arg(x).arg(weight).arg(out).arg(&cols_i).arg(&eps);
        // SAFETY: as in `embed`.
        unsafe { l.run(rows_grid(rows, kernel)?) }
    }

    /// `x += y` over the first `n` elements.
    pub fn add_assign<T: ResidualElem>(
        &self,
        x: &mut CudaSlice<T>,
        y: &CudaSlice<bf16>,
        n: usize,
    ) -> Result<(), CudaError> {
        let kernel = T::ADD_ASSIGN;
        check_len(kernel, "x", x, n)?;
        check_len(kernel, "y", y, n)?;
        if n == 0 {
            return Ok(());
        }
        let n_i = n as i64;
        let mut l = self.launch(kernel)?;
        l.args.arg(x).arg(y).arg(&n_i);
        // SAFETY: as in `embed`.
        unsafe { l.run(elems_grid(self, n)) }
    }

    /// `x[t][c] += bias[c]`.
    pub fn add_bias(
        &self,
        x: &mut CudaSlice<bf16>,
        bias: &CudaSlice<f32>,
        rows: usize,
        cols: usize,
    ) -> Result<(), CudaError> {
        const K: &str = "add_bias";
        check_len(K, "x", x, rows * cols)?;
        check_len(K, "bias", bias, cols)?;
        let cols_i = int(K, "cols", cols)?;
        if rows == 0 {
            return Ok(());
        }
        let mut l = self.launch(K)?;
        l.args.arg(x).arg(bias).arg(&cols_i);
        // SAFETY: as in `embed`.
        unsafe { l.run(rows_grid(rows, K)?) }
    }

    /// `gate = silu(gate) · up` over the first `n` elements.
    pub fn swiglu(&self, gate: &mut CudaSlice<bf16>, up: &CudaSlice<bf16>, n: usize) -> Result<(), CudaError> {
        const K: &str = "swiglu";
        check_len(K, "gate", gate, n)?;
        check_len(K, "up", up, n)?;
        if n == 0 {
            return Ok(());
        }
        let n_i = n as i64;
        let mut l = self.launch(K)?;
        l.args.arg(gate).arg(up).arg(&n_i);
        // SAFETY: as in `embed`.
        unsafe { l.run(elems_grid(self, n)) }
    }

    /// `out[i] = x[rows[i]]` for `n_out` rows; every index must be a row of `x` (checked by
    /// the caller).
    pub fn gather_rows<T: ResidualElem>(
        &self,
        x: &CudaSlice<T>,
        rows: &CudaSlice<u32>,
        out: &mut CudaSlice<T>,
        n_out: usize,
        cols: usize,
    ) -> Result<(), CudaError> {
        let kernel = T::GATHER_ROWS;
        check_len(kernel, "rows", rows, n_out)?;
        check_len(kernel, "out", out, n_out * cols)?;
        let cols_i = int(kernel, "cols", cols)?;
        if n_out == 0 {
            return Ok(());
        }
        let mut l = self.launch(kernel)?;
        l.args.arg(x).arg(rows).arg(out).arg(&cols_i);
        // SAFETY: as in `embed`.
        unsafe { l.run(rows_grid(n_out, kernel)?) }
    }

    /// Fills the first `n` elements of `x` with uniform values in `[lo, hi)` from a hash of
    /// `(seed, index)`: the same seed gives the same tensor. For benchmark-sized inputs.
    pub fn fill_uniform(
        &self,
        x: &mut CudaSlice<bf16>,
        n: usize,
        seed: u64,
        lo: f32,
        hi: f32,
    ) -> Result<(), CudaError> {
        const K: &str = "fill_uniform";
        check_len(K, "x", x, n)?;
        if n == 0 {
            return Ok(());
        }
        let n_i = n as i64;
        let mut l = self.launch(K)?;
        l.args.arg(x).arg(&n_i).arg(&seed).arg(&lo).arg(&hi);
        // SAFETY: as in `embed`.
        unsafe { l.run(elems_grid(self, n)) }
    }

    /// Stores rows `0..rows` of `k` and `v` (`[rows][Hkv·d]`, un-rotated) of `layer` into slot
    /// `row_slot[t]` of page `row_page[t]`; pages and slots must be in range (checked by the
    /// caller).
    #[allow(clippy::too_many_arguments)]
    pub fn kv_write(
        &self,
        store: &mut CudaSlice<bf16>,
        geometry: KvGeometry,
        layer: usize,
        k: &CudaSlice<bf16>,
        v: &CudaSlice<bf16>,
        row_page: &CudaSlice<u32>,
        row_slot: &CudaSlice<u32>,
        rows: usize,
    ) -> Result<(), CudaError> {
        const K: &str = "kv_write";
        let width = geometry.n_kv_heads * geometry.head_dim;
        check_len(K, "the store", store, geometry.total_elems())?;
        check_len(K, "k", k, rows * width)?;
        check_len(K, "v", v, rows * width)?;
        check_len(K, "row_page", row_page, rows)?;
        check_len(K, "row_slot", row_slot, rows)?;
        if layer >= geometry.n_layers {
            return Err(CudaError::Unsupported { kernel: K, what: format!("layer {layer} of {}", geometry.n_layers) });
        }
        let args = [
            int(K, "width", width)?,
            int(K, "page_size", geometry.page_size)?,
            int(K, "n_layers", geometry.n_layers)?,
            layer as i32,
        ];
        if rows == 0 {
            return Ok(());
        }
        let mut l = self.launch(K)?;
        l.args.arg(store).arg(k).arg(v).arg(row_page).arg(row_slot);
        for a in &args {
            l.args.arg(a);
        }
        // SAFETY: as in `embed`.
        unsafe { l.run(rows_grid(rows, K)?) }
    }

    /// Dense causal attention of one layer (`kernels/attention.cu`): partials per split, then
    /// the combine into `out` (`[rows][H·d]` bf16). `cos`/`sin` must cover every position of
    /// the step, and the step's pages must lie in the store (checked by the caller).
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        store: &CudaSlice<bf16>,
        geometry: KvGeometry,
        layer: usize,
        q: &CudaSlice<bf16>,
        step: &AttnStep<'_>,
        shape: AttnShape,
        cos: &CudaSlice<f32>,
        sin: &CudaSlice<f32>,
        scratch: &mut AttnScratch,
        out: &mut CudaSlice<bf16>,
    ) -> Result<(), CudaError> {
        const K: &str = "attention";
        let d = shape.head_dim;
        if !(d == 64 || d == 128) || d != geometry.head_dim {
            return Err(CudaError::Unsupported {
                kernel: K,
                what: format!("head dimension {d} (64 and 128 are built)"),
            });
        }
        if shape.n_kv_heads == 0
            || !shape.n_heads.is_multiple_of(shape.n_kv_heads)
            || shape.n_kv_heads != geometry.n_kv_heads
        {
            return Err(CudaError::Unsupported {
                kernel: K,
                what: format!("{} query heads over {} KV heads", shape.n_heads, shape.n_kv_heads),
            });
        }
        if layer >= geometry.n_layers || 2 * shape.rope_half > d {
            return Err(CudaError::Unsupported {
                kernel: K,
                what: format!("layer {layer}, {} rotated pairs", shape.rope_half),
            });
        }
        let width = shape.n_heads * d;
        let slots = step.n_rows * shape.n_heads * step.max_splits;
        check_len(K, "q", q, step.n_rows * width)?;
        check_len(K, "out", out, step.n_rows * width)?;
        check_len(K, "the store", store, geometry.total_elems())?;
        check_len(K, "seqs", step.seqs, step.n_seqs)?;
        check_len(K, "decode sequences", step.decode_seqs, step.n_decode_seqs)?;
        if step.n_decode_seqs > 0 && !crate::attention::fast_decode_supported(shape.rope_half, shape.rope_adjacent) {
            return Err(CudaError::Unsupported {
                kernel: "decode_partial",
                what: format!("halves RoPE over {} pairs (a multiple of 8 is needed)", shape.rope_half),
            });
        }
        check_len(K, "prefill items", step.prefill, step.n_prefill)?;
        check_len(K, "n_splits", step.n_splits, step.n_rows * shape.n_heads)?;
        check_len(K, "partials", &scratch.acc, slots * d)?;
        check_len(K, "partial maxima", &scratch.ml, slots * 2)?;
        if let Some(m) = &step.masks {
            check_len(K, "mask blocks", &m.masks.starts, m.n_masks * m.masks.stride)?;
            check_len(K, "mask counts", &m.masks.counts, m.n_masks * 2)?;
            if m.block_k == 0 {
                return Err(CudaError::Unsupported { kernel: K, what: "masks of 0-token blocks".into() });
            }
        }
        if step.n_rows == 0 {
            return Ok(());
        }
        let stream = self.stream();
        // Raw addresses for the parameter struct. With event tracking off (see `runtime`) the
        // guards that device_ptr returns do nothing, so dropping them at once is harmless.
        let addr = |buf: &dyn DeviceAddr| buf.addr(stream);
        let (mask_blocks, mask_tokens, max_blocks, block_k) = match &step.masks {
            Some(m) => (
                addr(&m.masks.starts),
                addr(&m.masks.counts),
                int(K, "mask stride", m.masks.stride)?,
                int(K, "block_k", m.block_k)?,
            ),
            None => (0, 0, 0, 1),
        };
        let mut params = AttnParams {
            q: addr(q),
            kv: addr(store),
            page_ids: addr(step.page_ids),
            seqs: addr(step.seqs),
            ctas: 0,
            cos: addr(cos),
            sin: addr(sin),
            part_acc: addr(&scratch.acc),
            part_ml: addr(&scratch.ml),
            mask_blocks,
            mask_tokens,
            n_heads: int(K, "n_heads", shape.n_heads)?,
            n_kv_heads: int(K, "n_kv_heads", shape.n_kv_heads)?,
            n_layers: int(K, "n_layers", geometry.n_layers)?,
            layer: layer as i32,
            page_size: int(K, "page_size", geometry.page_size)?,
            rope_half: int(K, "rope_half", shape.rope_half)?,
            rope_adjacent: shape.rope_adjacent as i32,
            max_splits: int(K, "max_splits", step.max_splits)?,
            max_blocks,
            block_k,
            scale: shape.scale,
            pad: 0,
        };
        let kv_heads = shape.n_kv_heads as u32;
        if step.n_prefill > 0 {
            let kernel = if d == 64 { "attn_prefill_tc_d64" } else { "attn_prefill_tc_d128" };
            params.ctas = addr(step.prefill);
            let n = step.n_prefill;
            let blocks =
                u32::try_from(n).map_err(|_| CudaError::Unsupported { kernel, what: format!("{n} work items") })?;
            let mut l = self.launch(kernel)?;
            l.args.arg(&params);
            let cfg = LaunchConfig { grid_dim: (blocks, kv_heads, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: `params` mirrors the kernel's AttnParams; the buffers it points to were
            // checked above, and the plan's items stay within the step's rows and keys.
            unsafe { l.run(cfg) }?;
        }
        if step.n_decode_seqs > 0 {
            let dp = DecodeParams {
                q: params.q,
                kv: params.kv,
                page_ids: params.page_ids,
                seqs: addr(step.decode_seqs),
                mask_blocks,
                mask_tokens,
                cos: params.cos,
                sin: params.sin,
                part_acc: params.part_acc,
                part_ml: params.part_ml,
                n_heads: params.n_heads,
                n_kv_heads: params.n_kv_heads,
                n_layers: params.n_layers,
                layer: params.layer,
                page_size: params.page_size,
                rope_half: params.rope_half,
                rope_adjacent: params.rope_adjacent,
                max_splits: params.max_splits,
                max_blocks,
                block_k,
                scale: params.scale,
                pad: 0,
            };
            self.decode_partial(&dp, shape, step.n_decode_seqs, step.max_splits)?;
        }
        self.attn_combine(scratch, step.n_splits, out, step.max_splits, step.n_rows * shape.n_heads, d)
    }

    /// Merges the split partials of `n_pairs` (row, head) pairs into `out` (`attn_combine`);
    /// the caller has checked the buffers for `n_pairs · max_splits` partials of `d` values.
    pub(crate) fn attn_combine(
        &self,
        scratch: &AttnScratch,
        n_splits: &CudaSlice<i32>,
        out: &mut CudaSlice<bf16>,
        max_splits: usize,
        n_pairs: usize,
        d: usize,
    ) -> Result<(), CudaError> {
        const K: &str = "attn_combine";
        // COMBINE_MAX_SPLITS in the kernel; 1024 threads are whole groups of d for d = 64, 128.
        // A block per (row, head) gives few blocks at batch 1 (32 for Llama-3.1-8B), so each
        // brings many threads: ncu timed the 256-thread version at 47 µs for 208 splits, twice
        // the attention kernel before it.
        if max_splits > crate::attention::MAX_DECODE_SPLITS || !(d == 64 || d == 128) {
            return Err(CudaError::Unsupported { kernel: K, what: format!("{max_splits} splits of dimension {d}") });
        }
        let (max_splits, d_i) = (int(K, "max_splits", max_splits)?, int(K, "d", d)?);
        let blocks = u32::try_from(n_pairs)
            .map_err(|_| CudaError::Unsupported { kernel: K, what: format!("{n_pairs} (row, head) pairs") })?;
        // One group of d threads per split, up to 1024 threads: a prefill step's (row, head)
        // pairs have one or a few splits, and 1024 threads for each left most of them idle.
        let threads = (d * max_splits as usize).clamp(d.max(32), 1024) as u32;
        let mut l = self.launch(K)?;
        l.args.arg(&scratch.acc).arg(&scratch.ml).arg(n_splits).arg(out).arg(&max_splits).arg(&d_i);
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: argument types match the kernel; the caller checked the sizes.
        unsafe { l.run(cfg) }
    }

    /// Launches `decode_partial` over `n_seqs` decode sequences and `max_splits` splits; the
    /// caller has checked every buffer `dp` points to.
    pub(crate) fn decode_partial(
        &self,
        dp: &DecodeParams,
        shape: AttnShape,
        n_seqs: usize,
        max_splits: usize,
    ) -> Result<(), CudaError> {
        let g = shape.n_heads / shape.n_kv_heads.max(1);
        // Adjacent pairs in whole quads stage their cos/sin in the kernel's ring; other
        // layouts look each key's RoPE row up when rotating it.
        let ring_rope = shape.rope_adjacent && shape.rope_half.is_multiple_of(4);
        let kernel = match (shape.head_dim, g, ring_rope) {
            (64, 1..=4, true) => "decode_partial_d64_g4",
            (64, 5..=8, true) => "decode_partial_d64_g8",
            (128, 1..=4, true) => "decode_partial_d128_g4",
            (128, 5..=8, true) => "decode_partial_d128_g8",
            (64, 1..=4, false) => "decode_partial_d64_g4_rope_lookup",
            (64, 5..=8, false) => "decode_partial_d64_g8_rope_lookup",
            (128, 1..=4, false) => "decode_partial_d128_g4_rope_lookup",
            (128, 5..=8, false) => "decode_partial_d128_g8_rope_lookup",
            (d, g, _) => {
                return Err(CudaError::Unsupported {
                    kernel: "decode_partial",
                    what: format!("head dimension {d} with {g} query heads per KV head (64/128 and 1..=8 are built)"),
                })
            }
        };
        // 32·Hkv threads, within the kernel's launch bounds of 256.
        if shape.n_kv_heads == 0 || shape.n_kv_heads > 8 {
            return Err(CudaError::Unsupported { kernel, what: format!("{} KV heads (1..=8)", shape.n_kv_heads) });
        }
        let blocks = (
            u32::try_from(max_splits)
                .map_err(|_| CudaError::Unsupported { kernel, what: format!("{max_splits} splits") })?,
            u32::try_from(n_seqs)
                .map_err(|_| CudaError::Unsupported { kernel, what: format!("{n_seqs} sequences") })?,
            1,
        );
        let mut l = self.launch(kernel)?;
        l.args.arg(dp);
        let cfg = LaunchConfig {
            grid_dim: blocks,
            block_dim: (32 * shape.n_kv_heads as u32, 1, 1),
            shared_mem_bytes: crate::attention::decode_smem_bytes(shape.n_kv_heads) as u32,
        };
        // SAFETY: `dp` mirrors the kernel's DecodeParams; its buffers were checked by the caller.
        unsafe { l.run(cfg) }
    }
}
