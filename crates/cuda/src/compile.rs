//! NVRTC: kernel sources (embedded in the binary) to CUBIN for one GPU architecture, with an
//! on-disk cache.
//!
//! The cache lives in `$XDG_CACHE_HOME/infinihip/kernels` (else `~/.cache/infinihip/kernels`).
//! A CUBIN's file name holds a SHA-256 of everything that changes the machine code: the source,
//! the compiler options, the NVRTC version and the target architecture; so an entry is never
//! stale, and a new source or toolkit simply misses. The cache is best-effort: when the
//! directory cannot be written, kernels are compiled every run.
//!
//! NVRTC needs the CUDA headers (`cuda_bf16.h`) on its include path: `$CUDA_HOME/include`, else
//! `/usr/local/cuda/include`, checked before use.

use std::ffi::{c_char, c_int, CStr, CString};
use std::path::{Path, PathBuf};

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};
use sha2::{Digest, Sha256};

use crate::error::CudaError;

/// One compilation unit: a kernel file with the shared prelude in front.
#[derive(Debug, Clone, Copy)]
pub struct ModuleSource {
    /// Name of the module (the `.cu` file's stem); compile errors name it.
    pub name: &'static str,
    pub source: &'static str,
}

/// The CUDA include directory: `$CUDA_HOME/include` when `CUDA_HOME` is set, else
/// `/usr/local/cuda/include`; it must hold `cuda_bf16.h`.
pub fn include_dir() -> Result<PathBuf, CudaError> {
    let dir = match std::env::var_os("CUDA_HOME").filter(|v| !v.is_empty()) {
        Some(home) => PathBuf::from(home).join("include"),
        None => PathBuf::from("/usr/local/cuda/include"),
    };
    if dir.join("cuda_bf16.h").is_file() {
        Ok(dir)
    } else {
        Err(CudaError::IncludeDir { tried: vec![dir] })
    }
}

/// The NVRTC library's version, `(major, minor)`.
pub fn nvrtc_version() -> Result<(i32, i32), CudaError> {
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: both pointers are valid for writes; the caller checked that NVRTC is present.
    unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) }.result().map_err(|source| CudaError::Nvrtc {
        module: "(version)",
        op: "nvrtcVersion",
        source,
    })?;
    Ok((major, minor))
}

/// The NVRTC target for a compute capability: the arch-specific `sm_90a` on Hopper (so that
/// wgmma and setmaxnreg are available), plain `sm_XY` elsewhere.
pub fn arch_for(compute_capability: (i32, i32)) -> String {
    match compute_capability {
        (9, 0) => "sm_90a".to_string(),
        (major, minor) => format!("sm_{major}{minor}"),
    }
}

/// Compiler options for `arch`, the same for every module.
fn options(arch: &str, include: &Path) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        format!("--include-path={}", include.display()),
        "--std=c++17".to_string(),
    ]
}

/// The kernel cache directory, if the environment names a home for it.
fn cache_dir() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".cache"),
    };
    Some(base.join("infinihip").join("kernels"))
}

/// The cache file name of a module: its name and a hash of every input of the compilation.
fn cache_name(module: &ModuleSource, options: &[String], nvrtc: (i32, i32), arch: &str) -> String {
    let mut h = Sha256::new();
    h.update(module.source.as_bytes());
    for o in options {
        h.update([0u8]);
        h.update(o.as_bytes());
    }
    h.update(format!("\0nvrtc {}.{}\0{arch}", nvrtc.0, nvrtc.1).as_bytes());
    let digest = h.finalize();
    let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("{}-{arch}-{hex}.cubin", module.name)
}

/// The CUBIN of `module` for `arch`, from the cache or freshly compiled (and then cached).
pub fn cubin(module: &ModuleSource, arch: &str) -> Result<Vec<u8>, CudaError> {
    let include = include_dir()?;
    let options = options(arch, &include);
    let version = nvrtc_version()?;
    let path = cache_dir().map(|d| d.join(cache_name(module, &options, version, arch)));
    if let Some(bytes) = path.as_ref().and_then(|p| std::fs::read(p).ok()).filter(|b| !b.is_empty()) {
        return Ok(bytes);
    }
    let bytes = compile(module, &options, arch)?;
    if let Some(path) = &path {
        store(path, &bytes);
    }
    Ok(bytes)
}

/// Writes a cache entry through a temporary file and a rename, so that a concurrent reader
/// never sees half a CUBIN. Failures only cost a recompilation next time.
fn store(path: &Path, bytes: &[u8]) {
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// An NVRTC program, destroyed on drop.
struct Program(nvrtc_sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created by nvrtcCreateProgram and is destroyed once.
        let _ = unsafe { nvrtc::destroy_program(self.0) };
    }
}

/// Compiles one module to CUBIN with NVRTC.
fn compile(module: &ModuleSource, options: &[String], arch: &str) -> Result<Vec<u8>, CudaError> {
    let nv = |op: &'static str| move |source| CudaError::Nvrtc { module: module.name, op, source };
    let src = CString::new(module.source).map_err(|_| CudaError::Compile {
        module: module.name,
        arch: arch.to_string(),
        log: "the source holds a NUL byte".to_string(),
    })?;
    let name = CString::new(format!("{}.cu", module.name)).unwrap_or_default();
    let prog = Program(nvrtc::create_program(&src, Some(&name)).map_err(nv("nvrtcCreateProgram"))?);
    // SAFETY: `prog` is a live program; the options are NUL-free strings.
    if let Err(e) = unsafe { nvrtc::compile_program(prog.0, options) } {
        // SAFETY: as above; the log is NUL-terminated by NVRTC.
        let log = unsafe { nvrtc::get_program_log(prog.0) }
            .map(|raw| unsafe { CStr::from_ptr(raw.as_ptr()) }.to_string_lossy().into_owned())
            .unwrap_or_else(|_| format!("(no log: {e:?})"));
        return Err(CudaError::Compile { module: module.name, arch: arch.to_string(), log });
    }
    let mut size = 0usize;
    // SAFETY: `prog` compiled successfully; `size` is valid for writes.
    unsafe { nvrtc_sys::nvrtcGetCUBINSize(prog.0, &mut size) }.result().map_err(nv("nvrtcGetCUBINSize"))?;
    let mut bytes = vec![0u8; size];
    // SAFETY: `bytes` holds exactly the size NVRTC reported.
    unsafe { nvrtc_sys::nvrtcGetCUBIN(prog.0, bytes.as_mut_ptr() as *mut c_char) }
        .result()
        .map_err(nv("nvrtcGetCUBIN"))?;
    if bytes.is_empty() {
        return Err(CudaError::Compile {
            module: module.name,
            arch: arch.to_string(),
            log: "NVRTC produced no CUBIN (is the architecture a real one?)".to_string(),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_is_arch_specific_on_hopper_only() {
        assert_eq!(arch_for((9, 0)), "sm_90a");
        assert_eq!(arch_for((8, 9)), "sm_89");
        assert_eq!(arch_for((10, 0)), "sm_100");
    }

    #[test]
    fn cache_name_changes_with_every_input() {
        let m = ModuleSource { name: "m", source: "a" };
        let opts = vec!["-x".to_string()];
        let base = cache_name(&m, &opts, (13, 0), "sm_90a");
        assert!(base.starts_with("m-sm_90a-") && base.ends_with(".cubin"), "{base}");
        assert_eq!(base, cache_name(&m, &opts, (13, 0), "sm_90a"));
        assert_ne!(base, cache_name(&ModuleSource { name: "m", source: "b" }, &opts, (13, 0), "sm_90a"));
        assert_ne!(base, cache_name(&m, &["-y".to_string()], (13, 0), "sm_90a"));
        assert_ne!(base, cache_name(&m, &opts, (13, 1), "sm_90a"));
        assert_ne!(base, cache_name(&m, &opts, (13, 0), "sm_89"));
    }
}
