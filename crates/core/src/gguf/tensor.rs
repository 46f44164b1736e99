//! `TensorInfo`: one entry of a GGUF tensor table.
//!
//! Dimensions are in ggml order: `dims[0]` is the row length (the contiguous axis), and the
//! remaining dims count rows, so a PyTorch `[out, in]` weight is stored as `dims = [in, out]`.
//! A parsed `TensorInfo` satisfies: 1 ≤ dims.len() ≤ 4, every dim ≥ 1, `n_elements` is their
//! product, `dims[0]` is a whole number of `ty` blocks, and `n_bytes` is the size of the data.

use super::GgufError;
use crate::quant::GgmlType;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the row length.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Start of the data, relative to the data section; a multiple of the file's alignment.
    pub offset: u64,
    pub n_elements: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Elements per row (`dims[0]`).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows: the product of `dims[1..]` (1 for a vector).
    pub fn rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }

    /// Fails with `UnsupportedTensorType` (naming the tensor and its type) unless this build can
    /// dequantise the tensor. Parsing accepts every known type so that files can be inspected;
    /// loaders call this before using the data.
    pub fn check_supported(&self) -> Result<(), GgufError> {
        if self.ty.is_supported() {
            Ok(())
        } else {
            Err(GgufError::UnsupportedTensorType { name: self.name.clone(), ty: self.ty })
        }
    }
}
