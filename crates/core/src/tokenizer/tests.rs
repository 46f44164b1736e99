//! Unit tests on small hand-built vocabularies. Every expected id below is derived by hand from
//! the BPE / SentencePiece rules and the vocabulary layout written next to it.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::pieces::byte_to_char_table;
use super::{Tokenizer, TokenizerError};
use crate::gguf::{Array, Metadata, Value};

fn strings(items: &[&str]) -> Value {
    Value::Array(Array::String(items.iter().map(|s| s.to_string()).collect()))
}

fn metadata(entries: Vec<(&str, Value)>) -> Metadata {
    Metadata::new(entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<BTreeMap<_, _>>())
}

// ---------------------------------------------------------------------------------------------
// Byte-level BPE. Layout: ids 0..=255 are the 256 byte characters, so a lone byte b has id b;
// then the merged tokens and specials listed in `BYTE_LEVEL_EXTRA`.

const BYTE_LEVEL_EXTRA: &[(&str, i32)] = &[
    ("12", 1),         // 256, merge "1 2"
    ("123", 1),        // 257, merge "12 3"
    ("45", 1),         // 258, merge "4 5"
    ("ab", 1),         // 259, merge "a b"
    ("xyz", 1),        // 260, no merge builds it: reachable only with ignore_merges
    ("<|im_end|>", 3), // 261, control
    ("<tool>", 4),     // 262, user-defined
    ("'t", 1),         // 263, merge "' t"
    ("</s>", 1),       // 264, normal text (an HTML tag), must not become a stop id
    ("<|begin|>", 3),  // 265, control, used as BOS
];
const BYTE_LEVEL_MERGES: &[&str] = &["1 2", "12 3", "4 5", "a b", "' t"];

fn byte_level_entries(pre: &str) -> Vec<(&'static str, Value)> {
    let mut tokens: Vec<String> = byte_to_char_table().iter().map(|c| c.to_string()).collect();
    let mut types = vec![1i32; 256];
    for (text, ty) in BYTE_LEVEL_EXTRA {
        tokens.push(text.to_string());
        types.push(*ty);
    }
    let token_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String(pre.into())),
        ("tokenizer.ggml.tokens", strings(&token_refs)),
        ("tokenizer.ggml.token_type", Value::Array(Array::I32(types))),
        ("tokenizer.ggml.merges", strings(BYTE_LEVEL_MERGES)),
        ("tokenizer.ggml.bos_token_id", Value::U32(265)),
        ("tokenizer.ggml.eos_token_id", Value::U32(261)),
    ]
}

fn byte_level(pre: &str) -> Tokenizer {
    Tokenizer::from_gguf(&metadata(byte_level_entries(pre))).unwrap()
}

#[test]
fn pre_tokenizers_split_digits_as_their_models_do() {
    // smollm and qwen2: one digit per piece, so no digit merge applies ('1' = 49 … '5' = 53).
    assert_eq!(byte_level("smollm").encode("12345", false).unwrap(), [49, 50, 51, 52, 53]);
    assert_eq!(byte_level("qwen2").encode("12345", false).unwrap(), [49, 50, 51, 52, 53]);
    // llama-bpe: groups of up to three, "123" | "45"; BOS (265) is on by default for it.
    assert_eq!(byte_level("llama-bpe").encode("12345", false).unwrap(), [265, 257, 258]);
}

#[test]
fn llama_bpe_takes_whole_words_from_the_vocabulary() {
    // "xyz" is a token but no merge builds it: only ignore_merges (llama-bpe) finds it.
    assert_eq!(byte_level("llama-bpe").encode("xyz", false).unwrap(), [265, 260]);
    assert_eq!(byte_level("qwen2").encode("xyz", false).unwrap(), [120, 121, 122]);
    // A BOS already written in the text is not doubled.
    assert_eq!(byte_level("llama-bpe").encode("<|begin|>xyz", true).unwrap(), [265, 260]);
}

#[test]
fn byte_level_spaces_and_contractions() {
    let tk = byte_level("smollm");
    // " ab" is one piece (space joins the letters): Ġ=32, then "a b" → 259.
    assert_eq!(tk.encode(" ab", false).unwrap(), [32, 259]);
    // "don't" → "don" | "'t"; "' t" → 263.
    assert_eq!(tk.encode("don't", false).unwrap(), [100, 111, 110, 263]);
    assert_eq!(tk.encode("", false).unwrap(), Vec::<u32>::new());
}

#[test]
fn control_tokens_only_with_parse_special_user_defined_always() {
    let tk = byte_level("smollm");
    assert_eq!(tk.encode("hi<|im_end|><tool>", true).unwrap(), [104, 105, 261, 262]);
    // Without parse_special the control token is text: "<|" "im" "_" "end" "|>" byte by byte.
    assert_eq!(
        tk.encode("hi<|im_end|><tool>", false).unwrap(),
        [104, 105, 60, 124, 105, 109, 95, 101, 110, 100, 124, 62, 262]
    );
    assert_eq!(tk.decode(&[104, 105, 261, 262], false).unwrap(), "hi<|im_end|><tool>");
    assert_eq!(tk.decode(&[104, 105, 261, 262], true).unwrap(), "hi<tool>");
}

#[test]
fn bytes_missing_from_the_vocabulary_are_dropped() {
    // Token 4 no longer spells byte 0x04, so nothing encodes that byte: "a", "\u{4}", "b" are
    // three pieces and the middle one yields no id.
    let mut entries = byte_level_entries("smollm");
    let mut tokens: Vec<String> = byte_to_char_table().iter().map(|c| c.to_string()).collect();
    tokens.extend(BYTE_LEVEL_EXTRA.iter().map(|(t, _)| t.to_string()));
    tokens[4] = "<not byte 4>".into();
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    set(&mut entries, "tokenizer.ggml.tokens", strings(&refs));
    let tk = Tokenizer::from_gguf(&metadata(entries)).unwrap();
    assert_eq!(tk.encode("a\u{4}b", false).unwrap(), [97, 98]);
}

#[test]
fn byte_level_accessors_and_stop_ids() {
    let tk = byte_level("smollm");
    assert_eq!(tk.vocab_size(), 266);
    assert_eq!(tk.bos_id(), Some(265));
    assert_eq!(tk.eos_id(), Some(261));
    assert!(!tk.adds_bos());
    // EOS and the control "<|im_end|>" are the same id; the normal "</s>" (264) is not a stop.
    assert_eq!(tk.stop_ids(), [261]);
    assert!(tk.is_stop(261) && !tk.is_stop(264));
    assert_eq!(tk.token_str(32), Some("Ġ"));
    assert_eq!(tk.token_to_piece(32).unwrap(), b" ");
    assert_eq!(tk.token_id("<tool>"), Some(262));
    assert!(matches!(tk.token_to_piece(266), Err(TokenizerError::UnknownId { id: 266, vocab_size: 266 })));
    assert!(matches!(tk.decode(&[1, 9999], false), Err(TokenizerError::UnknownId { id: 9999, .. })));
}

#[test]
fn stream_holds_back_split_emoji() {
    let tk = byte_level("smollm");
    // 🚀 is F0 9F 9A 80: four byte tokens, complete only at the last.
    let mut stream = tk.decode_stream(false);
    assert_eq!(stream.step(b'a' as u32).unwrap().as_deref(), Some("a"));
    assert_eq!(stream.step(0xF0).unwrap(), None);
    assert_eq!(stream.step(0x9F).unwrap(), None);
    assert_eq!(stream.step(0x9A).unwrap(), None);
    assert_eq!(stream.step(0x80).unwrap().as_deref(), Some("🚀"));
    // An unfinished character at the end is flushed as U+FFFD, as decode would give.
    assert_eq!(stream.step(0xE6).unwrap(), None);
    assert_eq!(stream.flush().as_deref(), Some("\u{FFFD}"));
    assert_eq!(stream.flush(), None);
}

proptest! {
    #[test]
    fn stream_concatenation_is_lossy_utf8_of_the_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let tk = byte_level("smollm");
        // With ids 0..=255 standing for bytes, the expected text is std's lossy UTF-8.
        let ids: Vec<u32> = bytes.iter().map(|&b| b as u32).collect();
        let expected = String::from_utf8_lossy(&bytes).into_owned();
        let mut stream = tk.decode_stream(true);
        let mut streamed = String::new();
        for &id in &ids {
            streamed.extend(stream.step(id).unwrap());
        }
        streamed.extend(stream.flush());
        prop_assert_eq!(&streamed, &expected);
        prop_assert_eq!(tk.decode(&ids, true).unwrap(), expected);
    }
}

// ---------------------------------------------------------------------------------------------
// SentencePiece. Layout: 0 <unk>, 1 <s>, 2 </s>, 3..=258 the byte tokens <0x00>..<0xFF>
// (byte b has id 3 + b), then the pieces below. Merges go by piece score, highest first.

const SPM_PIECES: &[(&str, f32)] = &[
    ("▁", -100.0),    // 259
    ("h", -100.0),    // 260
    ("e", -100.0),    // 261
    ("l", -100.0),    // 262
    ("o", -100.0),    // 263
    ("w", -100.0),    // 264
    ("r", -100.0),    // 265
    ("d", -100.0),    // 266
    ("ll", -1.0),     // 267
    ("he", -2.0),     // 268
    ("▁w", -3.0),     // 269
    ("or", -4.0),     // 270
    ("llo", -5.0),    // 271
    ("▁he", -6.0),    // 272
    ("▁hello", -7.0), // 273: from "▁he" + "llo"
    ("▁wor", -8.0),   // 274: from "▁w" + "or"
    ("▁world", -9.0), // 275: no two pieces make it ("▁worl", "orld" and "ld" are absent)
    ("wo", -10.0),    // 276: loses the "w" to "▁w" (-3), which scores higher
];

fn sentencepiece(extra: Vec<(&'static str, Value)>) -> Tokenizer {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2i32, 3, 3];
    let mut scores = vec![0.0f32; 3];
    for byte in 0..=255u8 {
        tokens.push(format!("<0x{byte:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    for (text, score) in SPM_PIECES {
        tokens.push(text.to_string());
        types.push(1);
        scores.push(*score);
    }
    let token_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let mut entries = vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", strings(&token_refs)),
        ("tokenizer.ggml.token_type", Value::Array(Array::I32(types))),
        ("tokenizer.ggml.scores", Value::Array(Array::F32(scores))),
    ];
    entries.extend(extra);
    Tokenizer::from_gguf(&metadata(entries)).unwrap()
}

#[test]
fn sentencepiece_merges_by_score() {
    let tk = sentencepiece(vec![]);
    // "▁hello▁world": ll(-1), he(-2), ▁w(-3), or(-4), llo(-5), ▁he(-6), ▁hello(-7), ▁wor(-8);
    // "wo" (-10) never gets its "w" and "▁world" is never reached, so "l" and "d" stay single.
    // BOS (1) is on by default.
    assert_eq!(tk.encode("hello world", false).unwrap(), [1, 273, 274, 262, 266]);
    assert_eq!(tk.decode(&[1, 273, 274, 262, 266], true).unwrap(), "hello world");
    // Only the first token's prefix space is dropped, and only when it comes first.
    assert_eq!(tk.decode(&[1, 273, 274, 262, 266], false).unwrap(), "<s> hello world");
}

#[test]
fn sentencepiece_byte_fallback() {
    let tk = sentencepiece(vec![]);
    // "\n" is not a piece: <0x0A> = 3 + 10.
    assert_eq!(tk.encode("hello\n", false).unwrap(), [1, 273, 13]);
    // "é" = C3 A9 → 3 + 0xC3, 3 + 0xA9.
    assert_eq!(tk.encode("wé", false).unwrap(), [1, 269, 198, 172]);
    assert_eq!(tk.decode(&[269, 198, 172], true).unwrap(), "wé");
    let mut stream = tk.decode_stream(true);
    assert_eq!(stream.step(269).unwrap().as_deref(), Some("w"));
    assert_eq!(stream.step(198).unwrap(), None);
    assert_eq!(stream.step(172).unwrap().as_deref(), Some("é"));
}

#[test]
fn sentencepiece_special_tokens_and_fragments() {
    let tk = sentencepiece(vec![]);
    // The text after a matched special token gets its own "▁" prefix, as in llama.cpp; the
    // BOS in the text is not doubled.
    assert_eq!(tk.encode("<s>hello", true).unwrap(), [1, 273]);
    // As plain text, "<s>" is bytes 3C 73 3E and splits "▁" from "he": ▁ < s > he llo.
    assert_eq!(tk.encode("<s>hello", false).unwrap(), [1, 259, 63, 118, 65, 268, 271]);
    assert_eq!(tk.stop_ids(), [2]);
}

#[test]
fn sentencepiece_flags_from_metadata() {
    let tk = sentencepiece(vec![
        ("tokenizer.ggml.add_space_prefix", Value::Bool(false)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
        ("tokenizer.ggml.add_eos_token", Value::Bool(true)),
    ]);
    // No "▁" in front: h e l l o → he, ll, llo; EOS (2) appended.
    assert_eq!(tk.encode("hello", false).unwrap(), [268, 271, 2]);
    assert_eq!(tk.decode(&[272], true).unwrap(), " he");
}

// ---------------------------------------------------------------------------------------------
// Bad metadata: each is a clear error, never a guess or a panic.

fn byte_level_error(edit: impl FnOnce(&mut Vec<(&'static str, Value)>)) -> TokenizerError {
    let mut entries = byte_level_entries("smollm");
    edit(&mut entries);
    Tokenizer::from_gguf(&metadata(entries)).unwrap_err()
}

fn set(entries: &mut [(&'static str, Value)], key: &str, value: Value) {
    if let Some(entry) = entries.iter_mut().find(|(k, _)| *k == key) {
        entry.1 = value;
    }
}

#[test]
fn unknown_pre_tokenizer_is_an_error() {
    let err = byte_level_error(|e| set(e, "tokenizer.ggml.pre", Value::String("mystery".into())));
    assert!(matches!(&err, TokenizerError::UnsupportedPreTokenizer { name } if name == "mystery"), "{err}");
    assert!(err.to_string().contains("mystery"));
}

#[test]
fn malformed_vocabularies_are_errors() {
    let err = byte_level_error(|e| set(e, "tokenizer.ggml.model", Value::String("bert".into())));
    assert!(matches!(&err, TokenizerError::UnsupportedModel { name } if name == "bert"), "{err}");

    let err = byte_level_error(|e| set(e, "tokenizer.ggml.token_type", Value::Array(Array::I32(vec![1; 3]))));
    assert!(matches!(err, TokenizerError::LengthMismatch { found: 3, expected: 266, .. }), "{err}");

    let err = byte_level_error(|e| set(e, "tokenizer.ggml.token_type", Value::Array(Array::I32(vec![9; 266]))));
    assert!(matches!(err, TokenizerError::InvalidTokenType { id: 0, value: 9 }), "{err}");

    let err = byte_level_error(|e| set(e, "tokenizer.ggml.bos_token_id", Value::U32(266)));
    assert!(matches!(err, TokenizerError::SpecialIdOutOfRange { id: 266, vocab_size: 266, .. }), "{err}");

    let err = byte_level_error(|e| set(e, "tokenizer.ggml.merges", strings(&["12"])));
    assert!(matches!(err, TokenizerError::MalformedMerge { index: 0, .. }), "{err}");

    let err = byte_level_error(|e| set(e, "tokenizer.ggml.merges", strings(&["q q"])));
    assert!(matches!(err, TokenizerError::Pipeline { .. }), "{err}");

    let mut tokens: Vec<String> = byte_to_char_table().iter().map(|c| c.to_string()).collect();
    tokens.extend(BYTE_LEVEL_EXTRA.iter().map(|(t, _)| t.to_string()));
    tokens[257] = "12".into();
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let err = byte_level_error(|e| set(e, "tokenizer.ggml.tokens", strings(&refs)));
    assert!(matches!(err, TokenizerError::DuplicateToken { id: 257, first: 256, .. }), "{err}");

    let err = byte_level_error(|e| e.retain(|(k, _)| *k != "tokenizer.ggml.merges"));
    assert!(matches!(err, TokenizerError::Metadata(_)), "{err}");
}
