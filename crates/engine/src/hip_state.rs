//! Attention modes and the per-sequence HiP state.
//!
//! A sequence attends densely or with HiP. A HiP sequence carries its config and, per layer, the
//! decode mask cache of DESIGN.md §4.4, so that each request has its own refresh counters (the
//! reference implementation shares them across the batch).

use std::sync::Arc;

use infinihip_core::hip::{DecodeMaskCache, HipConfig};

use crate::hip_gpu::GpuDecodeCache;

/// How a sequence attends.
#[derive(Debug, Clone, PartialEq)]
pub enum AttentionMode {
    /// Exact causal attention over every cached token, at true positions.
    Dense,
    /// HiP block-sparse attention with this configuration.
    Hip(Arc<HipConfig>),
}

impl AttentionMode {
    pub fn name(&self) -> &'static str {
        match self {
            AttentionMode::Dense => "dense",
            AttentionMode::Hip(_) => "hip",
        }
    }
}

/// The HiP state of one sequence.
pub struct HipSeqState {
    config: Arc<HipConfig>,
    layers: Vec<DecodeMaskCache>,
    /// The CUDA backend's decode mask caches, per layer, made on first use.
    gpu_layers: Vec<Option<GpuDecodeCache>>,
}

impl std::fmt::Debug for HipSeqState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HipSeqState")
            .field("config", &self.config)
            .field("layers", &self.layers)
            .field("gpu_layers", &self.gpu_layers.iter().filter(|c| c.is_some()).count())
            .finish()
    }
}

impl HipSeqState {
    pub fn new(config: Arc<HipConfig>, n_layers: usize) -> Self {
        Self {
            config,
            layers: vec![DecodeMaskCache::new(); n_layers],
            gpu_layers: (0..n_layers).map(|_| None).collect(),
        }
    }

    pub fn config(&self) -> &Arc<HipConfig> {
        &self.config
    }

    /// The decode mask cache of `layer`.
    pub fn layer_mut(&mut self, layer: usize) -> &mut DecodeMaskCache {
        &mut self.layers[layer]
    }

    /// The CUDA backend's decode mask cache of `layer` (`None` until it makes one).
    pub fn gpu_layer_mut(&mut self, layer: usize) -> &mut Option<GpuDecodeCache> {
        &mut self.gpu_layers[layer]
    }

    /// Forgets every cached mask (the cache contents changed under them).
    pub fn reset(&mut self) {
        self.layers.iter_mut().for_each(DecodeMaskCache::reset);
        self.gpu_layers.iter_mut().flatten().for_each(GpuDecodeCache::reset);
    }
}
