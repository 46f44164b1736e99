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
use infinihip_cuda::timing::median;
use infinihip_engine::backend::Backend;
use infinihip_engine::kv::SeqKv;
use infinihip_engine::LogitsWanted;
use infinihip_engine::{AttentionMode, Engine, EngineError};
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

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Seconds to prefill `prompt` into a fresh sequence attending as `mode` (up to the first
/// token's logits), then to take `gen_tokens` greedy decode steps (the end-of-sequence token
/// does not stop them), and the device memory in use at the end; the sequence is released.
fn prefill_then_decode<B: Backend>(
    engine: &mut Engine<B>,
    mode: &AttentionMode,
    prompt: &[u32],
    gen_tokens: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(f64, f64, Option<usize>), EngineError> {
    let mut seq = SeqKv::with_attention(mode, engine.model().config().n_layers);
    let t0 = Instant::now();
    let logits = engine.feed(&mut seq, prompt, LogitsWanted::Last, progress)?;
    let prefill_s = t0.elapsed().as_secs_f64();
    let mut token = argmax(&logits);
    let t1 = Instant::now();
    for _ in 0..gen_tokens {
        let logits = engine.feed(&mut seq, &[token], LogitsWanted::Last, &mut |_, _| {})?;
        token = argmax(&logits);
    }
    let decode_s = t1.elapsed().as_secs_f64();
    let memory = engine.model().backend().device_memory_in_use();
    engine.release(&mut seq);
    Ok((prefill_s, decode_s, memory))
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
            let (prefill_s, decode_s, _) =
                prefill_then_decode(&mut engine, &attention.mode(), &prompt, gen_tokens, &mut |_, _| {})?;
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

/// One measured point of `bench e2e`.
#[derive(Serialize)]
struct E2eRow {
    context: usize,
    attention: String,
    /// Prefill of the whole prompt, up to the first token's logits.
    ttft_s: f64,
    prefill_tokens_per_s: f64,
    decode_tokens: usize,
    decode_tokens_per_s: f64,
    /// Device memory in use after the decode steps (every process), when the backend has a
    /// device.
    device_memory_bytes: Option<usize>,
}

#[derive(Serialize)]
struct E2eReport {
    model: String,
    backend: String,
    hip_preset: String,
    prefill_chunk: usize,
    kv_capacity_tokens: usize,
    command: String,
    commit: &'static str,
    rows: Vec<E2eRow>,
}

/// `infinihip bench e2e`: time to first token and decode speed of the whole model as the context
/// grows, with HiP at every length and dense attention up to `dense_up_to` tokens (dense
/// prefill grows with the square of the length). One sequence at a time, the KV cache on the
/// device; each length starts from an empty cache.
pub fn e2e(args: &crate::args::E2eArgs) -> Result<()> {
    let lengths = &args.lengths.0;
    let longest = lengths.last().copied().context("no --lengths given")?;
    let hip = AttentionChoice::new(&AttentionArgs {
        attention: crate::attention::AttentionKind::Hip,
        hip_preset: args.hip_preset.clone(),
        hip_config: args.hip_config.clone(),
    })?;
    let opened = Opened::new(&args.model.path)?;
    let capacity = longest + args.gen_tokens + 1;
    with_engine!(opened, &args.model, capacity, |engine, device| {
        let unit = opened.tokenizer.encode(FILLER, false)?;
        eprintln!(
            "bench e2e: {} on {}, KV pool of {capacity} tokens, prefill steps of {} tokens",
            lengths.iter().map(|&n| crate::eval::options::length_label(n)).collect::<Vec<_>>().join(", "),
            device.label,
            engine.options().prefill_chunk
        );
        let mut rows = Vec::new();
        for &n in lengths {
            let prompt: Vec<u32> = unit.iter().copied().cycle().take(n).collect();
            let mut modes = vec![(hip.label(), hip.mode())];
            if n <= args.dense_up_to {
                modes.push(("dense".to_string(), AttentionMode::Dense));
            }
            for (label, mode) in modes {
                let mut last_report = Instant::now();
                let (ttft, decode_s, memory) =
                    prefill_then_decode(&mut engine, &mode, &prompt, args.gen_tokens, &mut |done, total| {
                        if last_report.elapsed().as_secs_f64() >= 10.0 {
                            eprintln!("  {label} {n}: prefilled {done}/{total} tokens");
                            last_report = Instant::now();
                        }
                    })?;
                let row = E2eRow {
                    context: n,
                    attention: label,
                    ttft_s: ttft,
                    prefill_tokens_per_s: n as f64 / ttft,
                    decode_tokens: args.gen_tokens,
                    decode_tokens_per_s: args.gen_tokens as f64 / decode_s,
                    device_memory_bytes: memory,
                };
                eprintln!(
                    "  {} {}: TTFT {:.2} s ({:.0} tokens/s), decode {:.1} tokens/s",
                    row.attention,
                    crate::eval::options::length_label(n),
                    row.ttft_s,
                    row.prefill_tokens_per_s,
                    row.decode_tokens_per_s
                );
                rows.push(row);
            }
        }
        println!("| context | attention | TTFT (s) | prefill tokens/s | decode tokens/s | device memory (GiB) |");
        println!("|---|---|---|---|---|---|");
        for r in &rows {
            let mem =
                r.device_memory_bytes.map_or("-".to_string(), |b| format!("{:.1}", b as f64 / (1u64 << 30) as f64));
            println!(
                "| {} | {} | {:.2} | {:.0} | {:.1} | {mem} |",
                crate::eval::options::length_label(r.context),
                r.attention,
                r.ttft_s,
                r.prefill_tokens_per_s,
                r.decode_tokens_per_s
            );
        }
        if let Some(path) = &args.json {
            let report = E2eReport {
                model: opened.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                backend: device.label.clone(),
                hip_preset: hip.label(),
                prefill_chunk: engine.options().prefill_chunk,
                kv_capacity_tokens: capacity,
                command: std::env::args().collect::<Vec<_>>().join(" "),
                commit: env!("INFINIHIP_COMMIT"),
                rows,
            };
            let text = serde_json::to_string_pretty(&report).context("rendering JSON")?;
            std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        }
    });
    Ok(())
}
