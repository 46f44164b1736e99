//! The `Backend` trait: every operation the model needs, implemented by each device.
//!
//! `model::llama` is written once against this trait and never branches on the device. The CPU
//! backend (`cpu`) is the readable reference that other backends are tested against.
//!
//! Activations are row-major `[rows, cols]` matrices, one row per token of the step. Weights are
//! `[n_out, n_in]` matrices (GGUF row order), so `matmul` computes `Y = X · Wᵀ`.

pub mod cpu;
pub mod cuda;

use std::sync::Arc;

use infinihip_core::gguf::{GgufFile, TensorInfo};
use infinihip_core::rope::RopeConfig;

use crate::error::EngineError;
use crate::hip_state::HipSeqState;
use crate::kv::{KvLayout, PageId};

/// A tensor of a GGUF file that a backend may borrow (CPU, zero-copy) or copy (GPU).
#[derive(Clone)]
pub struct TensorRef {
    file: Arc<GgufFile>,
    info: TensorInfo,
}

impl TensorRef {
    pub fn new(file: Arc<GgufFile>, name: &str) -> Result<Self, EngineError> {
        let info = file.tensor(name)?.clone();
        info.check_supported()?;
        Ok(Self { file, info })
    }

    pub fn info(&self) -> &TensorInfo {
        &self.info
    }

    /// `[n_in, n_out]` of a matrix (GGUF lists the inner dimension first); a vector is one
    /// column. Any other rank is an error naming the tensor.
    pub fn matrix_dims(&self) -> Result<[usize; 2], EngineError> {
        match self.info.dims[..] {
            [a, b] => Ok([a as usize, b as usize]),
            [a] => Ok([a as usize, 1]),
            _ => Err(EngineError::TensorShape {
                tensor: self.info.name.clone(),
                found: self.info.dims.clone(),
                expected: vec![0, 0],
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.info.name
    }

    pub fn bytes(&self) -> &[u8] {
        self.file.tensor_data(&self.info)
    }
}

/// One sequence's share of a forward step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqSlice {
    /// First activation row of this sequence's new tokens.
    pub row_start: usize,
    /// Number of new tokens (1 for a decode step).
    pub n_tokens: usize,
    /// Position of the first new token; positions `0..pos_start` are already in the cache.
    pub pos_start: usize,
    /// This sequence's pages are `plan.page_ids[page_start..page_end]`, in position order, and
    /// cover at least `pos_start + n_tokens` positions.
    pub page_start: usize,
    pub page_end: usize,
    /// The logits of this sequence's last new token are sampled (a prompt's end). HiP gives
    /// that token a mask of its own, as a decode step would, instead of the one its query block
    /// shares: pooled over 64 queries, the block's mask loses what the final query looks for.
    pub last_row_sampled: bool,
}

impl SeqSlice {
    /// Positions after this step.
    pub fn end_pos(&self) -> usize {
        self.pos_start + self.n_tokens
    }

    /// How HiP cuts this step's tokens (offsets into them): query blocks that follow the
    /// absolute grid of `b_q` (so a chunked prefill gives the blocks an unchunked one does),
    /// each with a mask estimated afresh, and the token that gets a decode step's mask from
    /// the sequence's decode cache: a decode step's only token, or a sampled last token.
    pub fn hip_query_blocks(&self, b_q: usize) -> (Vec<std::ops::Range<usize>>, Option<usize>) {
        let single = (self.n_tokens == 1 || (self.last_row_sampled && self.n_tokens > 0)).then(|| self.n_tokens - 1);
        let n_grid = single.unwrap_or(self.n_tokens);
        let mut blocks = Vec::new();
        let mut t0 = 0;
        while t0 < n_grid {
            let pos = self.pos_start + t0;
            let t1 = (t0 + b_q.max(1) - pos % b_q.max(1)).min(n_grid);
            blocks.push(t0..t1);
            t0 = t1;
        }
        (blocks, single)
    }
}

/// What a forward step computes: the sequences, their new tokens and their page tables, laid
/// out once per step and shared by every layer (a CSR-style page table).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchPlan {
    pub seqs: Vec<SeqSlice>,
    pub page_ids: Vec<PageId>,
    pub page_size: usize,
}

impl BatchPlan {
    /// Total activation rows (new tokens over all sequences).
    pub fn n_rows(&self) -> usize {
        self.seqs.iter().map(|s| s.n_tokens).sum()
    }

    pub fn pages(&self, seq: &SeqSlice) -> &[PageId] {
        &self.page_ids[seq.page_start..seq.page_end]
    }

    /// The page and the slot inside it that hold position `pos` of `seq`.
    pub fn locate(&self, seq: &SeqSlice, pos: usize) -> (PageId, usize) {
        (self.pages(seq)[pos / self.page_size], pos % self.page_size)
    }

    /// The largest position any sequence reaches after the step.
    pub fn max_end_pos(&self) -> usize {
        self.seqs.iter().map(SeqSlice::end_pos).max().unwrap_or(0)
    }
}

/// Per-layer attention settings that do not change between steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies q·k before the softmax (1/√d).
    pub scale: f32,
}

/// Every operation of a Llama-family forward pass.
///
/// Shapes are checked by the implementation; a mismatch is an `EngineError::Shape` naming the op.
pub trait Backend: Send + Sync {
    /// A weight matrix `[n_out, n_in]`.
    type Matrix: Send + Sync;
    /// A vector of f32 parameters (norm weights, biases).
    type Vector: Send + Sync;
    /// An activation matrix `[rows, cols]`.
    type Act: Send;
    /// Storage of K and V for every page of the pool.
    type KvStore: Send;
    /// Whatever the backend needs to apply RoPE (cos/sin tables).
    type Rope: Send + Sync;

    fn name(&self) -> &'static str;

    /// Tokens per prefill step when the user does not say: enough to keep the device busy.
    fn default_prefill_chunk(&self) -> usize {
        512
    }

    /// Device memory in use, in bytes, where the backend owns a device (`None` on the CPU).
    fn device_memory_in_use(&self) -> Option<usize> {
        None
    }

    /// Runs a whole forward step in the backend's execution context (the CPU backend's thread
    /// pool: ops then run inside it, and their parallel loops find the workers awake).
    fn run_step<R: Send>(&self, step: impl FnOnce() -> R + Send) -> R;

    fn load_matrix(&self, tensor: &TensorRef) -> Result<Self::Matrix, EngineError>;
    fn load_vector(&self, values: &[f32]) -> Result<Self::Vector, EngineError>;
    fn new_kv_store(&self, layout: KvLayout, capacity_pages: usize) -> Result<Self::KvStore, EngineError>;
    fn new_rope(&self, config: &RopeConfig) -> Result<Self::Rope, EngineError>;
    /// Makes the RoPE tables cover positions `0..n_positions`.
    fn ensure_rope(&self, rope: &mut Self::Rope, n_positions: usize) -> Result<(), EngineError>;

    /// A zeroed activation matrix.
    fn new_act(&self, rows: usize, cols: usize) -> Result<Self::Act, EngineError>;
    /// A zeroed activation matrix that holds f32 values whatever the backend's activation
    /// precision: the logits, which sampling and tests compare closely, and the residual
    /// stream, whose running sum over layers must not be rounded to bf16 at every addition.
    /// `matmul` (as its output), `embed` (output), `rms_norm` (input), `add_assign` (target),
    /// `gather_rows` (both sides), `set_rows` and `to_host` accept it.
    fn new_act_f32(&self, rows: usize, cols: usize) -> Result<Self::Act, EngineError> {
        self.new_act(rows, cols)
    }
    /// Reshapes within the allocation made by `new_act` (rows may shrink or grow up to it).
    fn set_rows(&self, act: &mut Self::Act, rows: usize) -> Result<(), EngineError>;
    /// Copies an activation matrix to host memory.
    fn to_host(&self, act: &Self::Act) -> Result<Vec<f32>, EngineError>;

    /// `out[t] = table[tokens[t]]`.
    fn embed(&self, table: &Self::Matrix, tokens: &[u32], out: &mut Self::Act) -> Result<(), EngineError>;
    /// `out[t] = x[t] / rms(x[t]) · weight`.
    fn rms_norm(&self, x: &Self::Act, weight: &Self::Vector, eps: f32, out: &mut Self::Act) -> Result<(), EngineError>;
    /// `out = x · wᵀ`.
    fn matmul(&self, x: &Self::Act, w: &Self::Matrix, out: &mut Self::Act) -> Result<(), EngineError>;
    /// `x[t] += bias`.
    fn add_bias(&self, x: &mut Self::Act, bias: &Self::Vector) -> Result<(), EngineError>;
    /// `x += y`.
    fn add_assign(&self, x: &mut Self::Act, y: &Self::Act) -> Result<(), EngineError>;
    /// `gate = silu(gate) · up` (SwiGLU).
    fn swiglu(&self, gate: &mut Self::Act, up: &Self::Act) -> Result<(), EngineError>;
    /// Copies rows `rows[i]` of `x` into row `i` of `out`.
    fn gather_rows(&self, x: &Self::Act, rows: &[usize], out: &mut Self::Act) -> Result<(), EngineError>;

    /// Stores the step's un-rotated keys and values of `layer` into the pages of the plan.
    fn kv_write(
        &self,
        store: &mut Self::KvStore,
        layer: usize,
        k: &Self::Act,
        v: &Self::Act,
        plan: &BatchPlan,
    ) -> Result<(), EngineError>;

    /// Causal attention of the step's (un-rotated) queries over their sequences' cached
    /// positions, the step's own included; RoPE is applied inside. `hip[i]` is `None` for a
    /// dense sequence (every key, true positions) and the sequence's HiP state otherwise (mask
    /// estimation or the decode cache, then block-sparse attention with the config's RoPE
    /// strategy).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        store: &Self::KvStore,
        layer: usize,
        q: &Self::Act,
        plan: &BatchPlan,
        shape: AttentionShape,
        rope: &Self::Rope,
        hip: &mut [Option<&mut HipSeqState>],
        out: &mut Self::Act,
    ) -> Result<(), EngineError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(pos_start: usize, n_tokens: usize, last_row_sampled: bool) -> SeqSlice {
        SeqSlice { row_start: 0, n_tokens, pos_start, page_start: 0, page_end: 0, last_row_sampled }
    }

    #[test]
    fn hip_query_blocks_follow_the_absolute_grid_and_single_out_the_sampled_token() {
        // A chunk starting mid-block finishes that block first, so chunked and whole prefills
        // cut the same blocks.
        let (blocks, single) = seq(100, 200, false).hip_query_blocks(64);
        assert_eq!(blocks, [0..28, 28..92, 92..156, 156..200]);
        assert_eq!(single, None);
        // A sampled last token leaves the grid and gets a decode step's mask.
        let (blocks, single) = seq(0, 129, true).hip_query_blocks(64);
        assert_eq!((blocks, single), (vec![0..64, 64..128], Some(128)));
        // A decode step is that token alone, sampled or not.
        assert_eq!(seq(5000, 1, false).hip_query_blocks(64), (vec![], Some(0)));
        assert_eq!(seq(5000, 1, true).hip_query_blocks(64), (vec![], Some(0)));
        assert_eq!(seq(7, 0, true).hip_query_blocks(64), (vec![], None));
    }
}
