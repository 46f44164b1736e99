//! Token ids → text for streaming output: incremental UTF-8-safe decoding plus stop strings.
//!
//! Used by every front end (CLI, server) so that a multi-byte character split across tokens
//! and a stop string split across tokens behave the same everywhere.

use infinihip_core::sampling::StopMatcher;
use infinihip_core::tokenizer::{DecodeStream, Tokenizer, TokenizerError};

/// Text produced by one token.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TextDelta {
    /// Text safe to show now.
    pub text: String,
    /// A stop string matched; generation should end (the stop string is not in `text`).
    pub stopped: bool,
}

pub struct TextStreamer<'t> {
    decode: DecodeStream<'t>,
    stops: StopMatcher,
}

impl<'t> TextStreamer<'t> {
    /// Special tokens (end of turn and the like) are never shown.
    pub fn new(tokenizer: &'t Tokenizer, stop_strings: &[String]) -> Self {
        Self { decode: tokenizer.decode_stream(true), stops: StopMatcher::new(stop_strings.iter().cloned()) }
    }

    /// Adds one generated token.
    pub fn push(&mut self, id: u32) -> Result<TextDelta, TokenizerError> {
        match self.decode.step(id)? {
            Some(chunk) => {
                let scan = self.stops.feed(&chunk);
                Ok(TextDelta { text: scan.emit, stopped: scan.stopped })
            }
            None => Ok(TextDelta::default()),
        }
    }

    /// Ends the stream and returns whatever text was held back.
    pub fn finish(&mut self) -> String {
        if self.stops.is_stopped() {
            return String::new();
        }
        let mut tail = String::new();
        if let Some(rest) = self.decode.flush() {
            let scan = self.stops.feed(&rest);
            tail.push_str(&scan.emit);
            if scan.stopped {
                return tail;
            }
        }
        tail.push_str(&self.stops.finish());
        tail
    }
}
