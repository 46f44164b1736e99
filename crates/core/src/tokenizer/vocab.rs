//! The `tokenizer.ggml.*` metadata of a GGUF file, read and checked into plain vectors.
//!
//! Invariants once `GgufVocab::from_metadata` returns: `tokens`, `token_types` and (for
//! SentencePiece) `scores` have one entry per token; no two non-empty token strings are equal;
//! every special id is below `tokens.len()`. The defaults for absent keys follow llama.cpp
//! (`llama-vocab.cpp`), so that a file means the same thing here as there.

use std::collections::HashMap;

use super::pipeline::PreTokenizer;
use super::TokenizerError;
use crate::gguf::{Array, Metadata};

/// How llama.cpp classifies a token (`tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenType {
    /// Type 0: present in some converted vocabularies; decodes to nothing.
    Undefined,
    /// Type 1: ordinary text.
    Normal,
    /// Type 2: the unknown token (`<unk>`).
    Unknown,
    /// Type 3: control tokens such as `<|im_start|>`, `<s>`; matched in text only on request.
    Control,
    /// Type 4: user-defined tokens, always matched whole in text.
    UserDefined,
    /// Type 5: reserved slots; decode to nothing.
    Unused,
    /// Type 6: SentencePiece byte-fallback tokens `<0x00>`..`<0xFF>`.
    Byte,
}

impl TokenType {
    fn from_gguf(value: i64) -> Option<Self> {
        Some(match value {
            0 => TokenType::Undefined,
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => return None,
        })
    }

    /// Control and unknown tokens: left out by `decode(.., skip_special = true)` and matched in
    /// text only by `encode(.., parse_special = true)`.
    pub fn is_special(self) -> bool {
        matches!(self, TokenType::Control | TokenType::Unknown)
    }
}

/// The vocabulary family, with what each needs beyond the token list.
pub(crate) enum VocabModel {
    /// `tokenizer.ggml.model = gpt2`: byte-level BPE over ranked merges.
    Gpt2 { pre: PreTokenizer, merges: Vec<(String, String)> },
    /// `tokenizer.ggml.model = llama`: SentencePiece BPE, merges ranked by piece score.
    SentencePiece { scores: Vec<f32> },
}

pub(crate) struct GgufVocab {
    pub model: VocabModel,
    pub tokens: Vec<String>,
    pub token_types: Vec<TokenType>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    /// `tokenizer.ggml.eot_token_id` / `eom_token_id`: end of turn / end of message.
    pub eot_ids: Vec<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
}

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_PRE: &str = "tokenizer.ggml.pre";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const KEY_SCORES: &str = "tokenizer.ggml.scores";
const KEY_MERGES: &str = "tokenizer.ggml.merges";

impl GgufVocab {
    pub fn from_metadata(md: &Metadata) -> Result<Self, TokenizerError> {
        let tokens = md.str_array(KEY_TOKENS)?.to_vec();
        let n_tokens = tokens.len();
        check_unique(&tokens)?;
        let token_types = read_token_types(md, n_tokens)?;

        let model_name = md.str(KEY_MODEL)?;
        // llama.cpp's defaults per family; the metadata keys read below override them.
        let (model, default_ids, mut add_bos, mut add_space_prefix) = match model_name {
            "gpt2" => {
                let pre_name = md.str(KEY_PRE)?;
                let pre = PreTokenizer::from_gguf_name(pre_name)
                    .ok_or_else(|| TokenizerError::UnsupportedPreTokenizer { name: pre_name.to_string() })?;
                let merges = read_merges(md)?;
                (VocabModel::Gpt2 { pre, merges }, [None, None, None], pre.adds_bos_by_default(), false)
            }
            "llama" => {
                let scores = read_scores(md, n_tokens)?;
                (VocabModel::SentencePiece { scores }, [Some(1), Some(2), Some(0)], true, true)
            }
            other => return Err(TokenizerError::UnsupportedModel { name: other.to_string() }),
        };
        let [default_bos, default_eos, default_unk] = default_ids;

        let special_id = |key: &'static str, default: Option<u32>| -> Result<Option<u32>, TokenizerError> {
            let id = match md.opt_usize(key)? {
                Some(id) => id,
                None => return Ok(default.filter(|&id| (id as usize) < n_tokens)),
            };
            match u32::try_from(id) {
                Ok(id32) if id < n_tokens => Ok(Some(id32)),
                _ => Err(TokenizerError::SpecialIdOutOfRange { key, id, vocab_size: n_tokens }),
            }
        };
        let bos_id = special_id("tokenizer.ggml.bos_token_id", default_bos)?;
        let eos_id = special_id("tokenizer.ggml.eos_token_id", default_eos)?;
        let unk_id = special_id("tokenizer.ggml.unknown_token_id", default_unk)?;
        let eot_ids =
            [special_id("tokenizer.ggml.eot_token_id", None)?, special_id("tokenizer.ggml.eom_token_id", None)?]
                .into_iter()
                .flatten()
                .collect();

        if let Some(flag) = md.opt_bool("tokenizer.ggml.add_bos_token")? {
            add_bos = flag;
        }
        let add_eos = md.opt_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        // llama.cpp honours the space prefix only for SentencePiece vocabularies.
        if matches!(model, VocabModel::SentencePiece { .. }) {
            if let Some(flag) = md.opt_bool("tokenizer.ggml.add_space_prefix")? {
                add_space_prefix = flag;
            }
        }
        if add_bos && bos_id.is_none() {
            return Err(TokenizerError::MissingSpecialId { flag: "add_bos_token", key: "bos_token_id" });
        }
        if add_eos && eos_id.is_none() {
            return Err(TokenizerError::MissingSpecialId { flag: "add_eos_token", key: "eos_token_id" });
        }

        Ok(GgufVocab {
            model,
            tokens,
            token_types,
            bos_id,
            eos_id,
            unk_id,
            eot_ids,
            add_bos,
            add_eos,
            add_space_prefix,
        })
    }
}

/// Empty strings are exempt: llama.cpp tolerates them (they can never be produced from text).
fn check_unique(tokens: &[String]) -> Result<(), TokenizerError> {
    let mut first_seen: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    for (id, text) in tokens.iter().enumerate().filter(|(_, t)| !t.is_empty()) {
        if let Some(&first) = first_seen.get(text.as_str()) {
            return Err(TokenizerError::DuplicateToken { id, first, text: text.clone() });
        }
        first_seen.insert(text, id);
    }
    Ok(())
}

/// Absent types mean "all normal", as in llama.cpp.
fn read_token_types(md: &Metadata, n_tokens: usize) -> Result<Vec<TokenType>, TokenizerError> {
    if md.get(KEY_TOKEN_TYPE).is_none() {
        return Ok(vec![TokenType::Normal; n_tokens]);
    }
    let array = md.array(KEY_TOKEN_TYPE)?;
    let values = array.to_i64_vec().ok_or(TokenizerError::WrongElementType {
        key: KEY_TOKEN_TYPE,
        expected: "integer",
        found: array.element_type(),
    })?;
    check_len(KEY_TOKEN_TYPE, values.len(), n_tokens)?;
    values
        .into_iter()
        .enumerate()
        .map(|(id, value)| TokenType::from_gguf(value).ok_or(TokenizerError::InvalidTokenType { id, value }))
        .collect()
}

fn read_scores(md: &Metadata, n_tokens: usize) -> Result<Vec<f32>, TokenizerError> {
    let array = md.array(KEY_SCORES)?;
    let scores = match array {
        Array::F32(v) => v.clone(),
        other => other.to_f32_vec().ok_or(TokenizerError::WrongElementType {
            key: KEY_SCORES,
            expected: "number",
            found: other.element_type(),
        })?,
    };
    check_len(KEY_SCORES, scores.len(), n_tokens)?;
    Ok(scores)
}

/// Each merge is "left right". Byte-level tokens never contain a literal space, but the left
/// part may *be* one in other vocabularies, so the split is at the first space after the first
/// character (llama.cpp does the same).
fn read_merges(md: &Metadata) -> Result<Vec<(String, String)>, TokenizerError> {
    md.str_array(KEY_MERGES)?
        .iter()
        .enumerate()
        .map(|(index, merge)| {
            let first_char_len = merge.chars().next().map_or(0, char::len_utf8);
            let split = merge[first_char_len..]
                .find(' ')
                .map(|pos| first_char_len + pos)
                .ok_or_else(|| TokenizerError::MalformedMerge { index, merge: merge.clone() })?;
            Ok((merge[..split].to_string(), merge[split + 1..].to_string()))
        })
        .collect()
}

fn check_len(key: &'static str, found: usize, expected: usize) -> Result<(), TokenizerError> {
    if found == expected {
        Ok(())
    } else {
        Err(TokenizerError::LengthMismatch { key, found, expected })
    }
}
