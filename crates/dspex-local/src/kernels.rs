//! A matrix-vector kernel for Q4_1 weights, the one hot loop candle lacks.
//!
//! Why by hand: candle's CPU `vec_dot` for Q4_1 is scalar (it has AVX2
//! code only for Q4_0, Q8_0 and the k-quants), and the workaround of
//! re-quantizing Q4_1 to Q8_0 at load time makes every generated token read
//! 1.7x the bytes. Decoding one token is bound by memory bandwidth (every
//! weight is read once), so reading 4.5-bit blocks as they are stored is
//! what makes decode fast. The code is safe Rust written so that LLVM
//! vectorises the inner loop (widening multiply-adds of 16 bytes at a time);
//! no intrinsics, no `unsafe`.
//!
//! Q4_1 block (ggml `block_q4_1`, 20 bytes for 32 weights): an f16 scale
//! `d`, an f16 minimum `m`, then 16 bytes whose low nibbles are weights
//! 0..16 and high nibbles weights 16..32; weight = `d * q + m`.
//!
//! The activations are quantized to 8 bits per block of 32 (scale
//! `max|x| / 127`), as ggml's Q8_1 does, so a block's dot product is
//! `d * s * Σ q_w q_x + m * s * Σ q_x`.

use rayon::prelude::*;

/// Bytes of one Q4_1 block.
pub(crate) const Q4_1_BLOCK_BYTES: usize = 20;
/// Weights per block.
pub(crate) const BLOCK: usize = 32;

/// `x` quantized per block of 32 for [`q4_1_matvec`].
pub(crate) struct QuantizedVector {
    values: Vec<i8>,
    /// Per block: the scale `s` and `s * Σ q`.
    scales: Vec<(f32, f32)>,
}

impl QuantizedVector {
    /// Quantizes `x`, whose length must be a multiple of 32.
    pub(crate) fn new(x: &[f32]) -> Self {
        let mut values = vec![0i8; x.len()];
        let scales = x
            .chunks_exact(BLOCK)
            .zip(values.chunks_exact_mut(BLOCK))
            .map(|(block, out)| quantize_block(block, out))
            .collect();
        Self { values, scales }
    }
}

/// Quantizes one block of activations to i8 with scale `max|x| / 127`;
/// returns the scale `s` and `s * Σ q`.
///
/// Written so that LLVM vectorises it (eight running maxima, a rounding
/// that is one instruction): the prompt pass quantizes every activation of
/// every matrix product.
pub(crate) fn quantize_block(block: &[f32], out: &mut [i8]) -> (f32, f32) {
    // Fixed sizes let LLVM unroll and vectorise; callers pass whole blocks.
    let (Ok(block), Ok(out)) = (
        <&[f32; BLOCK]>::try_from(block),
        <&mut [i8; BLOCK]>::try_from(out),
    ) else {
        return (0.0, 0.0);
    };
    // A compare-and-select maximum (`f32::max`'s NaN rule keeps LLVM from
    // vectorising it); a NaN activation is ignored here and becomes 0.
    let mut lanes = [0f32; 8];
    for chunk in block.chunks_exact(8) {
        for (l, v) in lanes.iter_mut().zip(chunk) {
            let a = v.abs();
            *l = if a > *l { a } else { *l };
        }
    }
    let max = lanes.iter().fold(0f32, |m, &v| if v > m { v } else { m });
    let scale = max / 127.0;
    let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    // Ties to even, as ggml's SIMD quantizers round. |v * inverse| <= 127
    // by construction; the clamp (selects, which vectorise) tells LLVM so,
    // which turns the casts into plain vector conversions.
    let mut wide = [0i32; BLOCK];
    for (w, v) in wide.iter_mut().zip(block) {
        let q = (v * inverse).round_ties_even();
        let q = if q > 127.0 { 127.0 } else { q };
        let q = if q < -127.0 { -127.0 } else { q };
        #[allow(clippy::cast_possible_truncation)]
        {
            *w = q as i32;
        }
    }
    let mut sum = 0i32;
    for (o, &w) in out.iter_mut().zip(&wide) {
        #[allow(clippy::cast_possible_truncation)]
        {
            *o = w as i8;
        }
        sum += w;
    }
    #[allow(clippy::cast_precision_loss)]
    (scale, scale * sum as f32)
}

/// One row's dot product with `x`.
fn row_dot(row: &[u8], x: &QuantizedVector) -> f32 {
    let mut acc = 0f32;
    for ((block, xq), &(scale, scaled_sum)) in row
        .chunks_exact(Q4_1_BLOCK_BYTES)
        .zip(x.values.chunks_exact(BLOCK))
        .zip(&x.scales)
    {
        let ([d0, d1, m0, m1, qs @ ..], Some((low, high))) = (block, xq.split_at_checked(16))
        else {
            continue;
        };
        let d = half::f16::from_le_bytes([*d0, *d1]).to_f32();
        let m = half::f16::from_le_bytes([*m0, *m1]).to_f32();
        let mut isum = 0i32;
        for ((&q, &l), &h) in qs.iter().zip(low).zip(high) {
            isum += i32::from(q & 0x0F) * i32::from(l) + i32::from(q >> 4) * i32::from(h);
        }
        #[allow(clippy::cast_precision_loss)]
        let dot = d * scale * isum as f32 + m * scaled_sum;
        acc += dot;
    }
    acc
}

/// `y = W x` for a Q4_1 matrix `w` of `rows` rows (each `x.len()` wide),
/// on the current rayon pool.
pub(crate) fn q4_1_matvec(w: &[u8], x: &QuantizedVector, y: &mut [f32]) {
    let row_bytes = x.values.len() / BLOCK * Q4_1_BLOCK_BYTES;
    // Enough rows per task to amortise the scheduling, few enough to balance.
    const ROWS: usize = 64;
    y.par_chunks_mut(ROWS)
        .zip(w.par_chunks(ROWS * row_bytes))
        .for_each(|(out, rows)| {
            for (o, row) in out.iter_mut().zip(rows.chunks_exact(row_bytes)) {
                *o = row_dot(row, x);
            }
        });
}

/// Decodes Q4_1 blocks into f32 (32 values per block), for the dense prompt
/// path.
pub(crate) fn q4_1_decode(src: &[u8], dst: &mut [f32]) {
    for (block, out) in src
        .chunks_exact(Q4_1_BLOCK_BYTES)
        .zip(dst.chunks_exact_mut(BLOCK))
    {
        let (Ok(block), Ok(out)) = (
            <&[u8; Q4_1_BLOCK_BYTES]>::try_from(block),
            <&mut [f32; BLOCK]>::try_from(out),
        ) else {
            continue;
        };
        let [d0, d1, m0, m1, qs @ ..] = block;
        let d = half::f16::from_le_bytes([*d0, *d1]).to_f32();
        let m = half::f16::from_le_bytes([*m0, *m1]).to_f32();
        // Fixed-size arrays: the bounds are known, so the loop unrolls and
        // vectorises.
        let mut values = [0f32; BLOCK];
        for (v, q) in values.iter_mut().zip(qs) {
            *v = f32::from(q & 0x0F);
        }
        for (v, q) in values.iter_mut().skip(BLOCK / 2).zip(qs) {
            *v = f32::from(q >> 4);
        }
        for (o, v) in out.iter_mut().zip(values) {
            *o = v * d + m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Q4_1 row built by hand, and its f32 values.
    fn row(blocks: usize, seed: u32) -> (Vec<u8>, Vec<f32>) {
        let mut bytes = Vec::new();
        let mut values = vec![0f32; blocks * BLOCK];
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            state >> 16
        };
        for b in 0..blocks {
            let d = half::f16::from_f32(0.01 + (next() % 100) as f32 / 1000.0);
            let m = half::f16::from_f32(-0.1 + (next() % 100) as f32 / 500.0);
            bytes.extend_from_slice(&d.to_le_bytes());
            bytes.extend_from_slice(&m.to_le_bytes());
            for j in 0..16 {
                let (lo, hi) = ((next() % 16) as u8, (next() % 16) as u8);
                bytes.push(lo | (hi << 4));
                values[b * BLOCK + j] = f32::from(lo) * d.to_f32() + m.to_f32();
                values[b * BLOCK + 16 + j] = f32::from(hi) * d.to_f32() + m.to_f32();
            }
        }
        (bytes, values)
    }

    #[test]
    fn decode_matches_the_block_layout() {
        let (bytes, values) = row(3, 7);
        let mut out = vec![0f32; values.len()];
        q4_1_decode(&bytes, &mut out);
        assert_eq!(out, values);
    }

    #[test]
    fn matvec_matches_the_f32_product() {
        let (rows, k) = (130, 4 * BLOCK);
        let mut w = Vec::new();
        let mut dense = Vec::new();
        for r in 0..rows {
            let (bytes, values) = row(k / BLOCK, r as u32);
            w.extend(bytes);
            dense.push(values);
        }
        let x: Vec<f32> = (0..k)
            .map(|i| ((i * 37 % 17) as f32 - 8.0) / 10.0)
            .collect();
        let mut y = vec![0f32; rows];
        let quantized = QuantizedVector::new(&x);
        q4_1_matvec(&w, &quantized, &mut y);
        // Exact against the activations as quantized: the kernel itself
        // adds nothing but float rounding.
        let x_as_quantized: Vec<f32> = quantized
            .values
            .iter()
            .enumerate()
            .map(|(i, &q)| f32::from(q) * quantized.scales[i / BLOCK].0)
            .collect();
        for (got, weights) in y.iter().zip(&dense) {
            let want: f32 = weights
                .iter()
                .zip(&x_as_quantized)
                .map(|(a, b)| a * b)
                .sum();
            assert!(
                (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "{got} vs {want}"
            );
            let exact: f32 = weights.iter().zip(&x).map(|(a, b)| a * b).sum();
            // And within the 8-bit activation error of the f32 product.
            let bound: f32 = weights.iter().map(|w| w.abs() * 0.8 / 127.0).sum();
            assert!(
                (got - exact).abs() <= bound,
                "{got} vs {exact} (bound {bound})"
            );
        }
    }
}
