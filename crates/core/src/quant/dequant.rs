//! Whole-tensor (or whole-row) dequantisation: GGML blocks to f32 or bf16.
//!
//! `dst.len()` elements are decoded from `src`, which must hold exactly that many elements of
//! the type. This is the readable reference path (scalar, block by block through
//! [`Block::decode`](super::block::Block::decode)); the bf16 variant decodes to f32 first and
//! rounds each weight to nearest-even, so both share one per-block decode.

use half::bf16;

use super::block::decode_blocks;
use super::{check_len, GgmlType, QuantError, QK_K};

/// Decodes `dst.len()` elements of `ty` from `src`.
///
/// Errors when the type is unsupported, `dst.len()` is not a whole number of blocks, or `src`
/// is not exactly the bytes of those blocks.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    let format = check_len(ty, dst.len(), src.len())?;
    decode_blocks(format, src, dst);
    Ok(())
}

/// As [`dequantize`], rounding each f32 weight to the nearest bf16 (ties to even).
pub fn dequantize_to_bf16(ty: GgmlType, src: &[u8], dst: &mut [bf16]) -> Result<(), QuantError> {
    let format = check_len(ty, dst.len(), src.len())?;
    // Decode through a small f32 buffer; QK_K elements are whole blocks of every supported type.
    let mut buf = [0.0f32; QK_K];
    for (src, dst) in src.chunks(format.bytes_for(QK_K)).zip(dst.chunks_mut(QK_K)) {
        let buf = &mut buf[..dst.len()];
        decode_blocks(format, src, buf);
        for (d, &w) in dst.iter_mut().zip(buf.iter()) {
            *d = bf16::from_f32(w);
        }
    }
    Ok(())
}

#[cfg(test)]
// Expected values are exact binary fractions, written out in full on purpose.
#[allow(clippy::excessive_precision)]
mod tests {
    use half::{bf16, f16};

    use super::*;
    use crate::quant::testing::{random_row, Rng, SUPPORTED};

    #[test]
    fn rejects_unsupported_types() {
        let err = dequantize(GgmlType::Q2K, &[0; 84], &mut [0.0; 256]).unwrap_err();
        assert_eq!(err, QuantError::Unsupported { ty: GgmlType::Q2K });
        assert!(err.to_string().contains("Q2_K"), "{err}");
        let err = dequantize_to_bf16(GgmlType::Q5_0, &[0; 22], &mut [bf16::ZERO; 32]).unwrap_err();
        assert_eq!(err, QuantError::Unsupported { ty: GgmlType::Q5_0 });
    }

    #[test]
    fn rejects_partial_blocks() {
        let err = dequantize(GgmlType::Q4_1, &[0; 40], &mut [0.0; 33]).unwrap_err();
        assert_eq!(err, QuantError::PartialBlock { ty: GgmlType::Q4_1, n_elements: 33, block_elems: 32 });
        let err = dequantize(GgmlType::Q6K, &[0; 210], &mut [0.0; 128]).unwrap_err();
        assert!(matches!(err, QuantError::PartialBlock { block_elems: 256, .. }), "{err}");
    }

    #[test]
    fn rejects_wrong_byte_counts() {
        for (ty, n_elements, got_bytes, expected_bytes) in [
            (GgmlType::Q4_1, 32, 19, 20),
            (GgmlType::Q4_1, 32, 21, 20),
            (GgmlType::Q8_0, 64, 34, 68),
            (GgmlType::F32, 3, 11, 12),
            (GgmlType::F16, 3, 0, 6),
            (GgmlType::Q4K, 256, 145, 144),
        ] {
            let err = dequantize(ty, &vec![0; got_bytes], &mut vec![0.0; n_elements]).unwrap_err();
            assert_eq!(err, QuantError::ByteCount { ty, n_elements, expected_bytes, got_bytes });
        }
    }

    #[test]
    fn empty_is_fine() {
        for ty in SUPPORTED {
            dequantize(ty, &[], &mut []).unwrap();
            dequantize_to_bf16(ty, &[], &mut []).unwrap();
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 lies halfway between bf16 1.0 and 1 + 2^-7: ties go to the even 1.0.
        // 1 + 3·2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: ties go to the even 1 + 2^-6.
        // 1 + 2^-9 is below halfway (→ 1.0); −(1 + 2^-7 + 2^-9) is below halfway (→ −(1 + 2^-7)).
        let values = [1.00390625f32, 1.01171875, 1.001953125, -1.009765625];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut got = [bf16::ZERO; 4];
        dequantize_to_bf16(GgmlType::F32, &bytes, &mut got).unwrap();
        assert_eq!(got.map(bf16::to_f32), [1.0, 1.015625, 1.0, -1.0078125]);
    }

    #[test]
    fn q4_1_to_bf16() {
        // d = 0.5, m = −1, byte j = j | (15 − j) << 4: weights 0.5·q − 1, all exact in bf16.
        let qs: Vec<u8> = (0..16u8).map(|j| j | ((15 - j) << 4)).collect();
        let bytes = [&f16::from_f32(0.5).to_le_bytes()[..], &f16::from_f32(-1.0).to_le_bytes(), &qs].concat();
        let mut got = [bf16::ZERO; 32];
        dequantize_to_bf16(GgmlType::Q4_1, &bytes, &mut got).unwrap();
        for j in 0..16 {
            assert_eq!(got[j].to_f32(), 0.5 * j as f32 - 1.0, "element {j}");
            assert_eq!(got[16 + j].to_f32(), 0.5 * (15 - j) as f32 - 1.0, "element {}", 16 + j);
        }
    }

    #[test]
    fn bf16_matches_f32_then_round_for_every_type() {
        // One per-block decode serves both outputs: the bf16 path must be the f32 path rounded,
        // including across the internal 256-element buffer boundary.
        let mut rng = Rng::new(7);
        for ty in SUPPORTED {
            let n = 3 * crate::quant::QK_K;
            let row = random_row(&mut rng, ty, n);
            let mut f = vec![0.0f32; n];
            let mut b = vec![bf16::ZERO; n];
            dequantize(ty, &row, &mut f).unwrap();
            dequantize_to_bf16(ty, &row, &mut b).unwrap();
            for (i, (&f, &b)) in f.iter().zip(&b).enumerate() {
                assert_eq!(b.to_bits(), bf16::from_f32(f).to_bits(), "{ty} element {i}");
            }
        }
    }
}
