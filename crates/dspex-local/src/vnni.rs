//! Q4_1 matrix products with AVX-512 VNNI: the prompt pass's hot loop.
//!
//! Why by hand: the portable prompt path dequantizes every weight matrix
//! to f32 and hands it to candle's f32 GEMM. That writes 4x the bytes the
//! weights take, makes gemm pack them again on every call (a fixed cost of
//! ~150 ms per forward pass on SmolLM2, whatever the number of tokens), and
//! multiplies 16 pairs per instruction. `vpdpbusd` multiplies 64 u8 x i8
//! pairs and adds them into 16 i32 lanes in one instruction, reading the
//! 4-bit weights as they are stored. No crate provides a Q4_1 kernel
//! (candle's CPU `vec_dot` for Q4_1 is scalar, and it has no matrix-matrix
//! path); llama.cpp's equivalent is C.
//!
//! Weights are repacked once, at load, into groups of 16 output rows. Per
//! group and per block of 32 inputs ([`GROUP_BLOCK_BYTES`] bytes):
//! four 64-byte nibble chunks, then the 16 rows' scales `d` and the 16
//! rows' minimums `m` as f32. Byte `4 j + i` of chunk `c` holds weight
//! `8 c + i` of row `j` in its low nibble and weight `8 c + 4 + i` in its
//! high nibble, so that after masking, i32 lane `j` of the chunk holds four
//! consecutive weights of row `j`: one `vpdpbusd` against four activations
//! broadcast to every lane adds four products to each of the 16 rows' dot
//! products. The result lands with one row per lane, so the block's scales
//! apply as one vector multiply-add and nothing is summed across lanes.
//!
//! Activations are quantized per block of 32 to i8 (scale `s = max|x| /
//! 127`), as ggml's Q8_1 does for Q4_1, so a block contributes `d s Σ q_w
//! q_x + m s Σ q_x`. Each output element goes through the same sequence of
//! operations however many rows are multiplied at once, so a prompt token's
//! result does not depend on how the prompt was split (the prompt-prefix
//! cache relies on that).
//!
//! The only `unsafe` in the workspace is here: the two calls into the
//! `#[target_feature]` functions, made with a token that run-time
//! detection hands out.
#![allow(unsafe_code)]

use rayon::prelude::*;

#[cfg(not(target_arch = "x86_64"))]
use crate::kernels;
use crate::kernels::{BLOCK, Q4_1_BLOCK_BYTES};

/// Output rows per group (i32 lanes of a 512-bit register).
const GROUP: usize = 16;
/// Bytes of one 64-byte nibble chunk per 8 inputs of 16 rows.
const CHUNK: usize = 64;
/// Nibble chunks per block of 32 inputs.
const CHUNKS: usize = BLOCK / 8;
/// Bytes per group and block: nibbles, then 16 scales and 16 minimums.
pub(crate) const GROUP_BLOCK_BYTES: usize = CHUNKS * CHUNK + 2 * GROUP * 4;
/// Rows of activations multiplied together (each keeps two registers).
const TILE: usize = 8;

/// Proof that this CPU has AVX-512 F, BW and VNNI.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Vnni(());

impl Vnni {
    /// `Some` when the CPU can run the kernels.
    pub(crate) fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
            {
                return Some(Self(()));
            }
        }
        None
    }
}

/// A Q4_1 matrix `(rows, k)` in the layout described in the module doc.
pub(crate) struct RepackedQ4_1 {
    bytes: Vec<u8>,
    rows: usize,
    k: usize,
}

impl RepackedQ4_1 {
    /// Repacks ggml Q4_1 data. `None` when the shape does not fit the
    /// kernel (rows not a multiple of 16, or the data not `rows x k`).
    pub(crate) fn new(data: &[u8], rows: usize, k: usize) -> Option<Self> {
        if !rows.is_multiple_of(GROUP) || !k.is_multiple_of(BLOCK) || k == 0 {
            return None;
        }
        let blocks = k / BLOCK;
        let row_bytes = blocks * Q4_1_BLOCK_BYTES;
        if data.len() != rows.checked_mul(row_bytes)? {
            return None;
        }
        let mut bytes = Vec::with_capacity(rows / GROUP * blocks * GROUP_BLOCK_BYTES);
        for group in data.chunks_exact(GROUP * row_bytes) {
            let group_rows: Vec<&[u8]> = group.chunks_exact(row_bytes).collect();
            for b in 0..blocks {
                // The 16 rows' block `b`: [d, m, 16 nibble bytes].
                let blocks_of_rows: Vec<&[u8]> = group_rows
                    .iter()
                    .map(|r| r.get(b * Q4_1_BLOCK_BYTES..(b + 1) * Q4_1_BLOCK_BYTES))
                    .collect::<Option<_>>()?;
                for c in 0..CHUNKS {
                    for block in &blocks_of_rows {
                        for i in 0..4 {
                            let lo = nibble(block, 8 * c + i)?;
                            let hi = nibble(block, 8 * c + 4 + i)?;
                            bytes.push(lo | (hi << 4));
                        }
                    }
                }
                // The scales `d` (bytes 0..2), then the minimums `m` (2..4).
                for field in [0, 2] {
                    for block in &blocks_of_rows {
                        let v: [u8; 2] = block.get(field..field + 2)?.try_into().ok()?;
                        let v = half::f16::from_le_bytes(v).to_f32();
                        bytes.extend_from_slice(&v.to_le_bytes());
                    }
                }
            }
        }
        Some(Self { bytes, rows, k })
    }

    /// Bytes held.
    pub(crate) fn len_bytes(&self) -> usize {
        self.bytes.len()
    }
}

/// Weight `w` (0..32) of a Q4_1 block as an integer 0..16.
fn nibble(block: &[u8], w: usize) -> Option<u8> {
    let qs = block.get(4..)?;
    if w < 16 {
        Some(qs.get(w)? & 0x0F)
    } else {
        Some(qs.get(w - 16)? >> 4)
    }
}

/// `rows x k` activations quantized per block of 32: the i8 values packed
/// four to an i32 (the unit one lane multiplies), and per block the scale
/// `s` and `s Σ q`.
pub(crate) struct QuantizedRows {
    words: Vec<i32>,
    scales: Vec<[f32; 2]>,
    rows: usize,
    k: usize,
}

impl QuantizedRows {
    /// Quantizes `x` (`rows x k`, row-major); `k` must be a multiple of 32.
    pub(crate) fn new(cpu: Vnni, x: &[f32], k: usize) -> Option<Self> {
        if k == 0 || !k.is_multiple_of(BLOCK) || !x.len().is_multiple_of(k) {
            return None;
        }
        let rows = x.len() / k;
        let mut words = vec![0i32; x.len() / 4];
        let mut scales = vec![[0f32; 2]; x.len() / BLOCK];
        // Rows in parallel: a prompt's activations are quantized before
        // every matrix product.
        words
            .par_chunks_mut(k / 4)
            .zip(scales.par_chunks_mut(k / BLOCK))
            .zip(x.par_chunks(k))
            .for_each(|((words, scales), x)| {
                // Four i8 per i32, in memory order: the word's
                // little-endian bytes (x86 is little-endian).
                let values: &mut [i8] = bytemuck::cast_slice_mut(words);
                quantize(cpu, x, values, scales);
            });
        Some(Self {
            words,
            scales,
            rows,
            k,
        })
    }
}

/// `out = x wᵀ`: `out` is `x.rows x w.rows`, row-major. Uses the current
/// rayon pool. An error names the mismatched dimensions.
pub(crate) fn matmul(
    _cpu: Vnni,
    w: &RepackedQ4_1,
    x: &QuantizedRows,
    out: &mut [f32],
) -> Result<(), String> {
    let n = w.rows;
    if w.k != x.k || out.len() != x.rows * n || x.rows == 0 {
        return Err(format!(
            "a ({} x {}) Q4_1 matrix times ({} x {}) activations into {} outputs",
            w.rows,
            w.k,
            x.rows,
            x.k,
            out.len()
        ));
    }
    let words_per_row = x.k / 4;
    let blocks = x.k / BLOCK;
    let group_bytes = blocks * GROUP_BLOCK_BYTES;
    let rows: Vec<Row<'_>> = x
        .words
        .chunks_exact(words_per_row)
        .zip(x.scales.chunks_exact(blocks))
        .map(|(words, scales)| Row { words, scales })
        .collect();
    if x.rows == 1 {
        // One row (a single new token): split the output columns instead.
        const GROUPS_PER_TASK: usize = 4;
        out.par_chunks_mut(GROUPS_PER_TASK * GROUP)
            .zip(w.bytes.par_chunks(GROUPS_PER_TASK * group_bytes))
            .for_each(|(out, groups)| {
                run::<1>(groups, blocks, &rows, [out]);
            });
        return Ok(());
    }
    out.par_chunks_mut(TILE * n)
        .zip(rows.par_chunks(TILE))
        .for_each(|(out, tile_rows)| {
            let mut outs = out.chunks_exact_mut(n);
            if tile_rows.len() == TILE {
                let outs: [&mut [f32]; TILE] =
                    std::array::from_fn(|_| outs.next().unwrap_or_default());
                run::<TILE>(&w.bytes, blocks, tile_rows, outs);
            } else {
                // The last, partial tile: four, two, then one row at a time
                // (each pass over the weights serves as many rows as it can).
                let mut rest = tile_rows;
                while !rest.is_empty() {
                    let take = match rest.len() {
                        4.. => 4,
                        2 | 3 => 2,
                        _ => 1,
                    };
                    let (now, later) = rest.split_at(take);
                    rest = later;
                    match take {
                        4 => run::<4>(
                            &w.bytes,
                            blocks,
                            now,
                            std::array::from_fn(|_| outs.next().unwrap_or_default()),
                        ),
                        2 => run::<2>(
                            &w.bytes,
                            blocks,
                            now,
                            std::array::from_fn(|_| outs.next().unwrap_or_default()),
                        ),
                        _ => run::<1>(&w.bytes, blocks, now, [outs.next().unwrap_or_default()]),
                    }
                }
            }
        });
    Ok(())
}

/// One quantized activation row.
#[derive(Clone, Copy)]
struct Row<'a> {
    words: &'a [i32],
    scales: &'a [[f32; 2]],
}

/// Quantizes one row, as `kernels::quantize_block` does block by block
/// (the same values), with AVX-512 where the CPU has it.
fn quantize(_cpu: Vnni, x: &[f32], values: &mut [i8], scales: &mut [[f32; 2]]) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: a `Vnni` exists only when `Vnni::detect` found AVX-512 F,
        // BW and VNNI on this CPU: the features `quantize` is compiled for.
        unsafe { x86::quantize(x, values, scales) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for ((block, values), scale) in x
        .chunks_exact(BLOCK)
        .zip(values.chunks_exact_mut(BLOCK))
        .zip(scales.iter_mut())
    {
        let (s, sum) = kernels::quantize_block(block, values);
        *scale = [s, sum];
    }
}

fn run<const R: usize>(groups: &[u8], blocks: usize, rows: &[Row<'_>], outs: [&mut [f32]; R]) {
    #[cfg(target_arch = "x86_64")]
    {
        let Ok(rows) = <&[Row<'_>; R]>::try_from(rows) else {
            return;
        };
        // SAFETY: `run` is only reached through `matmul`, whose `Vnni`
        // argument exists only when `Vnni::detect` found AVX-512 F, BW and
        // VNNI on this CPU: the features `tile` is compiled for. (The one
        // other `unsafe` is the same call into `x86::quantize`.)
        unsafe { x86::tile::<R>(groups, blocks, rows, outs) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (groups, blocks, rows, outs);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m128i, __m512, __m512i, _mm512_abs_ps, _mm512_add_epi32, _mm512_and_si512,
        _mm512_cvtepi32_ps, _mm512_cvtps_epi32, _mm512_cvtsepi32_epi8, _mm512_dpbusd_epi32,
        _mm512_fmadd_ps, _mm512_max_ps, _mm512_mul_ps, _mm512_reduce_add_epi32,
        _mm512_reduce_max_ps, _mm512_set1_epi8, _mm512_set1_epi32, _mm512_set1_ps,
        _mm512_setzero_ps, _mm512_setzero_si512, _mm512_srli_epi16,
    };

    use super::{BLOCK, CHUNK, CHUNKS, GROUP, GROUP_BLOCK_BYTES, Row};

    /// Per block of 32: scale `s = max|x| / 127`, values `x / s` rounded to
    /// nearest, ties to even (the conversion's default rounding), and
    /// `s Σ q`. The same values as `kernels::quantize_block`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) fn quantize(x: &[f32], values: &mut [i8], scales: &mut [[f32; 2]]) {
        for ((block, out), scale) in x
            .chunks_exact(BLOCK)
            .zip(values.chunks_exact_mut(BLOCK))
            .zip(scales.iter_mut())
        {
            let (first, second) = block.split_at(BLOCK / 2);
            let (lo, hi): (__m512, __m512) = (
                load(bytemuck::cast_slice(first)),
                load(bytemuck::cast_slice(second)),
            );
            let max = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
            let s = max / 127.0;
            let inverse = _mm512_set1_ps(if s > 0.0 { 1.0 / s } else { 0.0 });
            let q_lo = _mm512_cvtps_epi32(_mm512_mul_ps(lo, inverse));
            let q_hi = _mm512_cvtps_epi32(_mm512_mul_ps(hi, inverse));
            let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q_lo, q_hi));
            let (out_lo, out_hi) = out.split_at_mut(BLOCK / 2);
            out_lo.copy_from_slice(&bytemuck::cast::<__m128i, [i8; 16]>(_mm512_cvtsepi32_epi8(
                q_lo,
            )));
            out_hi.copy_from_slice(&bytemuck::cast::<__m128i, [i8; 16]>(_mm512_cvtsepi32_epi8(
                q_hi,
            )));
            #[allow(clippy::cast_precision_loss)]
            {
                *scale = [s, s * sum as f32];
            }
        }
    }

    /// `outs[r][16 g + j] = Σ_blocks …` for every group `g` in `groups`
    /// and the `R` rows. The per-lane arithmetic does not depend on `R`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) fn tile<const R: usize>(
        groups: &[u8],
        blocks: usize,
        rows: &[Row<'_>; R],
        mut outs: [&mut [f32]; R],
    ) {
        let mask = _mm512_set1_epi8(0x0F);
        let group_bytes = blocks * GROUP_BLOCK_BYTES;
        for (g, group) in groups.chunks_exact(group_bytes).enumerate() {
            let mut acc: [__m512; R] = [_mm512_setzero_ps(); R];
            for (b, block) in group.chunks_exact(GROUP_BLOCK_BYTES).enumerate() {
                let (nibbles, scales) = block.split_at(CHUNKS * CHUNK);
                let mut isum: [__m512i; R] = [_mm512_setzero_si512(); R];
                for (c, chunk) in nibbles.chunks_exact(CHUNK).enumerate() {
                    let packed: __m512i = load(chunk);
                    let lo = _mm512_and_si512(packed, mask);
                    let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(packed), mask);
                    for (sum, row) in isum.iter_mut().zip(rows) {
                        let at = b * 8 + 2 * c;
                        let (Some(&x_lo), Some(&x_hi)) = (row.words.get(at), row.words.get(at + 1))
                        else {
                            continue;
                        };
                        *sum = _mm512_dpbusd_epi32(*sum, lo, _mm512_set1_epi32(x_lo));
                        *sum = _mm512_dpbusd_epi32(*sum, hi, _mm512_set1_epi32(x_hi));
                    }
                }
                let (d, m) = scales.split_at(GROUP * 4);
                let (d, m): (__m512, __m512) = (load(d), load(m));
                for ((a, sum), row) in acc.iter_mut().zip(isum).zip(rows) {
                    let Some(&[s, s_sum]) = row.scales.get(b) else {
                        continue;
                    };
                    let products = _mm512_cvtepi32_ps(sum);
                    *a = _mm512_fmadd_ps(products, _mm512_mul_ps(d, _mm512_set1_ps(s)), *a);
                    *a = _mm512_fmadd_ps(m, _mm512_set1_ps(s_sum), *a);
                }
            }
            for (out, a) in outs.iter_mut().zip(acc) {
                if let Some(dst) = out.get_mut(g * GROUP..(g + 1) * GROUP) {
                    dst.copy_from_slice(&bytemuck::cast::<__m512, [f32; GROUP]>(a));
                }
            }
        }
    }

    /// A 64-byte value from the first 64 bytes of `bytes` (zero if shorter,
    /// which the callers' `chunks_exact` rules out).
    #[inline(always)]
    fn load<T: bytemuck::Pod + bytemuck::Zeroable>(bytes: &[u8]) -> T {
        bytes
            .first_chunk::<64>()
            .map_or_else(T::zeroed, |b| bytemuck::pod_read_unaligned(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels;

    /// Deterministic Q4_1 rows and f32 activations.
    fn q4_1_matrix(rows: usize, k: usize, seed: u32) -> Vec<u8> {
        let mut state = seed;
        let mut next = move || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            state >> 16
        };
        let mut bytes = Vec::new();
        for _ in 0..rows * k / BLOCK {
            let d = half::f16::from_f32(0.01 + (next() % 100) as f32 / 1000.0);
            let m = half::f16::from_f32(-0.1 + (next() % 100) as f32 / 500.0);
            bytes.extend_from_slice(&d.to_le_bytes());
            bytes.extend_from_slice(&m.to_le_bytes());
            for _ in 0..16 {
                bytes.push((next() % 256) as u8);
            }
        }
        bytes
    }

    fn activations(rows: usize, k: usize) -> Vec<f32> {
        (0..rows * k)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect()
    }

    /// The product computed one block at a time in plain Rust, from the
    /// same quantized activations.
    fn reference(w: &[u8], n: usize, k: usize, x: &QuantizedRows) -> Vec<f32> {
        let blocks = k / BLOCK;
        let row_bytes = blocks * Q4_1_BLOCK_BYTES;
        let mut out = vec![0f32; x.rows * n];
        for r in 0..x.rows {
            for c in 0..n {
                let mut acc = 0f64;
                for b in 0..blocks {
                    let block = &w[c * row_bytes + b * Q4_1_BLOCK_BYTES..][..Q4_1_BLOCK_BYTES];
                    let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                    let m = half::f16::from_le_bytes([block[2], block[3]]).to_f32();
                    let [s, s_sum] = x.scales[r * blocks + b];
                    let mut isum = 0i64;
                    for i in 0..BLOCK {
                        let word = x.words[r * k / 4 + b * 8 + i / 4];
                        let q = i64::from(word.to_le_bytes()[i % 4] as i8);
                        isum += i64::from(nibble(block, i).unwrap_or(0)) * q;
                    }
                    acc +=
                        f64::from(d) * f64::from(s) * isum as f64 + f64::from(m) * f64::from(s_sum);
                }
                out[r * n + c] = acc as f32;
            }
        }
        out
    }

    /// The CPU token, or `None` (saying the test did not run).
    fn vnni_or_skip() -> Option<Vnni> {
        let cpu = Vnni::detect();
        if cpu.is_none() {
            eprintln!("AVX-512 VNNI not available: this test did NOT RUN");
        }
        cpu
    }

    #[test]
    fn the_kernel_matches_a_plain_reference_for_every_tile_shape() {
        let Some(cpu) = vnni_or_skip() else {
            return;
        };
        let (n, k) = (48, 96);
        let w = q4_1_matrix(n, k, 3);
        let packed = RepackedQ4_1::new(&w, n, k).expect("shape fits");
        // 1 row (column split), 8 rows (one tile), 11 rows (a tile, then
        // 2 + 1), 15 rows (a tile, then 4 + 2 + 1).
        for rows in [1, 8, 11, 15] {
            let x = QuantizedRows::new(cpu, &activations(rows, k), k).expect("shape");
            let mut out = vec![0f32; rows * n];
            matmul(cpu, &packed, &x, &mut out).expect("dims");
            let want = reference(&w, n, k, &x);
            for (i, (g, w)) in out.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "rows {rows}, element {i}: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn a_row_gives_the_same_bits_alone_or_in_a_tile() {
        let Some(cpu) = vnni_or_skip() else {
            return;
        };
        let (n, k) = (32, 64);
        let w = q4_1_matrix(n, k, 9);
        let packed = RepackedQ4_1::new(&w, n, k).expect("shape fits");
        // 15 rows: a full tile, then the partial tile's 4 + 2 + 1.
        let rows = 15;
        let xs = activations(rows, k);
        let all = QuantizedRows::new(cpu, &xs, k).expect("shape");
        let mut together = vec![0f32; rows * n];
        matmul(cpu, &packed, &all, &mut together).expect("dims");
        for r in 0..rows {
            let one = QuantizedRows::new(cpu, &xs[r * k..(r + 1) * k], k).expect("shape");
            let mut alone = vec![0f32; n];
            matmul(cpu, &packed, &one, &mut alone).expect("dims");
            assert_eq!(
                alone.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                together[r * n..(r + 1) * n]
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>(),
                "row {r}"
            );
        }
    }

    #[test]
    fn avx512_quantization_gives_the_portable_values() {
        let Some(cpu) = vnni_or_skip() else {
            return;
        };
        // Ties (x / s exactly k + 0.5), zeros, a zero block and extremes.
        let mut x = activations(3, 64);
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -3.5;
        x[64..96].fill(0.0);
        let q = QuantizedRows::new(cpu, &x, 64).expect("shape");
        let values: &[i8] = bytemuck::cast_slice(&q.words);
        for (b, block) in x.chunks_exact(BLOCK).enumerate() {
            let mut want = [0i8; BLOCK];
            let (s, sum) = kernels::quantize_block(block, &mut want);
            assert_eq!(&values[b * BLOCK..(b + 1) * BLOCK], &want, "block {b}");
            assert_eq!(q.scales[b], [s, sum], "block {b}");
        }
    }

    #[test]
    fn shapes_the_kernel_cannot_take_are_refused() {
        let w = q4_1_matrix(16, 64, 1);
        assert!(RepackedQ4_1::new(&w, 16, 64).is_some());
        assert!(RepackedQ4_1::new(&w[..w.len() - 1], 16, 64).is_none());
        assert!(RepackedQ4_1::new(&q4_1_matrix(8, 64, 1), 8, 64).is_none());
        if let Some(cpu) = Vnni::detect() {
            assert!(QuantizedRows::new(cpu, &[0.0; 33], 33).is_none());
            assert!(QuantizedRows::new(cpu, &[0.0; 40], 32).is_none());
            let packed = RepackedQ4_1::new(&w, 16, 64).expect("fits");
            let x = QuantizedRows::new(cpu, &[0.5; 32], 32).expect("shape");
            let err = matmul(cpu, &packed, &x, &mut [0.0; 16]).expect_err("k differs");
            assert!(
                err.contains("(16 x 64)") && err.contains("(1 x 32)"),
                "{err}"
            );
        }
    }
}
