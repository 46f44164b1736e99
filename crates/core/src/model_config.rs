//! Model hyper-parameters read from GGUF metadata.
//!
//! Keys are looked up under the file's own architecture prefix (`llama.`, `qwen2.`, …), and a
//! missing or mistyped key is an error that names it.

use crate::gguf::{GgufError, Metadata};
use crate::rope::{RopeConfig, RopeScaling, RopeStyle};

/// Architectures whose forward pass is the Llama block (RMSNorm, GQA attention with RoPE,
/// SwiGLU MLP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 1/2/3, Mistral, SmolLM, TinyLlama: no attention biases, adjacent-pair RoPE.
    Llama,
    /// Qwen2 / Qwen2.5: biases on q, k, v and half-split RoPE.
    Qwen2,
}

impl Architecture {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "llama" => Some(Self::Llama),
            "qwen2" => Some(Self::Qwen2),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("unsupported architecture `{name}` (supported: llama, qwen2)")]
    UnsupportedArchitecture { name: String },
    #[error("unsupported RoPE scaling `{kind}` (supported: none, linear, llama3)")]
    UnsupportedRopeScaling { kind: String },
    #[error("inconsistent model dimensions: {what}")]
    Inconsistent { what: String },
}

/// The dimensions of a Llama-family model (DESIGN notation in brackets).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Architecture,
    pub name: Option<String>,
    pub n_layers: usize,
    /// Model width.
    pub d_model: usize,
    /// MLP hidden width.
    pub d_ff: usize,
    /// Query heads [H].
    pub n_heads: usize,
    /// Key/value heads [Hkv]; the GQA group is `n_heads / n_kv_heads` [g].
    pub n_kv_heads: usize,
    /// Head dimension [d].
    pub head_dim: usize,
    pub vocab_size: usize,
    /// The context length the model was trained for.
    pub context_length: usize,
    pub rms_eps: f32,
    pub rope: RopeConfig,
}

impl ModelConfig {
    /// Reads the configuration from GGUF metadata. `rope_freqs` is the content of a
    /// `rope_freqs.weight` tensor, if the file has one (Llama 3.1 stores its scaling that way).
    pub fn from_metadata(md: &Metadata, rope_freqs: Option<Vec<f32>>) -> Result<Self, ConfigError> {
        let arch_name = md.str("general.architecture")?;
        let arch = Architecture::from_name(arch_name)
            .ok_or_else(|| ConfigError::UnsupportedArchitecture { name: arch_name.to_string() })?;
        let key = |k: &str| format!("{arch_name}.{k}");

        let n_layers = md.usize(&key("block_count"))?;
        let d_model = md.usize(&key("embedding_length"))?;
        let d_ff = md.usize(&key("feed_forward_length"))?;
        let n_heads = md.usize(&key("attention.head_count"))?;
        let n_kv_heads = md.opt_usize(&key("attention.head_count_kv"))?.unwrap_or(n_heads);
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(ConfigError::Inconsistent {
                what: format!("{n_heads} query heads cannot be grouped over {n_kv_heads} KV heads"),
            });
        }
        let head_dim = match md.opt_usize(&key("attention.key_length"))? {
            Some(d) => d,
            None if d_model % n_heads == 0 => d_model / n_heads,
            None => {
                return Err(ConfigError::Inconsistent {
                    what: format!("width {d_model} is not a multiple of {n_heads} heads"),
                })
            }
        };
        let vocab_size = match md.opt_usize(&key("vocab_size"))? {
            Some(v) => v,
            None => md.array("tokenizer.ggml.tokens")?.len(),
        };
        let context_length = md.usize(&key("context_length"))?;
        let rms_eps = md.f32(&key("attention.layer_norm_rms_epsilon"))?;

        let rope_dim = md.opt_usize(&key("rope.dimension_count"))?.unwrap_or(head_dim);
        if rope_dim > head_dim || rope_dim % 2 != 0 {
            return Err(ConfigError::Inconsistent {
                what: format!("RoPE dimension {rope_dim} with head dimension {head_dim}"),
            });
        }
        let theta = md.opt_f32(&key("rope.freq_base"))?.unwrap_or(10000.0);
        let scaling = Self::rope_scaling(md, &key, rope_freqs, rope_dim)?;
        let style = match arch {
            Architecture::Llama => RopeStyle::Adjacent,
            Architecture::Qwen2 => RopeStyle::Halves,
        };

        let dims = [n_layers, d_model, d_ff, head_dim, vocab_size, context_length];
        if dims.contains(&0) {
            return Err(ConfigError::Inconsistent { what: format!("a zero dimension in {dims:?}") });
        }
        Ok(Self {
            arch,
            name: md.opt_str("general.name")?.map(str::to_string),
            n_layers,
            d_model,
            d_ff,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            context_length,
            rms_eps,
            rope: RopeConfig { theta, dim: rope_dim, style, scaling },
        })
    }

    fn rope_scaling(
        md: &Metadata,
        key: &dyn Fn(&str) -> String,
        rope_freqs: Option<Vec<f32>>,
        rope_dim: usize,
    ) -> Result<RopeScaling, ConfigError> {
        if let Some(f) = rope_freqs {
            if f.len() != rope_dim / 2 {
                return Err(ConfigError::Inconsistent {
                    what: format!("rope_freqs has {} factors, expected {}", f.len(), rope_dim / 2),
                });
            }
            return Ok(RopeScaling::FreqFactors(f));
        }
        let kind = md.opt_str(&key("rope.scaling.type"))?.unwrap_or("none");
        let factor = md.opt_f32(&key("rope.scaling.factor"))?;
        Ok(match kind {
            "none" => RopeScaling::None,
            "linear" => match factor {
                Some(f) if f > 0.0 && f != 1.0 => RopeScaling::Linear { factor: f },
                _ => RopeScaling::None,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: factor.unwrap_or(8.0),
                low_freq_factor: md.opt_f32(&key("rope.scaling.low_freq_factor"))?.unwrap_or(1.0),
                high_freq_factor: md.opt_f32(&key("rope.scaling.high_freq_factor"))?.unwrap_or(4.0),
                original_context: md.opt_usize(&key("rope.scaling.original_context_length"))?.unwrap_or(8192),
            },
            other => return Err(ConfigError::UnsupportedRopeScaling { kind: other.to_string() }),
        })
    }

    /// Query heads per KV head [g].
    pub fn gqa_group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// Width of the query projection.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Width of the key (and value) projection.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::Value;
    use std::collections::BTreeMap;

    fn smollm_like() -> BTreeMap<String, Value> {
        let mut m = BTreeMap::new();
        m.insert("general.architecture".into(), Value::String("llama".into()));
        m.insert("llama.block_count".into(), Value::U32(30));
        m.insert("llama.embedding_length".into(), Value::U32(576));
        m.insert("llama.feed_forward_length".into(), Value::U32(1536));
        m.insert("llama.attention.head_count".into(), Value::U32(9));
        m.insert("llama.attention.head_count_kv".into(), Value::U32(3));
        m.insert("llama.context_length".into(), Value::U32(8192));
        m.insert("llama.vocab_size".into(), Value::U32(49152));
        m.insert("llama.rope.freq_base".into(), Value::F32(100000.0));
        m.insert("llama.attention.layer_norm_rms_epsilon".into(), Value::F32(1e-5));
        m
    }

    #[test]
    fn reads_smollm2_dimensions() {
        let c = ModelConfig::from_metadata(&Metadata::new(smollm_like()), None).expect("valid config");
        assert_eq!((c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim), (30, 576, 9, 3, 64));
        assert_eq!(c.gqa_group(), 3);
        assert_eq!(c.rope.dim, 64);
        assert_eq!(c.rope.scaling, RopeScaling::None);
        assert_eq!(c.rope.style, RopeStyle::Adjacent);
    }

    #[test]
    fn missing_key_is_named() {
        let mut m = smollm_like();
        m.remove("llama.block_count");
        let err = ModelConfig::from_metadata(&Metadata::new(m), None).unwrap_err().to_string();
        assert!(err.contains("llama.block_count"), "{err}");
    }

    #[test]
    fn unknown_architecture_and_scaling_are_errors() {
        let mut m = smollm_like();
        m.insert("general.architecture".into(), Value::String("mamba".into()));
        assert!(matches!(
            ModelConfig::from_metadata(&Metadata::new(m), None),
            Err(ConfigError::UnsupportedArchitecture { .. })
        ));
        let mut m = smollm_like();
        m.insert("llama.rope.scaling.type".into(), Value::String("yarn".into()));
        assert!(matches!(
            ModelConfig::from_metadata(&Metadata::new(m), None),
            Err(ConfigError::UnsupportedRopeScaling { .. })
        ));
    }

    #[test]
    fn scaling_from_metadata_and_from_tensor() {
        let mut m = smollm_like();
        m.insert("llama.rope.scaling.type".into(), Value::String("linear".into()));
        m.insert("llama.rope.scaling.factor".into(), Value::F32(4.0));
        let c = ModelConfig::from_metadata(&Metadata::new(m), None).expect("valid");
        assert_eq!(c.rope.scaling, RopeScaling::Linear { factor: 4.0 });

        let mut m = smollm_like();
        m.insert("llama.rope.scaling.type".into(), Value::String("llama3".into()));
        let c = ModelConfig::from_metadata(&Metadata::new(m), None).expect("valid");
        assert!(matches!(c.rope.scaling, RopeScaling::Llama3 { original_context: 8192, .. }));

        let c = ModelConfig::from_metadata(&Metadata::new(smollm_like()), Some(vec![1.0; 32])).expect("valid");
        assert!(matches!(c.rope.scaling, RopeScaling::FreqFactors(ref f) if f.len() == 32));
        assert!(ModelConfig::from_metadata(&Metadata::new(smollm_like()), Some(vec![1.0; 3])).is_err());
    }

    #[test]
    fn heads_must_group() {
        let mut m = smollm_like();
        m.insert("llama.attention.head_count_kv".into(), Value::U32(4));
        assert!(matches!(ModelConfig::from_metadata(&Metadata::new(m), None), Err(ConfigError::Inconsistent { .. })));
    }
}
