//! Builds the `tokenizers` (Hugging Face) encoding pipelines from a GGUF vocabulary.
//!
//! Two families:
//! - **gpt2** (byte-level BPE): regex pre-tokenizer chosen by `tokenizer.ggml.pre` → every byte
//!   mapped to a visible character (`ByteLevel`) → BPE over the file's ranked merges.
//! - **llama** (SentencePiece BPE): spaces become `▁` and each text fragment gets a leading `▁`
//!   (`add_space_prefix`) → BPE whose merges are derived from the piece scores → characters
//!   missing from the vocabulary fall back to the `<0xXX>` byte tokens.
//!
//! Each family yields two pipelines that differ only in which tokens are matched whole in the
//! raw text before the model sees it: user-defined tokens always; control and unknown tokens
//! only in the `parse_special` pipeline. This is llama.cpp's rule (`tokenizer_st_partition`),
//! and it is why a user typing `<|im_end|>` cannot end a turn unless the caller asks for it.

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::Split;
use tokenizers::{AddedToken, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::vocab::{GgufVocab, TokenType, VocabModel};
use super::TokenizerError;

/// The GPT-2 split regex (also StarCoder's and SmolLM's after their digit split).
const GPT2_SPLIT: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// Llama 3's split regex: case-insensitive contractions, a letter run with at most one leading
/// non-letter, digits in groups of up to three, punctuation runs with trailing newlines.
const LLAMA3_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split regex: Llama 3's, with every digit on its own.
const QWEN2_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// SentencePiece's stand-in for a space.
pub(crate) const SPM_SPACE: &str = "\u{2581}";

/// The byte-level pre-tokenizers we implement, keyed by `tokenizer.ggml.pre`.
///
/// The regexes are the ones llama.cpp uses for the same names. Aliases are accepted only where
/// llama.cpp maps them to the same splitting; any other name is an error, never a guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizer {
    /// `smollm`, `starcoder`: every digit on its own, then the GPT-2 regex.
    Smollm,
    /// `llama-bpe`, `llama3`, `llama-v3`: the Llama 3 regex; whole words found in the vocabulary
    /// skip the merges (`ignore_merges`); BOS added by default.
    Llama3,
    /// `qwen2`, `deepseek-r1-qwen`: the Qwen2 regex.
    Qwen2,
}

impl PreTokenizer {
    pub fn from_gguf_name(name: &str) -> Option<Self> {
        Some(match name {
            "smollm" | "starcoder" => PreTokenizer::Smollm,
            "llama-bpe" | "llama3" | "llama-v3" => PreTokenizer::Llama3,
            "qwen2" | "deepseek-r1-qwen" => PreTokenizer::Qwen2,
            _ => return None,
        })
    }

    /// llama.cpp's default for `add_bos_token` when the file does not say.
    pub fn adds_bos_by_default(self) -> bool {
        self == PreTokenizer::Llama3
    }

    fn ignores_merges(self) -> bool {
        self == PreTokenizer::Llama3
    }

    fn build(self) -> Result<PreTokenizerWrapper, TokenizerError> {
        let split = |regex: &str| -> Result<PreTokenizerWrapper, TokenizerError> {
            let split = Split::new(
                tokenizers::pre_tokenizers::split::SplitPattern::Regex(regex.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|source| TokenizerError::Pipeline { what: "the split regex", source })?;
            Ok(split.into())
        };
        // Bytes become characters last, after all splitting has seen the real text.
        let to_byte_chars = ByteLevel::new(false, false, false).into();
        let steps = match self {
            PreTokenizer::Smollm => {
                vec![Digits::new(true).into(), split(GPT2_SPLIT)?, to_byte_chars]
            }
            PreTokenizer::Llama3 => vec![split(LLAMA3_SPLIT)?, to_byte_chars],
            PreTokenizer::Qwen2 => vec![split(QWEN2_SPLIT)?, to_byte_chars],
        };
        Ok(PreTokenizerSequence::new(steps).into())
    }
}

/// The encoding pipelines of one vocabulary (see the module docs).
pub(crate) struct Pipelines {
    pub plain: tokenizers::Tokenizer,
    pub with_special: tokenizers::Tokenizer,
}

pub(crate) fn build(vocab: &GgufVocab) -> Result<Pipelines, TokenizerError> {
    let ids: Vocab = vocab
        .tokens
        .iter()
        .enumerate()
        .filter(|(_, text)| !text.is_empty())
        .map(|(id, text)| (text.clone(), id as u32))
        .collect();

    let mut base = match &vocab.model {
        VocabModel::Gpt2 { pre, merges } => {
            let model = BPE::builder()
                .vocab_and_merges(ids, merges.clone())
                .ignore_merges(pre.ignores_merges())
                .build()
                .map_err(|source| TokenizerError::Pipeline { what: "the BPE model", source })?;
            let mut tk = tokenizers::Tokenizer::new(model);
            tk.with_pre_tokenizer(Some(pre.build()?));
            tk
        }
        VocabModel::SentencePiece { scores } => {
            let merges = sentencepiece_merges(&vocab.tokens, &vocab.token_types, scores, &ids);
            let mut builder = BPE::builder().vocab_and_merges(ids, merges).byte_fallback(true).fuse_unk(true);
            if let Some(unk) = vocab.unk_id {
                builder = builder.unk_token(vocab.tokens[unk as usize].clone());
            }
            let model = builder.build().map_err(|source| TokenizerError::Pipeline { what: "the BPE model", source })?;
            let mut tk = tokenizers::Tokenizer::new(model);
            tk.with_normalizer(Some(sentencepiece_normalizer(vocab.add_space_prefix)?));
            tk
        }
    };

    let whole = |keep: fn(TokenType) -> bool, special: bool| -> Vec<AddedToken> {
        vocab
            .tokens
            .iter()
            .zip(&vocab.token_types)
            .filter(|(text, &ty)| keep(ty) && !text.is_empty())
            .map(|(text, _)| AddedToken::from(text.clone(), special).normalized(false))
            .collect()
    };
    base.add_tokens(&whole(|ty| ty == TokenType::UserDefined, false));
    let plain = base.clone();
    let mut with_special = base;
    with_special.add_special_tokens(&whole(TokenType::is_special, true));
    Ok(Pipelines { plain, with_special })
}

/// Spaces become `▁`, and with `add_space_prefix` each fragment (the whole text, or each piece
/// between matched special tokens, as in llama.cpp) starts with one.
fn sentencepiece_normalizer(add_space_prefix: bool) -> Result<NormalizerWrapper, TokenizerError> {
    let escape_spaces = Replace::new(" ", SPM_SPACE)
        .map_err(|source| TokenizerError::Pipeline { what: "the space normaliser", source })?;
    let mut steps: Vec<NormalizerWrapper> = Vec::with_capacity(2);
    if add_space_prefix {
        steps.push(Prepend::new(SPM_SPACE.to_string()).into());
    }
    steps.push(escape_spaces.into());
    Ok(NormalizerSequence::new(steps).into())
}

/// SentencePiece BPE merges the adjacent pair whose concatenation is the highest-scoring piece
/// (leftmost on ties). As ranked merges for `tokenizers`: every split of every normal piece into
/// two pieces that both exist, ordered by the piece's score, highest first.
///
/// One difference remains: SentencePiece gives all pairs that build the same piece one
/// priority and then prefers the leftmost, while ranked merges order those pairs (here by id of
/// the result, then by shorter left part). It matters only when two different splits of one
/// piece are both present as adjacent symbols, which real vocabularies make rare.
fn sentencepiece_merges(tokens: &[String], types: &[TokenType], scores: &[f32], ids: &Vocab) -> Vec<(String, String)> {
    let mut ranked: Vec<(f32, usize, usize)> = Vec::new();
    for (id, text) in tokens.iter().enumerate() {
        if types[id] != TokenType::Normal {
            continue;
        }
        for (split, _) in text.char_indices().skip(1) {
            let (left, right) = text.split_at(split);
            if ids.contains_key(left) && ids.contains_key(right) {
                ranked.push((scores[id], id, split));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    ranked
        .into_iter()
        .map(|(_, id, split)| {
            let (left, right) = tokens[id].split_at(split);
            (left.to_string(), right.to_string())
        })
        .collect()
}
