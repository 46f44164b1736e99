//! infinihip-core: formats and algorithms with no GPU.
//!
//! GGUF reading and dequantisation, the tokenizer and chat template, model configuration and
//! sampling. Everything here is plain Rust, usable by the CPU and CUDA backends alike.

pub mod chat;
pub mod gguf;
pub mod hip;
pub mod model_config;
pub mod model_store;
pub mod quant;
pub mod rope;
pub mod sampling;
pub mod tokenizer;
