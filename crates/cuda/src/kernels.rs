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

/// Each module with the kernels loaded from it.
pub(crate) const MODULES: [(ModuleSource, &[&str]); 2] = [
    (ELEMENTWISE, &["embed", "rms_norm", "add_assign", "add_bias", "swiglu", "gather_rows", "kv_write"]),
    (
        ATTENTION,
        &[
            "attn_partial_d64_r4",
            "attn_partial_d64_r16",
            "attn_partial_d128_r4",
            "attn_partial_d128_r16",
            "attn_combine",
        ],
    ),
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
                let defined = module.source.contains(&format!("void {k}("))
                    || module.source.contains(&format!("__launch_bounds__(128) {k}("));
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
