//! Generation for one conversation: prompt sync with prefix reuse, decode loop, sampling and
//! timing.
//!
//! A `Session` remembers which tokens its KV pages hold. A new prompt (for example the whole
//! re-rendered chat) is compared with them: the common prefix is kept, the rest of the cache is
//! dropped, and only the new suffix is prefilled.

use std::time::{Duration, Instant};

use infinihip_core::sampling::Sampler;

use crate::backend::Backend;
use crate::engine::{Engine, LogitsWanted};
use crate::error::EngineError;
use crate::hip_state::AttentionMode;
use crate::kv::SeqKv;

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_tokens` were generated.
    Length,
    /// The model produced a stop token (end of sequence / end of turn).
    StopToken,
    /// The token callback asked to stop (a stop string matched, or the client went away).
    Stopped,
}

/// Whether to go on after a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Timings and counts of one generation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerationStats {
    /// Prompt tokens that were actually computed (the reused prefix excluded).
    pub prefill_tokens: usize,
    pub prefill_time: Duration,
    /// Tokens sampled (the stop token included, if there was one).
    pub generated_tokens: usize,
    /// From the first sampled token to the last.
    pub decode_time: Duration,
    pub finish: FinishReason,
}

impl GenerationStats {
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prefill_tokens as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }

    /// Decode speed over the tokens after the first (the first comes out of the prefill).
    pub fn decode_tokens_per_s(&self) -> f64 {
        self.generated_tokens.saturating_sub(1) as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

/// Limits of one generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    /// Token ids that end generation (EOS, end of turn).
    pub stop_ids: Vec<u32>,
}

/// One conversation's cache state.
#[derive(Debug, Default)]
pub struct Session {
    seq: SeqKv,
    /// The tokens whose K and V are in `seq`, in order.
    cached: Vec<u32>,
}

impl Session {
    /// A dense-attention session.
    pub fn new() -> Self {
        Self::default()
    }

    /// A session that attends as `mode` says (in a model of `n_layers` layers).
    pub fn with_attention(mode: &AttentionMode, n_layers: usize) -> Self {
        Self { seq: SeqKv::with_attention(mode, n_layers), cached: Vec::new() }
    }

    /// Tokens held in the cache.
    pub fn cached_tokens(&self) -> &[u32] {
        &self.cached
    }

    /// Gives the session's pages back to the engine.
    pub fn release<B: Backend>(&mut self, engine: &mut Engine<B>) {
        engine.release(&mut self.seq);
        self.cached.clear();
    }

    /// Brings the cache to `prompt` and returns the logits of its last token. Reuses the longest
    /// common prefix with what is cached (at least the last token is always recomputed, since
    /// its logits are needed).
    pub fn sync_prompt<B: Backend>(
        &mut self,
        engine: &mut Engine<B>,
        prompt: &[u32],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(Vec<f32>, usize), EngineError> {
        if prompt.is_empty() {
            return Err(EngineError::InvalidRequest { what: "the prompt has no tokens".into() });
        }
        let common = self.cached.iter().zip(prompt).take_while(|(a, b)| a == b).count().min(prompt.len() - 1);
        self.seq.truncate(common);
        self.cached.truncate(common);
        let new = &prompt[common..];
        let logits = engine.feed(&mut self.seq, new, LogitsWanted::Last, progress)?;
        self.cached.extend_from_slice(new);
        Ok((logits, new.len()))
    }

    /// Feeds one token and returns its logits.
    fn push<B: Backend>(&mut self, engine: &mut Engine<B>, token: u32) -> Result<Vec<f32>, EngineError> {
        let logits = engine.feed(&mut self.seq, &[token], LogitsWanted::Last, &mut |_, _| {})?;
        self.cached.push(token);
        Ok(logits)
    }

    /// Prefills `prompt` (reusing the cached prefix), then samples up to `max_tokens` tokens,
    /// calling `on_token` with each. The last sampled token is not fed back into the cache; the
    /// next `sync_prompt` takes care of it.
    pub fn generate<B: Backend>(
        &mut self,
        engine: &mut Engine<B>,
        prompt: &[u32],
        sampler: &mut Sampler,
        options: &GenerateOptions,
        progress: &mut dyn FnMut(usize, usize),
        on_token: &mut dyn FnMut(u32) -> Flow,
    ) -> Result<GenerationStats, EngineError> {
        let t0 = Instant::now();
        let (mut logits, prefill_tokens) = self.sync_prompt(engine, prompt, progress)?;
        let prefill_time = t0.elapsed();
        let t1 = Instant::now();
        let mut history = prompt.to_vec();
        let mut generated = 0;
        let mut finish = FinishReason::Length;
        while generated < options.max_tokens {
            let token = sampler.sample(&mut logits, &history);
            generated += 1;
            history.push(token);
            if options.stop_ids.contains(&token) {
                finish = FinishReason::StopToken;
                break;
            }
            if on_token(token) == Flow::Stop {
                finish = FinishReason::Stopped;
                break;
            }
            if generated == options.max_tokens {
                break;
            }
            logits = self.push(engine, token)?;
        }
        Ok(GenerationStats {
            prefill_tokens,
            prefill_time,
            generated_tokens: generated,
            decode_time: t1.elapsed(),
            finish,
        })
    }
}
