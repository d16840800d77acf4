//! Matmul for GGUF's 32-value block formats (Q4_0, Q5_0, Q8_0) that reuses each weight block across
//! all rows of a batch.
//!
//! candle's CPU kernels for these formats compute one (row, column) dot product at a time — Q5_0 with
//! a scalar loop — so a batch of 16 decode tokens costs 16 single-token matmuls and continuous batching
//! gains nothing. Here each weight block is decoded once per tile of activation rows. Weights are
//! re-encoded at load, exactly (every value is an integer times its block's scale): Q5_0 keeps its
//! 5-bit packing (decode is memory-bound, so bytes matter) with the scale widened to f32; Q4_0 and
//! Q8_0 become plain signed bytes. Activations are quantized per 32 values to 8 bits exactly as
//! ggml's Q8_0 (what candle does too); the integer dot of each block is exact, and block results are
//! accumulated in eight f32 lanes, so results differ from candle's scalar sum only by f32 rounding.

use super::parallel::{parallel_for, SharedMut};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{bail, Device, Result, Tensor};
use half::f16;

const BLOCK: usize = 32;
/// Activation rows that share one decode of a weight block.
const ROW_TILE: usize = 8;

/// How the 32 integers of each weight block are stored.
#[derive(Debug, Clone)]
enum BlockValues {
    /// One signed byte per value (Q4_0, Q8_0).
    Bytes(Vec<i8>),
    /// Q5_0's packing: per block, 32 high bits and 16 bytes of low nibbles (values 0..32, minus 16).
    FiveBit {
        high: Vec<u32>,
        nibbles: Vec<[u8; 16]>,
    },
}

/// A `[rows, cols]` weight matrix as integers with one f32 scale per 32 consecutive values of a row.
#[derive(Debug, Clone)]
pub struct Int8BlockMatrix {
    rows: usize,
    cols: usize,
    values: BlockValues,
    scales: Vec<f32>,
}

/// Activations quantized like ggml's Q8_0: per 32 values, a scale rounded through f16 and bytes.
struct QuantizedActivations {
    values: Vec<i8>,
    scales: Vec<f32>,
}

fn quantize_activations(x: &[f32]) -> QuantizedActivations {
    let mut values = vec![0i8; x.len()];
    let mut scales = vec![0f32; x.len() / BLOCK];
    for ((block, out), scale) in x
        .chunks_exact(BLOCK)
        .zip(values.chunks_exact_mut(BLOCK))
        .zip(scales.iter_mut())
    {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        *scale = f16::from_f32(d).to_f32();
        for (q, &v) in out.iter_mut().zip(block) {
            *q = (v * id).round() as i8;
        }
    }
    QuantizedActivations { values, scales }
}

impl Int8BlockMatrix {
    /// Whether this format is handled here (otherwise candle's `QMatMul` is used).
    pub fn supports(dtype: GgmlDType) -> bool {
        matches!(dtype, GgmlDType::Q4_0 | GgmlDType::Q5_0 | GgmlDType::Q8_0)
    }

    pub fn from_qtensor(t: &QTensor) -> Result<Self> {
        let (rows, cols) = t.shape().dims2()?;
        if !cols.is_multiple_of(BLOCK) {
            bail!("{cols} columns are not a multiple of {BLOCK}");
        }
        let data = t.data()?;
        let blocks = rows * cols / BLOCK;
        let block_bytes = match t.dtype() {
            GgmlDType::Q4_0 => 18,
            GgmlDType::Q5_0 => 22,
            GgmlDType::Q8_0 => 34,
            other => bail!("{other:?} is not a 32-value block format handled here"),
        };
        if data.len() != blocks * block_bytes {
            bail!("{} bytes for {blocks} blocks of {block_bytes}", data.len());
        }
        let raw_blocks = data.chunks_exact(block_bytes);
        let scales = raw_blocks
            .clone()
            .map(|raw| f16::from_le_bytes([raw[0], raw[1]]).to_f32())
            .collect();
        let values = match t.dtype() {
            GgmlDType::Q5_0 => BlockValues::FiveBit {
                high: raw_blocks
                    .clone()
                    .map(|raw| u32::from_le_bytes([raw[2], raw[3], raw[4], raw[5]]))
                    .collect(),
                nibbles: raw_blocks
                    .map(|raw| raw[6..22].try_into().expect("16 bytes"))
                    .collect(),
            },
            dtype => {
                let mut bytes = vec![0i8; rows * cols];
                for (raw, out) in raw_blocks.zip(bytes.chunks_exact_mut(BLOCK)) {
                    if dtype == GgmlDType::Q8_0 {
                        for (o, &q) in out.iter_mut().zip(&raw[2..34]) {
                            *o = q as i8;
                        }
                    } else {
                        // Q4_0: value j in the low nibble of byte j, value j+16 in its high nibble.
                        for j in 0..16 {
                            out[j] = (raw[2 + j] & 0x0F) as i8 - 8;
                            out[j + 16] = (raw[2 + j] >> 4) as i8 - 8;
                        }
                    }
                }
                BlockValues::Bytes(bytes)
            }
        };
        Ok(Self {
            rows,
            cols,
            values,
            scales,
        })
    }

    /// The 32 integers of block `b` (counting over the whole matrix), for the portable path and tests.
    fn block(&self, b: usize) -> [i8; BLOCK] {
        let mut out = [0i8; BLOCK];
        match &self.values {
            BlockValues::Bytes(v) => out.copy_from_slice(&v[b * BLOCK..(b + 1) * BLOCK]),
            BlockValues::FiveBit { high, nibbles } => {
                for j in 0..16 {
                    let hi0 = (((high[b] >> j) & 1) << 4) as u8;
                    let hi1 = (((high[b] >> (j + 16)) & 1) << 4) as u8;
                    out[j] = ((nibbles[b][j] & 0x0F) | hi0) as i8 - 16;
                    out[j + 16] = ((nibbles[b][j] >> 4) | hi1) as i8 - 16;
                }
            }
        }
        out
    }

    /// `x [m, cols] (f32) -> x Wᵀ [m, rows]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.cols {
            bail!("input has {k} features, weight expects {}", self.cols);
        }
        let x: Vec<f32> = x.contiguous()?.flatten_all()?.to_vec1()?;
        let xq = quantize_activations(&x);
        let n = self.rows;
        let mut out = vec![0f32; m * n];
        let shared = SharedMut::new(&mut out);
        parallel_for(n, |cols| {
            let mut column = vec![0f32; m];
            for col in cols {
                self.dot_rows(col, &xq, &mut column);
                for (row, &v) in column.iter().enumerate() {
                    // Safety: every column index is handed out exactly once, so each output
                    // element is written by one work item.
                    unsafe { shared.write(row * n + col, v) };
                }
            }
        });
        Tensor::from_vec(out, (m, n), &Device::Cpu)
    }

    /// `out[r] = Σ_b isum(w_col,b · x_r,b) · w_scale · x_scale` for every activation row `r`.
    fn dot_rows(&self, col: usize, x: &QuantizedActivations, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // Safety: AVX2 was just detected; `col` < rows and `x` holds `out.len()` rows of `cols`.
                unsafe { avx2::dot_rows(self, col, x, out) };
                return;
            }
        }
        let nb = self.cols / BLOCK;
        for (r, o) in out.iter_mut().enumerate() {
            let mut sum = 0f32;
            for b in 0..nb {
                let w = self.block(col * nb + b);
                let xr = &x.values[r * self.cols + b * BLOCK..][..BLOCK];
                let isum: i32 = w.iter().zip(xr).map(|(&a, &c)| a as i32 * c as i32).sum();
                sum += isum as f32 * self.scales[col * nb + b] * x.scales[r * nb + b];
            }
            *o = sum;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BlockValues, Int8BlockMatrix, QuantizedActivations, BLOCK, ROW_TILE};
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0b01));
        _mm_cvtss_f32(s)
    }

    /// Q5_0 block `b` as 32 signed bytes: low nibbles of the 16 packed bytes are values 0..16, high
    /// nibbles values 16..32; bit j of `high` adds 16 to value j; then 16 is subtracted.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn decode_five_bit(high: u32, nibbles: &[u8; 16]) -> __m256i {
        let packed = _mm_loadu_si128(nibbles.as_ptr() as *const __m128i);
        let low_mask = _mm256_set1_epi8(0x0F);
        let values = _mm256_and_si256(
            _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed),
            low_mask,
        );
        // Byte j of the result looks at byte j/8 of `high` and tests bit j%8 there.
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(high as i32),
            _mm256_set_epi64x(
                0x0303_0303_0303_0303,
                0x0202_0202_0202_0202,
                0x0101_0101_0101_0101,
                0,
            ),
        );
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let is_set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
        let fives = _mm256_or_si256(values, _mm256_and_si256(is_set, _mm256_set1_epi8(0x10)));
        _mm256_sub_epi8(fives, _mm256_set1_epi8(16))
    }

    #[target_feature(enable = "avx2", enable = "fma")]
    pub(super) unsafe fn dot_rows(
        w: &Int8BlockMatrix,
        col: usize,
        x: &QuantizedActivations,
        out: &mut [f32],
    ) {
        let k = w.cols;
        let nb = k / BLOCK;
        let first = col * nb;
        let m = out.len();
        let ones = _mm256_set1_epi16(1);
        let xv = x.values.as_ptr();
        let xs = x.scales.as_ptr();
        let mut r0 = 0;
        while r0 < m {
            let rows = (m - r0).min(ROW_TILE);
            let mut acc = [_mm256_setzero_ps(); ROW_TILE];
            for b in 0..nb {
                let wv = match &w.values {
                    BlockValues::Bytes(v) => {
                        _mm256_loadu_si256(v.as_ptr().add((first + b) * BLOCK) as *const __m256i)
                    }
                    BlockValues::FiveBit { high, nibbles } => decode_five_bit(
                        *high.get_unchecked(first + b),
                        nibbles.get_unchecked(first + b),
                    ),
                };
                // |w| as unsigned bytes times x carrying w's sign: maddubs then sums pairs exactly
                // (|w| <= 128, |x| <= 127, so pair sums stay below i16::MAX).
                let abs_w = _mm256_sign_epi8(wv, wv);
                let scale = *w.scales.get_unchecked(first + b);
                for (i, acc) in acc.iter_mut().enumerate().take(rows) {
                    let r = r0 + i;
                    let xb = _mm256_loadu_si256(xv.add(r * k + b * BLOCK) as *const __m256i);
                    let dot = _mm256_madd_epi16(
                        _mm256_maddubs_epi16(abs_w, _mm256_sign_epi8(xb, wv)),
                        ones,
                    );
                    let d = _mm256_set1_ps(scale * *xs.add(r * nb + b));
                    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), d, *acc);
                }
            }
            for i in 0..rows {
                out[r0 + i] = hsum(acc[i]);
            }
            r0 += rows;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QMatMul;
    use candle_core::Module;

    fn random_input(m: usize, k: usize, seed: u64) -> Tensor {
        let mut s = seed;
        let data: Vec<f32> = (0..m * k)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
            })
            .collect();
        Tensor::from_vec(data, (m, k), &Device::Cpu).unwrap()
    }

    fn check(dtype: GgmlDType) {
        let (n, k) = (40, 256);
        let w = random_input(n, k, 1);
        let q = QTensor::quantize(&w, dtype).unwrap();
        let ours = Int8BlockMatrix::from_qtensor(&q).unwrap();
        // Re-encoding is exact: our integers times scales are candle's dequantized weights.
        let deq: Vec<f32> = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (b, chunk) in deq.chunks_exact(BLOCK).enumerate() {
            let ints = ours.block(b);
            for (j, &d) in chunk.iter().enumerate() {
                assert_eq!(
                    ints[j] as f32 * ours.scales[b],
                    d,
                    "{dtype:?} block {b} value {j}"
                );
            }
        }
        let candle = QMatMul::from_qtensor(q).unwrap();
        for m in [1, 3, 4, 9] {
            let x = random_input(m, k, 7 + m as u64);
            let a: Vec<Vec<f32>> = ours.forward(&x).unwrap().to_vec2().unwrap();
            let b: Vec<Vec<f32>> = candle.forward(&x).unwrap().to_vec2().unwrap();
            for (ra, rb) in a.iter().zip(&b) {
                for (va, vb) in ra.iter().zip(rb) {
                    // Same integer dots; only the f32 summation order of 8 block results differs.
                    assert!(
                        (va - vb).abs() <= 1e-5 * vb.abs().max(1.0),
                        "{dtype:?} m={m}: {va} vs {vb}"
                    );
                }
            }
        }
    }

    #[test]
    fn q5_0_matches_candle() {
        check(GgmlDType::Q5_0);
    }

    #[test]
    fn q8_0_matches_candle() {
        check(GgmlDType::Q8_0);
    }

    #[test]
    fn q4_0_matches_candle() {
        check(GgmlDType::Q4_0);
    }
}
