//! The engine's error type.

use infinihip_core::gguf::GgufError;
use infinihip_core::hip::HipError;
use infinihip_core::model_config::ConfigError;

use crate::kv::KvError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error("HiP attention: {0}")]
    Hip(#[from] HipError),
    #[error("tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    TensorShape { tensor: String, found: Vec<u64>, expected: Vec<u64> },
    #[error("{op}: shape mismatch: {detail}")]
    Shape { op: &'static str, detail: String },
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("{what}")]
    InvalidRequest { what: String },
    /// The CUDA backend (device, kernels, or a feature it does not have yet).
    #[error(transparent)]
    Cuda(#[from] infinihip_cuda::CudaError),
}
