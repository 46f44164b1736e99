//! HiP attention inside the real model (the default model, on the CPU).

mod common;

use common::{fixture, model_path, pruning_config};
use std::sync::Arc;

use infinihip_core::gguf::GgufFile;
use infinihip_core::hip::HipConfig;
use infinihip_engine::backend::cpu::CpuBackend;
use infinihip_engine::kv::SeqKv;
use infinihip_engine::model::llama::Llama;
use infinihip_engine::{AttentionMode, Engine, EngineOptions, LogitsWanted};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    long_logits: LongCase,
}

#[derive(Deserialize)]
struct LongCase {
    ids: Vec<u32>,
}

fn long_ids() -> Vec<u32> {
    let fx: Fixture = fixture();
    fx.long_logits.ids
}

fn engine() -> Engine<CpuBackend> {
    let file = Arc::new(GgufFile::open(model_path()).expect("the model opens"));
    let model = Llama::load(file, CpuBackend::new(0).expect("threads")).expect("the model loads");
    Engine::new(model, EngineOptions { page_size: 64, prefill_chunk: 256, kv_capacity_tokens: 8192 }).expect("engine")
}

fn run(engine: &mut Engine<CpuBackend>, mode: &AttentionMode, prompt: &[u32], decode: &[u32]) -> Vec<Vec<f32>> {
    let n_layers = engine.model().config().n_layers;
    let mut seq = SeqKv::with_attention(mode, n_layers);
    let mut out = vec![engine.feed(&mut seq, prompt, LogitsWanted::Last, &mut |_, _| {}).expect("prefill")];
    for &t in decode {
        out.push(engine.feed(&mut seq, &[t], LogitsWanted::Last, &mut |_, _| {}).expect("decode"));
    }
    engine.release(&mut seq);
    out
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

#[test]
fn hip_equals_dense_when_the_context_fits_in_sink_window_and_k() {
    // 1,400 tokens fit in the default preset's 256 + 1024 + 2048: nothing is pruned, and the
    // streaming RoPE renumbering is the identity, so prefill and decode logits equal dense.
    let ids = long_ids();
    let (prompt, decode) = ids.split_at(1400);
    let mut engine = engine();
    let dense = run(&mut engine, &AttentionMode::Dense, prompt, &decode[..20]);
    let hip = run(&mut engine, &AttentionMode::Hip(Arc::new(HipConfig::default())), prompt, &decode[..20]);
    for (step, (d, h)) in dense.iter().zip(&hip).enumerate() {
        let diff = max_diff(d, h);
        assert!(diff < 2e-3, "step {step}: HiP and dense logits differ by {diff}");
    }
}

#[test]
fn hip_prunes_a_long_context_and_stays_close_to_dense() {
    // Most of the middle is pruned; the next-token distribution must stay close to dense
    // attention's.
    let ids = long_ids();
    let (prompt, decode) = ids.split_at(1400);
    let cfg = pruning_config();
    let mut engine = engine();
    let dense = run(&mut engine, &AttentionMode::Dense, prompt, &decode[..12]);
    let hip = run(&mut engine, &AttentionMode::Hip(Arc::new(cfg)), prompt, &decode[..12]);
    let mut agree = 0;
    for (d, h) in dense.iter().zip(&hip) {
        let top = |v: &[f32]| v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i);
        agree += usize::from(top(d) == top(h));
        assert!(max_diff(d, h) > 0.0, "with pruning, HiP must actually differ from dense");
    }
    assert!(agree >= 10, "the top-1 token agrees with dense at only {agree} of 13 steps");
}

#[test]
fn a_prompts_sampled_last_token_gets_the_mask_of_a_decode_step() {
    // The token whose logits are sampled must not share its query block's pooled mask (which
    // loses what that one query looks for, e.g. the pass key): feeding the prompt at once must
    // give the logits of feeding all but its last token, then that token as a decode step.
    let ids = long_ids();
    let prompt = &ids[..1400];
    let mode = AttentionMode::Hip(Arc::new(pruning_config()));
    let mut engine = engine();
    let whole = run(&mut engine, &mode, prompt, &[]).remove(0);
    let n_layers = engine.model().config().n_layers;
    let mut seq = SeqKv::with_attention(&mode, n_layers);
    let (head, last) = prompt.split_at(prompt.len() - 1);
    engine.feed(&mut seq, head, LogitsWanted::None, &mut |_, _| {}).expect("prefill");
    let stepped = engine.feed(&mut seq, last, LogitsWanted::Last, &mut |_, _| {}).expect("decode step");
    engine.release(&mut seq);
    let diff = max_diff(&whole, &stepped);
    assert!(diff < 2e-3, "the prompt's last token and a decode step of it differ by {diff}");
}
