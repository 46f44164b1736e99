//! Incremental decoding: one token id in, the newly completed text out.
//!
//! Byte-level BPE and byte fallback split multi-byte characters (emoji, CJK) across tokens, so a
//! token may end inside a character. The stream keeps such an incomplete tail (at most 3 bytes)
//! until a later token completes it. Invariant: the concatenation of everything `step` and
//! `flush` return equals `Tokenizer::decode` of the same ids, and a chunk never contains U+FFFD
//! unless the byte sequence is truly invalid (then it is replaced exactly as `decode` does).

use super::{Tokenizer, TokenizerError};

/// Created by [`Tokenizer::decode_stream`].
pub struct DecodeStream<'t> {
    tokenizer: &'t Tokenizer,
    skip_special: bool,
    /// Bytes decoded but not yet returned: an incomplete UTF-8 sequence.
    pending: Vec<u8>,
    /// No token has been emitted yet (SentencePiece drops the first token's prefix space).
    at_start: bool,
}

impl<'t> DecodeStream<'t> {
    pub(crate) fn new(tokenizer: &'t Tokenizer, skip_special: bool) -> Self {
        DecodeStream { tokenizer, skip_special, pending: Vec::new(), at_start: true }
    }

    /// Adds one token; returns the text it completed, or `None` if nothing is complete yet.
    pub fn step(&mut self, id: u32) -> Result<Option<String>, TokenizerError> {
        self.tokenizer.append_piece(id, self.skip_special, &mut self.at_start, &mut self.pending)?;
        let text = take_complete_utf8(&mut self.pending);
        Ok((!text.is_empty()).then_some(text))
    }

    /// Ends the stream: returns what is still held back (an unfinished character becomes
    /// U+FFFD, as in `decode`).
    pub fn flush(&mut self) -> Option<String> {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        (!text.is_empty()).then_some(text)
    }
}

/// Removes and returns the longest prefix of `buf` that can be decoded now. Invalid sequences
/// become U+FFFD exactly as `String::from_utf8_lossy` replaces them; a sequence at the very end
/// that is merely incomplete stays in `buf`, since the next bytes may complete it.
pub(crate) fn take_complete_utf8(buf: &mut Vec<u8>) -> String {
    let mut text = String::with_capacity(buf.len());
    let mut consumed = 0;
    for chunk in buf.utf8_chunks() {
        text.push_str(chunk.valid());
        consumed += chunk.valid().len();
        let invalid = chunk.invalid();
        if invalid.is_empty() {
            continue;
        }
        let at_end = consumed + invalid.len() == buf.len();
        let incomplete = matches!(std::str::from_utf8(invalid), Err(e) if e.error_len().is_none());
        if at_end && incomplete {
            break;
        }
        text.push(char::REPLACEMENT_CHARACTER);
        consumed += invalid.len();
    }
    buf.drain(..consumed);
    text
}

#[cfg(test)]
mod tests {
    use super::take_complete_utf8;

    #[test]
    fn holds_back_only_an_incomplete_tail() {
        // "é" is C3 A9; "🚀" is F0 9F 9A 80.
        let mut buf = vec![b'a', 0xC3];
        assert_eq!(take_complete_utf8(&mut buf), "a");
        assert_eq!(buf, [0xC3]);
        buf.push(0xA9);
        assert_eq!(take_complete_utf8(&mut buf), "é");
        assert!(buf.is_empty());

        buf.extend_from_slice(&[0xF0, 0x9F, 0x9A]);
        assert_eq!(take_complete_utf8(&mut buf), "");
        assert_eq!(buf.len(), 3);
        buf.push(0x80);
        assert_eq!(take_complete_utf8(&mut buf), "🚀");

        // A lone continuation byte or 0xFF can never become valid: replaced at once.
        let mut buf = vec![0x80, b'x', 0xFF];
        assert_eq!(take_complete_utf8(&mut buf), "\u{FFFD}x\u{FFFD}");
        assert!(buf.is_empty());

        // An incomplete sequence followed by more bytes is invalid, not incomplete.
        let mut buf = vec![0xE6, b'A'];
        assert_eq!(take_complete_utf8(&mut buf), "\u{FFFD}A");
    }
}
