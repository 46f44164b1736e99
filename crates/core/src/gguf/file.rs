//! `GgufFile`: a validated GGUF header together with the file's bytes (mmap'd or owned).
//!
//! Opening parses and validates the whole header (see `reader.rs`), so afterwards every
//! tensor's data is known to lie inside the bytes. `tensor_data` hands out those bytes without
//! copying: with `open` they are page-cache pages of the mapped file, aligned in memory to the
//! file's alignment (the map starts on a page boundary); with `from_bytes` they live in a
//! `Vec<u8>` and carry no alignment promise.
//!
//! Unsupported tensor types (known to ggml but not dequantised by this build, e.g. Q2_K) are
//! accepted when parsing, so that such files can still be inspected and their bytes copied;
//! a loader calls `TensorInfo::check_supported` before dequantising, which names the tensor and
//! its type.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::{GgufError, GgufHeader, Metadata, TensorInfo};

pub struct GgufFile {
    bytes: Bytes,
    header: GgufHeader,
    /// Where the file was opened from; `None` for an in-memory buffer.
    path: Option<PathBuf>,
}

enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(map) => map,
            Bytes::Owned(vec) => vec,
        }
    }
}

impl GgufFile {
    /// Maps the file read-only and parses its header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let io_error = |source| GgufError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io_error)?;
        // SAFETY: the map is read-only and we never write through it. If another process
        // truncates or rewrites the file while it is mapped, reads may see the new bytes or fault;
        // that is the accepted contract for mmap'd model files, and the price of not copying
        // gigabytes of weights.
        let map = unsafe { Mmap::map(&file) }.map_err(io_error)?;
        let header = GgufHeader::parse(&map, map.len() as u64)?;
        Ok(Self { bytes: Bytes::Mapped(map), header, path: Some(path.to_path_buf()) })
    }

    /// Parses a whole GGUF file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, GgufError> {
        let header = GgufHeader::parse(&bytes, bytes.len() as u64)?;
        Ok(Self { bytes: Bytes::Owned(bytes), header, path: None })
    }

    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn version(&self) -> u32 {
        self.header.version()
    }

    pub fn metadata(&self) -> &Metadata {
        self.header.metadata()
    }

    /// The tensor table, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        self.header.tensors()
    }

    pub fn tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.header.tensor(name)
    }

    /// Alignment of the data section and of every tensor offset, in bytes (a power of two).
    pub fn alignment(&self) -> u64 {
        self.header.alignment()
    }

    /// Absolute file offset where the data section (tensor offset 0) starts.
    pub fn data_offset(&self) -> u64 {
        self.header.data_offset()
    }

    /// The raw bytes of a tensor of this file: exactly `info.n_bytes` bytes, whatever its type
    /// (check `info.check_supported()` before dequantising).
    ///
    /// # Panics
    /// If `info` is not one of this file's own tensor infos (from `tensors()` or `tensor()`):
    /// that is a bug in the caller, not a property of the file.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let own = self.header.tensor(&info.name).ok().filter(|own| *own == info);
        // The header checked every tensor's range against the file length at parse time.
        match own.and_then(|own| self.data_range(own)).and_then(|range| self.bytes.as_slice().get(range)) {
            Some(bytes) => bytes,
            None => panic!("tensor `{}` ({:?}) is not a tensor of this GGUF file", info.name, info),
        }
    }

    /// Absolute byte range of a tensor's data, if it is representable.
    fn data_range(&self, info: &TensorInfo) -> Option<Range<usize>> {
        let start = self.header.data_offset().checked_add(info.offset)?;
        let end = start.checked_add(info.n_bytes)?;
        Some(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
    }
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("len", &self.bytes.as_slice().len())
            .field("header", &self.header)
            .finish()
    }
}
