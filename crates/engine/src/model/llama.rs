//! The Llama-family forward pass (Llama 2/3, Mistral, SmolLM, TinyLlama, Qwen2), written once
//! against the `Backend` trait. Paper: "LLaMA: Open and Efficient Foundation Language Models",
//! arXiv 2302.13971.
//!
//! Per layer: `h = rmsnorm(x)`, `q, k, v = h·Wqᵀ, h·Wkᵀ, h·Wvᵀ` (+ biases for Qwen2), store the
//! un-rotated k and v in the paged cache, attention (RoPE applied inside), `x += attn·Woᵀ`,
//! `h = rmsnorm(x)`, `x += (silu(h·Wgᵀ) ⊙ h·Wuᵀ)·Wdᵀ`. Then `rmsnorm`, and logits against the
//! output matrix, which is `token_embd` when the file ties them.

use std::sync::Arc;

use infinihip_core::gguf::GgufFile;
use infinihip_core::model_config::{Architecture, ModelConfig};
use infinihip_core::quant;

use crate::backend::{AttentionShape, Backend, BatchPlan, TensorRef};
use crate::error::EngineError;
use crate::hip_state::HipSeqState;
use crate::kv::KvLayout;

struct LayerWeights<B: Backend> {
    attn_norm: B::Vector,
    wq: B::Matrix,
    wk: B::Matrix,
    wv: B::Matrix,
    /// Qwen2 only.
    qkv_bias: Option<[B::Vector; 3]>,
    wo: B::Matrix,
    ffn_norm: B::Vector,
    w_gate: B::Matrix,
    w_up: B::Matrix,
    w_down: B::Matrix,
}

/// A loaded model on one backend.
pub struct Llama<B: Backend> {
    config: ModelConfig,
    backend: B,
    tok_embd: B::Matrix,
    /// `None` when the output projection is tied to `tok_embd`.
    output: Option<B::Matrix>,
    output_norm: B::Vector,
    layers: Vec<LayerWeights<B>>,
    rope: B::Rope,
}

/// Activation buffers for steps of up to `max_rows` tokens, reused from step to step.
pub struct Workspace<B: Backend> {
    max_rows: usize,
    /// The residual stream, f32 on every backend (`new_act_f32`).
    x: B::Act,
    h: B::Act,
    q: B::Act,
    k: B::Act,
    v: B::Act,
    attn: B::Act,
    proj: B::Act,
    gate: B::Act,
    up: B::Act,
    /// Rows of `x` whose logits are wanted (f32, like `x`).
    picked: B::Act,
    logits: B::Act,
    /// Diagnostics: per layer listed, the un-rotated attention queries `[rows][H·d]` of the
    /// last step.
    captured: Vec<(usize, Vec<f32>)>,
}

impl<B: Backend> Workspace<B> {
    /// Makes every step copy the un-rotated attention queries of `layers` to host memory
    /// (`captured_queries`), for analysis tools and tests; an empty list turns it off.
    pub fn capture_queries(&mut self, layers: &[usize]) {
        self.captured = layers.iter().map(|&l| (l, Vec::new())).collect();
    }

    /// The queries of `layer` captured by the last step, `[rows][H·d]` (empty if not captured).
    pub fn captured_queries(&self, layer: usize) -> &[f32] {
        self.captured.iter().find(|(l, _)| *l == layer).map_or(&[], |(_, q)| q)
    }
}

/// Reads an f32 vector (norm weight, bias) of `len` values.
fn read_vector(file: &Arc<GgufFile>, name: &str, len: usize) -> Result<Vec<f32>, EngineError> {
    let t = TensorRef::new(file.clone(), name)?;
    if t.info().n_elements != len as u64 {
        return Err(EngineError::TensorShape {
            tensor: name.to_string(),
            found: t.info().dims.clone(),
            expected: vec![len as u64],
        });
    }
    let mut out = vec![0f32; len];
    quant::dequantize(t.info().ty, t.bytes(), &mut out)
        .map_err(|e| EngineError::InvalidRequest { what: format!("tensor `{name}`: {e}") })?;
    Ok(out)
}

impl<B: Backend> Llama<B> {
    /// Loads the model described by `file` onto `backend`.
    pub fn load(file: Arc<GgufFile>, backend: B) -> Result<Self, EngineError> {
        let rope_freqs = match file.tensor("rope_freqs.weight") {
            Ok(info) => Some(read_vector(&file, "rope_freqs.weight", info.n_elements as usize)?),
            Err(_) => None,
        };
        let config = ModelConfig::from_metadata(file.metadata(), rope_freqs)?;
        let c = &config;
        let matrix = |name: &str, n_in: usize, n_out: usize| -> Result<B::Matrix, EngineError> {
            let t = TensorRef::new(file.clone(), name)?;
            let want = vec![n_in as u64, n_out as u64];
            if t.info().dims != want {
                return Err(EngineError::TensorShape {
                    tensor: name.to_string(),
                    found: t.info().dims.clone(),
                    expected: want,
                });
            }
            if t.info().n_elements % t.info().ty.block_elems() as u64 != 0
                || !n_in.is_multiple_of(t.info().ty.block_elems())
            {
                return Err(EngineError::TensorShape {
                    tensor: name.to_string(),
                    found: t.info().dims.clone(),
                    expected: want,
                });
            }
            backend.load_matrix(&t)
        };
        let vector = |name: &str, len: usize| backend.load_vector(&read_vector(&file, name, len)?);

        let tok_embd = matrix("token_embd.weight", c.d_model, c.vocab_size)?;
        let output = match file.tensor("output.weight") {
            Ok(_) => Some(matrix("output.weight", c.d_model, c.vocab_size)?),
            Err(_) => None,
        };
        let output_norm = vector("output_norm.weight", c.d_model)?;
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}");
            let qkv_bias = match c.arch {
                Architecture::Llama => None,
                Architecture::Qwen2 => Some([
                    vector(&n("attn_q.bias"), c.q_dim())?,
                    vector(&n("attn_k.bias"), c.kv_dim())?,
                    vector(&n("attn_v.bias"), c.kv_dim())?,
                ]),
            };
            layers.push(LayerWeights {
                attn_norm: vector(&n("attn_norm.weight"), c.d_model)?,
                wq: matrix(&n("attn_q.weight"), c.d_model, c.q_dim())?,
                wk: matrix(&n("attn_k.weight"), c.d_model, c.kv_dim())?,
                wv: matrix(&n("attn_v.weight"), c.d_model, c.kv_dim())?,
                qkv_bias,
                wo: matrix(&n("attn_output.weight"), c.q_dim(), c.d_model)?,
                ffn_norm: vector(&n("ffn_norm.weight"), c.d_model)?,
                w_gate: matrix(&n("ffn_gate.weight"), c.d_model, c.d_ff)?,
                w_up: matrix(&n("ffn_up.weight"), c.d_model, c.d_ff)?,
                w_down: matrix(&n("ffn_down.weight"), c.d_ff, c.d_model)?,
            });
        }
        let rope = backend.new_rope(&config.rope)?;
        Ok(Self { config, backend, tok_embd, output, output_norm, layers, rope })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The cache shape this model needs, with `page_size` tokens per page.
    /// Makes the RoPE tables cover positions `0..n_positions` now, so that no step pays for
    /// growing them (a million positions take a second to compute and upload).
    pub fn reserve_positions(&mut self, n_positions: usize) -> Result<(), EngineError> {
        self.backend.ensure_rope(&mut self.rope, n_positions)
    }

    pub fn kv_layout(&self, page_size: usize) -> KvLayout {
        KvLayout {
            n_layers: self.config.n_layers,
            n_kv_heads: self.config.n_kv_heads,
            head_dim: self.config.head_dim,
            page_size,
        }
    }

    /// Buffers for steps of up to `max_rows` tokens.
    pub fn workspace(&self, max_rows: usize) -> Result<Workspace<B>, EngineError> {
        let c = &self.config;
        let b = &self.backend;
        Ok(Workspace {
            max_rows,
            x: b.new_act_f32(max_rows, c.d_model)?,
            h: b.new_act(max_rows, c.d_model)?,
            q: b.new_act(max_rows, c.q_dim())?,
            k: b.new_act(max_rows, c.kv_dim())?,
            v: b.new_act(max_rows, c.kv_dim())?,
            attn: b.new_act(max_rows, c.q_dim())?,
            proj: b.new_act(max_rows, c.d_model)?,
            gate: b.new_act(max_rows, c.d_ff)?,
            up: b.new_act(max_rows, c.d_ff)?,
            picked: b.new_act_f32(max_rows, c.d_model)?,
            logits: b.new_act_f32(max_rows, c.vocab_size)?,
            captured: Vec::new(),
        })
    }

    /// Runs one step: `tokens[r]` is the token of activation row `r` as laid out by `plan`
    /// (whose pages must already be reserved), and `hip[i]` says how sequence `i` attends.
    /// Writes the step's K and V into `store` and returns the logits of rows `logit_rows`,
    /// `[logit_rows.len()][vocab]` row-major.
    pub fn forward(
        &mut self,
        tokens: &[u32],
        plan: &BatchPlan,
        hip: &mut [Option<&mut HipSeqState>],
        store: &mut B::KvStore,
        ws: &mut Workspace<B>,
        logit_rows: &[usize],
    ) -> Result<Vec<f32>, EngineError> {
        // HiP's pruning places queries at n_window + 1 whatever the context length.
        let hip_positions = hip.iter().flatten().map(|h| h.config().n_window + 2).max().unwrap_or(0);
        self.backend.ensure_rope(&mut self.rope, plan.max_end_pos().max(hip_positions))?;
        let this = &*self;
        this.backend.run_step(|| this.forward_in_context(tokens, plan, hip, store, ws, logit_rows))
    }

    fn forward_in_context(
        &self,
        tokens: &[u32],
        plan: &BatchPlan,
        hip: &mut [Option<&mut HipSeqState>],
        store: &mut B::KvStore,
        ws: &mut Workspace<B>,
        logit_rows: &[usize],
    ) -> Result<Vec<f32>, EngineError> {
        let rows = tokens.len();
        if rows == 0 || rows != plan.n_rows() || rows > ws.max_rows || logit_rows.len() > ws.max_rows {
            return Err(EngineError::InvalidRequest {
                what: format!(
                    "forward: {rows} tokens for a plan of {} rows and a workspace of {}",
                    plan.n_rows(),
                    ws.max_rows
                ),
            });
        }
        let b = &self.backend;
        let c = &self.config;
        for act in [&mut ws.x, &mut ws.h, &mut ws.q, &mut ws.k, &mut ws.v, &mut ws.attn, &mut ws.proj] {
            b.set_rows(act, rows)?;
        }
        b.set_rows(&mut ws.gate, rows)?;
        b.set_rows(&mut ws.up, rows)?;
        let shape = AttentionShape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            scale: 1.0 / (c.head_dim as f32).sqrt(),
        };

        b.embed(&self.tok_embd, tokens, &mut ws.x)?;
        for (li, layer) in self.layers.iter().enumerate() {
            b.rms_norm(&ws.x, &layer.attn_norm, c.rms_eps, &mut ws.h)?;
            b.matmul(&ws.h, &layer.wq, &mut ws.q)?;
            b.matmul(&ws.h, &layer.wk, &mut ws.k)?;
            b.matmul(&ws.h, &layer.wv, &mut ws.v)?;
            if let Some([bq, bk, bv]) = &layer.qkv_bias {
                b.add_bias(&mut ws.q, bq)?;
                b.add_bias(&mut ws.k, bk)?;
                b.add_bias(&mut ws.v, bv)?;
            }
            b.kv_write(store, li, &ws.k, &ws.v, plan)?;
            if let Some((_, q)) = ws.captured.iter_mut().find(|(l, _)| *l == li) {
                *q = b.to_host(&ws.q)?;
            }
            b.attention(store, li, &ws.q, plan, shape, &self.rope, hip, &mut ws.attn)?;
            b.matmul(&ws.attn, &layer.wo, &mut ws.proj)?;
            b.add_assign(&mut ws.x, &ws.proj)?;

            b.rms_norm(&ws.x, &layer.ffn_norm, c.rms_eps, &mut ws.h)?;
            b.matmul(&ws.h, &layer.w_gate, &mut ws.gate)?;
            b.matmul(&ws.h, &layer.w_up, &mut ws.up)?;
            b.swiglu(&mut ws.gate, &ws.up)?;
            b.matmul(&ws.gate, &layer.w_down, &mut ws.proj)?;
            b.add_assign(&mut ws.x, &ws.proj)?;
        }

        if logit_rows.is_empty() {
            return Ok(Vec::new());
        }
        b.set_rows(&mut ws.picked, logit_rows.len())?;
        b.set_rows(&mut ws.h, logit_rows.len())?;
        b.set_rows(&mut ws.logits, logit_rows.len())?;
        b.gather_rows(&ws.x, logit_rows, &mut ws.picked)?;
        b.rms_norm(&ws.picked, &self.output_norm, c.rms_eps, &mut ws.h)?;
        b.matmul(&ws.h, self.output.as_ref().unwrap_or(&self.tok_embd), &mut ws.logits)?;
        b.to_host(&ws.logits)
    }
}
