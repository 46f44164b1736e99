//! `run`, `complete` and `chat`: text generation streamed to stdout, timings to stderr.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use infinihip_core::chat::ChatMessage;
use infinihip_core::model_config::ModelConfig;
use infinihip_core::sampling::Sampler;
use infinihip_engine::backend::Backend;
use infinihip_engine::generate::{FinishReason, Flow, GenerateOptions, GenerationStats, Session};
use infinihip_engine::text::TextStreamer;
use infinihip_engine::Engine;

use crate::args::{GenArgs, ModelArgs};
use crate::attention::{AttentionArgs, AttentionChoice, AttentionKind};
use crate::load::{with_engine, Opened};

/// How many positions the KV pool gets: `--ctx-size`, else the model's context or what this
/// prompt and reply need, whichever is more. Warns when dense attention will run past the
/// model's native context.
fn context_tokens(opened: &Opened, model: &ModelArgs, attention: &AttentionChoice, needed: usize) -> Result<usize> {
    let native = ModelConfig::from_metadata(opened.file.metadata(), None)?.context_length;
    warn_past_native(attention, needed, native);
    match model.ctx_size {
        Some(ctx) if ctx < needed => {
            bail!("the prompt and --max-tokens need {needed} tokens, more than --ctx-size {ctx}")
        }
        Some(ctx) => Ok(ctx),
        None => Ok(native.max(needed)),
    }
}

/// Dense attention past the native context keeps plain RoPE, which the model never saw so far
/// out; HiP re-positions keys and stays inside it.
fn warn_past_native(attention: &AttentionChoice, tokens: usize, native: usize) {
    if attention.kind == AttentionKind::Dense && tokens > native {
        eprintln!(
            "infinihip: warning: {tokens} tokens is past the model's native context of {native}; dense attention \
             there uses plain RoPE and degrades (--attention hip stays within it)"
        );
    }
}

fn generate_options(opened: &Opened, gen: &GenArgs) -> GenerateOptions {
    let stop_ids = if gen.ignore_eos { Vec::new() } else { opened.tokenizer.stop_ids().to_vec() };
    GenerateOptions { max_tokens: gen.max_tokens, stop_ids }
}

/// Streams one generation to stdout. Returns its statistics.
fn stream_reply<B: Backend>(
    opened: &Opened,
    engine: &mut Engine<B>,
    session: &mut Session,
    prompt: &[u32],
    gen: &GenArgs,
    sampler: &mut Sampler,
) -> Result<(GenerationStats, String)> {
    let options = generate_options(opened, gen);
    let mut streamer = TextStreamer::new(&opened.tokenizer, &gen.stops);
    let mut reply = String::new();
    let mut stdout = std::io::stdout().lock();
    let mut failure = None;
    let bar = prefill_bar(prompt.len(), engine.options().prefill_chunk);
    let mut progress = |done: usize, _total: usize| {
        if let Some(bar) = &bar {
            bar.set_position(done as u64);
        }
    };
    let mut first = true;
    let stats = session.generate(engine, prompt, sampler, &options, &mut progress, &mut |id| {
        if first {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            first = false;
        }
        match streamer.push(id) {
            Ok(delta) => {
                reply.push_str(&delta.text);
                if stdout.write_all(delta.text.as_bytes()).and_then(|_| stdout.flush()).is_err() {
                    // stdout closed (for example piped into `head`): stop quietly.
                    return Flow::Stop;
                }
                if delta.stopped {
                    Flow::Stop
                } else {
                    Flow::Continue
                }
            }
            Err(e) => {
                failure = Some(e);
                Flow::Stop
            }
        }
    })?;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    if let Some(e) = failure {
        return Err(e).context("decoding the generated tokens");
    }
    let tail = streamer.finish();
    reply.push_str(&tail);
    // A closed stdout is not an error worth reporting here.
    let _ = write!(stdout, "{tail}");
    let _ = stdout.flush();
    Ok((stats, reply))
}

/// A progress bar on stderr for prompts longer than one prefill chunk, when stderr is a
/// terminal.
fn prefill_bar(prompt_tokens: usize, chunk: usize) -> Option<ProgressBar> {
    if prompt_tokens <= chunk || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(prompt_tokens as u64);
    bar.set_style(
        ProgressStyle::with_template("prefill {bar:40} {pos}/{len} tokens ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    Some(bar)
}

fn print_stats(stats: &GenerationStats, gen: &GenArgs) {
    if gen.quiet {
        return;
    }
    let finish = match stats.finish {
        FinishReason::Length => "length",
        FinishReason::StopToken => "stop token",
        FinishReason::Stopped => "stop string",
    };
    eprintln!(
        "\n[prefill {} tokens in {:.2} s: {:.1} tokens/s | decode {} tokens in {:.2} s: {:.1} tokens/s | finish: {finish}]",
        stats.prefill_tokens,
        stats.prefill_time.as_secs_f64(),
        stats.prefill_tokens_per_s(),
        stats.generated_tokens,
        stats.decode_time.as_secs_f64(),
        stats.decode_tokens_per_s(),
    );
}

fn sampler(gen: &GenArgs) -> Result<Sampler> {
    Sampler::new(gen.sampling()).context("invalid sampling options")
}

fn chat_messages(system: Option<&str>) -> Vec<ChatMessage> {
    system.map(|s| vec![ChatMessage::new("system", s)]).unwrap_or_default()
}

fn warn_template(opened: &Opened) {
    if let Some(w) = opened.template.fallback_warning() {
        eprintln!("infinihip: warning: {w}");
    }
}

/// `infinihip run PROMPT`.
pub fn run(
    prompt: &str,
    system: Option<&str>,
    model: &ModelArgs,
    gen: &GenArgs,
    attention: &AttentionArgs,
) -> Result<()> {
    let attention = AttentionChoice::new(attention)?;
    let opened = Opened::new(&model.path)?;
    warn_template(&opened);
    let mut messages = chat_messages(system);
    messages.push(ChatMessage::new("user", prompt));
    let text = opened.template.render(&messages, true)?;
    let ids = opened.tokenizer.encode(&text, true)?;
    let ctx = context_tokens(&opened, model, &attention, ids.len() + gen.max_tokens)?;
    with_engine!(opened, model, ctx, |engine, _device| {
        let mut session = Session::with_attention(&attention.mode(), engine.model().config().n_layers);
        let mut sampler = sampler(gen)?;
        let (stats, reply) = stream_reply(&opened, &mut engine, &mut session, &ids, gen, &mut sampler)?;
        if !reply.ends_with('\n') {
            println!();
        }
        print_stats(&stats, gen);
    });
    Ok(())
}

/// `infinihip complete TEXT`.
pub fn complete(text: &str, special: bool, model: &ModelArgs, gen: &GenArgs, attention: &AttentionArgs) -> Result<()> {
    let attention = AttentionChoice::new(attention)?;
    let opened = Opened::new(&model.path)?;
    let ids = opened.tokenizer.encode(text, special)?;
    if ids.is_empty() {
        bail!("the text to complete is empty");
    }
    let ctx = context_tokens(&opened, model, &attention, ids.len() + gen.max_tokens)?;
    with_engine!(opened, model, ctx, |engine, _device| {
        let mut session = Session::with_attention(&attention.mode(), engine.model().config().n_layers);
        let mut sampler = sampler(gen)?;
        let (stats, _) = stream_reply(&opened, &mut engine, &mut session, &ids, gen, &mut sampler)?;
        println!();
        print_stats(&stats, gen);
    });
    Ok(())
}

/// `infinihip chat`: a REPL. The conversation is re-rendered with the template every turn;
/// the session reuses the cached prefix, so only the new turn is prefilled.
pub fn chat(system: Option<&str>, model: &ModelArgs, gen: &GenArgs, attention: &AttentionArgs) -> Result<()> {
    let attention = AttentionChoice::new(attention)?;
    let opened = Opened::new(&model.path)?;
    warn_template(&opened);
    let native = ModelConfig::from_metadata(opened.file.metadata(), None)?.context_length;
    let ctx = model.ctx_size.unwrap_or(native);
    warn_past_native(&attention, ctx, native);
    with_engine!(opened, model, ctx, |engine, _device| {
        let mut sampler = sampler(gen)?;
        let mut session = Session::with_attention(&attention.mode(), engine.model().config().n_layers);
        let mut messages = chat_messages(system);
        let interactive = std::io::stdin().is_terminal();
        if interactive {
            eprintln!("infinihip chat: type a message; /reset starts over, /exit or Ctrl-D quits.");
        }
        let stdin = std::io::stdin();
        let mut lines = stdin.lock().lines();
        loop {
            if interactive {
                eprint!("> ");
            }
            let Some(line) = lines.next() else { break };
            let line = line.context("reading stdin")?;
            let input = line.trim();
            match input {
                "" => continue,
                "/exit" | "/quit" => break,
                "/reset" => {
                    messages = chat_messages(system);
                    session.release(&mut engine);
                    eprintln!("(conversation reset)");
                    continue;
                }
                _ => {}
            }
            messages.push(ChatMessage::new("user", input));
            let text = opened.template.render(&messages, true)?;
            let ids = opened.tokenizer.encode(&text, true)?;
            if ids.len() + gen.max_tokens > ctx {
                messages.pop();
                eprintln!(
                    "infinihip: the conversation would need {} tokens, more than the context of {ctx}; \
                     /reset, or restart with a larger --ctx-size",
                    ids.len() + gen.max_tokens
                );
                continue;
            }
            let (stats, reply) = stream_reply(&opened, &mut engine, &mut session, &ids, gen, &mut sampler)?;
            println!();
            print_stats(&stats, gen);
            messages.push(ChatMessage::new("assistant", reply.trim()));
        }
    });
    Ok(())
}
