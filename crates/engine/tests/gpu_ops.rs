//! Every CUDA kernel against the CPU backend's op (the oracle), on fresh random inputs of the
//! default model's and Llama-3.1-8B's sizes.
//!
//! Inputs are drawn from a seed printed by each test (set `INFINIHIP_TEST_SEED` to replay one),
//! uniform in ±1 with no zeros, and rounded to bf16 before both backends see them, so that
//! the comparison measures the GPU's arithmetic, not its storage of the inputs. Outputs are
//! poisoned with NaN before each run. The bar is METHOD.md's for bf16:
//! ‖gpu − cpu‖ / ‖cpu‖ ≤ 1e-2, and every value finite.
//!
//! With no CUDA device (or no CUDA libraries) each test prints `skipped: no CUDA device` and
//! passes; with `INFINIHIP_REQUIRE_CUDA=1` it fails instead.

mod common;

use std::sync::Arc;

use half::bf16;
use infinihip_core::gguf::writer::GgufWriter;
use infinihip_core::gguf::GgufFile;
use infinihip_core::quant::GgmlType;
use infinihip_core::rope::{RopeConfig, RopeScaling, RopeStyle};
use infinihip_cuda::oracle::{SplitMix64, ORACLE_REL_TOL};
use infinihip_engine::backend::cpu::{CpuAct, CpuBackend};
use infinihip_engine::backend::cuda::{CudaAct, CudaBackend};
use infinihip_engine::backend::{AttentionShape, Backend, BatchPlan, SeqSlice, TensorRef};
use infinihip_engine::hip_state::HipSeqState;
use infinihip_engine::kv::{KvLayout, PageId};
use infinihip_engine::EngineError;

/// The CUDA device, or `None` (after saying so) when there is none.
fn gpu() -> Option<CudaBackend> {
    common::cuda_or_skip(CudaBackend::new(0))
}

/// The oracle checks' generator, seeded from `INFINIHIP_TEST_SEED` or the clock.
struct Rng(SplitMix64);

impl Rng {
    /// Seeded from `INFINIHIP_TEST_SEED` or the clock; prints the seed.
    fn fresh(test: &str) -> Self {
        let seed = std::env::var("INFINIHIP_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
        });
        eprintln!("{test}: seed {seed}");
        Self(SplitMix64::new(seed))
    }

    /// Uniform in [-1, -1/64] ∪ [1/64, 1], rounded to bf16: never zero.
    fn value(&mut self) -> f32 {
        self.0.nonzero_bf16().to_f32()
    }

    fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.value()).collect()
    }

    fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n as u64) as usize
    }
}

/// Relative error ‖a − b‖ / ‖b‖; panics on any non-finite value or beyond `tol`.
fn assert_close(what: &str, gpu: &[f32], cpu: &[f32], tol: f64) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
    if let Some(i) = gpu.iter().position(|v| !v.is_finite()) {
        panic!("{what}: element {i} is {} (unwritten or overflowed)", gpu[i]);
    }
    let (mut num, mut den) = (0f64, 0f64);
    let mut worst = (0usize, 0f64);
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        let d = (g as f64 - c as f64).abs();
        num += d * d;
        den += (c as f64) * (c as f64);
        if d > worst.1 {
            worst = (i, d);
        }
    }
    let rel = (num / den.max(f64::MIN_POSITIVE)).sqrt();
    eprintln!("{what}: relative error {rel:.2e} (largest difference {:.3e} at {})", worst.1, worst.0);
    assert!(
        rel <= tol,
        "{what}: relative error {rel:.3e} > {tol:e}; largest difference {:.3e} at {}: gpu {} cpu {}",
        worst.1,
        worst.0,
        gpu[worst.0],
        cpu[worst.0]
    );
}

/// An activation on both backends holding the same values; the GPU one starts from these.
fn act_pair(cuda: &CudaBackend, values: Vec<f32>, rows: usize, cols: usize) -> (CpuAct, CudaAct) {
    let g = cuda.act_from_host(&values, rows, cols).expect("upload");
    (CpuAct::from_vec(values, rows, cols), g)
}

/// A bf16 activation filled with NaN, so that any element a kernel fails to write shows.
fn poisoned(cuda: &CudaBackend, rows: usize, cols: usize) -> CudaAct {
    cuda.act_from_host(&vec![f32::NAN; rows * cols], rows, cols).expect("upload")
}

/// A GGUF file in memory holding `tensors` (name, type, ggml dims, bytes).
fn gguf(tensors: Vec<(&str, GgmlType, Vec<u64>, Vec<u8>)>) -> Arc<GgufFile> {
    let mut w = GgufWriter::new();
    for (name, ty, dims, data) in tensors {
        w.add_tensor(name, ty, &dims, data).expect("tensor");
    }
    Arc::new(GgufFile::from_bytes(w.to_bytes()).expect("parses"))
}

fn bf16_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect()
}

/// Random Q4_1 blocks (scale, minimum, 16 bytes of nibbles) for `n` weights.
fn q4_1_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n / 32 * 20);
    for _ in 0..n / 32 {
        let d = half::f16::from_f32(0.002 + 0.01 * rng.value().abs());
        let m = half::f16::from_f32(-0.08 * rng.value().abs());
        out.extend_from_slice(&d.to_le_bytes());
        out.extend_from_slice(&m.to_le_bytes());
        out.extend((0..16).map(|_| rng.0.next_u64() as u8));
    }
    out
}

#[test]
fn rms_norm_matches_cpu() {
    let Some(cuda) = gpu() else { return };
    let cpu = CpuBackend::new(0).expect("cpu");
    let mut rng = Rng::fresh("rms_norm");
    for (rows, cols) in [(1, 576), (37, 576), (5, 4096)] {
        let (xc, xg) = act_pair(&cuda, rng.values(rows * cols), rows, cols);
        let w = rng.values(cols);
        let mut oc = cpu.new_act(rows, cols).expect("act");
        cpu.rms_norm(&xc, &cpu.load_vector(&w).expect("w"), 1e-5, &mut oc).expect("cpu rms_norm");
        let mut og = poisoned(&cuda, rows, cols);
        cuda.rms_norm(&xg, &cuda.load_vector(&w).expect("w"), 1e-5, &mut og).expect("gpu rms_norm");
        assert_close(
            &format!("rms_norm {rows}×{cols}"),
            &cuda.to_host(&og).expect("download"),
            oc.as_slice(),
            ORACLE_REL_TOL,
        );
    }
}

#[test]
fn elementwise_ops_match_cpu() {
    let Some(cuda) = gpu() else { return };
    let cpu = CpuBackend::new(0).expect("cpu");
    let mut rng = Rng::fresh("elementwise");
    for (rows, cols) in [(1, 1536), (300, 1536), (7, 14336)] {
        let n = rows * cols;
        let x = rng.values(n);
        let y = rng.values(n);

        let (mut ac, mut ag) = act_pair(&cuda, x.clone(), rows, cols);
        let (bc, bg) = act_pair(&cuda, y.clone(), rows, cols);
        cpu.add_assign(&mut ac, &bc).expect("cpu add");
        cuda.add_assign(&mut ag, &bg).expect("gpu add");
        assert_close(
            &format!("add_assign {rows}×{cols}"),
            &cuda.to_host(&ag).expect("dl"),
            ac.as_slice(),
            ORACLE_REL_TOL,
        );

        let (mut gc, mut gg) = act_pair(&cuda, x.clone(), rows, cols);
        cpu.swiglu(&mut gc, &bc).expect("cpu swiglu");
        cuda.swiglu(&mut gg, &bg).expect("gpu swiglu");
        assert_close(&format!("swiglu {rows}×{cols}"), &cuda.to_host(&gg).expect("dl"), gc.as_slice(), ORACLE_REL_TOL);

        let bias = rng.values(cols);
        let (mut xc, mut xg) = act_pair(&cuda, x, rows, cols);
        cpu.add_bias(&mut xc, &cpu.load_vector(&bias).expect("bias")).expect("cpu bias");
        cuda.add_bias(&mut xg, &cuda.load_vector(&bias).expect("bias")).expect("gpu bias");
        assert_close(
            &format!("add_bias {rows}×{cols}"),
            &cuda.to_host(&xg).expect("dl"),
            xc.as_slice(),
            ORACLE_REL_TOL,
        );

        let picks: Vec<usize> = (0..rows.min(5)).map(|_| rng.below(rows)).collect();
        let mut pc = cpu.new_act(picks.len(), cols).expect("act");
        let mut pg = poisoned(&cuda, picks.len(), cols);
        cpu.gather_rows(&xc, &picks, &mut pc).expect("cpu gather");
        cuda.gather_rows(&xg, &picks, &mut pg).expect("gpu gather");
        assert_close(&format!("gather_rows {picks:?}"), &cuda.to_host(&pg).expect("dl"), pc.as_slice(), ORACLE_REL_TOL);
    }
}

#[test]
fn matmul_and_embed_match_cpu() {
    let Some(cuda) = gpu() else { return };
    let cpu = CpuBackend::new(0).expect("cpu");
    let mut rng = Rng::fresh("matmul");
    // (rows, n_in, n_out): SmolLM2's q and down projections, a logits-shaped product, and
    // Llama-3.1-8B's k projection, each once as bf16 weights and once as Q4_1.
    for (rows, n_in, n_out) in [(1, 576, 576), (64, 1536, 576), (3, 576, 4096), (17, 4096, 1024)] {
        let wf = rng.values(n_in * n_out);
        let file = gguf(vec![
            ("w.bf16", GgmlType::BF16, vec![n_in as u64, n_out as u64], bf16_bytes(&wf)),
            ("w.q4_1", GgmlType::Q4_1, vec![n_in as u64, n_out as u64], q4_1_bytes(&mut rng, n_in * n_out)),
        ]);
        let (xc, xg) = act_pair(&cuda, rng.values(rows * n_in), rows, n_in);
        for name in ["w.bf16", "w.q4_1"] {
            let t = TensorRef::new(file.clone(), name).expect("tensor");
            let (wc, wg) = (cpu.load_matrix(&t).expect("cpu w"), cuda.load_matrix(&t).expect("gpu w"));
            let mut oc = cpu.new_act(rows, n_out).expect("act");
            cpu.matmul(&xc, &wc, &mut oc).expect("cpu matmul");
            let mut og = poisoned(&cuda, rows, n_out);
            cuda.matmul(&xg, &wg, &mut og).expect("gpu matmul");
            let what = format!("matmul {name} {rows}×{n_in}·({n_out}×{n_in})ᵀ");
            assert_close(&what, &cuda.to_host(&og).expect("dl"), oc.as_slice(), ORACLE_REL_TOL);
            // The logits path: the same product written as f32.
            let mut of = cuda.act_f32_from_host(&vec![f32::NAN; rows * n_out], rows, n_out).expect("f32 act");
            cuda.matmul(&xg, &wg, &mut of).expect("gpu matmul f32");
            assert_close(&format!("{what} → f32"), &cuda.to_host(&of).expect("dl"), oc.as_slice(), ORACLE_REL_TOL);
        }
        // The same matrix as an embedding table.
        let t = TensorRef::new(file.clone(), "w.q4_1").expect("tensor");
        let (wc, wg) = (cpu.load_matrix(&t).expect("cpu w"), cuda.load_matrix(&t).expect("gpu w"));
        let tokens: Vec<u32> = (0..rows).map(|_| rng.below(n_out) as u32).collect();
        let mut ec = cpu.new_act(rows, n_in).expect("act");
        let mut eg = poisoned(&cuda, rows, n_in);
        cpu.embed(&wc, &tokens, &mut ec).expect("cpu embed");
        cuda.embed(&wg, &tokens, &mut eg).expect("gpu embed");
        assert_close(
            &format!("embed {rows} rows of {n_out}×{n_in}"),
            &cuda.to_host(&eg).expect("dl"),
            ec.as_slice(),
            ORACLE_REL_TOL,
        );
        let err = cuda.embed(&wg, &[n_out as u32], &mut poisoned(&cuda, 1, n_in)).unwrap_err();
        assert!(matches!(err, EngineError::TokenOutOfRange { .. }), "{err}");
    }
}

/// One attention case: the model shape, the step's sequences as (tokens, cached positions).
struct AttnCase {
    name: &'static str,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    rope: RopeConfig,
    page_size: usize,
    seqs: Vec<(usize, usize)>,
}

fn rope(theta: f32, dim: usize, style: RopeStyle) -> RopeConfig {
    RopeConfig { theta, dim, style, scaling: RopeScaling::None }
}

/// Lays out a step of `seqs` (new tokens, positions already cached) over shuffled pages.
fn plan_step(seqs: &[(usize, usize)], page_size: usize, rng: &mut Rng) -> (BatchPlan, usize) {
    let total_pages: usize = seqs.iter().map(|&(n, cached)| (n + cached).div_ceil(page_size)).sum();
    // Shuffled page ids, so that sequences' pages are neither contiguous nor in order.
    let mut ids: Vec<u32> = (0..total_pages as u32).collect();
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.below(i + 1));
    }
    let mut plan = BatchPlan { seqs: Vec::new(), page_ids: Vec::new(), page_size };
    let mut row = 0;
    for &(n, cached) in seqs {
        let page_start = plan.page_ids.len();
        let pages = (n + cached).div_ceil(page_size);
        plan.page_ids.extend(ids[page_start..page_start + pages].iter().map(|&p| PageId(p)));
        plan.seqs.push(SeqSlice {
            row_start: row,
            n_tokens: n,
            pos_start: cached,
            page_start,
            page_end: page_start + pages,
            last_row_sampled: false,
        });
        row += n;
    }
    (plan, total_pages)
}

/// The same sequences, as one step that writes their cached positions.
fn fill_step(step: &BatchPlan) -> BatchPlan {
    let mut plan = step.clone();
    let mut row = 0;
    for s in &mut plan.seqs {
        s.n_tokens = s.pos_start;
        s.pos_start = 0;
        s.row_start = row;
        row += s.n_tokens;
    }
    plan.seqs.retain(|s| s.n_tokens > 0);
    plan
}

fn run_attention_case(case: &AttnCase, cuda: &CudaBackend, cpu: &CpuBackend, rng: &mut Rng) {
    let (h, hkv, d) = (case.n_heads, case.n_kv_heads, case.head_dim);
    let (plan, pages) = plan_step(&case.seqs, case.page_size, rng);
    let layout = KvLayout { n_layers: 2, n_kv_heads: hkv, head_dim: d, page_size: case.page_size };
    let layer = 1;
    let mut store_c = cpu.new_kv_store(layout, pages).expect("cpu store");
    let mut store_g = cuda.new_kv_store(layout, pages).expect("gpu store");
    let kv_width = hkv * d;
    // Cached positions first (one big write), then the step's own K and V.
    for step in [fill_step(&plan), plan.clone()] {
        let rows = step.n_rows();
        if rows == 0 {
            continue;
        }
        let (kc, kg) = act_pair(cuda, rng.values(rows * kv_width), rows, kv_width);
        let (vc, vg) = act_pair(cuda, rng.values(rows * kv_width), rows, kv_width);
        cpu.kv_write(&mut store_c, layer, &kc, &vc, &step).expect("cpu kv_write");
        cuda.kv_write(&mut store_g, layer, &kg, &vg, &step).expect("gpu kv_write");
    }
    let mut rope_c = cpu.new_rope(&case.rope).expect("rope");
    let mut rope_g = cuda.new_rope(&case.rope).expect("rope");
    cpu.ensure_rope(&mut rope_c, plan.max_end_pos()).expect("rope");
    cuda.ensure_rope(&mut rope_g, plan.max_end_pos()).expect("rope");
    let rows = plan.n_rows();
    let (qc, qg) = act_pair(cuda, rng.values(rows * h * d), rows, h * d);
    let shape = AttentionShape { n_heads: h, n_kv_heads: hkv, head_dim: d, scale: 1.0 / (d as f32).sqrt() };
    let mut none_c: Vec<Option<&mut HipSeqState>> = plan.seqs.iter().map(|_| None).collect();
    let mut none_g: Vec<Option<&mut HipSeqState>> = plan.seqs.iter().map(|_| None).collect();
    let mut oc = cpu.new_act(rows, h * d).expect("act");
    cpu.attention(&store_c, layer, &qc, &plan, shape, &rope_c, &mut none_c, &mut oc).expect("cpu attention");
    let mut og = poisoned(cuda, rows, h * d);
    cuda.attention(&store_g, layer, &qg, &plan, shape, &rope_g, &mut none_g, &mut og).expect("gpu attention");
    let got = cuda.to_host(&og).expect("dl");
    // Per sequence, so that a failure names the decode or prefill path that broke.
    for (s, &(n, cached)) in plan.seqs.iter().zip(&case.seqs) {
        let r = s.row_start * h * d..(s.row_start + n) * h * d;
        let what = format!("attention {}: {n} new tokens after {cached}", case.name);
        assert_close(&what, &got[r.clone()], &oc.as_slice()[r], ORACLE_REL_TOL);
    }
}

#[test]
fn dense_attention_matches_cpu() {
    let Some(cuda) = gpu() else { return };
    let cpu = CpuBackend::new(0).expect("cpu");
    let mut rng = Rng::fresh("attention");
    // Decode steps at short and long contexts (one and many splits), prefill chunks from the
    // start and after a cache, and batches mixing them.
    let mixed = vec![(1, 3000), (37, 300), (1, 0), (1, 77), (128, 0), (16, 1500)];
    let cases = [
        AttnCase {
            name: "SmolLM2 (9/3 heads, d 64, adjacent)",
            n_heads: 9,
            n_kv_heads: 3,
            head_dim: 64,
            rope: rope(100000.0, 64, RopeStyle::Adjacent),
            page_size: 64,
            seqs: mixed.clone(),
        },
        AttnCase {
            name: "SmolLM2 long decode",
            n_heads: 9,
            n_kv_heads: 3,
            head_dim: 64,
            rope: rope(100000.0, 64, RopeStyle::Adjacent),
            page_size: 16,
            seqs: vec![(1, 8191), (1, 4000)],
        },
        AttnCase {
            name: "Llama-3.1-8B (32/8 heads, d 128, adjacent)",
            n_heads: 32,
            n_kv_heads: 8,
            head_dim: 128,
            rope: rope(500000.0, 128, RopeStyle::Adjacent),
            page_size: 64,
            seqs: mixed,
        },
        AttnCase {
            name: "Qwen2-0.5B (14/2 heads, d 64, halves)",
            n_heads: 14,
            n_kv_heads: 2,
            head_dim: 64,
            rope: rope(1000000.0, 64, RopeStyle::Halves),
            page_size: 32,
            seqs: vec![(1, 2000), (200, 100)],
        },
        AttnCase {
            name: "partial rotation (d 128, 64 rotated, halves)",
            n_heads: 8,
            n_kv_heads: 8,
            head_dim: 128,
            rope: rope(10000.0, 64, RopeStyle::Halves),
            page_size: 64,
            seqs: vec![(1, 700), (50, 20)],
        },
        AttnCase {
            // 10 rotated pairs is no whole lane slice: decode_partial refuses it, so decode
            // steps take the prefill kernel's 64-row tiles.
            name: "partial rotation (d 64, 20 rotated, halves)",
            n_heads: 6,
            n_kv_heads: 2,
            head_dim: 64,
            rope: rope(10000.0, 20, RopeStyle::Halves),
            page_size: 16,
            seqs: vec![(1, 900), (1, 0), (30, 40)],
        },
    ];
    for case in &cases {
        run_attention_case(case, &cuda, &cpu, &mut rng);
    }
}
