//! Text ↔ token ids for GGUF vocabularies, built from `tokenizer.ggml.*` metadata alone.
//!
//! Supported: `gpt2` byte-level BPE with the `smollm`, `llama-bpe` and `qwen2` pre-tokenizers
//! (SmolLM2, Llama 3.x, Qwen2/2.5), and `llama` SentencePiece BPE with byte fallback (Llama 2,
//! Mistral, TinyLlama). Encoding runs on the `tokenizers` crate (see `pipeline.rs`); decoding
//! concatenates per-token byte pieces (see `pieces.rs`), so it can also be done one token at a
//! time ([`DecodeStream`]). Behaviour follows llama.cpp, whose ids the oracle tests check.
//!
//! Ids are `u32` and always `< vocab_size()`; any id coming from outside (`decode`,
//! `token_to_piece`) is checked and an unknown one is an error.

mod pieces;
mod pipeline;
mod stream;
mod vocab;

#[cfg(test)]
mod tests;

pub use pipeline::PreTokenizer;
pub use stream::DecodeStream;
pub use vocab::TokenType;

use crate::gguf::{GgufError, Metadata};
use pieces::{Pieces, Spelling};
use vocab::{GgufVocab, VocabModel};

/// Errors from building a tokenizer or using it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenizerError {
    #[error("tokenizer metadata: {0}")]
    Metadata(#[from] GgufError),
    #[error("unsupported tokenizer model `{name}` (supported: gpt2, llama)")]
    UnsupportedModel { name: String },
    #[error("unsupported pre-tokenizer `{name}` (supported: smollm, starcoder, llama-bpe, llama3, llama-v3, qwen2, deepseek-r1-qwen)")]
    UnsupportedPreTokenizer { name: String },
    #[error("`{key}` has {found} entries but the vocabulary has {expected} tokens")]
    LengthMismatch { key: &'static str, found: usize, expected: usize },
    #[error("`{key}` holds {found} elements, expected {expected}")]
    WrongElementType { key: &'static str, expected: &'static str, found: &'static str },
    #[error("token {id} has token type {value}, which is not a GGUF token type (0..=6)")]
    InvalidTokenType { id: usize, value: i64 },
    #[error("token {id} {text:?} duplicates token {first}")]
    DuplicateToken { id: usize, first: usize, text: String },
    #[error("merge #{index} {merge:?} is not of the form \"left right\"")]
    MalformedMerge { index: usize, merge: String },
    #[error("`{key}` = {id} is outside the vocabulary of {vocab_size} tokens")]
    SpecialIdOutOfRange { key: &'static str, id: usize, vocab_size: usize },
    #[error("`tokenizer.ggml.{flag}` is set but `tokenizer.ggml.{key}` is missing")]
    MissingSpecialId { flag: &'static str, key: &'static str },
    #[error("token {id} {text:?} has the byte type but is not of the form <0xXX>")]
    MalformedByteToken { id: usize, text: String },
    #[error("cannot build {what}: {source}")]
    Pipeline { what: &'static str, source: tokenizers::Error },
    #[error("encoding failed: {source}")]
    Encode { source: tokenizers::Error },
    #[error("token id {id} is outside the vocabulary of {vocab_size} tokens")]
    UnknownId { id: u32, vocab_size: usize },
}

/// Token texts that end a turn in common chat formats. A vocabulary token with one of these
/// texts is a stop id only if it is not normal text: a code vocabulary may well hold `</s>`
/// (the HTML tag) as a normal token.
const END_OF_TURN_TEXTS: &[&str] =
    &["<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<|endoftext|>", "</s>", "<end_of_turn>"];

/// A GGUF vocabulary, ready to encode and decode.
pub struct Tokenizer {
    tokens: Vec<String>,
    token_types: Vec<TokenType>,
    pieces: Pieces,
    /// Matches user-defined tokens only; control tokens in the text are plain text.
    plain: tokenizers::Tokenizer,
    /// Also matches control and unknown tokens whole.
    with_special: tokenizers::Tokenizer,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    /// SentencePiece with `add_space_prefix`: decoding drops the space the encoder added.
    strip_first_space: bool,
    /// Sorted, without duplicates.
    stop_ids: Vec<u32>,
}

impl Tokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.*` metadata.
    ///
    /// Absent keys take llama.cpp's defaults: no BOS for byte-level BPE except `llama-bpe`;
    /// for SentencePiece, BOS added, BOS/EOS/UNK ids 1/2/0 and a space prefix.
    pub fn from_gguf(md: &Metadata) -> Result<Self, TokenizerError> {
        let vocab = GgufVocab::from_metadata(md)?;
        let pipelines = pipeline::build(&vocab)?;
        let spelling = match vocab.model {
            VocabModel::Gpt2 { .. } => Spelling::ByteLevel,
            VocabModel::SentencePiece { .. } => Spelling::SentencePiece,
        };
        let pieces = Pieces::build(&vocab.tokens, &vocab.token_types, spelling)?;

        let by_text = vocab
            .tokens
            .iter()
            .zip(&vocab.token_types)
            .enumerate()
            .filter(|(_, (text, ty))| **ty != TokenType::Normal && END_OF_TURN_TEXTS.contains(&text.as_str()))
            .map(|(id, _)| id as u32);
        let mut stop_ids: Vec<u32> =
            vocab.eos_id.into_iter().chain(vocab.eot_ids.iter().copied()).chain(by_text).collect();
        stop_ids.sort_unstable();
        stop_ids.dedup();

        Ok(Tokenizer {
            strip_first_space: spelling == Spelling::SentencePiece && vocab.add_space_prefix,
            tokens: vocab.tokens,
            token_types: vocab.token_types,
            pieces,
            plain: pipelines.plain,
            with_special: pipelines.with_special,
            bos_id: vocab.bos_id,
            eos_id: vocab.eos_id,
            add_bos: vocab.add_bos,
            add_eos: vocab.add_eos,
            stop_ids,
        })
    }

    /// Encodes `text`.
    ///
    /// With `parse_special`, control tokens written in the text (`<|im_start|>`, `<s>`) become
    /// their ids; without it they are tokenised as ordinary characters, so untrusted text cannot
    /// inject them. User-defined tokens are matched whole either way (as llama.cpp and HF do).
    ///
    /// BOS is prepended when the vocabulary asks for it (`add_bos_token`), unless the encoded
    /// text already starts with BOS (as it does when a chat template writes `{{ bos_token }}`);
    /// EOS is appended likewise when `add_eos_token` is set.
    ///
    /// A byte-level vocabulary may lack a few byte tokens (SmolLM2 has none for six ASCII
    /// control characters); such bytes are dropped, as llama.cpp and HF tokenizers drop them.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let pipeline = if parse_special { &self.with_special } else { &self.plain };
        let encoding = pipeline.encode_fast(text, false).map_err(|source| TokenizerError::Encode { source })?;
        let body = encoding.get_ids();
        let mut ids = Vec::with_capacity(body.len() + 2);
        if let Some(bos) = self.bos_id.filter(|&bos| self.add_bos && body.first() != Some(&bos)) {
            ids.push(bos);
        }
        ids.extend_from_slice(body);
        if let Some(eos) = self.eos_id.filter(|&eos| self.add_eos && body.last() != Some(&eos)) {
            ids.push(eos);
        }
        Ok(ids)
    }

    /// Decodes `ids` to text. With `skip_special`, control and unknown tokens are left out;
    /// otherwise they appear as written (`<|im_end|>`). Bytes that do not form valid UTF-8
    /// become U+FFFD. For SentencePiece vocabularies with a space prefix, the first token's
    /// leading space (the one `encode` added) is dropped.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        let mut bytes = Vec::new();
        let mut at_start = true;
        for &id in ids {
            self.append_piece(id, skip_special, &mut at_start, &mut bytes)?;
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A decoder that takes one id at a time; see [`DecodeStream`].
    pub fn decode_stream(&self, skip_special: bool) -> DecodeStream<'_> {
        DecodeStream::new(self, skip_special)
    }

    /// The bytes token `id` contributes to decoded text. They need not be valid UTF-8 on their
    /// own (a byte-level token may hold half of a character).
    pub fn token_to_piece(&self, id: u32) -> Result<&[u8], TokenizerError> {
        self.pieces.get(id).ok_or(TokenizerError::UnknownId { id, vocab_size: self.vocab_size() })
    }

    /// The token's string as stored in the vocabulary (`Ġworld`, `▁world`, `<0x0A>`).
    pub fn token_str(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The id of the vocabulary string `text`, if there is one.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.plain.token_to_id(text)
    }

    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.token_types.get(id as usize).copied()
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Whether `encode` prepends BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Ids that end generation: EOS, the metadata's end-of-turn/end-of-message ids, and the
    /// non-normal tokens named `<|im_end|>`, `<|eot_id|>`, `<|eom_id|>`, `<|end|>`,
    /// `<|endoftext|>`, `</s>` or `<end_of_turn>`. Sorted, no duplicates.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    pub fn is_stop(&self, id: u32) -> bool {
        self.stop_ids.binary_search(&id).is_ok()
    }

    /// Appends the piece of `id` to `out`, the one step shared by `decode` and `DecodeStream`.
    /// `at_start` is true until the first token is emitted.
    fn append_piece(
        &self,
        id: u32,
        skip_special: bool,
        at_start: &mut bool,
        out: &mut Vec<u8>,
    ) -> Result<(), TokenizerError> {
        let (Some(ty), Some(mut piece)) = (self.token_type(id), self.pieces.get(id)) else {
            return Err(TokenizerError::UnknownId { id, vocab_size: self.vocab_size() });
        };
        if skip_special && ty.is_special() {
            return Ok(());
        }
        if *at_start && self.strip_first_space && ty == TokenType::Normal {
            piece = piece.strip_prefix(b" ").unwrap_or(piece);
        }
        *at_start = false;
        out.extend_from_slice(piece);
        Ok(())
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("add_bos", &self.add_bos)
            .field("stop_ids", &self.stop_ids)
            .finish_non_exhaustive()
    }
}
