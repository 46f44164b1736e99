//! What each token contributes to decoded text, as raw bytes.
//!
//! A piece is bytes, not a `str`: byte-level BPE and SentencePiece byte fallback both split
//! multi-byte characters across tokens, so only a sequence of pieces is valid UTF-8. All pieces
//! live in one buffer, `bytes[offsets[id]..offsets[id + 1]]`, with `offsets.len() = n_tokens + 1`.
//!
//! Rules (llama.cpp's `token_to_piece`):
//! - byte-level normal tokens: each character maps back to its byte through GPT-2's table;
//! - SentencePiece normal tokens: `▁` becomes a space;
//! - byte tokens `<0xXX>`: that byte;
//! - control, unknown and user-defined tokens: their text as written;
//! - unused and undefined tokens: nothing.

use super::pipeline::SPM_SPACE;
use super::vocab::TokenType;
use super::TokenizerError;

/// GPT-2's byte → character table. The 188 printable Latin-1 bytes stand for themselves; the
/// other 68 (controls, space, DEL, NBSP, soft hyphen…) take U+0100, U+0101, … in byte order, so
/// every byte has a visible, non-whitespace stand-in. Space is therefore `Ġ` (U+0120).
pub(crate) const fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next_stand_in = 0x100u32;
    let mut byte = 0usize;
    while byte < 256 {
        let printable = matches!(byte, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            byte as u32
        } else {
            next_stand_in += 1;
            next_stand_in - 1
        };
        table[byte] = match char::from_u32(code) {
            Some(ch) => ch,
            None => panic!("the byte table only uses code points below U+0144"),
        };
        byte += 1;
    }
    table
}

/// The inverse of `byte_to_char_table()`, indexed by code point (all stand-ins are below U+0144).
static CHAR_TO_BYTE: [Option<u8>; 0x144] = char_to_byte_table();

const fn char_to_byte_table() -> [Option<u8>; 0x144] {
    let byte_to_char = byte_to_char_table();
    let mut table = [None; 0x144];
    let mut byte = 0usize;
    while byte < 256 {
        table[byte_to_char[byte] as usize] = Some(byte as u8);
        byte += 1;
    }
    table
}

/// Characters of the byte table map back to their byte; others are not byte-level text.
fn char_to_byte(ch: char) -> Option<u8> {
    CHAR_TO_BYTE.get(ch as usize).copied().flatten()
}

/// How normal tokens are spelled in the vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spelling {
    ByteLevel,
    SentencePiece,
}

pub(crate) struct Pieces {
    bytes: Vec<u8>,
    offsets: Vec<usize>,
}

impl Pieces {
    pub fn build(tokens: &[String], types: &[TokenType], spelling: Spelling) -> Result<Self, TokenizerError> {
        let mut bytes = Vec::with_capacity(tokens.iter().map(String::len).sum());
        let mut offsets = Vec::with_capacity(tokens.len() + 1);
        offsets.push(0);
        for (id, (text, &ty)) in tokens.iter().zip(types).enumerate() {
            match ty {
                TokenType::Normal => match spelling {
                    // A character outside the table is kept as written rather than dropped.
                    Spelling::ByteLevel => text.chars().for_each(|ch| match char_to_byte(ch) {
                        Some(byte) => bytes.push(byte),
                        None => bytes.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes()),
                    }),
                    Spelling::SentencePiece => bytes.extend_from_slice(text.replace(SPM_SPACE, " ").as_bytes()),
                },
                TokenType::Byte => {
                    let byte = parse_byte_token(text)
                        .ok_or_else(|| TokenizerError::MalformedByteToken { id, text: text.clone() })?;
                    bytes.push(byte);
                }
                TokenType::Control | TokenType::Unknown | TokenType::UserDefined => {
                    bytes.extend_from_slice(text.as_bytes())
                }
                TokenType::Unused | TokenType::Undefined => {}
            }
            offsets.push(bytes.len());
        }
        Ok(Pieces { bytes, offsets })
    }

    /// The piece of token `id`; `None` when `id` is outside the vocabulary.
    pub fn get(&self, id: u32) -> Option<&[u8]> {
        let id = id as usize;
        let start = *self.offsets.get(id)?;
        let end = *self.offsets.get(id + 1)?;
        self.bytes.get(start..end)
    }
}

/// `<0x0A>` → 0x0A: exactly two hex digits, as SentencePiece writes them.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_matches_gpt2() {
        let table = byte_to_char_table();
        // Known stand-ins: the space and newline of every GPT-2 merges file, the first and last
        // non-printable bytes, and printable bytes standing for themselves.
        assert_eq!(table[b' ' as usize], 'Ġ');
        assert_eq!(table[b'\n' as usize], 'Ċ');
        assert_eq!(table[b'\t' as usize], 'ĉ');
        assert_eq!(table[0x00], '\u{100}');
        assert_eq!(table[0x7F], '\u{121}');
        assert_eq!(table[0xA0], '\u{142}');
        assert_eq!(table[0xAD], '\u{143}');
        assert_eq!(table[b'A' as usize], 'A');
        assert_eq!(table[0xE9], 'é');
        for byte in 0..=255u8 {
            assert_eq!(char_to_byte(table[byte as usize]), Some(byte));
        }
        assert_eq!(char_to_byte(' '), None);
        assert_eq!(char_to_byte('\u{144}'), None);
    }

    #[test]
    fn byte_tokens_parse_exactly() {
        assert_eq!(parse_byte_token("<0x0A>"), Some(0x0A));
        assert_eq!(parse_byte_token("<0xFF>"), Some(0xFF));
        assert_eq!(parse_byte_token("<0xA>"), None);
        assert_eq!(parse_byte_token("<0x0A"), None);
        assert_eq!(parse_byte_token("0x0A"), None);
    }
}
