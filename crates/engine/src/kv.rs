//! The paged KV cache: page allocation and per-sequence page tables (DESIGN.md §5).
//!
//! A page holds `page_size` consecutive token positions of one sequence, for every layer. Keys
//! are stored **un-rotated**: attention applies RoPE with positions of its own choosing, which
//! is what HiP's RoPE strategies and context extension need.
//!
//! This module only hands out page ids; where the bytes live (host memory, GPU memory) is the
//! backend's `KvStore`. Page ids never move while a sequence holds them, so page tables are
//! append-only.

use crate::hip_state::{AttentionMode, HipSeqState};

/// Index of a page in the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PageId(pub u32);

/// Shape of the cache, shared by the pool and the backend stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Tokens per page.
    pub page_size: usize,
}

impl KvLayout {
    /// f32 values of K (or of V) for one layer of one page: `[page_size][Hkv][d]`.
    pub fn layer_page_elems(&self) -> usize {
        self.page_size * self.n_kv_heads * self.head_dim
    }

    /// f32 values of one page over all layers, K and V.
    pub fn page_elems(&self) -> usize {
        2 * self.n_layers * self.layer_page_elems()
    }

    /// Values per token of one layer's K (or V) row: `Hkv · d`.
    pub fn token_elems(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KvError {
    #[error("KV cache is full: {needed} more pages needed, {free} free of {capacity}")]
    OutOfPages { needed: usize, free: usize, capacity: usize },
}

/// The page table of one sequence: its pages in position order, how many positions are
/// filled, and, for a HiP sequence, its mask caches (which describe what is in the pages).
#[derive(Debug, Default)]
pub struct SeqKv {
    pages: Vec<PageId>,
    len: usize,
    hip: Option<HipSeqState>,
}

impl SeqKv {
    /// A dense-attention sequence.
    pub fn new() -> Self {
        Self::default()
    }

    /// A sequence that attends as `mode` says, in a model of `n_layers` layers.
    pub fn with_attention(mode: &AttentionMode, n_layers: usize) -> Self {
        let hip = match mode {
            AttentionMode::Dense => None,
            AttentionMode::Hip(config) => Some(HipSeqState::new(config.clone(), n_layers)),
        };
        Self { hip, ..Self::default() }
    }

    /// The HiP state, for a HiP sequence.
    pub fn hip_mut(&mut self) -> Option<&mut HipSeqState> {
        self.hip.as_mut()
    }

    /// Positions whose K and V are stored.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn pages(&self) -> &[PageId] {
        &self.pages
    }

    /// Marks `n` more positions as filled; the pages must already be reserved.
    pub fn advance(&mut self, n: usize, page_size: usize) {
        debug_assert!(self.len + n <= self.pages.len() * page_size, "advance past reserved pages");
        self.len += n;
    }

    /// Forgets positions from `len` on (the pages stay reserved). Cached HiP masks are dropped
    /// when anything is forgotten.
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            if let Some(hip) = &mut self.hip {
                hip.reset();
            }
        }
        self.len = self.len.min(len);
    }
}

/// Allocator of page ids, with a fixed capacity.
#[derive(Debug)]
pub struct PagePool {
    layout: KvLayout,
    capacity: usize,
    /// Never-used ids are handed out in order; freed ids are reused first (LIFO, so recently
    /// touched memory is reused while it is warm).
    next_fresh: usize,
    free: Vec<PageId>,
}

impl PagePool {
    pub fn new(layout: KvLayout, capacity_pages: usize) -> Self {
        Self { layout, capacity: capacity_pages, next_fresh: 0, free: Vec::new() }
    }

    pub fn layout(&self) -> KvLayout {
        self.layout
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn free_pages(&self) -> usize {
        self.free.len() + (self.capacity - self.next_fresh)
    }

    pub fn used_pages(&self) -> usize {
        self.capacity - self.free_pages()
    }

    /// Pages a sequence needs to hold `len` positions.
    pub fn pages_for(&self, len: usize) -> usize {
        len.div_ceil(self.layout.page_size)
    }

    /// Reserves pages so that `seq` can hold `new_len` positions. All or nothing: on error the
    /// sequence and the pool are unchanged.
    pub fn reserve(&mut self, seq: &mut SeqKv, new_len: usize) -> Result<(), KvError> {
        let needed = self.pages_for(new_len).saturating_sub(seq.pages.len());
        if needed > self.free_pages() {
            return Err(KvError::OutOfPages { needed, free: self.free_pages(), capacity: self.capacity });
        }
        for _ in 0..needed {
            let id = match self.free.pop() {
                Some(id) => id,
                None => {
                    let id = PageId(self.next_fresh as u32);
                    self.next_fresh += 1;
                    id
                }
            };
            seq.pages.push(id);
        }
        Ok(())
    }

    /// Returns all pages of `seq` to the pool and empties it.
    pub fn release(&mut self, seq: &mut SeqKv) {
        self.free.extend(seq.pages.drain(..).rev());
        seq.truncate(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> KvLayout {
        KvLayout { n_layers: 2, n_kv_heads: 3, head_dim: 4, page_size: 16 }
    }

    #[test]
    fn sizes() {
        let l = layout();
        assert_eq!(l.layer_page_elems(), 16 * 12);
        assert_eq!(l.page_elems(), 2 * 2 * 16 * 12);
    }

    #[test]
    fn reserve_grow_and_release() {
        let mut pool = PagePool::new(layout(), 4);
        let mut a = SeqKv::new();
        pool.reserve(&mut a, 17).expect("fits");
        assert_eq!(a.pages(), &[PageId(0), PageId(1)]);
        pool.reserve(&mut a, 32).expect("no new page needed");
        assert_eq!(a.pages().len(), 2);
        let mut b = SeqKv::new();
        pool.reserve(&mut b, 20).expect("fits");
        assert_eq!(pool.free_pages(), 0);
        let err = pool.reserve(&mut a, 33).unwrap_err();
        assert_eq!(err, KvError::OutOfPages { needed: 1, free: 0, capacity: 4 });
        assert_eq!(a.pages().len(), 2, "a failed reservation changes nothing");
        pool.release(&mut b);
        assert_eq!(pool.free_pages(), 2);
        pool.reserve(&mut a, 33).expect("fits after release");
        assert_eq!(pool.used_pages(), 3);
        // Page ids are never shared between live sequences.
        let mut c = SeqKv::new();
        pool.reserve(&mut c, 16).expect("fits");
        let mut all: Vec<_> = a.pages().iter().chain(c.pages()).copied().collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 4);
    }
}
