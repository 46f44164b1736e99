//! The kernel sources, embedded in the binary, and the kernels each module defines.
//!
//! Every module is `common.cuh` followed by its own file, compiled as one NVRTC program. A
//! kernel and its Rust launcher in `ops` share one name.

use crate::compile::ModuleSource;

const ELEMENTWISE: ModuleSource = ModuleSource {
    name: "elementwise",
    source: concat!(include_str!("../kernels/common.cuh"), include_str!("../kernels/elementwise.cu")),
};

const ATTENTION: ModuleSource = ModuleSource {
    name: "attention",
    source: concat!(include_str!("../kernels/common.cuh"), include_str!("../kernels/attention.cu")),
};

const DECODE: ModuleSource = ModuleSource {
    name: "decode",
    source: concat!(include_str!("../kernels/common.cuh"), include_str!("../kernels/decode.cu")),
};

const HIP: ModuleSource = ModuleSource {
    name: "hip",
    source: concat!(include_str!("../kernels/common.cuh"), include_str!("../kernels/hip.cu")),
};

/// Each module with the kernels loaded from it.
pub(crate) const MODULES: [(ModuleSource, &[&str]); 4] = [
    (
        ELEMENTWISE,
        &[
            "embed",
            "embed_f32",
            "rms_norm",
            "rms_norm_f32",
            "add_assign",
            "add_assign_f32",
            "add_bias",
            "swiglu",
            "gather_rows",
            "gather_rows_f32",
            "kv_write",
            "fill_uniform",
        ],
    ),
    (ATTENTION, &["attn_prefill_tc_d64", "attn_prefill_tc_d128", "attn_combine"]),
    (
        DECODE,
        &[
            "decode_partial_d64_g4",
            "decode_partial_d64_g8",
            "decode_partial_d128_g4",
            "decode_partial_d128_g8",
            "decode_partial_d64_g4_rope_lookup",
            "decode_partial_d64_g8_rope_lookup",
            "decode_partial_d128_g4_rope_lookup",
            "decode_partial_d128_g8_rope_lookup",
        ],
    ),
    (HIP, &["hip_pool_queries", "hip_stage_scores_c1", "hip_stage_scores_c4", "hip_topk"]),
];

/// The module sources, for tools and tests that compile them without a device.
pub fn sources() -> impl Iterator<Item = ModuleSource> {
    MODULES.into_iter().map(|(m, _)| m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_kernel_is_defined_in_its_module() {
        for (module, kernels) in MODULES {
            for k in kernels {
                // `extern "C" __global__ void [__launch_bounds__(…)] name(`, on one line or two,
                // or an instance macro's `…_INSTANCE(name, …)`.
                let defined = module.source.lines().any(|l| l.contains(&format!(" {k}(")) && l.contains("__global__"))
                    || module.source.contains(&format!(")\n    {k}("))
                    || module.source.contains(&format!("_INSTANCE({k},"));
                assert!(defined, "kernel {k} is not defined in module {}", module.name);
            }
        }
    }

    /// Compiles every module with NVRTC for Hopper when NVRTC and the CUDA headers are there
    /// (no GPU needed); says so and passes otherwise. `INFINIHIP_REQUIRE_CUDA=1` makes a
    /// missing NVRTC a failure.
    #[test]
    fn modules_compile_with_nvrtc() {
        // SAFETY: only tries to dlopen NVRTC.
        let nvrtc = unsafe { cudarc::nvrtc::sys::is_culib_present() };
        let headers = crate::compile::include_dir();
        if !nvrtc || headers.is_err() {
            let why = if nvrtc { format!("{:?}", headers.err()) } else { "NVRTC not found".to_string() };
            assert!(std::env::var("INFINIHIP_REQUIRE_CUDA").is_err(), "INFINIHIP_REQUIRE_CUDA is set but {why}");
            eprintln!("skipped: no NVRTC ({why})");
            return;
        }
        for module in sources() {
            crate::compile::cubin(&module, "sm_90a").unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
