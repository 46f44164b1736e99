//! RoPE strategies (DESIGN.md §4.5): which position each query and key is rotated at, during
//! pruning and during block-sparse attention.
//!
//! Keys are stored un-rotated; these functions only compute positions, and the callers rotate
//! with [`crate::rope::rotate_into`] at them. All positions returned are at most
//! `max(p_last, n_window + 1)`, which is what the RoPE table must cover.

use std::ops::Range;

use super::config::{BsaRope, PruningRope};
use super::mask::Mask;

/// Which half of a descent step a probe key scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Half {
    Left,
    Right,
}

/// Where the pruning stage of one chunk grid places things.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruningPositions {
    pub strategy: PruningRope,
    pub n_sink: usize,
    pub n_window: usize,
    /// The stage's chunk size (its grid spacing).
    pub chunk_size: usize,
    /// Chunks in the stage's whole grid over `[n_sink, w)`: `ceil((w − n_sink) / chunk_size)`.
    pub n_chunks: usize,
}

impl PruningPositions {
    /// Position of a query whose true position is `p`.
    pub fn query(&self, p: usize) -> usize {
        match self.strategy {
            PruningRope::Relative => self.n_window + 1,
            PruningRope::ChunkIndexed => p.min(self.n_chunks + self.n_window),
            PruningRope::Plain => p,
        }
    }

    /// Position of the probe key at true position `key_pos`, scoring `half` of a chunk that
    /// starts at `chunk_start` (on the stage's grid).
    pub fn probe(&self, key_pos: usize, half: Half, chunk_start: usize) -> usize {
        match self.strategy {
            PruningRope::Relative => match half {
                Half::Left => 0,
                Half::Right => 1,
            },
            PruningRope::ChunkIndexed => (chunk_start - self.n_sink) / self.chunk_size,
            PruningRope::Plain => key_pos,
        }
    }
}

/// A run of consecutive keys `keys` whose first key is rotated at `rope_start` and the others
/// at the following positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpan {
    pub keys: Range<usize>,
    pub rope_start: usize,
}

/// The key spans block-sparse attention reads for head group `group` of `mask`, for queries
/// up to position `p_last`, in order: sink, selected blocks (ascending), window `[w, p_last]`.
/// Spans are written into `out` (cleared first) so that callers can reuse the vector.
pub fn bsa_key_spans(strategy: BsaRope, mask: &Mask, group: usize, p_last: usize, out: &mut Vec<KeySpan>) {
    out.clear();
    let w = mask.window_start();
    let sink = mask.sink_range();
    let n_selected = mask.selected_tokens(group);
    // Streaming: sink and selected tokens end exactly at w − 1 (see the module doc of `hip`).
    let mut next_rope = match strategy {
        BsaRope::Streaming => w - n_selected - sink.len(),
        BsaRope::Plain => 0,
    };
    let mut push = |keys: Range<usize>, out: &mut Vec<KeySpan>| {
        if keys.is_empty() {
            return;
        }
        let rope_start = match strategy {
            BsaRope::Streaming => next_rope,
            BsaRope::Plain => keys.start,
        };
        next_rope += keys.len();
        out.push(KeySpan { keys, rope_start });
    };
    push(sink, out);
    for &start in mask.blocks(group) {
        push(mask.block_range(start), out);
    }
    // The window keeps true positions under both strategies.
    if w <= p_last {
        out.push(KeySpan { keys: w..p_last + 1, rope_start: w });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_positions_follow_each_strategy() {
        let at = |strategy| PruningPositions { strategy, n_sink: 4, n_window: 16, chunk_size: 8, n_chunks: 5 };
        let rel = at(PruningRope::Relative);
        assert_eq!((rel.query(100), rel.probe(60, Half::Left, 52), rel.probe(61, Half::Right, 52)), (17, 0, 1));
        let ci = at(PruningRope::ChunkIndexed);
        // Chunk 6 of the grid n_sink + 8·j starts at 52; the query is capped at 5 + 16.
        assert_eq!((ci.query(100), ci.query(12), ci.probe(60, Half::Right, 52)), (21, 12, 6));
        let plain = at(PruningRope::Plain);
        assert_eq!((plain.query(100), plain.probe(60, Half::Left, 52)), (100, 60));
    }

    #[test]
    fn streaming_renumbers_sink_and_selection_just_before_the_window() {
        // n_sink 4, block_k 4, w = 40: blocks [8, 12) and [36, 40) (8 tokens), window [40, 45].
        let mask = Mask::new(4, 4, 40, vec![vec![8, 36]]).unwrap();
        let mut spans = Vec::new();
        bsa_key_spans(BsaRope::Streaming, &mask, 0, 45, &mut spans);
        let want = [
            KeySpan { keys: 0..4, rope_start: 28 },
            KeySpan { keys: 8..12, rope_start: 32 },
            KeySpan { keys: 36..40, rope_start: 36 },
            KeySpan { keys: 40..46, rope_start: 40 },
        ];
        assert_eq!(spans, want);
        bsa_key_spans(BsaRope::Plain, &mask, 0, 45, &mut spans);
        let starts: Vec<usize> = spans.iter().map(|s| s.rope_start).collect();
        assert_eq!(starts, [0, 8, 36, 40]);
    }

    #[test]
    fn a_block_clipped_at_the_window_counts_only_its_tokens() {
        // Grid from n_sink = 3 with block_k 4 and w = 13: block 11 holds only [11, 13).
        let mask = Mask::new(3, 4, 13, vec![vec![3, 11]]).unwrap();
        let mut spans = Vec::new();
        bsa_key_spans(BsaRope::Streaming, &mask, 0, 13, &mut spans);
        let want = [
            KeySpan { keys: 0..3, rope_start: 4 },
            KeySpan { keys: 3..7, rope_start: 7 },
            KeySpan { keys: 11..13, rope_start: 11 },
            KeySpan { keys: 13..14, rope_start: 13 },
        ];
        assert_eq!(spans, want);
    }

    #[test]
    fn a_short_context_has_a_clipped_sink_and_no_selection() {
        // w = 2 < n_sink = 4: the sink is [0, 2) and the window [2, 5]; streaming is the identity.
        let mask = Mask::new(4, 4, 2, vec![vec![]]).unwrap();
        let mut spans = Vec::new();
        bsa_key_spans(BsaRope::Streaming, &mask, 0, 5, &mut spans);
        assert_eq!(spans, [KeySpan { keys: 0..2, rope_start: 0 }, KeySpan { keys: 2..6, rope_start: 2 }]);
    }
}
