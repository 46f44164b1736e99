//! The GPU handle: library checks, context, one explicit stream, cuBLAS, and the kernels.
//!
//! cudarc panics when a CUDA library is missing, so [`Gpu::new`] first asks each library
//! whether it can be loaded and returns [`CudaError::LibraryMissing`] instead. Event tracking
//! is turned off (a launch then costs about 4.5 µs rather than 12.5 µs, DESIGN.md §6): all work
//! goes to one stream in order, so no cross-stream ordering is needed.
//!
//! Every launch goes through [`Launch::run`], which names the kernel in any error. With
//! `INFINIHIP_CUDA_SYNC=1` each launch is also followed by a synchronisation, so that a kernel
//! that faults while running is named too (slow; for debugging).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchArgs, LaunchConfig};
use cudarc::nvrtc::Ptx;

use crate::compile::{self, ModuleSource};
use crate::error::CudaError;
use crate::kernels::MODULES;

/// What the device is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    /// The NVRTC target the kernels were built for, e.g. `sm_90a`.
    pub arch: String,
    pub multiprocessors: usize,
    pub total_memory_bytes: usize,
}

/// Checks that the CUDA driver, NVRTC, cuBLAS and cuBLASLt libraries can be loaded. cudarc
/// panics on first use of a missing one, so this must pass before any other call.
pub fn check_libraries() -> Result<(), CudaError> {
    // SAFETY: these only try to dlopen the libraries.
    let present = unsafe {
        [
            ("libcuda.so (the NVIDIA driver)", "cuda", cudarc::driver::sys::is_culib_present()),
            ("libnvrtc.so", "nvrtc", cudarc::nvrtc::sys::is_culib_present()),
            ("libcublas.so", "cublas", cudarc::cublas::sys::is_culib_present()),
            ("libcublasLt.so", "cublasLt", cudarc::cublaslt::sys::is_culib_present()),
        ]
    };
    for (library, stem, found) in present {
        if !found {
            return Err(CudaError::LibraryMissing { library, candidates: candidates(stem) });
        }
    }
    Ok(())
}

/// The Linux file names cudarc tries for a library (`libX.so`, `libX.so.13`, …), for the
/// error message.
fn candidates(stem: &str) -> String {
    let prefix = format!("lib{stem}.so");
    let mut names: Vec<String> =
        cudarc::get_lib_name_candidates(stem).into_iter().filter(|n| n.starts_with(&prefix)).collect();
    names.dedup();
    names.join(", ")
}

/// A GPU with its stream, cuBLAS handle and compiled kernels.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    info: DeviceInfo,
    functions: HashMap<&'static str, CudaFunction>,
    last_kernel: Mutex<&'static str>,
    sync_each_launch: bool,
}

impl Gpu {
    /// Opens device `ordinal`, compiles (or loads from the cache) every kernel module.
    pub fn new(ordinal: usize) -> Result<Self, CudaError> {
        check_libraries()?;
        let count = CudaContext::device_count().map_err(|_| CudaError::NoDevice { ordinal, count: 0 })?;
        if ordinal >= count.max(0) as usize {
            return Err(CudaError::NoDevice { ordinal, count: count.max(0) as usize });
        }
        let driver = |op: &'static str| move |source| CudaError::Driver { op, source };
        let ctx = CudaContext::new(ordinal).map_err(driver("creating the context"))?;
        // SAFETY: called before any allocation or stream exists in this context.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(driver("creating a stream"))?;
        let blas =
            CudaBlas::new(stream.clone()).map_err(|source| CudaError::Blas { op: "creating the handle", source })?;
        let compute_capability = ctx.compute_capability().map_err(driver("reading the compute capability"))?;
        let multiprocessors = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver("reading the multiprocessor count"))?;
        let info = DeviceInfo {
            ordinal,
            name: ctx.name().map_err(driver("reading the device name"))?,
            compute_capability,
            arch: compile::arch_for(compute_capability),
            multiprocessors: multiprocessors.max(1) as usize,
            total_memory_bytes: ctx.total_mem().map_err(driver("reading the memory size"))?,
        };
        let smem_optin = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(driver("reading the shared memory size"))?;
        let functions = load_kernels(&ctx, &info.arch, smem_optin)?;
        let sync_each_launch = std::env::var("INFINIHIP_CUDA_SYNC").is_ok_and(|v| v == "1");
        Ok(Self { ctx, stream, blas, info, functions, last_kernel: Mutex::new("(none)"), sync_each_launch })
    }

    /// Device memory in use by every process (total − free), in bytes.
    pub fn memory_in_use(&self) -> Result<usize, CudaError> {
        let (free, total) = self.ctx.mem_get_info().map_err(self.driver_err("reading free memory"))?;
        Ok(total.saturating_sub(free))
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub(crate) fn blas(&self) -> &CudaBlas {
        &self.blas
    }

    /// Device memory free once the queued work is done, in bytes (buffers are freed in stream
    /// order, so the stream is synchronised first).
    pub fn free_memory_bytes(&self) -> Result<usize, CudaError> {
        self.synchronize()?;
        self.ctx.bind_to_thread().map_err(self.driver_err("binding the context"))?;
        let (free, _total) = cudarc::driver::result::mem_get_info().map_err(self.driver_err("reading free memory"))?;
        Ok(free)
    }

    /// Waits for all work queued so far; an asynchronous kernel failure surfaces here.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream.synchronize().map_err(|source| CudaError::Sync { last_kernel: self.last_kernel(), source })
    }

    /// The name of the last kernel launched (for error messages).
    pub fn last_kernel(&self) -> &'static str {
        self.last_kernel.lock().map(|k| *k).unwrap_or("(unknown)")
    }

    /// Starts a launch of `kernel`; push its arguments on `.args`, then call `run`.
    pub(crate) fn launch(&self, kernel: &'static str) -> Result<Launch<'_>, CudaError> {
        let func = self
            .functions
            .get(kernel)
            .ok_or(CudaError::Unsupported { kernel, what: "no such kernel in the compiled modules".to_string() })?;
        Ok(Launch { gpu: self, kernel, args: self.stream.launch_builder(func) })
    }

    pub(crate) fn driver_err(&self, op: &'static str) -> impl Fn(cudarc::driver::DriverError) -> CudaError {
        move |source| CudaError::Driver { op, source }
    }
}

/// A kernel launch being assembled.
pub(crate) struct Launch<'a> {
    gpu: &'a Gpu,
    kernel: &'static str,
    pub args: LaunchArgs<'a>,
}

impl Launch<'_> {
    /// Queues the kernel on the stream.
    ///
    /// # Safety
    /// The arguments must match the kernel's parameters, and every buffer it touches must be
    /// large enough for `cfg` (the launchers in `ops` check this).
    pub unsafe fn run(mut self, cfg: LaunchConfig) -> Result<(), CudaError> {
        let kernel = self.kernel;
        self.args.launch(cfg).map_err(|source| CudaError::Launch { kernel, source })?;
        if let Ok(mut last) = self.gpu.last_kernel.lock() {
            *last = kernel;
        }
        if self.gpu.sync_each_launch {
            self.gpu.stream.synchronize().map_err(|source| CudaError::Launch { kernel, source })?;
        }
        Ok(())
    }
}

/// Compiles and loads every module, and looks up each of its kernels. Each kernel may take
/// the device's whole opt-in shared memory (`smem_optin` bytes a block, less its static
/// shared memory) as dynamic shared memory: the launchers size it, and CUDA refuses more than
/// 48 KiB to a kernel that was not opted in.
fn load_kernels(
    ctx: &Arc<CudaContext>,
    arch: &str,
    smem_optin: i32,
) -> Result<HashMap<&'static str, CudaFunction>, CudaError> {
    use cudarc::driver::sys::CUfunction_attribute as Attr;
    let mut functions = HashMap::new();
    for (module, kernels) in MODULES {
        let source = ModuleSource { name: module.name, source: module.source };
        let cubin = compile::cubin(&source, arch)?;
        let loaded = ctx
            .load_module(Ptx::from_binary(cubin))
            .map_err(|source| CudaError::Load { kernel: module.name, source })?;
        for &kernel in kernels {
            let f = loaded.load_function(kernel).map_err(|source| CudaError::Load { kernel, source })?;
            let load = |source| CudaError::Load { kernel, source };
            let static_smem = f.get_attribute(Attr::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES).map_err(load)?;
            f.set_attribute(Attr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem_optin - static_smem)
                .map_err(load)?;
            functions.insert(kernel, f);
        }
    }
    Ok(functions)
}
