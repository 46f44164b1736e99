//! Unit tests of the reader and writer: a file assembled byte by byte from the format spec,
//! round trips of every value and tensor type through writer and reader, and the writer's
//! refusals. Malformed-input tests live in `tests/gguf_malformed.rs`.

use super::writer::GgufWriter;
use super::{Array, GgufError, GgufFile, GgufHeader, TensorInfo, Value};
use crate::quant::GgmlType;

/// Deterministic filler bytes (an LCG), so tensor data is not all zeros.
fn filler(n: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        })
        .collect()
}

fn malformed_what(err: GgufError) -> (u64, String) {
    match err {
        GgufError::Malformed { offset, what } => (offset, what),
        other => panic!("expected Malformed, got {other:?}"),
    }
}

fn invalid_write_what(err: GgufError) -> String {
    match err {
        GgufError::InvalidWrite { what } => what,
        other => panic!("expected InvalidWrite, got {other:?}"),
    }
}

/// A v3 file with two u32 entries (one of them `general.alignment` = 64) and one 2×3 F32
/// tensor, written out field by field from the GGUF spec.
fn spec_file_bytes() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&[3, 0, 0, 0]); // version
    b.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]); // tensor count
    b.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0]); // kv count
    b.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0]); // key length
    b.extend_from_slice(b"a.b");
    b.extend_from_slice(&[4, 0, 0, 0]); // type u32
    b.extend_from_slice(&[7, 0, 0, 0]);
    b.extend_from_slice(&[17, 0, 0, 0, 0, 0, 0, 0]);
    b.extend_from_slice(b"general.alignment");
    b.extend_from_slice(&[4, 0, 0, 0]);
    b.extend_from_slice(&[64, 0, 0, 0]);
    b.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]); // name length
    b.extend_from_slice(b"w");
    b.extend_from_slice(&[2, 0, 0, 0]); // n_dims
    b.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0]);
    b.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0]);
    b.extend_from_slice(&[0, 0, 0, 0]); // F32
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]); // offset
    assert_eq!(b.len(), 24 + 19 + 33 + 41);
    b.resize(128, 0);
    // 1.0, -2.0, 0.5, 0.0, 3.0, -0.25 as little-endian f32 bit patterns.
    for bits in [0x3f80_0000u32, 0xc000_0000, 0x3f00_0000, 0, 0x4040_0000, 0xbe80_0000] {
        b.extend_from_slice(&bits.to_le_bytes());
    }
    b.resize(192, 0);
    b
}

#[test]
fn reads_a_file_assembled_from_the_spec() {
    let file = GgufFile::from_bytes(spec_file_bytes()).unwrap();
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), 64);
    assert_eq!(file.data_offset(), 128);
    assert_eq!(file.path(), None);
    assert_eq!(file.metadata().len(), 2);
    assert_eq!(file.metadata().get("a.b"), Some(&Value::U32(7)));
    let w = file.tensor("w").unwrap();
    assert_eq!(
        *w,
        TensorInfo { name: "w".into(), dims: vec![2, 3], ty: GgmlType::F32, offset: 0, n_elements: 6, n_bytes: 24 }
    );
    assert_eq!((w.row_len(), w.rows()), (2, 3));
    let values: Vec<f32> =
        file.tensor_data(w).chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    assert_eq!(values, [1.0, -2.0, 0.5, 0.0, 3.0, -0.25]);
}

#[test]
fn writer_reproduces_the_spec_file_exactly() {
    let mut w = GgufWriter::new();
    w.add_metadata("a.b", Value::U32(7)).unwrap();
    w.add_metadata("general.alignment", Value::U32(64)).unwrap();
    let data = [1.0f32, -2.0, 0.5, 0.0, 3.0, -0.25].iter().flat_map(|x| x.to_le_bytes()).collect();
    w.add_tensor("w", GgmlType::F32, &[2, 3], data).unwrap();
    assert_eq!(w.to_bytes(), spec_file_bytes());
}

#[test]
fn empty_file_is_a_bare_header_padded_to_the_default_alignment() {
    let bytes = GgufWriter::new().to_bytes();
    let mut expected = b"GGUF\x03\0\0\0".to_vec();
    expected.resize(32, 0);
    assert_eq!(bytes, expected);
    let file = GgufFile::from_bytes(bytes).unwrap();
    assert!(file.tensors().is_empty() && file.metadata().is_empty());
    assert_eq!((file.alignment(), file.data_offset()), (32, 32));
}

/// One entry of every scalar type (with extreme values), every array element type, empty
/// strings and arrays, and arrays nested three deep.
fn every_value() -> Vec<(&'static str, Value)> {
    vec![
        ("u8", Value::U8(u8::MAX)),
        ("i8", Value::I8(i8::MIN)),
        ("u16", Value::U16(u16::MAX)),
        ("i16", Value::I16(i16::MIN)),
        ("u32", Value::U32(u32::MAX)),
        ("i32", Value::I32(i32::MIN)),
        ("u64", Value::U64(u64::MAX)),
        ("i64", Value::I64(i64::MIN)),
        ("f32", Value::F32(-1.5e-40)),
        ("f32.inf", Value::F32(f32::INFINITY)),
        ("f64", Value::F64(std::f64::consts::PI)),
        ("bool.true", Value::Bool(true)),
        ("bool.false", Value::Bool(false)),
        ("string", Value::String("héllo ✓ 🦀\n\0".into())),
        ("string.empty", Value::String(String::new())),
        ("a.u8", Value::Array(Array::U8(vec![0, 1, 255]))),
        ("a.i8", Value::Array(Array::I8(vec![-128, 0, 127]))),
        ("a.u16", Value::Array(Array::U16(vec![1, 65535]))),
        ("a.i16", Value::Array(Array::I16(vec![-32768, 32767]))),
        ("a.u32", Value::Array(Array::U32(vec![0, 49152, u32::MAX]))),
        ("a.i32", Value::Array(Array::I32(vec![1, 3, -1]))),
        ("a.u64", Value::Array(Array::U64(vec![u64::MAX, 0]))),
        ("a.i64", Value::Array(Array::I64(vec![i64::MIN, i64::MAX]))),
        ("a.f32", Value::Array(Array::F32(vec![0.5, -0.0, 1e30]))),
        ("a.f64", Value::Array(Array::F64(vec![1e-300, -2.5]))),
        ("a.bool", Value::Array(Array::Bool(vec![true, false, true]))),
        ("a.string", Value::Array(Array::String(vec!["Ġ t".into(), String::new(), "<|im_end|>".into()]))),
        ("a.empty.u32", Value::Array(Array::U32(vec![]))),
        ("a.empty.string", Value::Array(Array::String(vec![]))),
        ("a.empty.array", Value::Array(Array::Array(vec![]))),
        (
            "a.nested",
            Value::Array(Array::Array(vec![
                Array::U8(vec![1, 2]),
                Array::String(vec!["x".into()]),
                Array::Array(vec![Array::I64(vec![-1]), Array::Bool(vec![])]),
                Array::Array(vec![]),
                Array::F32(vec![]),
            ])),
        ),
    ]
}

#[test]
fn every_value_type_round_trips_in_v2_and_v3() {
    for version in [2, 3] {
        let mut w = GgufWriter::with_version(version).unwrap();
        for (key, value) in every_value() {
            w.add_metadata(key, value).unwrap();
        }
        let file = GgufFile::from_bytes(w.to_bytes()).unwrap();
        assert_eq!(file.version(), version);
        assert_eq!(file.metadata().len(), every_value().len());
        for (key, value) in every_value() {
            assert_eq!(file.metadata().get(key), Some(&value), "v{version} key {key}");
        }
    }
}

#[test]
fn arrays_nested_to_the_depth_limit_round_trip_and_deeper_ones_are_refused() {
    let nest = |levels: usize| {
        let mut array = Array::Array(vec![Array::U8(vec![7])]);
        for _ in 2..levels {
            array = Array::Array(vec![array]);
        }
        array
    };
    let deepest = nest(super::MAX_ARRAY_DEPTH);
    let mut w = GgufWriter::new();
    w.add_metadata("deep", Value::Array(deepest.clone())).unwrap();
    let file = GgufFile::from_bytes(w.to_bytes()).unwrap();
    assert_eq!(file.metadata().get("deep"), Some(&Value::Array(deepest)));

    let err = GgufWriter::new().add_metadata("deeper", Value::Array(nest(super::MAX_ARRAY_DEPTH + 1))).unwrap_err();
    assert!(invalid_write_what(err).contains("nested 17 deep"));
}

/// Tensors of several types and shapes; the byte counts are block counts × block sizes from
/// the ggml layouts (e.g. Q4_1: 32 elements in 20 bytes).
fn sample_tensors() -> Vec<(&'static str, GgmlType, Vec<u64>, usize)> {
    vec![
        ("f32", GgmlType::F32, vec![4, 3], 48),
        ("f16", GgmlType::F16, vec![8], 16),
        ("bf16", GgmlType::BF16, vec![2, 2, 2, 2], 32),
        ("q8_0", GgmlType::Q8_0, vec![64, 2], 4 * 34),
        ("q4_1", GgmlType::Q4_1, vec![32, 3], 3 * 20),
        ("q4_k", GgmlType::Q4K, vec![256], 144),
        ("q6_k", GgmlType::Q6K, vec![256, 2], 2 * 210),
    ]
}

#[test]
fn tensors_round_trip_at_every_alignment() {
    for alignment in [None, Some(1u32), Some(8), Some(64), Some(4096)] {
        let mut w = GgufWriter::new();
        w.add_metadata("general.architecture", Value::String("llama".into())).unwrap();
        if let Some(a) = alignment {
            w.add_metadata("general.alignment", Value::U32(a)).unwrap();
        }
        for (i, (name, ty, dims, n_bytes)) in sample_tensors().into_iter().enumerate() {
            w.add_tensor(name, ty, &dims, filler(n_bytes, i as u32)).unwrap();
        }
        let bytes = w.to_bytes();
        let expected_alignment = u64::from(alignment.unwrap_or(32));
        assert_eq!(bytes.len() as u64 % expected_alignment, 0);
        let file = GgufFile::from_bytes(bytes).unwrap();
        assert_eq!(file.alignment(), expected_alignment);
        assert_eq!(file.data_offset() % expected_alignment, 0);
        assert_eq!(file.tensors().len(), sample_tensors().len());
        for (i, (name, ty, dims, n_bytes)) in sample_tensors().into_iter().enumerate() {
            let info = file.tensor(name).unwrap();
            assert_eq!(file.tensors()[i].name, name, "file order is insertion order");
            assert_eq!((info.ty, &info.dims, info.n_bytes), (ty, &dims, n_bytes as u64));
            assert_eq!(info.n_elements, dims.iter().product::<u64>());
            assert_eq!(info.offset % expected_alignment, 0, "{name} at alignment {alignment:?}");
            assert_eq!(file.tensor_data(info), filler(n_bytes, i as u32), "{name}");
        }
    }
}

#[test]
fn rows_and_row_len_follow_ggml_order() {
    let info = |dims: Vec<u64>| TensorInfo {
        name: "t".into(),
        n_elements: dims.iter().product(),
        dims,
        ty: GgmlType::F32,
        offset: 0,
        n_bytes: 0,
    };
    assert_eq!((info(vec![576]).row_len(), info(vec![576]).rows()), (576, 1));
    assert_eq!((info(vec![576, 49152]).row_len(), info(vec![576, 49152]).rows()), (576, 49152));
    assert_eq!((info(vec![2, 3, 5, 7]).row_len(), info(vec![2, 3, 5, 7]).rows()), (2, 105));
}

#[test]
fn unsupported_types_parse_and_check_supported_refuses_them_by_name() {
    let mut w = GgufWriter::new();
    // Q2_K: 256 elements in 84 bytes.
    w.add_tensor("q2", GgmlType::Q2K, &[256], filler(84, 5)).unwrap();
    w.add_tensor("f", GgmlType::F32, &[1], vec![0; 4]).unwrap();
    let file = GgufFile::from_bytes(w.to_bytes()).unwrap();
    let info = file.tensor("q2").unwrap();
    assert_eq!((info.ty, info.n_bytes), (GgmlType::Q2K, 84));
    assert_eq!(file.tensor_data(info), filler(84, 5), "raw bytes stay available");
    let err = info.check_supported().unwrap_err();
    assert!(matches!(&err, GgufError::UnsupportedTensorType { name, ty: GgmlType::Q2K } if name == "q2"));
    assert!(err.to_string().contains("Q2_K"), "{err}");
    assert!(file.tensor("f").unwrap().check_supported().is_ok());
}

#[test]
fn missing_tensors_are_errors_and_foreign_infos_a_caller_bug() {
    let mut a = GgufWriter::new();
    a.add_tensor("t", GgmlType::F32, &[4], vec![0; 16]).unwrap();
    let a = GgufFile::from_bytes(a.to_bytes()).unwrap();
    let mut b = GgufWriter::new();
    b.add_tensor("t", GgmlType::F32, &[8], vec![0; 32]).unwrap();
    let b = GgufFile::from_bytes(b.to_bytes()).unwrap();

    assert!(matches!(a.tensor("nope"), Err(GgufError::MissingTensor { name }) if name == "nope"));
    let foreign = b.tensor("t").unwrap();
    let caught = std::panic::catch_unwind(|| a.tensor_data(foreign).len());
    assert!(caught.is_err(), "an info from another file must not yield this file's bytes");
}

#[test]
fn open_maps_the_file_and_agrees_with_from_bytes() {
    let mut w = GgufWriter::new();
    w.add_metadata("k", Value::String("v".into())).unwrap();
    w.add_tensor("t", GgmlType::Q8_0, &[32, 2], filler(68, 9)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    w.write(&path).unwrap();

    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.path(), Some(path.as_path()));
    assert_eq!(file.metadata().str("k").unwrap(), "v");
    let info = file.tensor("t").unwrap();
    assert_eq!(file.tensor_data(info), filler(68, 9));
    let in_memory = GgufFile::from_bytes(w.to_bytes()).unwrap();
    assert_eq!(in_memory.tensors(), file.tensors());
    assert_eq!(in_memory.data_offset(), file.data_offset());

    let missing = dir.path().join("absent.gguf");
    assert!(matches!(GgufFile::open(&missing), Err(GgufError::Io { path, .. }) if path == missing));
}

#[test]
fn header_parse_needs_only_the_header_bytes() {
    let mut w = GgufWriter::new();
    w.add_tensor("t", GgmlType::F32, &[1000], vec![0; 4000]).unwrap();
    let bytes = w.to_bytes();
    let file = GgufFile::from_bytes(bytes.clone()).unwrap();
    let prefix = &bytes[..file.data_offset() as usize];
    let header = GgufHeader::parse(prefix, bytes.len() as u64).unwrap();
    assert_eq!(header.tensors(), file.tensors());

    let (offset, what) = malformed_what(GgufHeader::parse(prefix, bytes.len() as u64 - 1).unwrap_err());
    assert!(what.contains("runs past the end of the file"), "{what}");
    // The error points at the tensor's offset field: after the 24-byte header, the name
    // (8 + 1 bytes), n_dims (4) and one dim (8) and the type id (4).
    assert_eq!(offset, 24 + 9 + 4 + 8 + 4);
}

/// One attempt to add something invalid to a fresh writer.
type WriterCase<'a> = &'a dyn Fn(&mut GgufWriter) -> Result<(), GgufError>;

#[test]
fn writer_refuses_what_the_reader_would_reject() {
    let refusal = |f: WriterCase| {
        let mut w = GgufWriter::new();
        invalid_write_what(f(&mut w).unwrap_err())
    };
    let cases: Vec<(&str, WriterCase)> = vec![
        ("duplicate metadata key `k`", &|w| {
            w.add_metadata("k", Value::U8(1))?.add_metadata("k", Value::U8(2)).map(drop)
        }),
        ("must be a u32 power of two", &|w| w.add_metadata("general.alignment", Value::U32(48)).map(drop)),
        ("must be a u32 power of two", &|w| w.add_metadata("general.alignment", Value::U32(0)).map(drop)),
        ("must be a u32 power of two", &|w| w.add_metadata("general.alignment", Value::U64(64)).map(drop)),
        ("0 dimensions", &|w| w.add_tensor("t", GgmlType::F32, &[], vec![]).map(drop)),
        ("5 dimensions", &|w| w.add_tensor("t", GgmlType::F32, &[1; 5], vec![0; 4]).map(drop)),
        ("contain a 0", &|w| w.add_tensor("t", GgmlType::F32, &[4, 0], vec![]).map(drop)),
        ("not a multiple of the Q4_1 block size 32", &|w| {
            w.add_tensor("t", GgmlType::Q4_1, &[33], vec![0; 40]).map(drop)
        }),
        ("need 16 bytes, got 15", &|w| w.add_tensor("t", GgmlType::F32, &[4], vec![0; 15]).map(drop)),
        ("overflows u64", &|w| w.add_tensor("t", GgmlType::F32, &[1 << 40, 1 << 40], vec![]).map(drop)),
        ("duplicate tensor name `t`", &|w| {
            w.add_tensor("t", GgmlType::F32, &[1], vec![0; 4])?
                .add_tensor("t", GgmlType::F32, &[1], vec![0; 4])
                .map(drop)
        }),
    ];
    for (expected, case) in cases {
        let what = refusal(case);
        assert!(what.contains(expected), "expected {expected:?} in {what:?}");
    }
    for version in [1, 4] {
        let err = GgufWriter::with_version(version).unwrap_err();
        assert!(invalid_write_what(err).contains(&format!("version {version}")));
    }
}
