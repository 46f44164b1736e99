//! The default model on the CUDA backend against the fixture's exact float64 logits.
//!
//! The GPU stores weights, activations and the KV cache in bf16 (DESIGN.md §3), so its logits
//! sit further from the float64 reference than the CPU's f32 path (whose bar is 2e-2 absolute
//! on the top-10 logits). How far is measured by `bench/bf16_numerics.py`, which repeats each
//! of the GPU's roundings in a NumPy forward pass: on the fixture's first three cases the bf16
//! design lands 0.27–0.46 from the reference on the top-10 logits and 4e-3–1.9e-2 (relative)
//! on the last position's, with no one rounding dominating; the H100 measured up to 0.55 and
//! 2.8e-2.
//! The bars below sit above those figures, so they catch a broken kernel (errors of whole
//! logits) rather than rounding; top-1 must also agree wherever the reference's top-1/top-2
//! margin exceeds `TOP1_MARGIN`.
//!
//! Without a CUDA device the tests print `skipped: no CUDA device` and pass
//! (`INFINIHIP_REQUIRE_CUDA=1` makes that a failure). With one, the model file is required:
//! `$INFINIHIP_MODEL`, else the default model in the user cache.

// `common::model_path` fetches with pip; the GPU machine has no network, so `model_path` below
// only looks.
mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use common::{fixture, LogitFixture};
use infinihip_core::gguf::GgufFile;
use infinihip_core::hip::HipConfig;
use infinihip_engine::backend::cpu::CpuBackend;
use infinihip_engine::backend::cuda::CudaBackend;
use infinihip_engine::backend::Backend;
use infinihip_engine::kv::SeqKv;
use infinihip_engine::model::llama::Llama;
use infinihip_engine::{AttentionMode, Engine, EngineOptions, LogitsWanted, StepInput};

const TOP10_TOLERANCE: f32 = 0.75;
/// One bf16 forward pass against the reference or the CPU: the emulated design reaches 1.9e-2,
/// and the H100 1.3e-2 and 2.8e-2 on the same position with two builds whose kernels round in
/// a different order (the last position of case 0 amplifies rounding the most).
const REL_TOLERANCE: f64 = 5e-2;
const TOP1_MARGIN: f32 = 0.5;
/// Two GPU paths over the same keys, each with its own bf16 rounding (decode against prefill,
/// HiP against dense when both read every key): measured up to 5.4e-2 (H100, 21 steps).
const TWO_PATHS_REL_TOLERANCE: f64 = 8e-2;
/// HiP on the GPU against HiP on the CPU with pruning: one bf16 pass against f32, and masks
/// that may differ where scores nearly tie; measured up to 2.1e-2 and, after the prefill
/// kernel's loader changed its rounding order, 4.6e-2 over 13 steps on the H100.
const HIP_PRUNED_REL_TOLERANCE: f64 = 8e-2;

/// The CUDA device, or `None` (after saying so) when there is none.
fn gpu() -> Option<CudaBackend> {
    common::cuda_or_skip(CudaBackend::new(0))
}

/// `$INFINIHIP_MODEL`, else the default model in the cache; never fetched (the GPU machine
/// has no network), so a missing file fails the test with the way to get it.
fn model_path() -> PathBuf {
    infinihip_core::model_store::installed_model().unwrap_or_else(|e| panic!("{e}"))
}

fn engine<B: Backend>(backend: B, prefill_chunk: usize, page_size: usize) -> Engine<B> {
    let file = Arc::new(GgufFile::open(model_path()).expect("the model opens"));
    let model = Llama::load(file, backend).expect("the model loads");
    Engine::new(model, EngineOptions { page_size, prefill_chunk, kv_capacity_tokens: 2048 }).expect("engine")
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32)
}

/// Checks one position; returns the largest top-10 error.
fn check_position(what: &str, logits: &[f32], ref_ids: &[u32], ref_logits: &[f32]) -> f32 {
    assert!(logits.iter().all(|v| v.is_finite()), "{what}: non-finite logits");
    let mut worst = 0f32;
    for (&id, &want) in ref_ids.iter().zip(ref_logits) {
        let err = (logits[id as usize] - want).abs();
        worst = worst.max(err);
        assert!(err <= TOP10_TOLERANCE, "{what}: token {id}: {} vs reference {want}", logits[id as usize]);
    }
    let margin = ref_logits[0] - ref_logits[1];
    if margin > TOP1_MARGIN {
        assert_eq!(argmax(logits), ref_ids[0], "{what}: top-1 differs (reference margin {margin})");
    }
    worst
}

/// The gap between the largest and second-largest logit.
fn top_margin(v: &[f32]) -> f32 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &x in v {
        if x > a {
            (a, b) = (x, a);
        } else if x > b {
            b = x;
        }
    }
    a - b
}

fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn gpu_logits_match_float64_reference() {
    let Some(backend) = gpu() else { return };
    eprintln!("device: {:?}", backend.device());
    let fx: LogitFixture = fixture();
    // Small chunks and pages exercise chunked prefill and page boundaries.
    let mut engine = engine(backend, 16, 8);
    let vocab = engine.model().config().vocab_size;
    for (ci, case) in fx.logits.iter().enumerate() {
        let mut seq = SeqKv::new();
        let logits = engine.feed(&mut seq, &case.ids, LogitsWanted::All, &mut |_, _| {}).expect("forward");
        assert_eq!(logits.len(), case.ids.len() * vocab);
        let mut worst = 0f32;
        for p in 0..case.ids.len() {
            let row = &logits[p * vocab..(p + 1) * vocab];
            let what = format!("case {ci} position {p}");
            worst = worst.max(check_position(&what, row, &case.top10_ids[p], &case.top10_logits[p]));
        }
        let last = &logits[(case.ids.len() - 1) * vocab..];
        let rel = relative_error(last, &case.last_logits);
        let max_err = last.iter().zip(&case.last_logits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        eprintln!(
            "case {ci}: {} tokens, worst top-10 error {worst:.3}, last position: relative error {rel:.2e}, max error \
             {max_err:.3}",
            case.ids.len()
        );
        assert!(rel <= REL_TOLERANCE, "case {ci}: last-position logits relative error {rel:.3e}");
        engine.release(&mut seq);
    }

    // The 1,440-token case in 512-token chunks: the prefill kernel over longer contexts.
    let case = &fx.long_logits;
    let chunk = 512;
    drop(engine);
    let mut engine = self::engine(CudaBackend::new(0).expect("the device opened before"), chunk, 64);
    let mut seq = SeqKv::new();
    let mut worst = 0f32;
    for (c, part) in case.ids.chunks(chunk).enumerate() {
        let mut input = [StepInput { seq: &mut seq, tokens: part, logits: LogitsWanted::All }];
        let rows = engine.step(&mut input).expect("forward");
        for (k, &p) in case.positions.iter().enumerate() {
            if p / chunk == c {
                let row = &rows[0][(p % chunk) * vocab..(p % chunk + 1) * vocab];
                let what = format!("long case position {p}");
                worst = worst.max(check_position(&what, row, &case.top10_ids[k], &case.top10_logits[k]));
            }
        }
    }
    eprintln!("long case: {} tokens, worst top-10 error {worst:.3}", case.ids.len());
}

#[test]
fn gpu_decode_steps_equal_prefill_and_are_timed() {
    let Some(backend) = gpu() else { return };
    let fx: LogitFixture = fixture();
    let ids = &fx.long_logits.ids[..512];
    let mut engine = engine(backend, 512, 64);
    let vocab = engine.model().config().vocab_size;
    // Warm-up: the first step pays for allocations and kernel loading.
    let mut warm = SeqKv::new();
    engine.feed(&mut warm, ids, LogitsWanted::Last, &mut |_, _| {}).expect("warm-up");
    engine.release(&mut warm);

    let mut a = SeqKv::new();
    let t0 = Instant::now();
    let all = engine.feed(&mut a, ids, LogitsWanted::All, &mut |_, _| {}).expect("prefill");
    let prefill_ms = t0.elapsed().as_secs_f64() * 1e3;
    // Decode the last 32 tokens one at a time after a prefill of the rest.
    let split = ids.len() - 32;
    let mut b = SeqKv::new();
    engine.feed(&mut b, &ids[..split], LogitsWanted::None, &mut |_, _| {}).expect("prefill");
    let t1 = Instant::now();
    let mut worst = 0f64;
    for (p, &id) in ids.iter().enumerate().skip(split) {
        let one = engine.feed(&mut b, &[id], LogitsWanted::Last, &mut |_, _| {}).expect("decode");
        let want = &all[p * vocab..(p + 1) * vocab];
        worst = worst.max(relative_error(&one, want));
        if top_margin(want) > TOP1_MARGIN {
            assert_eq!(argmax(&one), argmax(want), "position {p}: decode and prefill pick different tokens");
        }
    }
    let decode_ms = t1.elapsed().as_secs_f64() * 1e3 / 32.0;
    eprintln!(
        "timing: one 512-token prefill chunk (all logits copied back) {prefill_ms:.2} ms; one decode step at ~500 \
         tokens of context {decode_ms:.3} ms; decode vs prefill logits: worst relative difference {worst:.2e}"
    );
    assert!(worst <= TWO_PATHS_REL_TOLERANCE, "decode and prefill logits differ by {worst:.3e} (relative)");
}

#[test]
fn gpu_layers_track_the_cpu() {
    // Each layer's attention queries on the GPU against the CPU's on the same tokens: the first
    // layer that drifts names where a discrepancy enters.
    let Some(backend) = gpu() else { return };
    let fx: LogitFixture = fixture();
    let ids = &fx.logits[0].ids;
    let mut gpu = engine(backend, 64, 16);
    let mut cpu = engine(CpuBackend::new(0).expect("cpu"), 64, 16);
    let layers: Vec<usize> = (0..gpu.model().config().n_layers).collect();
    let mut queries = Vec::new();
    gpu.workspace_mut().capture_queries(&layers);
    cpu.workspace_mut().capture_queries(&layers);
    let (mut sg, mut sc) = (SeqKv::new(), SeqKv::new());
    let lg = gpu.feed(&mut sg, ids, LogitsWanted::Last, &mut |_, _| {}).expect("gpu forward");
    let lc = cpu.feed(&mut sc, ids, LogitsWanted::Last, &mut |_, _| {}).expect("cpu forward");
    for &l in &layers {
        let (qg, qc) =
            (gpu.workspace_mut().captured_queries(l).to_vec(), cpu.workspace_mut().captured_queries(l).to_vec());
        let finite = qg.iter().all(|v| v.is_finite());
        let rel = relative_error(&qg, &qc);
        eprintln!("layer {l}: queries relative error {rel:.2e}{}", if finite { "" } else { " (non-finite values)" });
        queries.push((l, rel, finite));
    }
    let rel = relative_error(&lg, &lc);
    eprintln!("last-position logits: relative error {rel:.2e}");
    for (l, rel, finite) in queries {
        assert!(finite && rel <= 5e-2, "layer {l}: GPU queries differ from the CPU's by {rel:.3e}");
    }
    assert!(rel <= REL_TOLERANCE, "logits differ from the CPU's by {rel:.3e}");
}

/// The prompt's logits, then one row per decode step of `decode`.
fn run_mode<B: Backend>(engine: &mut Engine<B>, mode: &AttentionMode, prompt: &[u32], decode: &[u32]) -> Vec<Vec<f32>> {
    let mut seq = SeqKv::with_attention(mode, engine.model().config().n_layers);
    let mut out = vec![engine.feed(&mut seq, prompt, LogitsWanted::Last, &mut |_, _| {}).expect("prefill")];
    for &t in decode {
        out.push(engine.feed(&mut seq, &[t], LogitsWanted::Last, &mut |_, _| {}).expect("decode"));
    }
    engine.release(&mut seq);
    out
}

#[test]
fn gpu_hip_equals_dense_when_the_context_fits_in_sink_window_and_k() {
    // 1,400 tokens fit in the default preset's 256 + 1024 + 2048: HiP's key lists (sink, every
    // earlier block, window) hold every key, so it must give dense attention's logits up to
    // the order of the sums.
    let Some(backend) = gpu() else { return };
    let fx: LogitFixture = fixture();
    let (prompt, decode) = fx.long_logits.ids.split_at(1400);
    let mut engine = engine(backend, 256, 64);
    let dense = run_mode(&mut engine, &AttentionMode::Dense, prompt, &decode[..20]);
    let hip = run_mode(&mut engine, &AttentionMode::Hip(Arc::new(HipConfig::default())), prompt, &decode[..20]);
    for (step, (d, h)) in dense.iter().zip(&hip).enumerate() {
        let rel = relative_error(h, d);
        eprintln!("step {step}: HiP vs dense logits relative error {rel:.2e}");
        assert!(rel <= TWO_PATHS_REL_TOLERANCE, "step {step}: HiP and dense logits differ by {rel:.3e} (relative)");
        assert_eq!(argmax(h), argmax(d), "step {step}: HiP and dense pick different tokens");
    }
}

#[test]
fn gpu_hip_prunes_like_the_cpu() {
    // With pruning, the GPU (bf16 activations) and the CPU (f32) may keep a few different
    // blocks where scores nearly tie, so the bar is the next-token choice and a loose
    // relative error, over the prompt's last token and 12 decode steps (the refresh cycle
    // of 8 steps included); the sampled last token must equal a decode step of it.
    let Some(backend) = gpu() else { return };
    let fx: LogitFixture = fixture();
    let (prompt, decode) = fx.long_logits.ids.split_at(1400);
    let mode = AttentionMode::Hip(Arc::new(common::pruning_config()));
    let mut gpu = engine(backend, 256, 64);
    let mut cpu = engine(CpuBackend::new(0).expect("cpu"), 256, 64);
    let on_gpu = run_mode(&mut gpu, &mode, prompt, &decode[..12]);
    let on_cpu = run_mode(&mut cpu, &mode, prompt, &decode[..12]);
    let mut agree = 0;
    for (step, (g, c)) in on_gpu.iter().zip(&on_cpu).enumerate() {
        let rel = relative_error(g, c);
        eprintln!("step {step}: GPU vs CPU HiP logits relative error {rel:.2e}, top-1 {} vs {}", argmax(g), argmax(c));
        agree += usize::from(argmax(g) == argmax(c));
        assert!(rel <= HIP_PRUNED_REL_TOLERANCE, "step {step}: GPU and CPU HiP logits differ by {rel:.3e}");
    }
    assert!(agree >= 12, "the GPU's top-1 token agrees with the CPU's at only {agree} of 13 steps");

    let mut seq = SeqKv::with_attention(&mode, gpu.model().config().n_layers);
    let (head, last) = prompt.split_at(prompt.len() - 1);
    gpu.feed(&mut seq, head, LogitsWanted::None, &mut |_, _| {}).expect("prefill");
    let stepped = gpu.feed(&mut seq, last, LogitsWanted::Last, &mut |_, _| {}).expect("decode step");
    gpu.release(&mut seq);
    let rel = relative_error(&stepped, &on_gpu[0]);
    eprintln!("sampled last token vs a decode step of it: relative error {rel:.2e}");
    assert!(rel <= TWO_PATHS_REL_TOLERANCE, "the prompt's last token and a decode step of it differ by {rel:.3e}");
}
