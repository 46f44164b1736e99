//! infinihip-engine: backends, the Llama forward pass, the paged KV cache and generation.

pub mod backend;
pub mod engine;
pub mod error;
pub mod generate;
pub mod hip_gpu;
pub mod hip_state;
pub mod kv;
pub mod model;
pub mod sched;
pub mod text;

pub use engine::{Engine, EngineOptions, LogitsWanted, StepInput};
pub use error::EngineError;
pub use hip_state::AttentionMode;
