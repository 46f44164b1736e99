//! GGUF (v2 and v3) reader: header, metadata, tensor infos and mmap'd tensor data.
//!
//! Every read is bounds-checked: a malformed or truncated file yields a `GgufError` that names
//! the byte offset and what was being read, never a panic or an out-of-bounds access.

mod value;

pub use value::{Array, Metadata, Value, ValueType};

use std::path::PathBuf;

/// Errors from reading a GGUF file or its metadata.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    #[error("cannot open {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
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
}
