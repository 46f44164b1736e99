//! GGML block layouts and their scalar reference decoders.
//!
//! Each quantised type is a `#[repr(C)]` struct laid out byte for byte like ggml's `block_*`
//! struct (ggml-common.h); a compile-time assert ties its size to [`GgmlType::block_bytes`], and
//! the SIMD decoders take their field offsets from these structs with `offset_of!`. F32, F16 and
//! BF16 are "blocks" of one element.
//!
//! Invariants:
//! - every bit pattern of every block is a valid value (all fields are byte arrays or f16), so a
//!   block may be read from any bytes of the right length; NaN or infinite f16 scales simply
//!   decode to NaN or infinite weights;
//! - `Block::decode` is the definition of a block's values: it computes each weight in f32 with
//!   the same operations, in the same order, as ggml's `dequantize_row_*` (for example Q4_1 is
//!   `d * q + m`, rounded once after the multiply and once after the add, never fused). All other
//!   decoders in this crate (SIMD, bf16) must agree with it bit for bit.
//!
//! Element order inside a block, for `n = 0..block_elems`:
//! - Q4_0 / Q4_1: byte `qs[j]` holds element `j` in its low nibble and element `j + 16` in its
//!   high nibble;
//! - Q8_0: `qs[n]` is element `n`;
//! - Q4_K / Q5_K: eight sub-blocks of 32, each with a 6-bit scale and a 6-bit min packed in
//!   `scales` (see `k_scale_min`); sub-blocks `2p` and `2p + 1` share the 32 bytes
//!   `qs[32p..32p + 32]`, low and high nibbles; Q5_K adds bit `j` of `qh[l]` as bit 4 of element
//!   `l` of sub-block `j`;
//! - Q6_K: two halves of 128; in half `h`, quarter `g` (32 elements), element `l` takes its low
//!   four bits from `ql[64h + 32(g % 2) + l]` (low nibble for `g < 2`, high nibble otherwise), its
//!   top two bits from `qh[32h + l] >> 2g`, and the signed scale `scales[8h + 2g + l / 16]`.

use std::mem::size_of;

use half::{bf16, f16};

use super::{Format, GgmlType, QK_K};

/// Q4_0: 32 weights `d * (q - 8)`, `q` unsigned 4-bit.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; 16],
}

/// Q4_1: 32 weights `d * q + m`, `q` unsigned 4-bit.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; 16],
}

/// Q8_0: 32 weights `d * q`, `q` signed 8-bit.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; 32],
}

/// Q4_K: 256 weights in 8 sub-blocks of 32; sub-block `j` is `d * sc_j * q - dmin * m_j`, with
/// 6-bit `sc_j`, `m_j` packed in `scales` and unsigned 4-bit `q`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}

/// Q5_K: as Q4_K with 5-bit `q`, whose top bits live in `qh`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

/// Q6_K: 256 weights in 16 groups of 16; group `i` is `d * scales[i] * (q - 32)`, `q` unsigned
/// 6-bit split over `ql` (low four bits) and `qh` (top two bits).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}

const _: () = {
    assert!(size_of::<BlockQ4_0>() == GgmlType::Q4_0.block_bytes());
    assert!(size_of::<BlockQ4_1>() == GgmlType::Q4_1.block_bytes());
    assert!(size_of::<BlockQ8_0>() == GgmlType::Q8_0.block_bytes());
    assert!(size_of::<BlockQ4K>() == GgmlType::Q4K.block_bytes());
    assert!(size_of::<BlockQ5K>() == GgmlType::Q5K.block_bytes());
    assert!(size_of::<BlockQ6K>() == GgmlType::Q6K.block_bytes());
    assert!(size_of::<f32>() == GgmlType::F32.block_bytes());
    assert!(size_of::<f16>() == GgmlType::F16.block_bytes());
    assert!(size_of::<bf16>() == GgmlType::BF16.block_bytes());
};

/// A ggml block: plain old data that decodes to `ELEMS` f32 weights.
///
/// # Safety
/// Implementors are `#[repr(C)]` (or primitive), have no padding, and accept every bit pattern,
/// so that [`read_block`] may build one from any `size_of::<Self>()` bytes.
pub(crate) unsafe trait Block: Copy {
    /// Weights per block.
    const ELEMS: usize;

    /// Writes the block's weights to `out`, which holds exactly `ELEMS` values.
    fn decode(&self, out: &mut [f32]);
}

/// Reads one block from exactly `size_of::<B>()` bytes at any alignment.
///
/// Callers slice `bytes` with `chunks_exact(size_of::<B>())`, so a length mismatch is a bug in
/// this module, not bad input.
pub(crate) fn read_block<B: Block>(bytes: &[u8]) -> B {
    assert_eq!(bytes.len(), size_of::<B>(), "block slice of the wrong length");
    // SAFETY: the length matches, `read_unaligned` needs no alignment, and `B: Block` promises
    // that every bit pattern is a valid `B`.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<B>()) }
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K / Q5_K block.
///
/// Packing of the 12 bytes: for `j < 4`, `scales[j]` and `scales[j + 4]` hold scale `j` and min
/// `j` in their low six bits; sub-blocks 4..8 keep their low four bits in the nibbles of
/// `scales[j + 4]` (scale low, min high) and their top two bits in the top two bits of
/// `scales[j - 4]` (scale) and `scales[j]` (min).
pub(crate) fn k_scale_min(scales: &[u8; 12], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 0x3F, scales[j + 4] & 0x3F)
    } else {
        let scale = (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4);
        let min = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
        (scale, min)
    }
}

/// The eight per-sub-block factors `(d * sc_j, dmin * m_j)` of a Q4_K / Q5_K block, in f32 as
/// ggml computes them (both products are exact: 11-bit mantissa times 6-bit integer).
pub(crate) fn k_factors(d: f16, dmin: f16, scales: &[u8; 12]) -> [(f32, f32); 8] {
    let (d, dmin) = (d.to_f32(), dmin.to_f32());
    std::array::from_fn(|j| {
        let (scale, min) = k_scale_min(scales, j);
        (d * f32::from(scale), dmin * f32::from(min))
    })
}

unsafe impl Block for BlockQ4_0 {
    const ELEMS: usize = 32;

    fn decode(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        let (low, high) = out.split_at_mut(16);
        for ((&q, lo), hi) in self.qs.iter().zip(low).zip(high) {
            *lo = (i32::from(q & 0x0F) - 8) as f32 * d;
            *hi = (i32::from(q >> 4) - 8) as f32 * d;
        }
    }
}

unsafe impl Block for BlockQ4_1 {
    const ELEMS: usize = 32;

    fn decode(&self, out: &mut [f32]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        let (low, high) = out.split_at_mut(16);
        for ((&q, lo), hi) in self.qs.iter().zip(low).zip(high) {
            *lo = f32::from(q & 0x0F) * d + m;
            *hi = f32::from(q >> 4) * d + m;
        }
    }
}

unsafe impl Block for BlockQ8_0 {
    const ELEMS: usize = 32;

    fn decode(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (&q, o) in self.qs.iter().zip(out) {
            *o = f32::from(q) * d;
        }
    }
}

unsafe impl Block for BlockQ4K {
    const ELEMS: usize = QK_K;

    fn decode(&self, out: &mut [f32]) {
        let factors = k_factors(self.d, self.dmin, &self.scales);
        // Pair p: sub-block 2p from the low nibbles of qs[32p..32p + 32], 2p + 1 from the high.
        for (p, (qs, out)) in self.qs.chunks_exact(32).zip(out.chunks_exact_mut(64)).enumerate() {
            let (d_low, m_low) = factors[2 * p];
            let (d_high, m_high) = factors[2 * p + 1];
            let (low, high) = out.split_at_mut(32);
            for ((&q, lo), hi) in qs.iter().zip(low).zip(high) {
                *lo = d_low * f32::from(q & 0x0F) - m_low;
                *hi = d_high * f32::from(q >> 4) - m_high;
            }
        }
    }
}

unsafe impl Block for BlockQ5K {
    const ELEMS: usize = QK_K;

    fn decode(&self, out: &mut [f32]) {
        let factors = k_factors(self.d, self.dmin, &self.scales);
        for (p, (qs, out)) in self.qs.chunks_exact(32).zip(out.chunks_exact_mut(64)).enumerate() {
            let (d_low, m_low) = factors[2 * p];
            let (d_high, m_high) = factors[2 * p + 1];
            let (low, high) = out.split_at_mut(32);
            for (((&q, &qh), lo), hi) in qs.iter().zip(&self.qh).zip(low).zip(high) {
                // Bit j of qh[l] is bit 4 of element l of sub-block j.
                let q_low = (q & 0x0F) | (((qh >> (2 * p)) & 1) << 4);
                let q_high = (q >> 4) | (((qh >> (2 * p + 1)) & 1) << 4);
                *lo = d_low * f32::from(q_low) - m_low;
                *hi = d_high * f32::from(q_high) - m_high;
            }
        }
    }
}

unsafe impl Block for BlockQ6K {
    const ELEMS: usize = QK_K;

    fn decode(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (h, out) in out.chunks_exact_mut(128).enumerate() {
            let ql = &self.ql[64 * h..64 * h + 64];
            let qh = &self.qh[32 * h..32 * h + 32];
            let scales = &self.scales[8 * h..8 * h + 8];
            for (g, out) in out.chunks_exact_mut(32).enumerate() {
                let ql = &ql[32 * (g % 2)..32 * (g % 2) + 32];
                for (l, o) in out.iter_mut().enumerate() {
                    let low4 = if g < 2 { ql[l] & 0x0F } else { ql[l] >> 4 };
                    let top2 = (qh[l] >> (2 * g)) & 3;
                    let q = i32::from(low4 | (top2 << 4)) - 32;
                    *o = d * f32::from(scales[2 * g + l / 16]) * q as f32;
                }
            }
        }
    }
}

unsafe impl Block for f32 {
    const ELEMS: usize = 1;

    fn decode(&self, out: &mut [f32]) {
        out[0] = *self;
    }
}

unsafe impl Block for f16 {
    const ELEMS: usize = 1;

    fn decode(&self, out: &mut [f32]) {
        out[0] = self.to_f32();
    }
}

unsafe impl Block for bf16 {
    const ELEMS: usize = 1;

    fn decode(&self, out: &mut [f32]) {
        out[0] = self.to_f32();
    }
}

/// Decodes whole blocks of one type; `src` holds exactly the blocks of `dst`.
fn decode_as<B: Block>(src: &[u8], dst: &mut [f32]) {
    debug_assert_eq!(src.len() / size_of::<B>() * B::ELEMS, dst.len());
    for (bytes, out) in src.chunks_exact(size_of::<B>()).zip(dst.chunks_exact_mut(B::ELEMS)) {
        read_block::<B>(bytes).decode(out);
    }
}

/// The scalar reference decode: `dst.len()` weights of `format` from `src`, which the caller
/// has checked to hold exactly that many (see `check_len`).
pub(crate) fn decode_blocks(format: Format, src: &[u8], dst: &mut [f32]) {
    match format {
        Format::F32 => decode_as::<f32>(src, dst),
        Format::F16 => decode_as::<f16>(src, dst),
        Format::BF16 => decode_as::<bf16>(src, dst),
        Format::Q4_0 => decode_as::<BlockQ4_0>(src, dst),
        Format::Q4_1 => decode_as::<BlockQ4_1>(src, dst),
        Format::Q8_0 => decode_as::<BlockQ8_0>(src, dst),
        Format::Q4K => decode_as::<BlockQ4K>(src, dst),
        Format::Q5K => decode_as::<BlockQ5K>(src, dst),
        Format::Q6K => decode_as::<BlockQ6K>(src, dst),
    }
}

#[cfg(test)]
// Expected values are exact binary fractions, written out in full on purpose.
#[allow(clippy::excessive_precision)]
mod tests {
    //! Hand-built blocks whose weights are worked out from the ggml spec, not by this code.

    use std::mem::offset_of;

    use half::f16;

    use super::*;
    use crate::quant::dequantize;

    fn decode(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
        let mut out = vec![f32::NAN; bytes.len() / ty.block_bytes() * ty.block_elems()];
        dequantize(ty, bytes, &mut out).expect("hand-built block");
        out
    }

    fn f16_bytes(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_le_bytes()
    }

    /// Byte `j` holds `j` in the low nibble and `15 - j` in the high one (`j = i % 16`).
    fn ramp_nibbles(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 16) as u8 | ((15 - (i % 16) as u8) << 4)).collect()
    }

    #[test]
    fn field_offsets_match_ggml() {
        assert_eq!(offset_of!(BlockQ4_0, qs), 2);
        assert_eq!(offset_of!(BlockQ4_1, m), 2);
        assert_eq!(offset_of!(BlockQ4_1, qs), 4);
        assert_eq!(offset_of!(BlockQ8_0, qs), 2);
        assert_eq!(offset_of!(BlockQ4K, dmin), 2);
        assert_eq!(offset_of!(BlockQ4K, scales), 4);
        assert_eq!(offset_of!(BlockQ4K, qs), 16);
        assert_eq!(offset_of!(BlockQ5K, qh), 16);
        assert_eq!(offset_of!(BlockQ5K, qs), 48);
        assert_eq!(offset_of!(BlockQ6K, qh), 128);
        assert_eq!(offset_of!(BlockQ6K, scales), 192);
        assert_eq!(offset_of!(BlockQ6K, d), 208);
    }

    #[test]
    fn q4_0_is_d_times_q_minus_8() {
        let bytes = [&f16_bytes(0.5)[..], &ramp_nibbles(16)].concat();
        let w = decode(GgmlType::Q4_0, &bytes);
        let low = [-4.0, -3.5, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5];
        let high = [3.5, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -1.5, -2.0, -2.5, -3.0, -3.5, -4.0];
        assert_eq!(w[..16], low);
        assert_eq!(w[16..], high);
    }

    #[test]
    fn q4_1_is_d_times_q_plus_m() {
        let bytes = [&f16_bytes(0.5)[..], &f16_bytes(-1.0), &ramp_nibbles(16)].concat();
        let w = decode(GgmlType::Q4_1, &bytes);
        let low = [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5];
        let high = [6.5, 6.0, 5.5, 5.0, 4.5, 4.0, 3.5, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0];
        assert_eq!(w[..16], low);
        assert_eq!(w[16..], high);
    }

    #[test]
    fn q8_0_is_d_times_q_over_two_blocks() {
        // f16 0x2E66 is 0.0999755859375 (0.1 rounded); 0x3400 is 0.25.
        let mut q = [0i8; 32];
        q[..7].copy_from_slice(&[-128, -64, -1, 0, 1, 63, 127]);
        let qs: Vec<u8> = q.iter().map(|&v| v as u8).collect();
        let bytes = [&0x2E66u16.to_le_bytes()[..], &qs, &0x3400u16.to_le_bytes(), &qs].concat();
        let w = decode(GgmlType::Q8_0, &bytes);
        let d = 0.0999755859375f32;
        assert_eq!(w[..7], [-12.796875, -6.3984375, -d, 0.0, d, 6.2984619140625, 12.6968994140625]);
        assert_eq!(w[32..39], [-32.0, -16.0, -0.25, 0.0, 0.25, 15.75, 31.75]);
        assert!(w[7..32].iter().chain(&w[39..]).all(|&v| v == 0.0));
    }

    /// Sub-block scales and mins used by the Q4_K and Q5_K tests, and their 12-byte packing
    /// worked out by hand from the layout in `k_scale_min`'s doc.
    const K_SCALES: [u8; 8] = [1, 2, 3, 63, 10, 33, 48, 63];
    const K_MINS: [u8; 8] = [0, 5, 17, 63, 1, 32, 47, 62];
    const K_PACKED: [u8; 12] = [1, 130, 195, 255, 0, 133, 145, 255, 26, 1, 240, 239];

    #[test]
    fn k_scale_min_unpacks_six_bit_pairs() {
        for j in 0..8 {
            assert_eq!(k_scale_min(&K_PACKED, j), (K_SCALES[j], K_MINS[j]), "sub-block {j}");
        }
    }

    #[test]
    fn q4_k_sub_blocks() {
        // d = 2, dmin = 0.5; byte i of qs holds i % 16 (low) and 15 - i % 16 (high).
        let bytes = [&f16_bytes(2.0)[..], &f16_bytes(0.5), &K_PACKED, &ramp_nibbles(128)].concat();
        let w = decode(GgmlType::Q4K, &bytes);
        // Spot values: element e is in sub-block j = e / 32 at l = e % 32, reading byte
        // qs[32 (j / 2) + l], low nibble for even j.
        assert_eq!(w[0], 0.0); // j 0: 2·1·0 − 0.5·0
        assert_eq!(w[33], 53.5); // j 1, high nibble 14: 2·2·14 − 0.5·5
        assert_eq!(w[160], 974.0); // j 5, high nibble 15: 2·33·15 − 0.5·32
        assert_eq!(w[224], 1859.0); // j 7, high nibble 15: 2·63·15 − 0.5·62
        assert_eq!(w[255], -31.0); // j 7, high nibble 0: 0 − 0.5·62
        for (e, &got) in w.iter().enumerate() {
            let (j, l) = (e / 32, e % 32);
            let q = if j % 2 == 0 { l % 16 } else { 15 - l % 16 } as f32;
            let want = 2.0 * f32::from(K_SCALES[j]) * q - 0.5 * f32::from(K_MINS[j]);
            assert_eq!(got, want, "element {e}");
        }
    }

    #[test]
    fn q5_k_high_bits() {
        // qh = 0x55: bits 0, 2, 4, 6 set, so even sub-blocks gain 16 and odd ones nothing.
        let qs: Vec<u8> = (0..128).map(|i| i as u8).collect();
        let bytes = [&f16_bytes(2.0)[..], &f16_bytes(0.5), &K_PACKED, &[0x55; 32], &qs].concat();
        let w = decode(GgmlType::Q5K, &bytes);
        assert_eq!(w[0], 32.0); // j 0: q = 0 + 16: 2·1·16 − 0
        assert_eq!(w[33], -2.5); // j 1: high nibble of qs[1] = 0: 0 − 0.5·5
        assert_eq!(w[70], 123.5); // j 2: qs[38] = 0x26, q = 6 + 16: 2·3·22 − 0.5·17
        assert_eq!(w[200], 2280.5); // j 6: qs[104] = 0x68, q = 8 + 16: 2·48·24 − 0.5·47
        assert_eq!(w[255], 851.0); // j 7: qs[127] = 0x7F, q = 7: 2·63·7 − 0.5·62
        for (e, &got) in w.iter().enumerate() {
            let (j, l) = (e / 32, e % 32);
            let byte = qs[32 * (j / 2) + l];
            let nibble = if j % 2 == 0 { byte & 0x0F } else { byte >> 4 };
            let q = f32::from(nibble) + if j % 2 == 0 { 16.0 } else { 0.0 };
            let want = 2.0 * f32::from(K_SCALES[j]) * q - 0.5 * f32::from(K_MINS[j]);
            assert_eq!(got, want, "element {e}");
        }
    }

    #[test]
    fn q6_k_groups() {
        // ql[i] = i; every qh byte is 0b11_10_01_00, so quarter g gets top bits g;
        // scales[i] = i − 8; d = 0.25.
        let ql: Vec<u8> = (0..128).map(|i| i as u8).collect();
        let scales: Vec<u8> = (0..16).map(|i| (i as i8 - 8) as u8).collect();
        let bytes = [&ql[..], &[0xE4; 64], &scales, &f16_bytes(0.25)].concat();
        let w = decode(GgmlType::Q6K, &bytes);
        // Element e = 128h + 32g + l: low four bits from ql[64h + 32(g % 2) + l] (low nibble
        // for g < 2), q = low + 16g − 32, scale scales[8h + 2g + l / 16].
        assert_eq!(w[0], 64.0); // ql[0] = 0 → q −32, scale −8: 0.25·−8·−32
        assert_eq!(w[37], 16.5); // g 1, ql[37] = 0x25 → 5 + 16 − 32 = −11, scale −6
        assert_eq!(w[90], -0.75); // g 2, ql[26] = 0x1A → 1 + 32 − 32 = 1, scale −3
        assert_eq!(w[127], -4.75); // g 3, ql[63] = 0x3F → 3 + 48 − 32 = 19, scale −1
        assert_eq!(w[160], -8.0); // h 1 g 1, ql[96] = 0x60 → 0 + 16 − 32, scale 2
        assert_eq!(w[200], 4.0); // h 1 g 2, ql[72] = 0x48 → 4 + 32 − 32, scale 4
        assert_eq!(w[255], 40.25); // h 1 g 3, ql[127] = 0x7F → 7 + 48 − 32 = 23, scale 7
    }

    #[test]
    fn f16_edge_values() {
        let bits: [u16; 10] = [0x3C00, 0xC000, 0x7BFF, 0x0001, 0x03FF, 0x0400, 0x8000, 0x7C00, 0xFC00, 0x7E00];
        let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        let w = decode(GgmlType::F16, &bytes);
        let want = [
            1.0,
            -2.0,
            65504.0,
            5.960464477539063e-8, // 2^-24, smallest subnormal
            6.097555160522461e-5, // 1023·2^-24, largest subnormal
            6.103515625e-5,       // 2^-14, smallest normal
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        for (i, (&got, &want)) in w.iter().zip(&want).enumerate() {
            assert_eq!(got.to_bits(), f32::to_bits(want), "f16 {:#06x}", bits[i]);
        }
        assert!(w[9].is_nan());
    }

    #[test]
    fn bf16_edge_values() {
        let bits: [u16; 8] = [0x3F80, 0xC040, 0x7F7F, 0x0001, 0x8000, 0x7F80, 0xFF80, 0x7FC1];
        let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        let w = decode(GgmlType::BF16, &bytes);
        // A bf16 is the top half of an f32, NaN payloads included.
        let want: [u32; 8] = [
            1.0f32.to_bits(),
            (-3.0f32).to_bits(),
            0x7F7F_0000, // 3.3895314e38, the largest finite bf16
            0x0001_0000, // 9.18355e-41, the smallest subnormal
            (-0.0f32).to_bits(),
            f32::INFINITY.to_bits(),
            f32::NEG_INFINITY.to_bits(),
            0x7FC1_0000,
        ];
        let got: Vec<u32> = w.iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, want);
        assert_eq!(w[2], 3.3895313892515355e38);
    }

    #[test]
    fn f32_is_read_unaligned() {
        let values = [1.5f32, -0.0, f32::MAX, 1e-45];
        let mut bytes = vec![0xAA];
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        let w = decode(GgmlType::F32, &bytes[1..]);
        let got: Vec<u32> = w.iter().map(|v| v.to_bits()).collect();
        let want: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, want);
    }
}
