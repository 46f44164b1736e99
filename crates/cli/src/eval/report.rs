//! The results of an eval run: the JSON report (`--json`), and the table printed on stdout.
//!
//! JSON shape (the keys the issue asked for, plus context):
//! `{"task", "variant", "haystack", "needles", "model", "seed", "format", "max_new_tokens",
//!   "native_context_tokens", "ctx_tokens", "commit",
//!   "results": [{"length", "attention", "preset", "hip_config"?, "trials", "correct",
//!                "accuracy", "wall_s",
//!                "cases": [{"trial", "depth", "expected", "expected_values", "output",
//!                           "correct", "prompt_tokens", "haystack_sentences",
//!                           "needle_token_offsets", "prefill_tokens", "prefill_s",
//!                           "decode_tokens", "decode_s", "finish"}]}]}`
//! `preset` is null for dense attention. `expected` is the expected value, or the values
//! joined with ", " when several are asked for. `prefill_tokens` counts the tokens actually
//! computed: a prefix shared with the previous case's prompt is reused from the KV cache.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{Map, Value};

use super::haystack::HaystackKind;
use super::niah::NiahVariant;
use super::options::{flag_name, length_label, PromptFormat};
use crate::attention::{series_label, AttentionKind};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `passkey` or `niah`.
    pub task: &'static str,
    /// The NIAH variant; null for passkey.
    pub variant: Option<NiahVariant>,
    pub haystack: HaystackKind,
    /// Needles hidden per case.
    pub needles: usize,
    /// The model file's name.
    pub model: String,
    pub seed: u64,
    pub format: PromptFormat,
    pub max_new_tokens: usize,
    /// The context length the model was trained for (`llama.context_length`).
    pub native_context_tokens: usize,
    /// Positions in the engine's KV pool.
    pub ctx_tokens: usize,
    /// The git commit the binary was built from.
    pub commit: &'static str,
    pub results: Vec<LengthResult>,
}

/// All trials of one prompt length under one attention setting.
#[derive(Debug, Clone, Serialize)]
pub struct LengthResult {
    /// Requested prompt length in tokens.
    pub length: usize,
    pub attention: AttentionKind,
    pub preset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hip_config: Option<Map<String, Value>>,
    pub trials: usize,
    pub correct: usize,
    pub accuracy: f64,
    /// Wall time of all trials, prefill and decode.
    pub wall_s: f64,
    /// In trial order.
    pub cases: Vec<CaseResult>,
}

/// One trial.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub trial: usize,
    pub depth: f64,
    pub expected: String,
    pub expected_values: Vec<String>,
    /// The generated text, after the answer prefix.
    pub output: String,
    pub correct: bool,
    /// Tokens of the prompt as fed to the model.
    pub prompt_tokens: usize,
    pub haystack_sentences: usize,
    /// Where each needle starts, in prompt tokens.
    pub needle_token_offsets: Vec<usize>,
    /// Prompt tokens computed (the prefix reused from the previous case excluded).
    pub prefill_tokens: usize,
    pub prefill_s: f64,
    /// Tokens sampled (an end-of-turn token included).
    pub decode_tokens: usize,
    pub decode_s: f64,
    /// `stop token` (end of turn) or `length` (the token budget ran out).
    pub finish: &'static str,
}

impl LengthResult {
    /// (correct, trials) among the cases at `depth`.
    pub fn at_depth(&self, depth: f64) -> (usize, usize) {
        self.cases
            .iter()
            .filter(|c| c.depth == depth)
            .fold((0, 0), |(correct, total), c| (correct + usize::from(c.correct), total + 1))
    }

    pub fn series_label(&self) -> String {
        series_label(self.attention, self.preset.as_deref())
    }
}

impl Report {
    /// Every depth that some case has, ascending.
    pub fn depths(&self) -> Vec<f64> {
        let mut depths: Vec<f64> = self.results.iter().flat_map(|r| r.cases.iter().map(|c| c.depth)).collect();
        depths.sort_by(f64::total_cmp);
        depths.dedup();
        depths
    }

    /// Every prompt length, ascending.
    pub fn lengths(&self) -> Vec<usize> {
        let mut lengths: Vec<usize> = self.results.iter().map(|r| r.length).collect();
        lengths.sort_unstable();
        lengths.dedup();
        lengths
    }

    /// The attention settings present, as series labels, in order of first appearance.
    pub fn series(&self) -> Vec<String> {
        let mut labels: Vec<String> = Vec::new();
        for label in self.results.iter().map(LengthResult::series_label) {
            if !labels.contains(&label) {
                labels.push(label);
            }
        }
        labels
    }

    /// What was run, in one line.
    pub fn title(&self) -> String {
        let task = match self.variant {
            Some(variant) => format!("{} {}", self.task, flag_name(variant)),
            None => self.task.to_string(),
        };
        format!(
            "{task}, {} haystack, {} format, {}, seed {}",
            flag_name(self.haystack),
            flag_name(self.format),
            self.model,
            self.seed
        )
    }

    /// A Markdown table: one row per length and attention, with the accuracy at each depth.
    pub fn table(&self) -> String {
        let depths = self.depths();
        let mut out = String::new();
        let _ = writeln!(out, "{}\n", self.title());
        out.push_str("| length | attention | correct | accuracy |");
        for depth in &depths {
            let _ = write!(out, " d={depth:.2} |");
        }
        out.push_str("\n|---|---|---|---|");
        out.push_str(&"---|".repeat(depths.len()));
        out.push('\n');
        for r in &self.results {
            let _ = write!(
                out,
                "| {} | {} | {}/{} | {:.0}% |",
                length_label(r.length),
                r.series_label(),
                r.correct,
                r.trials,
                100.0 * r.accuracy
            );
            for &depth in &depths {
                match r.at_depth(depth) {
                    (_, 0) => out.push_str(" – |"),
                    (correct, total) => {
                        let _ = write!(out, " {correct}/{total} |");
                    }
                }
            }
            out.push('\n');
        }
        out
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).context("rendering the report as JSON")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use clap::ValueEnum;

    use super::*;

    pub(crate) fn case(trial: usize, depth: f64, correct: bool) -> CaseResult {
        CaseResult {
            trial,
            depth,
            expected: "12345".into(),
            expected_values: vec!["12345".into()],
            output: if correct { " 12345.".into() } else { " 54321.".into() },
            correct,
            prompt_tokens: 2040,
            haystack_sentences: 400,
            needle_token_offsets: vec![(depth * 2000.0) as usize + 30],
            prefill_tokens: 2040,
            prefill_s: 4.0,
            decode_tokens: 7,
            decode_s: 0.2,
            finish: "stop token",
        }
    }

    pub(crate) fn result(length: usize, attention: AttentionKind, preset: Option<&str>, hits: &[bool]) -> LengthResult {
        let depths = super::super::options::trial_depths(hits.len(), None);
        let cases: Vec<CaseResult> =
            hits.iter().zip(depths).enumerate().map(|(i, (&hit, d))| case(i, d, hit)).collect();
        let correct = hits.iter().filter(|&&h| h).count();
        LengthResult {
            length,
            attention,
            preset: preset.map(str::to_string),
            hip_config: None,
            trials: hits.len(),
            correct,
            accuracy: correct as f64 / hits.len() as f64,
            wall_s: 10.0,
            cases,
        }
    }

    pub(crate) fn report(results: Vec<LengthResult>) -> Report {
        Report {
            task: "passkey",
            variant: None,
            haystack: HaystackKind::Noise,
            needles: 1,
            model: "model.gguf".into(),
            seed: 3,
            format: PromptFormat::Chat,
            max_new_tokens: 16,
            native_context_tokens: 8192,
            ctx_tokens: 8208,
            commit: "abc",
            results,
        }
    }

    #[test]
    fn json_has_the_agreed_shape() {
        let r = report(vec![
            result(2048, AttentionKind::Dense, None, &[true, false, true]),
            result(16384, AttentionKind::Hip, Some("default"), &[true, true]),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        r.write_json(&path).unwrap();
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["task"], "passkey");
        assert_eq!(v["model"], "model.gguf");
        assert_eq!(v["variant"], Value::Null);
        assert_eq!(v["haystack"], "noise");
        assert_eq!(v["format"], "chat");
        assert_eq!(v["seed"], 3);
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), 2);
        assert_eq!(results[0]["length"], 2048);
        assert_eq!(results[0]["attention"], "dense");
        assert_eq!(results[0]["preset"], Value::Null);
        assert_eq!(results[0]["trials"], 3);
        assert_eq!(results[0]["correct"], 2);
        assert!(results[0].get("hip_config").is_none());
        assert_eq!(results[1]["attention"], "hip");
        assert_eq!(results[1]["preset"], "default");
        let cases = results[0]["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 3);
        assert_eq!(cases[1]["depth"], 0.5);
        assert_eq!(cases[1]["expected"], "12345");
        assert_eq!(cases[1]["output"], " 54321.");
        assert_eq!(cases[1]["correct"], false);
        assert_eq!(cases[1]["prompt_tokens"], 2040);
    }

    #[test]
    fn table_rows_give_totals_and_depths() {
        let r = report(vec![
            result(2048, AttentionKind::Dense, None, &[true, false, true]),
            result(8192, AttentionKind::Dense, None, &[false, false]),
        ]);
        let table = r.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "passkey, noise haystack, chat format, model.gguf, seed 3");
        assert_eq!(lines[2], "| length | attention | correct | accuracy | d=0.00 | d=0.50 | d=1.00 |");
        assert_eq!(lines[3], "|---|---|---|---|---|---|---|");
        assert_eq!(lines[4], "| 2K | dense | 2/3 | 67% | 1/1 | 0/1 | 1/1 |");
        assert_eq!(lines[5], "| 8K | dense | 0/2 | 0% | 0/1 | – | 0/1 |");
    }

    /// The JSON spells every enum value as its command-line flag does.
    fn json_matches_flags<T: ValueEnum + Serialize>() {
        for value in T::value_variants() {
            assert_eq!(serde_json::to_value(value).unwrap(), Value::from(flag_name(value.clone())));
        }
    }

    #[test]
    fn json_values_are_spelled_like_the_flags() {
        json_matches_flags::<AttentionKind>();
        json_matches_flags::<HaystackKind>();
        json_matches_flags::<NiahVariant>();
        json_matches_flags::<PromptFormat>();
    }

    #[test]
    fn series_keep_first_appearance_order() {
        let r = report(vec![
            result(2048, AttentionKind::Hip, Some("fast"), &[true]),
            result(2048, AttentionKind::Dense, None, &[true]),
            result(4096, AttentionKind::Hip, Some("fast"), &[true]),
            result(4096, AttentionKind::Hip, Some("default"), &[true]),
        ]);
        assert_eq!(r.series(), ["hip (fast)", "dense", "hip (default)"]);
        assert_eq!(r.lengths(), [2048, 4096]);
    }
}
