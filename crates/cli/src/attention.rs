//! Which attention a command runs (`--attention`, `--hip-preset`, `--hip-config`), shared by
//! `run`, `chat`, `complete` and the evals.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use infinihip_core::hip::{HipConfig, PRESET_NAMES};
use infinihip_engine::AttentionMode;
use serde::Serialize;
use serde_json::{Map, Value};

/// The attention kernel family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionKind {
    /// Every query attends to every earlier key, with the model's plain RoPE.
    Dense,
    /// HiP hierarchical token pruning and block-sparse attention (DESIGN.md §4).
    Hip,
}

/// The attention flags.
#[derive(Debug, Args, Clone)]
pub struct AttentionArgs {
    /// Attention: `dense` (exact) or `hip` (sparse; runs far past the model's native context).
    #[arg(long, value_enum, default_value_t = AttentionKind::Dense)]
    pub attention: AttentionKind,
    /// HiP preset, with --attention hip: default, fast, flash or 5k [default: default]
    #[arg(long, value_name = "NAME")]
    pub hip_preset: Option<String>,
    /// HiP settings overriding the preset, with --attention hip: a JSON object such as
    /// '{"k": 4096}', or the path of a file holding one (see docs/CONFIG.md).
    #[arg(long, value_name = "JSON|PATH")]
    pub hip_config: Option<String>,
}

/// The preset a plain `--attention hip` runs.
pub const DEFAULT_HIP_PRESET: &str = "default";

/// An attention mode with its HiP settings, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionChoice {
    pub kind: AttentionKind,
    /// The HiP preset; `None` for dense.
    pub preset: Option<String>,
    /// Overrides of the preset's knobs, as given; `None` when not given.
    pub config: Option<Map<String, Value>>,
    /// The resolved HiP configuration (preset + overrides); `None` for dense.
    pub hip: Option<Arc<HipConfig>>,
}

impl AttentionChoice {
    /// Validates the flags: the HiP settings apply only to `hip`, the preset must exist, and
    /// the overrides must be a JSON object that the configuration accepts.
    pub fn new(args: &AttentionArgs) -> Result<Self> {
        let config = args.hip_config.as_deref().map(read_overrides).transpose()?;
        match args.attention {
            AttentionKind::Dense if args.hip_preset.is_some() || config.is_some() => {
                bail!("--hip-preset and --hip-config apply only with --attention hip")
            }
            AttentionKind::Dense => Ok(Self { kind: AttentionKind::Dense, preset: None, config: None, hip: None }),
            AttentionKind::Hip => {
                let preset = args.hip_preset.as_deref().unwrap_or(DEFAULT_HIP_PRESET).to_string();
                let mut hip = HipConfig::preset(&preset)
                    .with_context(|| format!("--hip-preset (one of {})", PRESET_NAMES.join(", ")))?;
                if let Some(map) = &config {
                    hip.merge_json(&Value::Object(map.clone()).to_string()).context("--hip-config")?;
                }
                Ok(Self { kind: AttentionKind::Hip, preset: Some(preset), config, hip: Some(Arc::new(hip)) })
            }
        }
    }

    /// The engine's attention mode.
    pub fn mode(&self) -> AttentionMode {
        match &self.hip {
            None => AttentionMode::Dense,
            Some(cfg) => AttentionMode::Hip(cfg.clone()),
        }
    }

    /// `dense`, or `hip` with its preset, as tables and plot legends show it.
    pub fn label(&self) -> String {
        series_label(self.kind, self.preset.as_deref())
    }
}

/// `--hip-config`: the path of a file holding JSON, or inline JSON.
fn read_overrides(arg: &str) -> Result<Map<String, Value>> {
    let path = std::path::Path::new(arg);
    let text = if path.is_file() {
        std::fs::read_to_string(path).with_context(|| format!("--hip-config: reading {arg}"))?
    } else if arg.trim_start().starts_with(['{', '[']) {
        arg.to_string()
    } else {
        bail!("--hip-config: {arg} is neither a file nor a JSON object")
    };
    match serde_json::from_str(&text).context("--hip-config is not valid JSON")? {
        Value::Object(map) => Ok(map),
        other => bail!("--hip-config must be a JSON object such as {{\"n_sink\": 256}}, not {other}"),
    }
}

/// The label of a result series: `dense` or `hip (preset)`.
pub fn series_label(kind: AttentionKind, preset: Option<&str>) -> String {
    match (kind, preset) {
        (AttentionKind::Dense, _) => "dense".to_string(),
        (AttentionKind::Hip, None) => "hip".to_string(),
        (AttentionKind::Hip, Some(preset)) => format!("hip ({preset})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(attention: AttentionKind, preset: Option<&str>, config: Option<&str>) -> AttentionArgs {
        AttentionArgs { attention, hip_preset: preset.map(str::to_string), hip_config: config.map(str::to_string) }
    }

    #[test]
    fn dense_takes_no_hip_settings() {
        let dense = AttentionChoice::new(&args(AttentionKind::Dense, None, None)).unwrap();
        assert_eq!(dense.mode(), AttentionMode::Dense);
        assert_eq!(dense.label(), "dense");
        assert!(AttentionChoice::new(&args(AttentionKind::Dense, Some("fast"), None)).is_err());
        assert!(AttentionChoice::new(&args(AttentionKind::Dense, None, Some("{}"))).is_err());
    }

    #[test]
    fn hip_defaults_its_preset_and_applies_overrides() {
        let hip = AttentionChoice::new(&args(AttentionKind::Hip, None, None)).unwrap();
        assert_eq!(hip.preset.as_deref(), Some("default"));
        assert_eq!(hip.label(), "hip (default)");
        assert_eq!(hip.mode(), AttentionMode::Hip(Arc::new(HipConfig::default())));
        let tuned = AttentionChoice::new(&args(AttentionKind::Hip, Some("fast"), Some(r#"{"n_sink": 128}"#))).unwrap();
        let cfg = tuned.hip.expect("hip config");
        assert_eq!((cfg.n_sink, cfg.refresh.clone()), (128, HipConfig::preset("fast").unwrap().refresh));
    }

    #[test]
    fn bad_hip_settings_are_errors() {
        let err = |preset, config| {
            format!("{:#}", AttentionChoice::new(&args(AttentionKind::Hip, preset, config)).unwrap_err())
        };
        assert!(err(None, Some("[1, 2]")).contains("JSON object"));
        assert!(err(None, Some("{n_sink: 1")).contains("not valid JSON"));
        assert!(err(Some("turbo"), None).contains("default, fast, flash, 5k"));
        assert!(err(None, Some(r#"{"no_such_knob": 1}"#)).contains("no_such_knob"));
        assert!(err(None, Some("/no/such/file.json")).contains("/no/such/file.json"));
    }

    #[test]
    fn overrides_can_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hip.json");
        std::fs::write(&path, r#"{"k": 4096}"#).unwrap();
        let choice = AttentionChoice::new(&args(AttentionKind::Hip, None, path.to_str())).unwrap();
        assert_eq!(choice.hip.unwrap().k, 4096);
    }
}
