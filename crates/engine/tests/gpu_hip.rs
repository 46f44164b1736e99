//! HiP on the GPU (`infinihip_engine::hip_gpu`, `kernels/hip.cu`, and the attention kernels
//! with a mask) against the CPU reference `infinihip_core::hip`, on fresh random inputs.
//!
//! Two query blocks of a batch at different positions (a few hundred stage-0 chunks each, so
//! that every stage really selects), decode steps (one query) and prefill blocks (64 queries,
//! averaged 4 to a scoring row in stages 0 and 1), SmolLM2 and Llama-3.1-8B head shapes, a
//! first layer (chunk-indexed pruning RoPE, k = 4096) and a later one (relative, k = 2048):
//! - every stage's kept chunks equal the CPU's `run_stage` chained on the CPU's own outputs
//!   (the kernels score bit for bit as the CPU does, so ties break identically);
//! - block-sparse attention with the GPU masks matches `block_sparse_attention` within the bf16 bar
//!   (‖gpu − cpu‖ / ‖cpu‖ ≤ 1e-2, output poisoned with NaN first), with streaming and plain
//!   BSA RoPE.
//!
//! Inputs are seeded from `INFINIHIP_TEST_SEED` or the clock (printed). Without a CUDA device
//! the test prints `skipped: no CUDA device` and passes; `INFINIHIP_REQUIRE_CUDA=1` makes that
//! a failure.

mod common;

use infinihip_cuda::Gpu;
use infinihip_engine::hip_gpu::oracle_check;

/// The CUDA device, or `None` (after saying so) when there is none.
fn gpu() -> Option<Gpu> {
    common::cuda_or_skip(Gpu::new(0))
}

#[test]
fn gpu_hip_masks_and_attention_match_the_cpu_reference() {
    let Some(gpu) = gpu() else { return };
    let seed = std::env::var("INFINIHIP_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("seed {seed} (INFINIHIP_TEST_SEED replays it)");
    // Stage 0 sees about 190 and 140 chunks of 256 (128 are kept); stages 1 and 2 see 1024.
    for (i, heads) in [(9, 3, 64), (32, 8, 128)].into_iter().enumerate() {
        for layer in [0, 5] {
            for n_q in [1, 64] {
                match oracle_check(&gpu, seed ^ (i as u64 * 2 + layer as u64), heads, layer, &[50_000, 37_000], n_q) {
                    Ok(lines) => lines.iter().for_each(|l| eprintln!("{l}")),
                    Err(e) => panic!("{e}"),
                }
            }
        }
    }
}
