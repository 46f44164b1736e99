//! `infinihip bench cpu`: prefill and decode speed of the whole model (on the CPU by default;
//! `--device cuda` times the GPU backend the same way).
//!
//! Prefill: a fresh sequence takes `prompt_tokens` tokens of real text in chunks. Decode: then
//! `gen_tokens` single-token steps, each feeding the greedy choice of the previous one (the
//! end-of-sequence token does not stop it). Each repetition starts from an empty cache; the
//! median over repetitions is reported.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use infinihip_engine::kv::SeqKv;
use infinihip_engine::LogitsWanted;
use serde::Serialize;

use crate::args::ModelArgs;
use crate::attention::{AttentionArgs, AttentionChoice};
use crate::load::{with_engine, Opened};

/// Deterministic filler text for the benchmark prompt.
const FILLER: &str = "The history of the region is long and varied. Farmers settled the river valleys \
first, and later traders built towns where the roads crossed. Each century brought new tools, new \
crops and new ideas, and the libraries of the towns grew with them. ";

#[derive(Serialize)]
struct BenchResult {
    model: String,
    backend: String,
    attention: String,
    threads: usize,
    prompt_tokens: usize,
    gen_tokens: usize,
    reps: usize,
    prefill_tokens_per_s: Vec<f64>,
    decode_tokens_per_s: Vec<f64>,
    prefill_median: f64,
    decode_median: f64,
    commit: &'static str,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

pub fn cpu(
    prompt_tokens: usize,
    gen_tokens: usize,
    reps: usize,
    json: Option<&Path>,
    model: &ModelArgs,
    attention: &AttentionArgs,
) -> Result<()> {
    let attention = AttentionChoice::new(attention)?;
    if prompt_tokens == 0 || reps == 0 {
        bail!("--prompt-tokens and --reps must be at least 1");
    }
    let opened = Opened::new(&model.path)?;
    with_engine!(opened, model, prompt_tokens + gen_tokens + 1, |engine, device| {
        let unit = opened.tokenizer.encode(FILLER, false)?;
        let prompt: Vec<u32> = unit.iter().copied().cycle().take(prompt_tokens).collect();
        let threads = device.threads;
        eprintln!(
            "bench: {prompt_tokens} prompt tokens, {gen_tokens} decode steps, {reps} repetitions, on {}",
            device.label
        );

        let (mut prefill, mut decode) = (Vec::new(), Vec::new());
        for rep in 0..reps {
            let mut seq = SeqKv::with_attention(&attention.mode(), engine.model().config().n_layers);
            let t0 = Instant::now();
            let logits = engine.feed(&mut seq, &prompt, LogitsWanted::Last, &mut |_, _| {})?;
            let prefill_s = t0.elapsed().as_secs_f64();
            let mut token = argmax(&logits);
            let t1 = Instant::now();
            for _ in 0..gen_tokens {
                let logits = engine.feed(&mut seq, &[token], LogitsWanted::Last, &mut |_, _| {})?;
                token = argmax(&logits);
            }
            let decode_s = t1.elapsed().as_secs_f64();
            engine.release(&mut seq);
            prefill.push(prompt_tokens as f64 / prefill_s);
            if gen_tokens > 0 {
                decode.push(gen_tokens as f64 / decode_s);
            }
            eprintln!(
                "  rep {}: prefill {:.1} tokens/s, decode {:.1} tokens/s",
                rep + 1,
                prefill[rep],
                decode.last().copied().unwrap_or(f64::NAN)
            );
        }
        let result = BenchResult {
            model: opened.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            backend: device.label.clone(),
            attention: attention.label(),
            threads,
            prompt_tokens,
            gen_tokens,
            reps,
            prefill_median: median(&prefill),
            decode_median: median(&decode),
            prefill_tokens_per_s: prefill,
            decode_tokens_per_s: decode,
            commit: env!("INFINIHIP_COMMIT"),
        };
        println!("| backend | attention | prompt | prefill tokens/s | decode tokens/s |");
        println!("|---|---|---|---|---|");
        println!(
            "| infinihip {} | {} | {prompt_tokens} | {:.1} | {:.1} |",
            device.label, result.attention, result.prefill_median, result.decode_median
        );
        if let Some(path) = json {
            let text = serde_json::to_string_pretty(&result).context("rendering JSON")?;
            std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        }
    });
    Ok(())
}
