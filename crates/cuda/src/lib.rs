//! infinihip-cuda: the CUDA runtime of infinihip (DESIGN.md §6).
//!
//! - [`runtime`]: library checks (cudarc panics on a missing library, so [`Gpu::new`] checks
//!   first and returns [`CudaError::LibraryMissing`]), the context with event tracking off, one
//!   explicit stream, cuBLAS, and kernel launches that name the kernel in every error;
//! - [`compile`]: NVRTC compiles the embedded `kernels/*.cu` for the device's architecture
//!   (`sm_90a` on Hopper) to CUBIN, cached on disk by a hash of source, options, NVRTC version
//!   and architecture;
//! - [`ops`]: one launcher per kernel, with the same name, plus transfers and the bf16 GEMM;
//! - [`attention`]: the host plan of the split-K attention kernels;
//! - [`hip`]: HiP decode: the pruning stages with the top-k on the device, and block-sparse
//!   decode;
//! - [`timing`]: CUDA-event timing with a cold L2, for the benchmarks.
//!
//! Storage is bf16 and arithmetic f32 (DESIGN.md §3). Each kernel mirrors an op of the CPU
//! backend in `infinihip-engine`, which is its oracle (`crates/engine/tests/gpu_ops.rs`). The
//! crate builds without any CUDA installed: cudarc loads the libraries at run time.

pub mod attention;
pub mod compile;
mod error;
pub mod hip;
pub mod kernels;
pub mod ops;
pub mod oracle;
pub mod runtime;
pub mod timing;

pub use cudarc::driver::CudaSlice;
pub use error::CudaError;
pub use half::bf16;
pub use runtime::{check_libraries, DeviceInfo, Gpu};
