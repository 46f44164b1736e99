//! `GgufWriter`: builds a valid GGUF v3 (or v2) file from metadata and raw tensor bytes.
//!
//! Meant for tests (tiny random models, round trips of the reader), so it keeps everything in
//! memory. Entries are written in the order they were added. Inputs are validated as they are
//! added, with the same rules the reader enforces, so `to_bytes` cannot fail and its output
//! always parses. Tensor data is laid out in order, each tensor starting at the next multiple
//! of the alignment (`general.alignment` if added, else 32), and the file is zero-padded to a
//! multiple of the alignment at the end of the header and after every tensor.

use std::collections::HashSet;
use std::path::Path;

use super::{Array, GgufError, Value, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC, MAX_ARRAY_DEPTH, MAX_DIMS};
use crate::quant::GgmlType;

#[derive(Debug, Clone)]
pub struct GgufWriter {
    version: u32,
    metadata: Vec<(String, Value)>,
    keys: HashSet<String>,
    tensors: Vec<PendingTensor>,
    tensor_names: HashSet<String>,
}

#[derive(Debug, Clone)]
struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

fn invalid(what: impl Into<String>) -> GgufError {
    GgufError::InvalidWrite { what: what.into() }
}

impl GgufWriter {
    /// A writer for GGUF version 3.
    pub fn new() -> Self {
        Self {
            version: 3,
            metadata: Vec::new(),
            keys: HashSet::new(),
            tensors: Vec::new(),
            tensor_names: HashSet::new(),
        }
    }

    /// A writer for version 2 or 3 (the two share one layout).
    pub fn with_version(version: u32) -> Result<Self, GgufError> {
        if !matches!(version, 2 | 3) {
            return Err(invalid(format!("version {version} (only 2 and 3 can be written)")));
        }
        Ok(Self { version, ..Self::new() })
    }

    /// Adds a metadata entry. `general.alignment` must be a u32 power of two; it sets the
    /// alignment of the data section.
    pub fn add_metadata(&mut self, key: impl Into<String>, value: Value) -> Result<&mut Self, GgufError> {
        let key = key.into();
        if self.keys.contains(&key) {
            return Err(invalid(format!("duplicate metadata key `{key}`")));
        }
        if key == ALIGNMENT_KEY && !matches!(value, Value::U32(a) if a.is_power_of_two()) {
            return Err(invalid(format!("`{ALIGNMENT_KEY}` must be a u32 power of two, got {value:?}")));
        }
        if let Value::Array(array) = &value {
            let depth = array_depth(array);
            if depth > MAX_ARRAY_DEPTH {
                return Err(invalid(format!(
                    "metadata `{key}`: arrays nested {depth} deep (at most {MAX_ARRAY_DEPTH})"
                )));
            }
        }
        self.keys.insert(key.clone());
        self.metadata.push((key, value));
        Ok(self)
    }

    /// Adds a tensor of type `ty` with ggml-order `dims` (`dims[0]` is the row length), whose
    /// encoded bytes are `data`.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        ty: GgmlType,
        dims: &[u64],
        data: Vec<u8>,
    ) -> Result<&mut Self, GgufError> {
        let name = name.into();
        let in_tensor = |what: String| invalid(format!("tensor `{name}`: {what}"));
        if self.tensor_names.contains(&name) {
            return Err(invalid(format!("duplicate tensor name `{name}`")));
        }
        if dims.is_empty() || dims.len() > MAX_DIMS {
            return Err(in_tensor(format!("{} dimensions (expected 1 to {MAX_DIMS})", dims.len())));
        }
        if dims.contains(&0) {
            return Err(in_tensor(format!("dims {dims:?} contain a 0")));
        }
        let row_len = dims.first().copied().unwrap_or(1);
        if row_len % ty.block_elems() as u64 != 0 {
            return Err(in_tensor(format!(
                "row length {row_len} is not a multiple of the {ty} block size {}",
                ty.block_elems()
            )));
        }
        let expected_bytes = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .and_then(|n| ty.row_bytes(n))
            .ok_or_else(|| in_tensor(format!("size of dims {dims:?} overflows u64")))?;
        if expected_bytes != data.len() as u64 {
            return Err(in_tensor(format!("{ty} dims {dims:?} need {expected_bytes} bytes, got {}", data.len())));
        }
        self.tensor_names.insert(name.clone());
        self.tensors.push(PendingTensor { name, dims: dims.to_vec(), ty, data });
        Ok(self)
    }

    fn alignment(&self) -> usize {
        match self.metadata.iter().find(|(key, _)| key == ALIGNMENT_KEY) {
            Some((_, Value::U32(a))) => *a as usize,
            _ => DEFAULT_ALIGNMENT as usize,
        }
    }

    /// Serialises the file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let alignment = self.alignment();
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        put_u64(&mut out, self.tensors.len());
        put_u64(&mut out, self.metadata.len());
        for (key, value) in &self.metadata {
            put_string(&mut out, key);
            out.extend_from_slice(&(value.value_type() as u32).to_le_bytes());
            put_value(&mut out, value);
        }
        let mut offset = 0;
        for t in &self.tensors {
            put_string(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for &d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.id().to_le_bytes());
            put_u64(&mut out, offset);
            offset = (offset + t.data.len()).next_multiple_of(alignment);
        }
        out.resize(out.len().next_multiple_of(alignment), 0);
        for t in &self.tensors {
            out.extend_from_slice(&t.data);
            out.resize(out.len().next_multiple_of(alignment), 0);
        }
        out
    }

    /// Serialises the file to `path`, replacing any file there.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<(), GgufError> {
        let path = path.as_ref();
        std::fs::write(path, self.to_bytes()).map_err(|source| GgufError::WriteIo { path: path.to_path_buf(), source })
    }
}

/// Levels of arrays, counting the elements of an array of arrays as one level even when there
/// are none (the reader sees their type tag either way).
fn array_depth(array: &Array) -> usize {
    match array {
        Array::Array(children) => 1 + children.iter().map(array_depth).max().unwrap_or(1),
        _ => 1,
    }
}

fn put_u64(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u64).to_le_bytes());
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// A value's payload, without its type tag.
fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_string(out, s),
        Value::Array(a) => put_array(out, a),
    }
}

/// An array's element type tag, count and elements.
fn put_array(out: &mut Vec<u8>, array: &Array) {
    fn put_all<T, const N: usize>(out: &mut Vec<u8>, items: &[T], to_le: impl Fn(&T) -> [u8; N]) {
        for item in items {
            out.extend_from_slice(&to_le(item));
        }
    }
    out.extend_from_slice(&(array.element_value_type() as u32).to_le_bytes());
    put_u64(out, array.len());
    match array {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => put_all(out, v, |x| x.to_le_bytes()),
        Array::U16(v) => put_all(out, v, |x| x.to_le_bytes()),
        Array::I16(v) => put_all(out, v, |x| x.to_le_bytes()),
        Array::U32(v) => put_all(out, v, |x| x.to_le_bytes()),
        Array::I32(v) => put_all(out, v, |x| x.to_le_bytes()),
        Array::U64(v) => put_all(out, v, |x| x.to_le_bytes()),
        Array::I64(v) => put_all(out, v, |x| x.to_le_bytes()),
        Array::F32(v) => put_all(out, v, |x| x.to_le_bytes()),
        Array::F64(v) => put_all(out, v, |x| x.to_le_bytes()),
        Array::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        Array::String(v) => v.iter().for_each(|s| put_string(out, s)),
        Array::Array(v) => v.iter().for_each(|a| put_array(out, a)),
    }
}
