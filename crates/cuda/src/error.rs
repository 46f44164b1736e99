//! The CUDA crate's one error type, grouped by where the failure happens: finding the
//! libraries and the device, compiling kernels, launching them, cuBLAS, and bad arguments.

use std::path::PathBuf;

use cudarc::cublas::result::CublasError;
use cudarc::driver::DriverError;
use cudarc::nvrtc::result::NvrtcError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CudaError {
    /// A CUDA shared library could not be loaded (no driver, or the toolkit's libraries are
    /// not on the loader's path).
    #[error(
        "the CUDA library `{library}` was not found (searched the loader path for {candidates}); install it or add its \
         directory to LD_LIBRARY_PATH"
    )]
    LibraryMissing { library: &'static str, candidates: String },
    #[error("no CUDA device: the driver reports {count} device(s), and device {ordinal} was asked for")]
    NoDevice { ordinal: usize, count: usize },
    /// A driver call outside a kernel launch failed.
    #[error("CUDA driver: {op}: {source}")]
    Driver {
        op: &'static str,
        #[source]
        source: DriverError,
    },
    #[error("CUDA headers not found: no `cuda_bf16.h` in {tried:?}; set CUDA_HOME to the CUDA toolkit (its include/ must hold cuda_bf16.h)")]
    IncludeDir { tried: Vec<PathBuf> },
    #[error("NVRTC: {op} for kernel module `{module}`: {source}")]
    Nvrtc {
        module: &'static str,
        op: &'static str,
        #[source]
        source: NvrtcError,
    },
    #[error("NVRTC could not compile kernel module `{module}` for {arch}:\n{log}")]
    Compile { module: &'static str, arch: String, log: String },
    #[error("loading kernel `{kernel}`: {source}")]
    Load {
        kernel: &'static str,
        #[source]
        source: DriverError,
    },
    /// A launch was refused, or (with `INFINIHIP_CUDA_SYNC=1`) the kernel failed while running.
    #[error("launching kernel `{kernel}`: {source}")]
    Launch {
        kernel: &'static str,
        #[source]
        source: DriverError,
    },
    /// A stream synchronisation failed: a kernel since the last one failed asynchronously.
    #[error("CUDA stream failed (the last kernel launched was `{last_kernel}`; INFINIHIP_CUDA_SYNC=1 names the failing one): {source}")]
    Sync {
        last_kernel: &'static str,
        #[source]
        source: DriverError,
    },
    #[error("cuBLAS: {op}: {source}")]
    Blas {
        op: &'static str,
        #[source]
        source: CublasError,
    },
    /// An argument the kernels cannot take (a shape, a size past their limits).
    #[error("{kernel}: {what}")]
    Unsupported { kernel: &'static str, what: String },
}
