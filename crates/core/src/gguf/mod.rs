//! GGUF (v2 and v3) reader, and a writer for building test models.
//!
//! A GGUF file is, in order (all integers little-endian):
//!
//! ```text
//! magic "GGUF" | version u32 | tensor_count u64 | kv_count u64
//! kv_count × (key: string, value type u32, value)
//! tensor_count × (name: string, n_dims u32, dims u64 × n_dims, ggml type id u32, offset u64)
//! zero padding up to the next multiple of the alignment          ← data section starts here
//! tensor data, each tensor at `data section + offset`
//! ```
//!
//! A string is a u64 byte length and that many UTF-8 bytes; an array is an element type u32, a
//! u64 count and the elements (an element may itself be an array). The alignment is the u32
//! metadata key `general.alignment`, 32 when absent. Version 1 used u32 counts and is not
//! supported; versions 2 and 3 share the layout above (v3 only added big-endian files, which
//! we refuse).
//!
//! [`GgufHeader::parse`] reads and validates everything before the data section;
//! [`GgufFile`] adds the bytes (an mmap or an owned buffer) and hands out tensor data.
//! Every read is bounds-checked: a malformed or truncated file yields a [`GgufError`] that
//! names the byte offset and what was being read, never a panic or an out-of-bounds access.
//! [`writer::GgufWriter`] produces valid v2/v3 files from metadata and raw tensor bytes.

mod file;
mod reader;
mod tensor;
mod value;
pub mod writer;

#[cfg(test)]
mod tests;

pub use file::GgufFile;
pub use reader::GgufHeader;
pub use tensor::TensorInfo;
pub use value::{Array, Metadata, Value, ValueType};

use std::path::PathBuf;

use crate::quant::GgmlType;

/// The four bytes every GGUF file starts with.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// The alignment of the data section and of every tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u32 = 32;
/// The metadata key that overrides [`DEFAULT_ALIGNMENT`]; its value must be a u32 power of two.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// Deepest nesting of arrays inside arrays that we read or write. The format sets no limit;
/// real files never nest at all, and a cap keeps a hostile file from recursing us off the stack.
pub const MAX_ARRAY_DEPTH: usize = 16;

/// Errors from reading or writing a GGUF file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    #[error("cannot open {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    WriteIo { path: PathBuf, source: std::io::Error },
    #[error("not a GGUF file: bad magic {found:02x?} (expected \"GGUF\")")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported GGUF version {version} (supported: 2, 3)")]
    UnsupportedVersion { version: u32 },
    #[error("malformed GGUF at byte {offset}: {what}")]
    Malformed { offset: u64, what: String },
    #[error("metadata key `{key}` is missing")]
    MissingKey { key: String },
    #[error("metadata key `{key}` has type {found}, expected {expected}")]
    WrongType { key: String, expected: &'static str, found: &'static str },
    #[error("tensor `{name}` is missing")]
    MissingTensor { name: String },
    /// The file is well-formed but uses a tensor type this build cannot dequantise. Parsing
    /// accepts such files (so that they can be inspected); `TensorInfo::check_supported`
    /// refuses them.
    #[error("tensor `{name}` has type {ty}, which this build cannot dequantise")]
    UnsupportedTensorType { name: String, ty: GgmlType },
    /// The writer was asked to build something that would not be a valid GGUF file.
    #[error("cannot build GGUF: {what}")]
    InvalidWrite { what: String },
}

impl GgufError {
    /// Prefixes the description of a `Malformed` error with where it happened (a key, a tensor,
    /// an array element), so that nested reads produce "metadata `k`: element 3: …".
    fn within(self, context: impl std::fmt::Display) -> Self {
        match self {
            GgufError::Malformed { offset, what } => {
                GgufError::Malformed { offset, what: format!("{context}: {what}") }
            }
            other => other,
        }
    }
}
