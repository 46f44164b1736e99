//! The engine: a loaded model, its KV page pool and store, and forward steps over sequences.
//!
//! A step takes new tokens of one or more sequences (a prefill chunk, or one token per sequence
//! when decoding), reserves their pages, lays out a `BatchPlan` and runs the model once. `feed`
//! splits a long prompt into chunks of at most `prefill_chunk` tokens so that activation memory
//! stays bounded whatever the prompt length.

use crate::backend::{Backend, BatchPlan, SeqSlice};
use crate::error::EngineError;
use crate::kv::{PagePool, SeqKv};
use crate::model::llama::{Llama, Workspace};

/// Sizing of the cache and of steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// Tokens per KV page.
    pub page_size: usize,
    /// Most tokens in one forward step (prefill chunk size).
    pub prefill_chunk: usize,
    /// Positions the KV pool can hold over all sequences.
    pub kv_capacity_tokens: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self { page_size: 64, prefill_chunk: 512, kv_capacity_tokens: 8192 }
    }
}

/// Which logits a step returns for one sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsWanted {
    None,
    /// The last new token's (what sampling needs).
    Last,
    /// One row per new token (what tests against reference logits need).
    All,
}

/// One sequence's part of a step.
pub struct StepInput<'a> {
    pub seq: &'a mut SeqKv,
    pub tokens: &'a [u32],
    pub logits: LogitsWanted,
}

/// A model with its KV cache.
pub struct Engine<B: Backend> {
    model: Llama<B>,
    pool: PagePool,
    store: B::KvStore,
    ws: Workspace<B>,
    options: EngineOptions,
}

impl<B: Backend> Engine<B> {
    pub fn new(mut model: Llama<B>, options: EngineOptions) -> Result<Self, EngineError> {
        if options.page_size == 0 || options.prefill_chunk == 0 {
            return Err(EngineError::InvalidRequest {
                what: format!(
                    "page size ({}) and prefill chunk ({}) must be positive",
                    options.page_size, options.prefill_chunk
                ),
            });
        }
        // Every position the pool can hold, and HiP's pruning position n_window + 1 (the
        // largest window of the presets is 1024; larger ones grow the table on demand).
        model.reserve_positions(options.kv_capacity_tokens.max(1026))?;
        let layout = model.kv_layout(options.page_size);
        let capacity_pages = options.kv_capacity_tokens.div_ceil(options.page_size);
        let pool = PagePool::new(layout, capacity_pages);
        let store = model.backend().new_kv_store(layout, capacity_pages)?;
        let ws = model.workspace(options.prefill_chunk)?;
        Ok(Self { model, pool, store, ws, options })
    }

    pub fn model(&self) -> &Llama<B> {
        &self.model
    }

    pub fn options(&self) -> EngineOptions {
        self.options
    }

    pub fn pool(&self) -> &PagePool {
        &self.pool
    }

    pub fn store(&self) -> &B::KvStore {
        &self.store
    }

    /// The activation workspace (diagnostics: see `Workspace::capture_queries`).
    pub fn workspace_mut(&mut self) -> &mut Workspace<B> {
        &mut self.ws
    }

    /// Returns a sequence's pages to the pool.
    pub fn release(&mut self, seq: &mut SeqKv) {
        self.pool.release(seq);
    }

    /// Runs one forward step over several sequences. Returns, per input, its logits rows
    /// (`[rows][vocab]` row-major; empty for `LogitsWanted::None`).
    pub fn step(&mut self, inputs: &mut [StepInput<'_>]) -> Result<Vec<Vec<f32>>, EngineError> {
        let n_rows: usize = inputs.iter().map(|i| i.tokens.len()).sum();
        if n_rows == 0 || n_rows > self.options.prefill_chunk {
            return Err(EngineError::InvalidRequest {
                what: format!("a step of {n_rows} tokens (1..={} allowed)", self.options.prefill_chunk),
            });
        }
        for input in inputs.iter_mut() {
            let new_len = input.seq.len() + input.tokens.len();
            self.pool.reserve(input.seq, new_len)?;
        }
        let mut plan = BatchPlan { seqs: Vec::new(), page_ids: Vec::new(), page_size: self.options.page_size };
        let mut tokens = Vec::with_capacity(n_rows);
        let mut logit_rows = Vec::new();
        let mut logit_counts = Vec::with_capacity(inputs.len());
        for input in inputs.iter() {
            let row_start = tokens.len();
            let page_start = plan.page_ids.len();
            plan.page_ids.extend_from_slice(input.seq.pages());
            plan.seqs.push(SeqSlice {
                row_start,
                n_tokens: input.tokens.len(),
                pos_start: input.seq.len(),
                page_start,
                page_end: plan.page_ids.len(),
                last_row_sampled: input.logits == LogitsWanted::Last,
            });
            tokens.extend_from_slice(input.tokens);
            let rows = match input.logits {
                LogitsWanted::None => 0..0,
                LogitsWanted::Last => tokens.len() - 1..tokens.len(),
                LogitsWanted::All => row_start..tokens.len(),
            };
            logit_counts.push(rows.len());
            logit_rows.extend(rows);
        }
        let mut hip: Vec<_> = inputs.iter_mut().map(|i| i.seq.hip_mut()).collect();
        let logits = self.model.forward(&tokens, &plan, &mut hip, &mut self.store, &mut self.ws, &logit_rows)?;
        drop(hip);
        for input in inputs.iter_mut() {
            input.seq.advance(input.tokens.len(), self.options.page_size);
        }
        let vocab = self.model.config().vocab_size;
        let mut out = Vec::with_capacity(inputs.len());
        let mut offset = 0;
        for n in logit_counts {
            out.push(logits[offset * vocab..(offset + n) * vocab].to_vec());
            offset += n;
        }
        Ok(out)
    }

    /// Feeds `tokens` to one sequence in chunks of at most `prefill_chunk`, calling
    /// `progress(done, total)` after each chunk. Returns the logits asked for (for `All`, one
    /// row per token of `tokens`).
    pub fn feed(
        &mut self,
        seq: &mut SeqKv,
        tokens: &[u32],
        logits: LogitsWanted,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<f32>, EngineError> {
        let mut out = Vec::new();
        let chunk = self.options.prefill_chunk;
        let n_chunks = tokens.len().div_ceil(chunk);
        for (i, part) in tokens.chunks(chunk).enumerate() {
            let want = match logits {
                LogitsWanted::All => LogitsWanted::All,
                LogitsWanted::Last if i + 1 == n_chunks => LogitsWanted::Last,
                _ => LogitsWanted::None,
            };
            let mut inputs = [StepInput { seq: &mut *seq, tokens: part, logits: want }];
            let mut rows = self.step(&mut inputs)?;
            out.append(&mut rows[0]);
            progress((i * chunk + part.len()).min(tokens.len()), tokens.len());
        }
        Ok(out)
    }
}
