//! Parsing and validation of everything before a GGUF file's data section.
//!
//! `GgufHeader::parse(prefix, file_len)` needs only the header bytes (the metadata and the tensor
//! table, plus any amount of what follows) and the length of the whole file, so a header can be
//! checked without the gigabytes after it. On success the header guarantees, for every tensor:
//! its `TensorInfo` invariants (see `tensor.rs`), an offset that is a multiple of the alignment,
//! data `[data_offset + offset, … + n_bytes)` inside the file, and no overlap with any other
//! tensor's data. Tensor names and metadata keys are unique.
//!
//! Allocation is proportional to the input: every count or length is checked against the bytes
//! that remain before anything is reserved for it, so a count of 2^60 costs nothing but an error.

use std::collections::{BTreeMap, HashMap};

use super::{
    Array, GgufError, Metadata, TensorInfo, Value, ValueType, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC, MAX_ARRAY_DEPTH,
    MAX_DIMS,
};
use crate::quant::GgmlType;

/// Smallest possible encoding of one metadata entry: an empty key (8), a type tag (4) and a
/// one-byte value.
const MIN_KV_BYTES: usize = 8 + 4 + 1;
/// Smallest possible encoding of one tensor info: an empty name (8), n_dims (4), one dim (8),
/// the type id (4) and the offset (8).
const MIN_TENSOR_INFO_BYTES: usize = 8 + 4 + 8 + 4 + 8;

/// The parsed, validated header of a GGUF file: version, metadata, tensor table and the layout
/// of the data section.
#[derive(Clone)]
pub struct GgufHeader {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    index_by_name: HashMap<String, usize>,
}

impl GgufHeader {
    /// Parses the header at the start of `prefix`, the first bytes of a file that is `file_len`
    /// bytes long in total (a `file_len` below `prefix.len()` is taken as `prefix.len()`).
    /// Tensor data is checked against `file_len`, not read.
    pub fn parse(prefix: &[u8], file_len: u64) -> Result<Self, GgufError> {
        let file_len = file_len.max(prefix.len() as u64);
        let mut cur = Cursor::new(prefix);

        let magic: [u8; 4] = cur.fixed("magic")?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic { found: magic });
        }
        let version = read_version(&mut cur)?;
        let tensor_count = cur.count("tensor count", MIN_TENSOR_INFO_BYTES)?;
        let kv_count = cur.count("metadata entry count", MIN_KV_BYTES)?;

        let (metadata, alignment_at) = read_metadata(&mut cur, kv_count)?;
        let alignment = read_alignment(&metadata, alignment_at)?;

        let mut tensors = Vec::with_capacity(tensor_count);
        let mut offset_fields = Vec::with_capacity(tensor_count);
        let mut index_by_name = HashMap::with_capacity(tensor_count);
        for i in 0..tensor_count {
            let info_at = cur.offset();
            let name = cur.string("tensor name").map_err(|e| e.within(format!("tensor #{i}")))?;
            if index_by_name.contains_key(&name) {
                return Err(malformed(info_at, format!("duplicate tensor name `{name}`")));
            }
            let (info, offset_at) = read_tensor_info(&mut cur, name)?;
            index_by_name.insert(info.name.clone(), i);
            tensors.push(info);
            offset_fields.push(offset_at);
        }

        let end_of_infos = cur.offset();
        let data_offset = end_of_infos
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| malformed(end_of_infos, format!("data section start overflows (alignment {alignment})")))?;
        check_tensor_layout(&tensors, &offset_fields, alignment, data_offset, file_len)?;

        Ok(Self { version, alignment, data_offset, metadata, tensors, index_by_name })
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The tensor table, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.index_by_name
            .get(name)
            .and_then(|&i| self.tensors.get(i))
            .ok_or_else(|| GgufError::MissingTensor { name: name.to_string() })
    }

    /// Alignment of the data section and of every tensor offset, in bytes (a power of two).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset where the data section (tensor offset 0) starts.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }
}

/// A summary: the metadata of a real model holds vocabularies of ~50k strings.
impl std::fmt::Debug for GgufHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufHeader")
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("metadata_entries", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

fn malformed(offset: u64, what: impl Into<String>) -> GgufError {
    GgufError::Malformed { offset, what: what.into() }
}

fn read_version(cur: &mut Cursor<'_>) -> Result<u32, GgufError> {
    let at = cur.offset();
    let version = cur.u32("version")?;
    match version {
        2 | 3 => Ok(version),
        // A big-endian file (allowed since v3) keeps the magic as bytes but stores the version
        // byte-swapped; say so rather than report "version 50331648".
        _ if matches!(version.swap_bytes(), 2 | 3) => Err(malformed(
            at,
            format!("big-endian GGUF (version {} byte-swapped) is not supported", version.swap_bytes()),
        )),
        _ => Err(GgufError::UnsupportedVersion { version }),
    }
}

/// Reads `kv_count` metadata entries. Also returns where the `general.alignment` value sits,
/// so that a bad alignment can be reported at its own offset.
fn read_metadata(cur: &mut Cursor<'_>, kv_count: usize) -> Result<(Metadata, u64), GgufError> {
    let mut entries = BTreeMap::new();
    let mut alignment_at = 0;
    for i in 0..kv_count {
        let key_at = cur.offset();
        let key = cur.string("metadata key").map_err(|e| e.within(format!("metadata entry #{i}")))?;
        if entries.contains_key(&key) {
            return Err(malformed(key_at, format!("duplicate metadata key `{key}`")));
        }
        let value_at = cur.offset();
        let value = read_tagged_value(cur).map_err(|e| e.within(format!("metadata `{key}`")))?;
        if key == ALIGNMENT_KEY {
            alignment_at = value_at;
        }
        entries.insert(key, value);
    }
    Ok((Metadata::new(entries), alignment_at))
}

fn read_alignment(metadata: &Metadata, alignment_at: u64) -> Result<u64, GgufError> {
    match metadata.get(ALIGNMENT_KEY) {
        None => Ok(DEFAULT_ALIGNMENT.into()),
        Some(Value::U32(a)) if a.is_power_of_two() => Ok((*a).into()),
        Some(Value::U32(a)) => {
            Err(malformed(alignment_at, format!("`{ALIGNMENT_KEY}` is {a}, which is not a non-zero power of two")))
        }
        Some(other) => {
            Err(malformed(alignment_at, format!("`{ALIGNMENT_KEY}` has type {}, expected u32", other.type_name())))
        }
    }
}

fn read_value_type(cur: &mut Cursor<'_>, what: &str) -> Result<ValueType, GgufError> {
    let at = cur.offset();
    let tag = cur.u32(what)?;
    ValueType::from_u32(tag).ok_or_else(|| malformed(at, format!("unknown {what} {tag} (known tags are 0 to 12)")))
}

/// A value preceded by its type tag, as in a metadata entry.
fn read_tagged_value(cur: &mut Cursor<'_>) -> Result<Value, GgufError> {
    Ok(match read_value_type(cur, "value type")? {
        ValueType::U8 => Value::U8(cur.u8("u8 value")?),
        ValueType::I8 => Value::I8(cur.i8("i8 value")?),
        ValueType::U16 => Value::U16(cur.u16("u16 value")?),
        ValueType::I16 => Value::I16(cur.i16("i16 value")?),
        ValueType::U32 => Value::U32(cur.u32("u32 value")?),
        ValueType::I32 => Value::I32(cur.i32("i32 value")?),
        ValueType::U64 => Value::U64(cur.u64("u64 value")?),
        ValueType::I64 => Value::I64(cur.i64("i64 value")?),
        ValueType::F32 => Value::F32(cur.f32("f32 value")?),
        ValueType::F64 => Value::F64(cur.f64("f64 value")?),
        ValueType::Bool => Value::Bool(cur.bool("bool value")?),
        ValueType::String => Value::String(cur.string("string value")?),
        ValueType::Array => Value::Array(read_array(cur, 1)?),
    })
}

/// An array (element type, count, elements) at nesting level `depth` (1 for a metadata value).
fn read_array(cur: &mut Cursor<'_>, depth: usize) -> Result<Array, GgufError> {
    let type_at = cur.offset();
    let element_type = read_value_type(cur, "array element type")?;
    let count = cur.count("array length", min_encoded_bytes(element_type))?;
    Ok(match element_type {
        ValueType::U8 => Array::U8(read_elements(cur, count, |c| c.u8("u8 element"))?),
        ValueType::I8 => Array::I8(read_elements(cur, count, |c| c.i8("i8 element"))?),
        ValueType::U16 => Array::U16(read_elements(cur, count, |c| c.u16("u16 element"))?),
        ValueType::I16 => Array::I16(read_elements(cur, count, |c| c.i16("i16 element"))?),
        ValueType::U32 => Array::U32(read_elements(cur, count, |c| c.u32("u32 element"))?),
        ValueType::I32 => Array::I32(read_elements(cur, count, |c| c.i32("i32 element"))?),
        ValueType::U64 => Array::U64(read_elements(cur, count, |c| c.u64("u64 element"))?),
        ValueType::I64 => Array::I64(read_elements(cur, count, |c| c.i64("i64 element"))?),
        ValueType::F32 => Array::F32(read_elements(cur, count, |c| c.f32("f32 element"))?),
        ValueType::F64 => Array::F64(read_elements(cur, count, |c| c.f64("f64 element"))?),
        ValueType::Bool => Array::Bool(read_elements(cur, count, |c| c.bool("bool element"))?),
        ValueType::String => Array::String(read_elements(cur, count, |c| c.string("string element"))?),
        ValueType::Array if depth >= MAX_ARRAY_DEPTH => {
            return Err(malformed(type_at, format!("arrays nested more than {MAX_ARRAY_DEPTH} deep")));
        }
        ValueType::Array => Array::Array(read_elements(cur, count, |c| read_array(c, depth + 1))?),
    })
}

/// Reads `count` elements (already checked to fit in the remaining bytes); an error names the
/// element's index.
fn read_elements<'a, T>(
    cur: &mut Cursor<'a>,
    count: usize,
    mut read_one: impl FnMut(&mut Cursor<'a>) -> Result<T, GgufError>,
) -> Result<Vec<T>, GgufError> {
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        out.push(read_one(cur).map_err(|e| e.within(format!("element {i}")))?);
    }
    Ok(out)
}

/// The fewest bytes one value of this type can take in the file (a string's or an array's
/// header alone), used to bound counts before allocating.
fn min_encoded_bytes(ty: ValueType) -> usize {
    match ty {
        ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
        ValueType::U16 | ValueType::I16 => 2,
        ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
        ValueType::U64 | ValueType::I64 | ValueType::F64 | ValueType::String => 8,
        ValueType::Array => 4 + 8,
    }
}

/// Reads the rest of a tensor info after its name. Returns the info and the file offset of
/// its `offset` field, where layout errors are reported.
fn read_tensor_info(cur: &mut Cursor<'_>, name: String) -> Result<(TensorInfo, u64), GgufError> {
    let in_tensor = |e: GgufError| e.within(format!("tensor `{name}`"));
    let dims_at = cur.offset();
    let n_dims = cur.u32("dimension count").map_err(in_tensor)?;
    if n_dims == 0 || n_dims as usize > MAX_DIMS {
        return Err(in_tensor(malformed(dims_at, format!("{n_dims} dimensions (expected 1 to {MAX_DIMS})"))));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for axis in 0..n_dims {
        let at = cur.offset();
        let dim = cur.u64("dimension").map_err(in_tensor)?;
        if dim == 0 {
            return Err(in_tensor(malformed(at, format!("dimension {axis} is 0"))));
        }
        dims.push(dim);
    }

    let type_at = cur.offset();
    let type_id = cur.u32("type id").map_err(in_tensor)?;
    let ty = GgmlType::from_id(type_id)
        .ok_or_else(|| in_tensor(malformed(type_at, format!("unknown ggml type id {type_id}"))))?;
    let offset_at = cur.offset();
    let offset = cur.u64("data offset").map_err(in_tensor)?;

    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| in_tensor(malformed(dims_at, format!("element count of dims {dims:?} overflows u64"))))?;
    let row_len = dims.first().copied().unwrap_or(1);
    let block = ty.block_elems() as u64;
    if row_len % block != 0 {
        return Err(in_tensor(malformed(
            dims_at,
            format!("row length {row_len} is not a multiple of the {ty} block size {block}"),
        )));
    }
    let n_bytes = ty
        .row_bytes(n_elements)
        .ok_or_else(|| in_tensor(malformed(dims_at, format!("{ty} size of {n_elements} elements overflows u64"))))?;

    Ok((TensorInfo { name, dims, ty, offset, n_elements, n_bytes }, offset_at))
}

/// Checks alignment, bounds and disjointness of the tensors' data. `offset_fields[i]` is where
/// tensor `i`'s offset is written, the position reported in errors.
fn check_tensor_layout(
    tensors: &[TensorInfo],
    offset_fields: &[u64],
    alignment: u64,
    data_offset: u64,
    file_len: u64,
) -> Result<(), GgufError> {
    // u128 holds data_offset + offset + n_bytes for any u64 inputs, so no check can overflow.
    let start = |t: &TensorInfo| u128::from(data_offset) + u128::from(t.offset);
    for (t, &at) in tensors.iter().zip(offset_fields) {
        if t.offset % alignment != 0 {
            return Err(malformed(
                at,
                format!("tensor `{}`: data offset {} is not a multiple of the alignment {alignment}", t.name, t.offset),
            ));
        }
        if start(t) + u128::from(t.n_bytes) > u128::from(file_len) {
            return Err(malformed(
                at,
                format!(
                    "tensor `{}`: data [offset {}, {}+{}) runs past the end of the file \
                     ({file_len} bytes)",
                    t.name,
                    start(t),
                    start(t),
                    t.n_bytes
                ),
            ));
        }
    }

    let mut by_offset: Vec<(&TensorInfo, u64)> = tensors.iter().zip(offset_fields.iter().copied()).collect();
    by_offset.sort_by_key(|(t, _)| t.offset);
    for pair in by_offset.windows(2) {
        if let [(a, _), (b, b_at)] = *pair {
            if u128::from(a.offset) + u128::from(a.n_bytes) > u128::from(b.offset) {
                return Err(malformed(
                    b_at,
                    format!(
                        "tensors `{}` [{}, {}+{}) and `{}` [{}, {}+{}) overlap",
                        a.name, a.offset, a.offset, a.n_bytes, b.name, b.offset, b.offset, b.n_bytes
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A bounds-checked little-endian reader over a byte slice.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    fn offset(&self) -> u64 {
        self.pos as u64
    }

    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    fn truncated(&self, needed: u64, what: &str) -> GgufError {
        malformed(self.offset(), format!("truncated: {what} needs {needed} bytes, only {} remain", self.remaining()))
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], GgufError> {
        match self.bytes.get(self.pos..).and_then(|rest| rest.get(..n)) {
            Some(bytes) => {
                self.pos += n;
                Ok(bytes)
            }
            None => Err(self.truncated(n as u64, what)),
        }
    }

    fn fixed<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        match self.bytes.get(self.pos..).and_then(<[u8]>::first_chunk::<N>) {
            Some(bytes) => {
                self.pos += N;
                Ok(*bytes)
            }
            None => Err(self.truncated(N as u64, what)),
        }
    }

    fn u8(&mut self, what: &str) -> Result<u8, GgufError> {
        self.fixed(what).map(u8::from_le_bytes)
    }

    fn i8(&mut self, what: &str) -> Result<i8, GgufError> {
        self.fixed(what).map(i8::from_le_bytes)
    }

    fn u16(&mut self, what: &str) -> Result<u16, GgufError> {
        self.fixed(what).map(u16::from_le_bytes)
    }

    fn i16(&mut self, what: &str) -> Result<i16, GgufError> {
        self.fixed(what).map(i16::from_le_bytes)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        self.fixed(what).map(u32::from_le_bytes)
    }

    fn i32(&mut self, what: &str) -> Result<i32, GgufError> {
        self.fixed(what).map(i32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        self.fixed(what).map(u64::from_le_bytes)
    }

    fn i64(&mut self, what: &str) -> Result<i64, GgufError> {
        self.fixed(what).map(i64::from_le_bytes)
    }

    fn f32(&mut self, what: &str) -> Result<f32, GgufError> {
        self.fixed(what).map(f32::from_le_bytes)
    }

    fn f64(&mut self, what: &str) -> Result<f64, GgufError> {
        self.fixed(what).map(f64::from_le_bytes)
    }

    /// A bool is one byte that must be 0 or 1; anything else is more likely corruption than
    /// intent.
    fn bool(&mut self, what: &str) -> Result<bool, GgufError> {
        let at = self.offset();
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(malformed(at, format!("{what} is {other}, expected 0 or 1"))),
        }
    }

    /// A u64 count of items that take at least `min_item_bytes` (≥ 1) each. Fails unless that
    /// many items could fit in the remaining bytes, so the count is safe to allocate for.
    fn count(&mut self, what: &str, min_item_bytes: usize) -> Result<usize, GgufError> {
        let at = self.offset();
        let count = self.u64(what)?;
        let remaining = self.remaining();
        match count.checked_mul(min_item_bytes as u64) {
            // `count ≤ remaining`, so it fits in usize.
            Some(needed) if needed <= remaining as u64 => Ok(count as usize),
            _ => Err(malformed(
                at,
                format!(
                    "{what} {count} needs at least {count}×{min_item_bytes} bytes, \
                     only {remaining} remain"
                ),
            )),
        }
    }

    /// A u64 byte length and that many bytes of UTF-8.
    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len_at = self.offset();
        let len = self.u64(what)?;
        let remaining = self.remaining();
        let len = match usize::try_from(len) {
            Ok(len) if len <= remaining => len,
            _ => {
                return Err(malformed(len_at, format!("{what} length {len} exceeds the {remaining} bytes that remain")))
            }
        };
        let bytes_at = self.offset();
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => {
                Err(malformed(bytes_at, format!("{what} is not valid UTF-8 (bad byte at index {})", e.valid_up_to())))
            }
        }
    }
}
