//! `HipConfig`: every knob of HiP attention, the presets of DESIGN.md §4.6, JSON overrides and
//! validation. This is the one table that the CPU reference, the GPU kernels, the CLI
//! (`--hip-config '{"k": 4096}'`), the server and `docs/CONFIG.md` all read.
//!
//! Stage arrays are indexed by stage `s = 0 .. n_stages`: `chunk_sizes[s]`, `query_group[s]`
//! and `refresh[s]` have one entry per stage; `stage_k[s]` is the number of tokens stage `s`
//! keeps for stage `s + 1`, so it has `n_stages − 1` entries, and the last stage keeps `k`.
//!
//! Invariants checked by [`HipConfig::validate`] (each failure names its field):
//! - every chunk size is a power of two and divides the one before it, so each stage's grid
//!   refines the previous one; `block_k` is the last chunk size;
//! - `stage_k[s]` is a positive multiple of `chunk_sizes[s]` (stage `s` keeps
//!   `stage_k[s] / chunk_sizes[s]` whole chunks), and the budgets never grow:
//!   `stage_k[0] ≥ stage_k[1] ≥ … ≥ k` (and `≥ first_layers.k`);
//! - `k` (and `first_layers.k`) is a positive multiple of `block_k`;
//! - `n_window ≥ 1` (a query always sees itself), `b_q ≥ 1`, every `query_group` and `refresh`
//!   entry ≥ 1, and a soft-cap, if any, is finite and positive.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::HipError;

/// The preset names [`HipConfig::preset`] accepts.
pub const PRESET_NAMES: [&str; 4] = ["default", "fast", "flash", "5k"];

/// How the pruning score is pooled over query heads (DESIGN.md §4.2 step 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadReduction {
    /// Max over all H query heads: one mask per layer, shared by every head.
    Shared,
    /// Max over the g query heads of each KV head: Hkv masks per layer (§4.7, a likely
    /// accuracy win).
    PerKvHead,
}

/// Positions at which the pruning stages rotate queries and probe keys (DESIGN.md §4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PruningRope {
    /// Left probe at position 0, right probe at 1, queries at `n_window + 1`: only the order
    /// of the two halves matters, never the absolute distance.
    Relative,
    /// Every key of chunk `j` (on the stage's grid) at position `j`; a query at position `p`
    /// at `min(p, n_chunks + n_window)`. Suits the first layers, which act like sliding windows.
    ChunkIndexed,
    /// True positions for queries and keys (only sensible within the model's trained length).
    Plain,
}

/// Positions at which block-sparse attention rotates queries and keys (DESIGN.md §4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BsaRope {
    /// Queries and window keys at their true positions; sink and selected tokens renumbered
    /// contiguously just before the window start, so distances stay within about
    /// `n_sink + k + n_window` whatever the context length.
    Streaming,
    /// Every key at its true position: equals dense attention when nothing is pruned.
    Plain,
}

/// Overrides for layers `0 .. count` (the paper's ablation: chunk-indexed RoPE and a larger
/// final budget in the first 3 layers, DESIGN.md §4.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirstLayers {
    /// How many leading layers the override applies to; 0 switches it off. Default 3.
    pub count: usize,
    /// Pruning RoPE strategy of those layers. Default `chunk_indexed`.
    pub pruning_rope: PruningRope,
    /// Final budget `k` of those layers, in tokens; `null` = the general `k`. Default 4096.
    pub k: Option<usize>,
}

/// All HiP knobs. Defaults are those of the `default` preset, given per field.
///
/// | preset | `chunk_sizes` | `stage_k` | `k` | `first_layers.k` | `refresh` |
/// |---|---|---|---|---|---|
/// | `default` | 256, 32, 8 | 32768, 8192 | 2048 | 4096 | 16, 8, 4 |
/// | `fast` | 256, 32, 8 | 32768, 8192 | 2048 | 4096 | 32, 16, 8 |
/// | `flash` | 256, 32, 8 | 32768, 8192 | 2048 | 4096 | 96, 24, 8 |
/// | `5k` | 64, 32, 16 | 32768, 16384 | 4096 | `null` (= 4096) | 16, 8, 4 |
///
/// Every preset: `n_sink` 256, `n_window` 1024, `b_q` 64, `query_group` 4, 4, 1, shared head
/// reduction, relative pruning RoPE (chunk-indexed in layers 0–2), streaming BSA RoPE, no
/// soft-cap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HipConfig {
    /// Attention sink: the first `n_sink` tokens, always attended. Default 256.
    pub n_sink: usize,
    /// Sliding window: the last `n_window` tokens up to and including the block's first query
    /// are always attended. Default 1024.
    pub n_window: usize,
    /// Query block size `b_q`: prefill masks are estimated per block of this many consecutive
    /// queries (a decode step is a block of 1). Default 64.
    pub b_q: usize,
    /// Chunk size `l_c` of each pruning stage, in tokens; the last one is `block_k`, the
    /// granularity of the final mask. Default 256, 32, 8.
    pub chunk_sizes: Vec<usize>,
    /// Tokens stage `s` keeps for stage `s + 1` (one entry fewer than `chunk_sizes`; stage 0
    /// sees every candidate). Default 32768, 8192.
    pub stage_k: Vec<usize>,
    /// Final budget `k`: tokens the last stage keeps, in `k / block_k` blocks. Default 2048.
    pub k: usize,
    /// Per stage, how many consecutive queries are averaged (after rotation, per head) into
    /// one scoring row. Default 4, 4, 1.
    pub query_group: Vec<usize>,
    /// Decode: stage `s` is recomputed every `refresh[s]` steps (and whenever an earlier stage
    /// is). Default 16, 8, 4.
    pub refresh: Vec<usize>,
    /// Pooling of the pruning score over heads. Default `shared`.
    pub head_reduction: HeadReduction,
    /// Pruning RoPE strategy of layers not covered by `first_layers`. Default `relative`.
    pub pruning_rope: PruningRope,
    /// Overrides for the first layers. Default: 3 layers, `chunk_indexed`, k = 4096.
    pub first_layers: FirstLayers,
    /// RoPE strategy of block-sparse attention. Default `streaming`.
    pub bsa_rope: BsaRope,
    /// Gemma-style logit soft-cap `c`: scores become `c · tanh(s / c)`; `null` = off. Default
    /// off.
    pub logit_softcap: Option<f32>,
    /// Opt-in: a context length (typically the model's trained one, DESIGN.md §4.5) inside
    /// which chunks are scored with plain RoPE; from it on, `pruning_rope` and `first_layers`
    /// apply. Block-sparse attention follows `bsa_rope` everywhere. `null` (the default) = the
    /// strategies everywhere: on SmolLM2's passkey at 8K tokens they retrieve where plain RoPE
    /// does not, although plain pruning captures more attention mass on running text
    /// (docs/CONFIG.md has both measurements).
    #[serde(default)]
    pub native_context: Option<usize>,
}

/// The knobs that vary by layer, resolved for one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerParams {
    /// Final budget in tokens.
    pub k: usize,
    pub pruning_rope: PruningRope,
}

impl Default for HipConfig {
    fn default() -> Self {
        Self {
            n_sink: 256,
            n_window: 1024,
            b_q: 64,
            chunk_sizes: vec![256, 32, 8],
            stage_k: vec![32768, 8192],
            k: 2048,
            query_group: vec![4, 4, 1],
            refresh: vec![16, 8, 4],
            head_reduction: HeadReduction::Shared,
            pruning_rope: PruningRope::Relative,
            first_layers: FirstLayers { count: 3, pruning_rope: PruningRope::ChunkIndexed, k: Some(4096) },
            bsa_rope: BsaRope::Streaming,
            logit_softcap: None,
            native_context: None,
        }
    }
}

impl HipConfig {
    /// A preset of DESIGN.md §4.6 by name (see [`PRESET_NAMES`]).
    pub fn preset(name: &str) -> Result<Self, HipError> {
        let base = Self::default();
        match name {
            "default" => Ok(base),
            "fast" => Ok(Self { refresh: vec![32, 16, 8], ..base }),
            "flash" => Ok(Self { refresh: vec![96, 24, 8], ..base }),
            "5k" => Ok(Self {
                chunk_sizes: vec![64, 32, 16],
                stage_k: vec![32768, 16384],
                k: 4096,
                first_layers: FirstLayers { k: None, ..base.first_layers.clone() },
                ..base
            }),
            _ => Err(HipError::UnknownPreset { name: name.to_string(), valid: PRESET_NAMES.join(", ") }),
        }
    }

    /// The `default` preset with the overrides of a JSON object applied (see
    /// [`HipConfig::merge_json`]).
    pub fn from_json(json: &str) -> Result<Self, HipError> {
        let mut config = Self::default();
        config.merge_json(json)?;
        Ok(config)
    }

    /// Overrides the fields present in the JSON object `json`, leaving the others as they are.
    /// Nested objects (`first_layers`) merge field by field; arrays and scalars are replaced
    /// whole; `null` clears an optional field. On any error `self` is left unchanged. Errors
    /// name the field: unknown fields, values of the wrong type, and values that break an
    /// invariant of [`HipConfig::validate`].
    pub fn merge_json(&mut self, json: &str) -> Result<(), HipError> {
        let patch: Value = serde_json::from_str(json).map_err(|cause| HipError::Json { field: None, cause })?;
        let Value::Object(patch) = patch else {
            return Err(HipError::NotAnObject { found: json_kind(&patch) });
        };
        let mut merged = serde_json::to_value(&*self).map_err(|cause| HipError::Json { field: None, cause })?;
        // Apply one field at a time, so that a type error (whose serde message does not say
        // where it is) is reported with the name of the field that caused it.
        let mut config = self.clone();
        for (field, value) in patch {
            let mut one = Map::new();
            one.insert(field.clone(), value);
            merge_value(&mut merged, Value::Object(one));
            config =
                serde_json::from_value(merged.clone()).map_err(|cause| HipError::Json { field: Some(field), cause })?;
        }
        config.validate()?;
        *self = config;
        Ok(())
    }

    /// Number of pruning stages.
    pub fn n_stages(&self) -> usize {
        self.chunk_sizes.len()
    }

    /// Granularity of the final mask: the last stage's chunk size (0 only for an invalid
    /// config with no stages).
    pub fn block_k(&self) -> usize {
        self.chunk_sizes.last().copied().unwrap_or(0)
    }

    /// The per-layer knobs of `layer`.
    pub fn layer_params(&self, layer: usize) -> LayerParams {
        if layer < self.first_layers.count {
            LayerParams { k: self.first_layers.k.unwrap_or(self.k), pruning_rope: self.first_layers.pruning_rope }
        } else {
            LayerParams { k: self.k, pruning_rope: self.pruning_rope }
        }
    }

    /// Whether a query block ending at `p_last` lies inside the native context, where plain
    /// RoPE is used (see `native_context`).
    pub fn within_native_context(&self, p_last: usize) -> bool {
        self.native_context.is_some_and(|n| p_last < n)
    }

    /// The pruning RoPE strategy of `layer` for a query block ending at `p_last`.
    pub fn pruning_rope_at(&self, layer: usize, p_last: usize) -> PruningRope {
        if self.within_native_context(p_last) {
            PruningRope::Plain
        } else {
            self.layer_params(layer).pruning_rope
        }
    }

    /// Tokens stage `stage` keeps: `stage_k[stage]`, or the layer's final `k` for the last stage.
    pub fn stage_budget(&self, stage: usize, layer: usize) -> usize {
        match self.stage_k.get(stage) {
            Some(&k) if stage + 1 < self.n_stages() => k,
            _ => self.layer_params(layer).k,
        }
    }

    /// Checks every invariant listed in the module doc; the error names the first bad field.
    pub fn validate(&self) -> Result<(), HipError> {
        let bad = |field: &'static str, reason: String| Err(HipError::InvalidConfig { field, reason });
        if self.n_window == 0 {
            return bad("n_window", "must be at least 1: the window holds the query itself".into());
        }
        if self.b_q == 0 {
            return bad("b_q", "must be at least 1".into());
        }
        let n = self.n_stages();
        if n == 0 {
            return bad("chunk_sizes", "needs at least one stage".into());
        }
        for (s, &l_c) in self.chunk_sizes.iter().enumerate() {
            if !l_c.is_power_of_two() {
                return bad("chunk_sizes", format!("stage {s}: {l_c} is not a power of two"));
            }
            if s > 0 && l_c > self.chunk_sizes[s - 1] {
                return bad(
                    "chunk_sizes",
                    format!("stage {s}: {l_c} is larger than stage {}'s {}", s - 1, self.chunk_sizes[s - 1]),
                );
            }
        }
        if self.stage_k.len() + 1 != n {
            return bad(
                "stage_k",
                format!("needs {} entries (one per stage but the last), has {}", n - 1, self.stage_k.len()),
            );
        }
        if self.query_group.len() != n {
            return bad("query_group", format!("needs {n} entries (one per stage), has {}", self.query_group.len()));
        }
        if self.refresh.len() != n {
            return bad("refresh", format!("needs {n} entries (one per stage), has {}", self.refresh.len()));
        }
        if let Some(s) = self.query_group.iter().position(|&q| q == 0) {
            return bad("query_group", format!("stage {s}: must be at least 1"));
        }
        if let Some(s) = self.refresh.iter().position(|&r| r == 0) {
            return bad("refresh", format!("stage {s}: must be at least 1"));
        }
        for (s, &kept) in self.stage_k.iter().enumerate() {
            let l_c = self.chunk_sizes[s];
            if kept == 0 || kept % l_c != 0 {
                return bad("stage_k", format!("stage {s}: {kept} is not a positive multiple of its chunk size {l_c}"));
            }
            if s > 0 && kept > self.stage_k[s - 1] {
                return bad(
                    "stage_k",
                    format!("stage {s}: {kept} is larger than stage {}'s {}", s - 1, self.stage_k[s - 1]),
                );
            }
        }
        let block_k = self.block_k();
        let last_in = self.stage_k.last().copied();
        let check_final = |field: &'static str, k: usize| {
            if k == 0 || !k.is_multiple_of(block_k) {
                return bad(field, format!("{k} is not a positive multiple of block_k = {block_k}"));
            }
            match last_in {
                Some(into_last) if k > into_last => {
                    bad(field, format!("{k} is larger than the {into_last} tokens kept into the last stage"))
                }
                _ => Ok(()),
            }
        };
        check_final("k", self.k)?;
        if let Some(k) = self.first_layers.k {
            check_final("first_layers.k", k)?;
        }
        if let Some(c) = self.logit_softcap {
            if !(c.is_finite() && c > 0.0) {
                return bad("logit_softcap", format!("{c} must be finite and positive"));
            }
        }
        Ok(())
    }
}

/// Merges `patch` into `base`: objects key by key (recursively), anything else replaced.
fn merge_value(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (key, value) in patch {
                match base.get_mut(&key) {
                    Some(slot) => merge_value(slot, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (slot, value) => *slot = value,
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_the_design_table() {
        // DESIGN.md §4.6, row by row.
        for name in ["default", "fast", "flash"] {
            let c = HipConfig::preset(name).unwrap();
            assert_eq!(c.chunk_sizes, [256, 32, 8], "{name}");
            assert_eq!(c.stage_k, [32768, 8192], "{name}");
            assert_eq!(c.k, 2048, "{name}");
            assert_eq!(c.block_k(), 8, "{name}");
            for layer in 0..3 {
                assert_eq!(c.layer_params(layer), LayerParams { k: 4096, pruning_rope: PruningRope::ChunkIndexed });
            }
            assert_eq!(c.layer_params(3), LayerParams { k: 2048, pruning_rope: PruningRope::Relative });
            assert_eq!(c.layer_params(29), LayerParams { k: 2048, pruning_rope: PruningRope::Relative });
        }
        assert_eq!(HipConfig::preset("default").unwrap().refresh, [16, 8, 4]);
        assert_eq!(HipConfig::preset("fast").unwrap().refresh, [32, 16, 8]);
        assert_eq!(HipConfig::preset("flash").unwrap().refresh, [96, 24, 8]);

        let c = HipConfig::preset("5k").unwrap();
        assert_eq!(c.chunk_sizes, [64, 32, 16]);
        assert_eq!(c.stage_k, [32768, 16384]);
        assert_eq!(c.k, 4096);
        assert_eq!(c.block_k(), 16);
        assert_eq!(c.refresh, [16, 8, 4]);
        assert_eq!(c.layer_params(0), LayerParams { k: 4096, pruning_rope: PruningRope::ChunkIndexed });
        assert_eq!(c.layer_params(3), LayerParams { k: 4096, pruning_rope: PruningRope::Relative });

        for name in PRESET_NAMES {
            let c = HipConfig::preset(name).unwrap();
            c.validate().unwrap();
            assert_eq!((c.n_sink, c.n_window, c.b_q), (256, 1024, 64), "{name}");
            assert_eq!(c.query_group, [4, 4, 1], "{name}");
            assert_eq!(c.head_reduction, HeadReduction::Shared);
            assert_eq!(c.bsa_rope, BsaRope::Streaming);
            assert_eq!(c.logit_softcap, None);
            assert_eq!(c.first_layers.count, 3);
        }
        // Stage budgets: stage 0 keeps stage_k[0], the last stage the layer's k.
        let c = HipConfig::default();
        assert_eq!([c.stage_budget(0, 5), c.stage_budget(1, 5), c.stage_budget(2, 5)], [32768, 8192, 2048]);
        assert_eq!(c.stage_budget(2, 0), 4096);
    }

    #[test]
    fn unknown_preset_lists_the_valid_names() {
        let e = HipConfig::preset("turbo").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("turbo") && msg.contains("default, fast, flash, 5k"), "{msg}");
    }

    #[test]
    fn partial_json_overrides_only_the_given_fields() {
        let mut c = HipConfig::preset("flash").unwrap();
        c.merge_json(r#"{"k": 4096, "head_reduction": "per_kv_head", "first_layers": {"count": 2}}"#).unwrap();
        let want = HipConfig {
            k: 4096,
            head_reduction: HeadReduction::PerKvHead,
            first_layers: FirstLayers { count: 2, pruning_rope: PruningRope::ChunkIndexed, k: Some(4096) },
            ..HipConfig::preset("flash").unwrap()
        };
        assert_eq!(c, want);

        let c = HipConfig::from_json(
            r#"{"logit_softcap": 30.0, "bsa_rope": "plain", "pruning_rope": "plain",
                "chunk_sizes": [64, 16, 4], "stage_k": [1024, 256], "k": 128,
                "first_layers": {"k": null}}"#,
        )
        .unwrap();
        assert_eq!(c.logit_softcap, Some(30.0));
        assert_eq!(c.bsa_rope, BsaRope::Plain);
        assert_eq!(c.block_k(), 4);
        assert_eq!(c.layer_params(0), LayerParams { k: 128, pruning_rope: PruningRope::ChunkIndexed });
        assert_eq!(c.layer_params(3), LayerParams { k: 128, pruning_rope: PruningRope::Plain });
        // `null` clears the soft-cap again.
        let mut c = c;
        c.merge_json(r#"{"logit_softcap": null}"#).unwrap();
        assert_eq!(c.logit_softcap, None);
        // An empty object changes nothing.
        assert_eq!(HipConfig::from_json("{}").unwrap(), HipConfig::default());
    }

    #[test]
    fn a_full_dump_round_trips() {
        for name in PRESET_NAMES {
            let c = HipConfig::preset(name).unwrap();
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(serde_json::from_str::<HipConfig>(&json).unwrap(), c);
            assert_eq!(HipConfig::from_json(&json).unwrap(), c);
        }
    }

    /// Applies `json` to the default preset and returns the error message, checking that the
    /// config was left unchanged.
    fn merge_error(json: &str) -> (HipError, String) {
        let mut c = HipConfig::default();
        let e = c.merge_json(json).expect_err(json);
        assert_eq!(c, HipConfig::default(), "a failed merge must leave the config unchanged");
        let msg = e.to_string();
        (e, msg)
    }

    fn assert_invalid(json: &str, want_field: &str, want_text: &str) {
        let (e, msg) = merge_error(json);
        match e {
            HipError::InvalidConfig { field, .. } => assert_eq!(field, want_field, "{json}: {msg}"),
            other => panic!("{json}: expected InvalidConfig, got {other:?}"),
        }
        assert!(msg.contains(want_text), "{json}: {msg}");
    }

    #[test]
    fn json_errors_name_the_field() {
        let (e, msg) = merge_error(r#"{"kk": 1}"#);
        assert!(matches!(&e, HipError::Json { field: Some(f), .. } if f == "kk"), "{e:?}");
        assert!(msg.contains("unknown field `kk`"), "{msg}");

        let (e, msg) = merge_error(r#"{"first_layers": {"cnt": 1}}"#);
        assert!(matches!(&e, HipError::Json { field: Some(f), .. } if f == "first_layers"), "{e:?}");
        assert!(msg.contains("unknown field `cnt`"), "{msg}");

        let (_, msg) = merge_error(r#"{"n_sink": 1, "k": "big"}"#);
        assert!(msg.contains("`k`") && msg.contains("invalid type"), "{msg}");
        let (_, msg) = merge_error(r#"{"n_window": -5}"#);
        assert!(msg.contains("`n_window`"), "{msg}");
        let (_, msg) = merge_error(r#"{"head_reduction": "per_head"}"#);
        assert!(msg.contains("`head_reduction`") && msg.contains("per_head"), "{msg}");

        let (e, _) = merge_error("[1, 2]");
        assert!(matches!(e, HipError::NotAnObject { found: "an array" }), "{e:?}");
        let (e, _) = merge_error("{\"k\": ");
        assert!(matches!(e, HipError::Json { field: None, .. }), "{e:?}");
    }

    #[test]
    fn invariant_violations_name_the_field() {
        assert_invalid(r#"{"n_window": 0}"#, "n_window", "at least 1");
        assert_invalid(r#"{"b_q": 0}"#, "b_q", "at least 1");
        assert_invalid(
            r#"{"chunk_sizes": [], "stage_k": [], "query_group": [], "refresh": []}"#,
            "chunk_sizes",
            "at least one stage",
        );
        assert_invalid(r#"{"chunk_sizes": [256, 24, 8]}"#, "chunk_sizes", "24 is not a power of two");
        assert_invalid(r#"{"chunk_sizes": [256, 0, 8]}"#, "chunk_sizes", "0 is not a power of two");
        assert_invalid(r#"{"chunk_sizes": [32, 256, 8]}"#, "chunk_sizes", "larger than stage 0");
        assert_invalid(r#"{"stage_k": [32768]}"#, "stage_k", "needs 2 entries");
        assert_invalid(r#"{"query_group": [4, 4]}"#, "query_group", "needs 3 entries");
        assert_invalid(r#"{"refresh": [16, 8, 4, 2]}"#, "refresh", "needs 3 entries");
        assert_invalid(r#"{"query_group": [4, 0, 1]}"#, "query_group", "stage 1");
        assert_invalid(r#"{"refresh": [16, 8, 0]}"#, "refresh", "stage 2");
        assert_invalid(r#"{"stage_k": [32100, 8192]}"#, "stage_k", "multiple of its chunk size 256");
        assert_invalid(r#"{"stage_k": [0, 8192]}"#, "stage_k", "positive multiple");
        assert_invalid(r#"{"stage_k": [8192, 16384]}"#, "stage_k", "larger than stage 0");
        assert_invalid(r#"{"k": 2044}"#, "k", "multiple of block_k = 8");
        assert_invalid(r#"{"k": 0}"#, "k", "positive multiple");
        assert_invalid(r#"{"k": 16384}"#, "k", "larger than the 8192 tokens kept into the last stage");
        assert_invalid(r#"{"first_layers": {"k": 4100}}"#, "first_layers.k", "multiple of block_k");
        assert_invalid(r#"{"logit_softcap": 0.0}"#, "logit_softcap", "finite and positive");
        assert_invalid(r#"{"logit_softcap": -3.0}"#, "logit_softcap", "finite and positive");
    }

    #[test]
    fn a_single_stage_is_valid() {
        let c = HipConfig::from_json(
            r#"{"chunk_sizes": [8], "stage_k": [], "query_group": [1], "refresh": [4], "first_layers": {"k": null}}"#,
        )
        .unwrap();
        assert_eq!((c.n_stages(), c.block_k(), c.stage_budget(0, 7)), (1, 8, 2048));
    }

    #[test]
    fn plain_pruning_rope_inside_the_native_context() {
        let mut cfg = HipConfig::default();
        assert_eq!(cfg.pruning_rope_at(5, 100), PruningRope::Relative, "no native context: the strategies everywhere");
        cfg.merge_json(r#"{"native_context": 8192}"#).unwrap();
        assert_eq!(cfg.pruning_rope_at(5, 8191), PruningRope::Plain);
        assert_eq!(cfg.pruning_rope_at(5, 8192), PruningRope::Relative);
        assert_eq!(cfg.pruning_rope_at(1, 9000), PruningRope::ChunkIndexed);
    }
}
