//! GGML tensor types: block layouts, dequantisation and fused dot products.
//!
//! A quantised row of `n` weights is `n / block_elems` blocks of `block_bytes` each, back to
//! back, with no padding. This module holds the type table ([`GgmlType`]); beside it:
//!
//! - [`block`]: one `#[repr(C)]` struct per block type, byte for byte ggml's layout, and the
//!   scalar per-block decode that everything else is checked against;
//! - [`dequantize`] / [`dequantize_to_bf16`]: whole tensors or rows to f32 / bf16 (the GPU path
//!   dequantises weights to bf16 at load);
//! - [`dot_row`], [`dot_rows`], [`dot_row_multi`]: fused decode + dot products for the CPU
//!   matmul, with AVX2 kernels picked at run time and a portable scalar fallback.
//!
//! Supported for computation: F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K. GGUF data is
//! little-endian and is read as such; the crate refuses to build on big-endian targets.

pub mod block;
mod dequant;
mod dot;
#[cfg(target_arch = "x86_64")]
mod dot_avx2;
#[cfg(target_arch = "x86_64")]
mod fused_avx2;
#[cfg(test)]
mod testing;

pub use dequant::{dequantize, dequantize_to_bf16};
pub use dot::{decode_fast, dot_row, dot_row_multi, dot_rows};

const _: () = assert!(
    cfg!(target_endian = "little"),
    "GGUF tensor data is little-endian; the block decoders read it in host order"
);

/// Tensor element types that may appear in a GGUF file (the ggml type ids).
///
/// Only some are supported for computation (`is_supported`); the others are named so that a
/// file using them gets a clear "unsupported tensor type Q2_K" error rather than "unknown type 10".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    BF16,
}

/// Elements per super-block of the k-quants.
pub const QK_K: usize = 256;

impl GgmlType {
    /// Maps a ggml type id to a type; `None` for ids this build does not know at all.
    pub fn from_id(id: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2K,
            11 => Q3K,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            15 => Q8K,
            30 => BF16,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        use GgmlType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2K => 10,
            Q3K => 11,
            Q4K => 12,
            Q5K => 13,
            Q6K => 14,
            Q8K => 15,
            BF16 => 30,
        }
    }

    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2K => "Q2_K",
            Q3K => "Q3_K",
            Q4K => "Q4_K",
            Q5K => "Q5_K",
            Q6K => "Q6_K",
            Q8K => "Q8_K",
            BF16 => "BF16",
        }
    }

    /// Elements per block.
    pub const fn block_elems(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 => 32,
            Q2K | Q3K | Q4K | Q5K | Q6K | Q8K => QK_K,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        use GgmlType::*;
        match self {
            F32 => 4,
            F16 | BF16 => 2,
            Q4_0 => 2 + 16,
            Q4_1 => 2 + 2 + 16,
            Q5_0 => 2 + 4 + 16,
            Q5_1 => 2 + 2 + 4 + 16,
            Q8_0 => 2 + 32,
            Q8_1 => 4 + 4 + 32,
            Q2K => QK_K / 16 + QK_K / 4 + 2 + 2,
            Q3K => QK_K / 8 + QK_K / 4 + 12 + 2,
            Q4K => 2 + 2 + 12 + QK_K / 2,
            Q5K => 2 + 2 + 12 + QK_K / 8 + QK_K / 2,
            Q6K => QK_K / 2 + QK_K / 4 + QK_K / 16 + 2,
            Q8K => 4 + QK_K + QK_K / 16 * 2,
        }
    }

    /// Whether this build can dequantise the type.
    pub fn is_supported(self) -> bool {
        Format::of(self).is_some()
    }

    /// Bytes for `n_elements` elements, or `None` if `n_elements` is not a whole number of
    /// blocks or the size overflows.
    pub fn row_bytes(self, n_elements: u64) -> Option<u64> {
        let be = self.block_elems() as u64;
        if !n_elements.is_multiple_of(be) {
            return None;
        }
        (n_elements / be).checked_mul(self.block_bytes() as u64)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a dequantisation or dot product was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuantError {
    #[error(
        "tensor type {ty} is not supported for dequantisation \
         (supported: F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K)"
    )]
    Unsupported { ty: GgmlType },
    #[error("{n_elements} elements of {ty} are not a whole number of {block_elems}-element blocks")]
    PartialBlock { ty: GgmlType, n_elements: usize, block_elems: usize },
    #[error("{n_elements} elements of {ty} take {expected_bytes} bytes, but {got_bytes} were given")]
    ByteCount { ty: GgmlType, n_elements: usize, expected_bytes: usize, got_bytes: usize },
    #[error("{what}: expected {expected} f32 values, got {got}")]
    Shape { what: &'static str, expected: usize, got: usize },
}

/// A tensor type this build can decode: [`GgmlType`] narrowed to the supported types, so that
/// every decoder dispatch is exhaustive and needs no "unsupported" arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl Format {
    pub(crate) fn of(ty: GgmlType) -> Option<Self> {
        Some(match ty {
            GgmlType::F32 => Format::F32,
            GgmlType::F16 => Format::F16,
            GgmlType::BF16 => Format::BF16,
            GgmlType::Q4_0 => Format::Q4_0,
            GgmlType::Q4_1 => Format::Q4_1,
            GgmlType::Q8_0 => Format::Q8_0,
            GgmlType::Q4K => Format::Q4K,
            GgmlType::Q5K => Format::Q5K,
            GgmlType::Q6K => Format::Q6K,
            GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_1 | GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q8K => {
                return None
            }
        })
    }

    pub(crate) fn ty(self) -> GgmlType {
        match self {
            Format::F32 => GgmlType::F32,
            Format::F16 => GgmlType::F16,
            Format::BF16 => GgmlType::BF16,
            Format::Q4_0 => GgmlType::Q4_0,
            Format::Q4_1 => GgmlType::Q4_1,
            Format::Q8_0 => GgmlType::Q8_0,
            Format::Q4K => GgmlType::Q4K,
            Format::Q5K => GgmlType::Q5K,
            Format::Q6K => GgmlType::Q6K,
        }
    }

    /// Bytes taken by `n_elements` elements, which must be a whole number of blocks.
    pub(crate) fn bytes_for(self, n_elements: usize) -> usize {
        let ty = self.ty();
        n_elements / ty.block_elems() * ty.block_bytes()
    }
}

/// Checks that `ty` can be decoded and `n_elements` is a whole number of its blocks.
pub(crate) fn check_elems(ty: GgmlType, n_elements: usize) -> Result<Format, QuantError> {
    let format = Format::of(ty).ok_or(QuantError::Unsupported { ty })?;
    let block_elems = ty.block_elems();
    if !n_elements.is_multiple_of(block_elems) {
        return Err(QuantError::PartialBlock { ty, n_elements, block_elems });
    }
    Ok(format)
}

/// Checks that `n_bytes` are exactly the bytes of `n_elements` (whole blocks) of `format`.
pub(crate) fn check_bytes(format: Format, n_elements: usize, n_bytes: usize) -> Result<(), QuantError> {
    let ty = format.ty();
    // Saturating: an overflowing size can only mismatch, which is the error reported.
    let expected_bytes = (n_elements / ty.block_elems()).saturating_mul(ty.block_bytes());
    if expected_bytes != n_bytes {
        return Err(QuantError::ByteCount { ty, n_elements, expected_bytes, got_bytes: n_bytes });
    }
    Ok(())
}

/// Both checks: `ty` is supported and `n_bytes` hold exactly `n_elements` elements of it.
pub(crate) fn check_len(ty: GgmlType, n_elements: usize, n_bytes: usize) -> Result<Format, QuantError> {
    let format = check_elems(ty, n_elements)?;
    check_bytes(format, n_elements, n_bytes)?;
    Ok(format)
}
