//! Attention modes and the per-sequence HiP state.
//!
//! A sequence attends densely or with HiP. A HiP sequence carries its config and, per layer, the
//! decode mask cache of DESIGN.md §4.4, so that each request has its own refresh counters (the
//! reference implementation shares them across the batch).

use std::sync::Arc;

use infinihip_core::hip::{DecodeMaskCache, HipConfig};

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
#[derive(Debug, Clone)]
pub struct HipSeqState {
    config: Arc<HipConfig>,
    layers: Vec<DecodeMaskCache>,
}

impl HipSeqState {
    pub fn new(config: Arc<HipConfig>, n_layers: usize) -> Self {
        Self { config, layers: vec![DecodeMaskCache::new(); n_layers] }
    }

    pub fn config(&self) -> &Arc<HipConfig> {
        &self.config
    }

    /// The decode mask cache of `layer`.
    pub fn layer_mut(&mut self, layer: usize) -> &mut DecodeMaskCache {
        &mut self.layers[layer]
    }

    /// Forgets every cached mask (the cache contents changed under them).
    pub fn reset(&mut self) {
        self.layers.iter_mut().for_each(DecodeMaskCache::reset);
    }
}
