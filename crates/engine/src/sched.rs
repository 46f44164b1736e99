//! The scheduler: continuous batching of many generation requests over one `Engine`.
//!
//! There is no prefill phase and no decode phase (the vLLM v1 pattern, STYLE.md §4). Each
//! request holds the tokens its sequence should contain (`tokens` = prompt + generated) and
//! owes `tokens.len() − seq.len()` of them to the model: the whole prompt at first, then one
//! token after each sample. Every step hands out at most `step_tokens` tokens:
//! 1. running requests that owe one token (decoding) get it first, oldest first;
//! 2. the other running requests (prefilling) get `min(owed, budget left)`, oldest first;
//! 3. waiting requests are admitted, oldest first, while budget, batch room and KV pages last.
//!
//! So a long prompt is prefilled in chunks between the decode steps of the others, and never
//! stalls them. A request whose chunk reaches the end of its owed tokens gets its last row's
//! logits back, and samples its next token with its own `Sampler` (so a seeded request draws
//! the same numbers whatever else is in the batch) and streams its text with its own
//! `TextStreamer` (UTF-8 safe, stop strings held back).
//!
//! KV pages are taken as tokens are computed, and given back when a request finishes, fails or
//! is cancelled. A waiting request is admitted only when the pages of everything it owes fit,
//! with one page to spare per running request (their next decode may open a page). When a step
//! still needs more pages than are free, the newest running request is preempted: its pages go
//! back to the pool and it returns to the head of the queue, keeping its sampler, streamer and
//! generated tokens; on readmission it recomputes prompt and generated tokens (nothing is sent
//! twice). The oldest request can always run alone, since no request may need more positions
//! than the pool holds (`submit` checks), so the batch always makes progress.
//!
//! Invariants: `running` is in admission order and `waiting` in arrival order (preempted
//! requests, older than any waiter, go back in front); a request is in exactly one of the two;
//! only running requests hold pages; after `finish`/`cancel`/`abort_all` a request holds none.

use std::collections::VecDeque;

use infinihip_core::sampling::{Sampler, SamplingError, SamplingParams};
use infinihip_core::tokenizer::Tokenizer;

use crate::backend::Backend;
use crate::engine::{Engine, LogitsWanted, StepInput};
use crate::generate::FinishReason;
use crate::hip_state::AttentionMode;
use crate::kv::SeqKv;
use crate::text::TextStreamer;

/// A request's id, unique within one scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    /// Prompt token ids (at least one).
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    /// Most tokens to sample (at least one); a stop token counts as sampled.
    pub max_tokens: usize,
    /// Generation ends when the text contains one of these; it is not part of the output.
    pub stop_strings: Vec<String>,
    /// Token ids that end generation (end of sequence, end of turn); never shown as text.
    pub stop_ids: Vec<u32>,
    pub attention: AttentionMode,
}

/// Sizing of the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerOptions {
    /// Most requests running (holding KV pages) at once.
    pub max_running: usize,
    /// Most requests waiting for admission; `submit` refuses more.
    pub max_waiting: usize,
    /// Most tokens in one step; at most the engine's `prefill_chunk`.
    pub step_tokens: usize,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    #[error("the queue is full: {waiting} requests are waiting (at most {max_waiting})")]
    QueueFull { waiting: usize, max_waiting: usize },
    #[error("the prompt has no tokens")]
    EmptyPrompt,
    #[error("max_tokens must be at least 1")]
    NoTokensWanted,
    #[error(
        "the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) exceed the KV cache \
         ({capacity_tokens} positions)"
    )]
    TooLong { prompt_tokens: usize, max_tokens: usize, capacity_tokens: usize },
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error(transparent)]
    Sampling(#[from] SamplingError),
}

/// Tokens of a finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Tokens sampled, a final stop token included.
    pub completion_tokens: usize,
}

/// What a step produced for one request. Per request, `Token` events come in order and are
/// followed by exactly one `Finished` or `Failed`, unless the request is cancelled.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A token was sampled; `text` is the text it made safe to show (often all of it, sometimes
    /// nothing: half a character, or the possible start of a stop string). Stop tokens make no
    /// `Token` event.
    Token { id: RequestId, token: u32, text: String },
    /// Generation ended; `text` is the text held back until now. The request's pages are free.
    Finished { id: RequestId, text: String, reason: FinishReason, usage: Usage },
    /// The request failed (an engine error); its pages are free.
    Failed { id: RequestId, error: String },
}

/// What one call of `Scheduler::step` did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StepReport {
    /// Requests in the forward step and how many tokens each computed, in admission order.
    pub scheduled: Vec<(RequestId, usize)>,
    /// Requests preempted (pages taken back, requeued) before the step.
    pub preempted: Vec<RequestId>,
    pub events: Vec<Event>,
}

/// One request and its generation state.
struct Tracked<'t> {
    id: RequestId,
    /// Prompt followed by the tokens generated so far.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Holds `tokens[..seq.len()]`; holds no pages while waiting.
    seq: SeqKv,
    sampler: Sampler,
    streamer: TextStreamer<'t>,
    max_tokens: usize,
    stop_ids: Vec<u32>,
    /// Tokens computed in the step being planned.
    planned: usize,
}

impl Tracked<'_> {
    fn owed(&self) -> usize {
        self.tokens.len() - self.seq.len()
    }

    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    fn usage(&self) -> Usage {
        Usage { prompt_tokens: self.prompt_len, completion_tokens: self.generated() }
    }
}

/// Continuous batching over one engine; see the module docs.
pub struct Scheduler<'t> {
    tokenizer: &'t Tokenizer,
    options: SchedulerOptions,
    waiting: VecDeque<Tracked<'t>>,
    running: Vec<Tracked<'t>>,
    next_id: u64,
}

impl<'t> Scheduler<'t> {
    pub fn new(tokenizer: &'t Tokenizer, options: SchedulerOptions) -> Self {
        Self { tokenizer, options, waiting: VecDeque::new(), running: Vec::new(), next_id: 0 }
    }

    pub fn options(&self) -> SchedulerOptions {
        self.options
    }

    /// Requests waiting for admission.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Requests admitted (holding or about to hold KV pages).
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// True when there is nothing to compute.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Queues a request. Checks what the engine would otherwise trip over later: an empty
    /// prompt, ids outside the model's vocabulary, sampling values, and a request that could not
    /// fit in the KV pool even alone.
    pub fn submit<B: Backend>(
        &mut self,
        engine: &Engine<B>,
        request: GenerationRequest,
    ) -> Result<RequestId, SubmitError> {
        if self.waiting.len() >= self.options.max_waiting {
            return Err(SubmitError::QueueFull { waiting: self.waiting.len(), max_waiting: self.options.max_waiting });
        }
        if request.prompt.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        if request.max_tokens == 0 {
            return Err(SubmitError::NoTokensWanted);
        }
        let vocab = engine.model().config().vocab_size;
        if let Some(&id) = request.prompt.iter().find(|&&id| id as usize >= vocab) {
            return Err(SubmitError::TokenOutOfRange { id, vocab });
        }
        let pool = engine.pool();
        // The last sampled token is never fed back, so a request holds at most this many.
        let positions = request.prompt.len() + request.max_tokens - 1;
        if pool.pages_for(positions) > pool.capacity() {
            return Err(SubmitError::TooLong {
                prompt_tokens: request.prompt.len(),
                max_tokens: request.max_tokens,
                capacity_tokens: pool.capacity() * pool.layout().page_size,
            });
        }
        let sampler = Sampler::new(request.sampling)?;
        let id = RequestId(self.next_id);
        self.next_id += 1;
        self.waiting.push_back(Tracked {
            id,
            prompt_len: request.prompt.len(),
            tokens: request.prompt,
            seq: SeqKv::with_attention(&request.attention, engine.model().config().n_layers),
            sampler,
            streamer: TextStreamer::new(self.tokenizer, &request.stop_strings),
            max_tokens: request.max_tokens,
            stop_ids: request.stop_ids,
            planned: 0,
        });
        Ok(id)
    }

    /// Drops a request wherever it is and frees its pages. Returns false for an unknown id
    /// (already finished, say).
    pub fn cancel<B: Backend>(&mut self, engine: &mut Engine<B>, id: RequestId) -> bool {
        if let Some(i) = self.running.iter().position(|r| r.id == id) {
            let mut request = self.running.remove(i);
            engine.release(&mut request.seq);
            return true;
        }
        let before = self.waiting.len();
        self.waiting.retain(|r| r.id != id);
        self.waiting.len() != before
    }

    /// Drops every request and frees their pages (after an engine failure that may have left
    /// any of them half-computed). Returns their ids.
    pub fn abort_all<B: Backend>(&mut self, engine: &mut Engine<B>) -> Vec<RequestId> {
        let mut ids = Vec::with_capacity(self.running.len() + self.waiting.len());
        for mut request in self.running.drain(..) {
            engine.release(&mut request.seq);
            ids.push(request.id);
        }
        ids.extend(self.waiting.drain(..).map(|r| r.id));
        ids
    }

    /// Plans and runs one forward step; see the module docs. Does nothing when idle. An engine
    /// error fails the requests of the step (`Event::Failed`) and leaves the others running.
    pub fn step<B: Backend>(&mut self, engine: &mut Engine<B>) -> StepReport {
        let mut report = StepReport::default();
        let budget = self.options.step_tokens.min(engine.options().prefill_chunk);
        let mut left = loop {
            let left = self.plan_running(budget);
            if self.planned_pages(engine) <= engine.pool().free_pages() {
                break left;
            }
            // The oldest request alone always fits, so this ends with it planned at worst.
            let Some(mut victim) = self.running.pop() else { break left };
            engine.release(&mut victim.seq);
            victim.planned = 0;
            report.preempted.push(victim.id);
            self.waiting.push_front(victim);
        };
        self.admit(engine, &mut left);

        let planned: Vec<usize> = (0..self.running.len()).filter(|&i| self.running[i].planned > 0).collect();
        if planned.is_empty() {
            return report;
        }
        report.scheduled = planned.iter().map(|&i| (self.running[i].id, self.running[i].planned)).collect();
        let result = {
            let mut inputs: Vec<StepInput<'_>> = self
                .running
                .iter_mut()
                .filter(|r| r.planned > 0)
                .map(|r| {
                    let start = r.seq.len();
                    let end = start + r.planned;
                    let logits = if end == r.tokens.len() { LogitsWanted::Last } else { LogitsWanted::None };
                    StepInput { seq: &mut r.seq, tokens: &r.tokens[start..end], logits }
                })
                .collect();
            engine.step(&mut inputs)
        };
        match result {
            Ok(logits) => {
                let mut finished = Vec::new();
                for (&i, mut row) in planned.iter().zip(logits) {
                    let request = &mut self.running[i];
                    request.planned = 0;
                    if row.is_empty() {
                        continue;
                    }
                    if let Some(event) = sample_next(request, &mut row, &mut report.events) {
                        report.events.push(event);
                        finished.push(i);
                    }
                }
                // Remove from the back so the indices stay valid.
                for &i in finished.iter().rev() {
                    let mut request = self.running.remove(i);
                    engine.release(&mut request.seq);
                }
            }
            Err(error) => {
                let error = error.to_string();
                for &i in planned.iter().rev() {
                    let mut request = self.running.remove(i);
                    engine.release(&mut request.seq);
                    report.events.push(Event::Failed { id: request.id, error: error.clone() });
                }
            }
        }
        report
    }

    /// Sets `planned` for every running request: decoding ones first, then prefilling ones,
    /// each group oldest first, within `budget` tokens. Returns the budget left.
    fn plan_running(&mut self, budget: usize) -> usize {
        let mut left = budget;
        for request in &mut self.running {
            request.planned = usize::from(request.owed() == 1 && left > 0);
            left -= request.planned;
        }
        for request in &mut self.running {
            if request.planned == 0 {
                request.planned = request.owed().min(left);
                left -= request.planned;
            }
        }
        left
    }

    /// New pages the planned step needs.
    fn planned_pages<B: Backend>(&self, engine: &Engine<B>) -> usize {
        let pool = engine.pool();
        self.running.iter().map(|r| pool.pages_for(r.seq.len() + r.planned).saturating_sub(r.seq.pages().len())).sum()
    }

    /// Moves waiting requests to `running` while budget, batch room and pages allow, planning
    /// their first chunk. Strictly first come, first served: a head that does not fit blocks
    /// the rest, so a large request is not starved by a stream of small ones.
    fn admit<B: Backend>(&mut self, engine: &Engine<B>, left: &mut usize) {
        let pool = engine.pool();
        let mut free = pool.free_pages().saturating_sub(self.planned_pages(engine));
        while *left > 0 && self.running.len() < self.options.max_running {
            let Some(head) = self.waiting.front() else { break };
            let needed = pool.pages_for(head.tokens.len());
            let spare = self.running.len();
            if needed + spare > free {
                break;
            }
            let Some(mut request) = self.waiting.pop_front() else { break };
            request.planned = request.owed().min(*left);
            *left -= request.planned;
            free -= pool.pages_for(request.planned);
            self.running.push(request);
        }
    }
}

/// Samples the next token of a request from its last row of logits, records it and streams
/// its text into `events`. Returns the request's final event when it is done.
fn sample_next(request: &mut Tracked<'_>, logits: &mut [f32], events: &mut Vec<Event>) -> Option<Event> {
    let token = request.sampler.sample(logits, &request.tokens);
    request.tokens.push(token);
    let id = request.id;
    let finish = |request: &mut Tracked<'_>, reason, text: String| {
        let mut text = text;
        text.push_str(&request.streamer.finish());
        Event::Finished { id, text, reason, usage: request.usage() }
    };
    if request.stop_ids.contains(&token) {
        return Some(finish(request, FinishReason::StopToken, String::new()));
    }
    let delta = match request.streamer.push(token) {
        Ok(delta) => delta,
        Err(e) => return Some(Event::Failed { id, error: format!("decoding token {token}: {e}") }),
    };
    events.push(Event::Token { id, token, text: delta.text });
    if delta.stopped {
        return Some(finish(request, FinishReason::Stopped, String::new()));
    }
    if request.generated() >= request.max_tokens {
        return Some(finish(request, FinishReason::Length, String::new()));
    }
    None
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use infinihip_core::gguf::GgufFile;

    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::engine::EngineOptions;
    use crate::generate::{Flow, GenerateOptions, Session};
    use crate::model::llama::Llama;

    /// `$INFINIHIP_MODEL`, else the default model in the user's cache; a clear failure when it
    /// is not there.
    fn model_path() -> PathBuf {
        infinihip_core::model_store::installed_model().unwrap_or_else(|e| panic!("{e}"))
    }

    fn load(page_size: usize, kv_capacity_tokens: usize) -> (Engine<CpuBackend>, Tokenizer) {
        let file = Arc::new(GgufFile::open(model_path()).expect("the model opens"));
        let tokenizer = Tokenizer::from_gguf(file.metadata()).expect("tokenizer");
        let model = Llama::load(file, CpuBackend::new(0).expect("threads")).expect("the model loads");
        let options = EngineOptions { page_size, prefill_chunk: 64, kv_capacity_tokens };
        (Engine::new(model, options).expect("engine"), tokenizer)
    }

    fn greedy() -> SamplingParams {
        SamplingParams { temperature: 0.0, ..SamplingParams::DEFAULT }
    }

    fn request(tokenizer: &Tokenizer, text: &str, max_tokens: usize, sampling: SamplingParams) -> GenerationRequest {
        GenerationRequest {
            prompt: tokenizer.encode(text, false).expect("encode"),
            sampling,
            max_tokens,
            stop_strings: Vec::new(),
            stop_ids: Vec::new(),
            attention: AttentionMode::Dense,
        }
    }

    /// The tokens the single-sequence generation loop (`generate::Session`, the CLI's path)
    /// samples for the same request: the independent reference for what batching must give.
    fn solo(engine: &mut Engine<CpuBackend>, r: &GenerationRequest) -> Vec<u32> {
        let mut session = Session::new();
        let mut sampler = Sampler::new(r.sampling).expect("sampler");
        let options = GenerateOptions { max_tokens: r.max_tokens, stop_ids: r.stop_ids.clone() };
        let mut out = Vec::new();
        session
            .generate(engine, &r.prompt, &mut sampler, &options, &mut |_, _| {}, &mut |t| {
                out.push(t);
                Flow::Continue
            })
            .expect("solo generation");
        session.release(engine);
        out
    }

    /// Runs the scheduler until idle; returns each request's tokens, finish event, and the
    /// reports of every step.
    fn drain(
        engine: &mut Engine<CpuBackend>,
        scheduler: &mut Scheduler<'_>,
        ids: &[RequestId],
    ) -> (Vec<Vec<u32>>, Vec<Event>, Vec<StepReport>) {
        let mut tokens = vec![Vec::new(); ids.len()];
        let mut finals = vec![None; ids.len()];
        let mut reports = Vec::new();
        let index = |id: &RequestId| ids.iter().position(|x| x == id).expect("known id");
        for _ in 0..10_000 {
            if scheduler.is_idle() {
                break;
            }
            let report = scheduler.step(engine);
            for event in &report.events {
                match event {
                    Event::Token { id, token, .. } => tokens[index(id)].push(*token),
                    Event::Finished { id, .. } | Event::Failed { id, .. } => finals[index(id)] = Some(event.clone()),
                }
            }
            reports.push(report);
        }
        assert!(scheduler.is_idle(), "the scheduler did not drain");
        let finals = finals.into_iter().map(|e| e.expect("every request ends")).collect();
        (tokens, finals, reports)
    }

    fn options(max_waiting: usize) -> SchedulerOptions {
        SchedulerOptions { max_running: 8, max_waiting, step_tokens: 64 }
    }

    #[test]
    fn batched_requests_equal_solo_runs_and_prefill_interleaves_with_decode() {
        let (mut engine, tokenizer) = load(16, 4096);
        let long_text = "The river runs through the old town, past the mill and the market. ".repeat(12);
        let requests = [
            request(&tokenizer, "The capital of France is", 12, greedy()),
            request(&tokenizer, &long_text, 6, greedy()),
            request(&tokenizer, "Once upon a time", 10, SamplingParams { seed: 7, ..SamplingParams::DEFAULT }),
        ];
        assert!(requests[1].prompt.len() > 150, "the long prompt needs several 64-token chunks");
        let expected: Vec<Vec<u32>> = requests.iter().map(|r| solo(&mut engine, r)).collect();

        let mut scheduler = Scheduler::new(&tokenizer, options(8));
        let first = scheduler.submit(&engine, requests[0].clone()).expect("submit");
        // Let the first request reach decode before the long prompt arrives.
        let mut early = Vec::new();
        while early.len() < 2 {
            early.extend(scheduler.step(&mut engine).events);
        }
        let ids = [
            first,
            scheduler.submit(&engine, requests[1].clone()).expect("submit"),
            scheduler.submit(&engine, requests[2].clone()).expect("submit"),
        ];
        let (mut tokens, finals, reports) = drain(&mut engine, &mut scheduler, &ids);
        let early: Vec<u32> = early
            .iter()
            .map(|e| match e {
                Event::Token { token, .. } => *token,
                other => panic!("unexpected early event {other:?}"),
            })
            .collect();
        tokens[0].splice(0..0, early);
        assert_eq!(tokens, expected, "batched generation must equal solo generation");
        for (event, r) in finals.iter().zip(&requests) {
            let Event::Finished { reason, usage, .. } = event else { panic!("{event:?}") };
            assert_eq!(*reason, FinishReason::Length);
            assert_eq!(*usage, Usage { prompt_tokens: r.prompt.len(), completion_tokens: r.max_tokens });
        }
        // While the long prompt was prefilled in chunks, the first request kept decoding one
        // token per step, and no step went over the budget.
        let prefill_steps: Vec<&StepReport> =
            reports.iter().filter(|r| r.scheduled.iter().any(|&(id, n)| id == ids[1] && n > 1)).collect();
        assert!(prefill_steps.len() >= 3, "the long prompt takes several chunks");
        for report in &prefill_steps {
            assert!(report.scheduled.contains(&(ids[0], 1)), "decode stalled during prefill: {report:?}");
        }
        assert!(reports.iter().all(|r| r.scheduled.iter().map(|s| s.1).sum::<usize>() <= 64));
        assert_eq!(engine.pool().used_pages(), 0, "finished requests free their pages");
    }

    #[test]
    fn preemption_frees_pages_and_recomputes_without_changing_the_output() {
        // 5 pages of 16 tokens: each request ends up holding 3 pages (about 7 prompt tokens and
        // 29 fed-back ones), so both fit at first but cannot both finish without a preemption.
        let (mut engine, tokenizer) = load(16, 80);
        let requests = [
            request(&tokenizer, "Water boils at a temperature of", 30, greedy()),
            request(&tokenizer, "The three primary colours are", 30, greedy()),
        ];
        let expected: Vec<Vec<u32>> = requests.iter().map(|r| solo(&mut engine, r)).collect();
        let mut scheduler = Scheduler::new(&tokenizer, options(8));
        let ids: Vec<RequestId> =
            requests.iter().map(|r| scheduler.submit(&engine, r.clone()).expect("submit")).collect();
        let (tokens, _, reports) = drain(&mut engine, &mut scheduler, &ids);
        assert!(reports.iter().any(|r| r.preempted == [ids[1]]), "the newer request is preempted");
        assert_eq!(tokens, expected);
        assert_eq!(engine.pool().used_pages(), 0);
    }

    #[test]
    fn queue_bound_cancel_stop_strings_and_stop_tokens() {
        let (mut engine, tokenizer) = load(16, 1024);
        let mut scheduler = Scheduler::new(&tokenizer, options(2));
        let r = request(&tokenizer, "One, two, three, four,", 20, greedy());
        let a = scheduler.submit(&engine, r.clone()).expect("submit");
        let b = scheduler.submit(&engine, r.clone()).expect("submit");
        assert_eq!(scheduler.submit(&engine, r.clone()), Err(SubmitError::QueueFull { waiting: 2, max_waiting: 2 }));
        scheduler.step(&mut engine);
        assert!(engine.pool().used_pages() > 0);
        assert!(scheduler.cancel(&mut engine, a) && scheduler.cancel(&mut engine, b));
        assert!(!scheduler.cancel(&mut engine, a), "a cancelled request is gone");
        assert!(scheduler.is_idle());
        assert_eq!(engine.pool().used_pages(), 0, "cancelling frees the pages");

        // The greedy continuation counts on: a stop string cuts the text before it, and a stop
        // id ends generation without showing the token.
        let plain = solo(&mut engine, &r);
        let text = tokenizer.decode(&plain, true).expect("decode");
        let cut = text.find(" six").expect("the model counts on to six");
        let with_stop = GenerationRequest { stop_strings: vec![" six".into()], ..r.clone() };
        assert!(!plain[..2].contains(&plain[2]), "the stop id first appears as the third token");
        let with_stop_id = GenerationRequest { stop_ids: vec![plain[2]], ..r.clone() };
        let ids = [
            scheduler.submit(&engine, with_stop).expect("submit"),
            scheduler.submit(&engine, with_stop_id).expect("submit"),
        ];
        let (_, finals, reports) = drain(&mut engine, &mut scheduler, &ids);
        let streamed: String = reports
            .iter()
            .flat_map(|r| &r.events)
            .filter_map(|e| match e {
                Event::Token { id, text, .. } | Event::Finished { id, text, .. } if *id == ids[0] => {
                    Some(text.as_str())
                }
                _ => None,
            })
            .collect();
        assert_eq!(streamed, &text[..cut]);
        assert!(matches!(finals[0], Event::Finished { reason: FinishReason::Stopped, .. }));
        let Event::Finished { reason, usage, .. } = &finals[1] else { panic!("{:?}", finals[1]) };
        assert_eq!((*reason, usage.completion_tokens), (FinishReason::StopToken, 3));
    }

    #[test]
    fn submit_rejects_what_could_never_run() {
        let (engine, tokenizer) = load(16, 64);
        let mut scheduler = Scheduler::new(&tokenizer, options(8));
        let ok = request(&tokenizer, "Hello", 4, greedy());
        let cases = [
            (GenerationRequest { prompt: Vec::new(), ..ok.clone() }, SubmitError::EmptyPrompt),
            (GenerationRequest { max_tokens: 0, ..ok.clone() }, SubmitError::NoTokensWanted),
            (
                GenerationRequest { prompt: vec![1, 49152], ..ok.clone() },
                SubmitError::TokenOutOfRange { id: 49152, vocab: 49152 },
            ),
            (
                GenerationRequest { prompt: vec![1; 60], max_tokens: 6, ..ok.clone() },
                SubmitError::TooLong { prompt_tokens: 60, max_tokens: 6, capacity_tokens: 64 },
            ),
        ];
        for (r, expected) in cases {
            assert_eq!(scheduler.submit(&engine, r), Err(expected));
        }
        let bad_sampling = GenerationRequest { sampling: SamplingParams { top_p: 0.0, ..greedy() }, ..ok.clone() };
        assert!(matches!(scheduler.submit(&engine, bad_sampling), Err(SubmitError::Sampling(_))));
        // Exactly at the limit is fine: 60 prompt tokens + 5 sampled, the last never stored.
        assert!(scheduler.submit(&engine, GenerationRequest { prompt: vec![1; 60], max_tokens: 5, ..ok }).is_ok());
    }
}
