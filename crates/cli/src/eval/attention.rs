//! Which attention an eval runs (`--attention`, `--hip-preset`, `--hip-config`), and the one
//! place where the eval's engine is built.
//!
//! The engine has dense attention only for now. `--attention hip` is parsed, checked and
//! recorded in the report, and [`build_engine`] refuses it with a clear error; wiring HiP in
//! means changing `build_engine` and nothing else.

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use infinihip_engine::backend::cpu::CpuBackend;
use infinihip_engine::Engine;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::args::ModelArgs;
use crate::load::Opened;

/// The attention kernel family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionMode {
    /// Every query attends to every earlier key, with the model's plain RoPE.
    Dense,
    /// HiP hierarchical token pruning (DESIGN.md §4).
    Hip,
}

/// The preset a plain `--attention hip` runs.
pub const DEFAULT_HIP_PRESET: &str = "default";

/// An attention mode with its HiP settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionChoice {
    pub mode: AttentionMode,
    /// The HiP preset (`default`, `fast`, `flash`, `5K`, …); `None` for dense.
    pub preset: Option<String>,
    /// Overrides of the preset's knobs, a JSON object (`--hip-config`); `None` when not given.
    pub config: Option<Map<String, Value>>,
}

impl AttentionChoice {
    /// Validates the flags: the HiP settings apply only to `hip`, and `--hip-config` must be a
    /// JSON object. The preset name is checked where HiP is built (see [`build_engine`]).
    pub fn new(mode: AttentionMode, preset: Option<&str>, config: Option<&str>) -> Result<Self> {
        let config = config
            .map(|text| match serde_json::from_str(text).context("--hip-config is not valid JSON")? {
                Value::Object(map) => Ok(map),
                other => bail!("--hip-config must be a JSON object such as {{\"n_sink\": 256}}, not {other}"),
            })
            .transpose()?;
        match mode {
            AttentionMode::Dense if preset.is_some() || config.is_some() => {
                bail!("--hip-preset and --hip-config apply only with --attention hip")
            }
            AttentionMode::Dense => Ok(Self { mode, preset: None, config: None }),
            AttentionMode::Hip => {
                Ok(Self { mode, preset: Some(preset.unwrap_or(DEFAULT_HIP_PRESET).to_string()), config })
            }
        }
    }

    /// `dense`, or `hip` with its preset, as tables and plot legends show it.
    pub fn label(&self) -> String {
        series_label(self.mode, self.preset.as_deref())
    }
}

/// The label of a result series: `dense` or `hip (preset)`.
pub fn series_label(mode: AttentionMode, preset: Option<&str>) -> String {
    match (mode, preset) {
        (AttentionMode::Dense, _) => "dense".to_string(),
        (AttentionMode::Hip, None) => "hip".to_string(),
        (AttentionMode::Hip, Some(preset)) => format!("hip ({preset})"),
    }
}

/// Loads the model into an engine with a KV pool of `ctx_tokens` positions, running the chosen
/// attention.
pub fn build_engine(
    opened: &Opened,
    model: &ModelArgs,
    attention: &AttentionChoice,
    ctx_tokens: usize,
) -> Result<Engine<CpuBackend>> {
    match attention.mode {
        AttentionMode::Dense => opened.engine(model, ctx_tokens),
        AttentionMode::Hip => bail!("HiP attention is not available in this build yet"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_takes_no_hip_settings() {
        let dense = AttentionChoice::new(AttentionMode::Dense, None, None).unwrap();
        assert_eq!(dense, AttentionChoice { mode: AttentionMode::Dense, preset: None, config: None });
        assert_eq!(dense.label(), "dense");
        assert!(AttentionChoice::new(AttentionMode::Dense, Some("fast"), None).is_err());
        assert!(AttentionChoice::new(AttentionMode::Dense, None, Some("{}")).is_err());
    }

    #[test]
    fn hip_defaults_its_preset_and_parses_its_config() {
        let hip = AttentionChoice::new(AttentionMode::Hip, None, None).unwrap();
        assert_eq!(hip.preset.as_deref(), Some("default"));
        assert_eq!(hip.label(), "hip (default)");
        let tuned = AttentionChoice::new(AttentionMode::Hip, Some("fast"), Some(r#"{"n_sink": 128}"#)).unwrap();
        assert_eq!(tuned.preset.as_deref(), Some("fast"));
        assert_eq!(tuned.config.unwrap().get("n_sink"), Some(&Value::from(128)));
        let err = AttentionChoice::new(AttentionMode::Hip, None, Some("[1, 2]")).unwrap_err().to_string();
        assert!(err.contains("JSON object"), "{err}");
        let err = AttentionChoice::new(AttentionMode::Hip, None, Some("{n_sink: 1")).unwrap_err().to_string();
        assert!(err.contains("not valid JSON"), "{err}");
    }
}
