//! `infinihip eval passkey` and `infinihip eval niah`: retrieval accuracy against prompt
//! length and needle depth (DESIGN.md §8; user docs in docs/EVAL.md).
//!
//! A run first builds every case: for each length and trial, a task drawn from the case's
//! seeded stream ([`passkey`], [`niah`]), a haystack ([`haystack`]) and a prompt of exactly
//! that many tokens, within one haystack sentence ([`prompt`]). Then one engine runs them all:
//! greedy decoding, at most the task's token budget, stopping at end of turn. A case is scored
//! from the generated text alone ([`score`]). The results go to a table on stdout, and
//! optionally to JSON ([`report`]) and an SVG plot ([`svg`]); progress goes to stderr.
//!
//! The KV pool holds the longest prompt plus the answer budget (or `--ctx-size`). One session
//! serves every case, so a prompt prefix equal to the previous case's is reused from the cache
//! (exact: a token's keys and values depend only on the tokens before it). Within a length the
//! cases run deepest needle first: with the noise haystack every prompt is the same text up to
//! its needle, so each case recomputes only from its needle on.

pub mod haystack;
pub mod niah;
pub mod options;
pub mod passkey;
pub mod prompt;
pub mod report;
pub mod rng;
pub mod score;
pub mod svg;

use std::io::IsTerminal;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use infinihip_core::model_config::ModelConfig;
use infinihip_core::sampling::{Sampler, SamplingParams};
use infinihip_core::tokenizer::Tokenizer;
use infinihip_engine::backend::Backend;
use infinihip_engine::generate::{FinishReason, Flow, GenerateOptions, Session};
use infinihip_engine::Engine;

use crate::args::EvalArgs;
use crate::attention::{AttentionChoice, AttentionKind};
use crate::load::{with_engine, Opened};
use haystack::{Haystack, HaystackKind};
use niah::{NiahOptions, NiahVariant};
use options::{flag_name, length_label, trial_depths, PromptFormat};
use prompt::{Frame, Prompt, TaskText};
use report::{CaseResult, LengthResult, Report};
use rng::SplitMix64;
use score::Scoring;

/// One trial's task: the words around the haystack, the answer, and how to judge it.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseSpec {
    pub text: TaskText,
    pub expected: Vec<String>,
    pub scoring: Scoring,
}

/// Which eval runs.
#[derive(Debug, Clone, Copy)]
enum Task {
    Passkey,
    Niah(NiahOptions),
}

impl Task {
    fn name(self) -> &'static str {
        match self {
            Task::Passkey => "passkey",
            Task::Niah(_) => "niah",
        }
    }

    fn case(self, rng: &mut SplitMix64, depth: f64) -> CaseSpec {
        match self {
            Task::Passkey => passkey::case(rng, depth),
            Task::Niah(options) => niah::case(options, rng, depth),
        }
    }

    fn max_new_tokens(self) -> usize {
        match self {
            Task::Passkey => passkey::MAX_NEW_TOKENS,
            Task::Niah(options) => options.max_new_tokens(),
        }
    }

    fn needles(self) -> usize {
        match self {
            Task::Passkey => 1,
            Task::Niah(options) => options.needles(),
        }
    }

    fn variant(self) -> Option<NiahVariant> {
        match self {
            Task::Passkey => None,
            Task::Niah(options) => Some(options.variant()),
        }
    }
}

/// `infinihip eval passkey`.
pub fn passkey(args: &EvalArgs) -> Result<()> {
    run(Task::Passkey, HaystackKind::Noise, args)
}

/// `infinihip eval niah`.
pub fn niah(variant: NiahVariant, haystack: HaystackKind, needles: Option<usize>, args: &EvalArgs) -> Result<()> {
    run(Task::Niah(NiahOptions::new(variant, needles)?), haystack, args)
}

/// A case with its prompt, ready to run.
struct Planned {
    length: usize,
    trial: usize,
    depth: f64,
    spec: CaseSpec,
    prompt: Prompt,
}

fn run(task: Task, haystack: HaystackKind, args: &EvalArgs) -> Result<()> {
    if args.trials == 0 {
        bail!("--trials must be at least 1");
    }
    let attention = AttentionChoice::new(&args.attention)?;
    let depths = trial_depths(args.trials, args.depths.as_ref());
    if let Some(given) = &args.depths {
        if !args.trials.is_multiple_of(given.0.len()) {
            eprintln!(
                "infinihip: note: {} trials over {} depths: some depths get one trial more than others",
                args.trials,
                given.0.len()
            );
        }
    }
    let lengths = &args.lengths.0;
    let longest = lengths.last().copied().context("no --lengths given")?;
    // A run can take hours: find out now, not at the end, if an output file cannot be written.
    for path in args.json.iter().chain(&args.plot) {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }

    let opened = Opened::new(&args.model.path)?;
    if args.format == PromptFormat::Chat {
        if let Some(warning) = opened.template.fallback_warning() {
            eprintln!("infinihip: warning: {warning}");
        }
    }
    let native = ModelConfig::from_metadata(opened.file.metadata(), None)?.context_length;
    let max_new_tokens = task.max_new_tokens();
    let needed = longest + max_new_tokens;
    let ctx_tokens = match args.model.ctx_size {
        Some(ctx) if ctx < needed => {
            bail!("the longest prompt and its answer need {needed} tokens, more than --ctx-size {ctx}")
        }
        Some(ctx) => ctx,
        None => needed,
    };
    if attention.kind == AttentionKind::Dense && needed > native {
        eprintln!(
            "infinihip: warning: prompts reach {needed} tokens, past the model's native context of {native}; \
             dense attention there uses plain RoPE and degrades"
        );
    }

    let planned = plan(task, haystack, args, &opened, &depths)?;
    with_engine!(opened, &args.model, ctx_tokens, |engine, _device| {
        eprintln!(
            "eval {}: {} length(s) × {} trials, {} attention, {} format, KV pool of {ctx_tokens} tokens",
            task.name(),
            lengths.len(),
            args.trials,
            attention.label(),
            flag_name(args.format),
        );
        let generate = GenerateOptions { max_tokens: max_new_tokens, stop_ids: opened.tokenizer.stop_ids().to_vec() };
        let session = Session::with_attention(&attention.mode(), engine.model().config().n_layers);
        let mut runner = Runner { engine: &mut engine, session, tokenizer: &opened.tokenizer, generate };
        let mut progress = Progress { done: 0, total: planned.len() };
        let mut results = Vec::with_capacity(lengths.len());
        for cases in planned.chunk_by(|a, b| a.length == b.length) {
            results.push(runner.run_length(cases, &attention, &mut progress)?);
        }
        runner.session.release(runner.engine);

        let report = Report {
            task: task.name(),
            variant: task.variant(),
            haystack,
            needles: task.needles(),
            model: opened.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            seed: args.seed,
            format: args.format,
            max_new_tokens,
            native_context_tokens: native,
            ctx_tokens,
            commit: env!("INFINIHIP_COMMIT"),
            results,
        };
        print!("{}", report.table());
        if let Some(path) = &args.json {
            report.write_json(path)?;
        }
        if let Some(path) = &args.plot {
            std::fs::write(path, svg::plot(&report)).with_context(|| format!("writing {}", path.display()))?;
        }
    });
    Ok(())
}

/// Every case of the run, with its prompt, in length order then trial order.
fn plan(task: Task, haystack: HaystackKind, args: &EvalArgs, opened: &Opened, depths: &[f64]) -> Result<Vec<Planned>> {
    let frame = Frame::new(args.format, &opened.template)?;
    // The chat frame holds the template's control tokens; raw text must not produce any.
    let parse_special = args.format == PromptFormat::Chat;
    let encode = |text: &str| -> Result<Vec<u32>> { Ok(opened.tokenizer.encode(text, parse_special)?) };
    let mut planned = Vec::with_capacity(args.lengths.0.len() * depths.len());
    for &length in &args.lengths.0 {
        for (trial, &depth) in depths.iter().enumerate() {
            let mut rng = SplitMix64::for_case(args.seed, length, trial);
            let spec = task.case(&mut rng, depth);
            let mut hay = Haystack::new(haystack, rng.fork());
            let prompt = prompt::build(&spec.text, &mut hay, &frame, length, &encode)
                .with_context(|| format!("building the prompt of trial {trial} at length {length}"))?;
            planned.push(Planned { length, trial, depth, spec, prompt });
        }
    }
    Ok(planned)
}

/// The engine, the one session every case goes through, and generation settings.
struct Runner<'a, B: Backend> {
    engine: &'a mut Engine<B>,
    session: Session,
    tokenizer: &'a Tokenizer,
    generate: GenerateOptions,
}

/// Counts cases over the whole run, for the progress lines.
struct Progress {
    done: usize,
    total: usize,
}

impl<B: Backend> Runner<'_, B> {
    /// Runs the trials of one length, deepest needle first (see the module doc); the result
    /// lists them in trial order.
    fn run_length(
        &mut self,
        cases: &[Planned],
        attention: &AttentionChoice,
        progress: &mut Progress,
    ) -> Result<LengthResult> {
        let start = Instant::now();
        let mut order: Vec<&Planned> = cases.iter().collect();
        order.sort_by(|a, b| b.depth.total_cmp(&a.depth));
        let mut results = Vec::with_capacity(cases.len());
        let mut correct = 0;
        for case in order {
            let result = self.run_case(case)?;
            correct += usize::from(result.correct);
            progress.done += 1;
            eprintln!(
                "[{}/{}] {} {} depth {:.2}: {} (expected {}, got {:?}) | so far {correct}/{} | prefill {} tokens at {:.0} tokens/s, decode {} at {:.1} tokens/s",
                progress.done,
                progress.total,
                length_label(case.length),
                attention.label(),
                case.depth,
                if result.correct { "correct" } else { "wrong" },
                result.expected,
                result.output,
                results.len() + 1,
                result.prefill_tokens,
                result.prefill_tokens as f64 / result.prefill_s.max(1e-9),
                result.decode_tokens,
                result.decode_tokens.saturating_sub(1) as f64 / result.decode_s.max(1e-9),
            );
            results.push(result);
        }
        results.sort_by_key(|r| r.trial);
        Ok(LengthResult {
            length: cases.first().map_or(0, |c| c.length),
            attention: attention.kind,
            preset: attention.preset.clone(),
            hip_config: attention.config.clone(),
            trials: results.len(),
            correct,
            accuracy: correct as f64 / results.len().max(1) as f64,
            wall_s: start.elapsed().as_secs_f64(),
            cases: results,
        })
    }

    /// Prefills the case's prompt (reusing the cached prefix), decodes greedily, and scores
    /// the decoded text.
    fn run_case(&mut self, case: &Planned) -> Result<CaseResult> {
        let mut sampler = Sampler::new(SamplingParams { temperature: 0.0, ..SamplingParams::DEFAULT })?;
        let show_prefill = std::io::stderr().is_terminal();
        let mut prefill_progress = |done: usize, total: usize| {
            if show_prefill {
                eprint!("\r  prefill {done}/{total} tokens\x1b[K");
            }
        };
        let mut generated = Vec::new();
        let stats = self.session.generate(
            self.engine,
            &case.prompt.ids,
            &mut sampler,
            &self.generate,
            &mut prefill_progress,
            &mut |id| {
                generated.push(id);
                Flow::Continue
            },
        )?;
        if show_prefill {
            eprint!("\r\x1b[K");
        }
        let output = self.tokenizer.decode(&generated, true).context("decoding the generated tokens")?;
        let spec = &case.spec;
        Ok(CaseResult {
            trial: case.trial,
            depth: case.depth,
            expected: spec.expected.join(", "),
            expected_values: spec.expected.clone(),
            correct: score::is_correct(spec.scoring, &spec.expected, &output),
            output,
            prompt_tokens: case.prompt.ids.len(),
            haystack_sentences: case.prompt.haystack_sentences,
            needle_token_offsets: case.prompt.needle_offsets.clone(),
            prefill_tokens: stats.prefill_tokens,
            prefill_s: stats.prefill_time.as_secs_f64(),
            decode_tokens: stats.generated_tokens,
            decode_s: stats.decode_time.as_secs_f64(),
            finish: match stats.finish {
                FinishReason::StopToken => "stop token",
                FinishReason::Length => "length",
                FinishReason::Stopped => "stopped",
            },
        })
    }
}
