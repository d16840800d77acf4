//! Matmul for GGUF's 32-value block formats (Q4_0, Q5_0, Q8_0): a register-tiled int8 GEMM.
//!
//! candle's CPU kernels for these formats compute one (row, column) dot product at a time — Q5_0 with
//! a scalar loop — so a batch of prompt tokens costs as many matrix-vector products and continuous
//! batching gains nothing. Here weights are re-encoded at load, exactly (every value is an integer
//! times its block's scale), in tiles of [`Isa::tile`] weight rows: per tile and block, four values
//! of every tile row side by side for each group of four columns. One AVX-512 VNNI `vpdpbusd` then
//! multiplies four values of one activation row with the same four values of 16 weight rows, so
//! each weight load serves a whole tile of outputs and is reused by every activation row of the
//! batch (`int8_kernels.rs`; AVX2 does the same with 8 rows per register). Activations are
//! quantized per 32 values to 8 bits exactly as ggml's Q8_0 (what candle and llama.cpp do for these
//! formats); the integer dot of each block is exact, so results differ from candle's only by f32
//! rounding.
//!
//! Q8_0 is kept as signed bytes. Q5_0 and Q4_0 stay at 5 bits a value ([`TileValues::Packed5`]):
//! decoding one sequence is bound by memory bandwidth, and bytes would read 45% more than the
//! file's own packing; unpacking in registers is cheap next to the loads it saves.
//!
//! The instruction set is chosen at load from what the CPU has (the crate is built for x86-64-v3,
//! so AVX2 is the floor on x86; AVX-512 VNNI is used where present) and fixes the tile width.

use super::int8_kernels::{self, Isa};
use super::parallel::{parallel_for, SharedMut};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{bail, Device, Result, Tensor};
use half::f16;
use std::cell::RefCell;

pub(super) const BLOCK: usize = 32;

/// A `[rows, cols]` weight matrix as small integers with one f32 scale per 32 consecutive values
/// of a row, laid out in row tiles for [`Isa`]'s kernels.
#[derive(Debug, Clone)]
pub struct Int8BlockMatrix {
    rows: usize,
    cols: usize,
    isa: Isa,
    values: Encoded,
    /// Per row tile and block: `[row in tile]` scales.
    scales: Vec<f32>,
}

/// The integers of every tile, in one of the layouts [`TileValues`] describes (rows past `rows`
/// are zero).
#[derive(Debug, Clone)]
enum Encoded {
    Bytes(Vec<i8>),
    Packed5 {
        nibbles: Vec<u8>,
        high: Vec<u32>,
        offset: i32,
    },
}

/// One row tile's integers as the kernels read them; `tile` rows, `nb` blocks.
pub(super) enum TileValues<'a> {
    /// Signed bytes; per block `[group of 4 columns (8)][row][4]`.
    Bytes(&'a [i8]),
    /// Unsigned 5-bit `u` with value `u - offset`. Per block, `nibbles` is
    /// `[8-column group h (4)][row][4 bytes]`, byte j holding column 8h + j in its low nibble and
    /// 8h + 4 + j in its high one, so one load yields two groups of four; `high[row]` holds the fifth
    /// bits, bit g of byte j for column 4g + j, so a shift of the whole word lines up every byte
    /// of one group at once.
    Packed5 {
        nibbles: &'a [u8],
        high: &'a [u32],
        offset: i32,
    },
}

/// Activations quantized like ggml's Q8_0: per 32 values, a scale rounded through f16 and bytes;
/// plus each block's byte sum, which the VNNI kernel's unsigned weight encoding needs.
pub(super) struct QuantizedActivations {
    pub values: Vec<i8>,
    pub scales: Vec<f32>,
    pub sums: Vec<i32>,
}

fn quantize_activations(x: &[f32]) -> QuantizedActivations {
    let mut values = vec![0i8; x.len()];
    let mut scales = vec![0f32; x.len() / BLOCK];
    let mut sums = vec![0i32; x.len() / BLOCK];
    for (((block, out), scale), sum) in x
        .chunks_exact(BLOCK)
        .zip(values.chunks_exact_mut(BLOCK))
        .zip(scales.iter_mut())
        .zip(sums.iter_mut())
    {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        *scale = f16::from_f32(d).to_f32();
        for (q, &v) in out.iter_mut().zip(block) {
            *q = (v * id).round() as i8;
        }
        *sum = out.iter().map(|&q| q as i32).sum();
    }
    QuantizedActivations {
        values,
        scales,
        sums,
    }
}

/// Where column `j` (0..32) of a block goes in the packed layout: (8-column group, byte, high
/// nibble?) and the bit of the row's high word that holds its fifth bit.
fn packed_position(j: usize) -> (usize, usize, bool, u32) {
    let (g, byte) = (j / 4, j % 4);
    (g / 2, byte, g % 2 == 1, (byte * 8 + g) as u32)
}

/// The 32 integers and the scale of one raw GGUF block.
fn decode_block(dtype: GgmlDType, raw: &[u8]) -> ([i8; BLOCK], f32) {
    let scale = f16::from_le_bytes([raw[0], raw[1]]).to_f32();
    let mut out = [0i8; BLOCK];
    match dtype {
        GgmlDType::Q8_0 => {
            for (o, &q) in out.iter_mut().zip(&raw[2..34]) {
                *o = q as i8;
            }
        }
        GgmlDType::Q5_0 => {
            // 32 high bits, then value j in the low nibble of byte j and value j+16 in its high one.
            let high = u32::from_le_bytes([raw[2], raw[3], raw[4], raw[5]]);
            for j in 0..16 {
                let hi0 = (((high >> j) & 1) << 4) as u8;
                let hi1 = (((high >> (j + 16)) & 1) << 4) as u8;
                out[j] = ((raw[6 + j] & 0x0F) | hi0) as i8 - 16;
                out[j + 16] = ((raw[6 + j] >> 4) | hi1) as i8 - 16;
            }
        }
        _ => {
            // Q4_0: value j in the low nibble of byte j, value j+16 in its high nibble.
            for j in 0..16 {
                out[j] = (raw[2 + j] & 0x0F) as i8 - 8;
                out[j + 16] = (raw[2 + j] >> 4) as i8 - 8;
            }
        }
    }
    (out, scale)
}

thread_local! {
    /// One row tile's outputs for every activation row, before they are spread into the result.
    static TILE_OUT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl Int8BlockMatrix {
    /// Whether this format is handled here (otherwise candle's `QMatMul` is used).
    pub fn supports(dtype: GgmlDType) -> bool {
        matches!(dtype, GgmlDType::Q4_0 | GgmlDType::Q5_0 | GgmlDType::Q8_0)
    }

    pub fn from_qtensor(t: &QTensor) -> Result<Self> {
        Self::from_qtensor_for(t, Isa::detect())
    }

    /// Encodes for a given instruction set (tests run every one the machine has).
    pub(super) fn from_qtensor_for(t: &QTensor, isa: Isa) -> Result<Self> {
        let (rows, cols) = t.shape().dims2()?;
        if !cols.is_multiple_of(BLOCK) {
            bail!("{cols} columns are not a multiple of {BLOCK}");
        }
        let block_bytes = match t.dtype() {
            GgmlDType::Q4_0 => 18,
            GgmlDType::Q5_0 => 22,
            GgmlDType::Q8_0 => 34,
            other => bail!("{other:?} is not a 32-value block format handled here"),
        };
        let data = t.data()?;
        let nb = cols / BLOCK;
        if data.len() != rows * nb * block_bytes {
            bail!(
                "{} bytes for {} blocks of {block_bytes}",
                data.len(),
                rows * nb
            );
        }
        let (dtype, tile) = (t.dtype(), isa.tile());
        let padded_rows = rows.next_multiple_of(tile);
        let mut scales = vec![0f32; padded_rows * nb];
        // Q8_0 as signed bytes; Q5_0 / Q4_0 as unsigned 5-bit values.
        let offset = match dtype {
            GgmlDType::Q5_0 => Some(16),
            GgmlDType::Q4_0 => Some(8),
            _ => None,
        };
        let mut values = match offset {
            None => Encoded::Bytes(vec![0i8; padded_rows * cols]),
            Some(offset) => Encoded::Packed5 {
                nibbles: vec![0u8; padded_rows * cols / 2],
                high: vec![0u32; padded_rows * nb],
                offset,
            },
        };
        for (index, raw) in data.chunks_exact(block_bytes).enumerate() {
            let (row, b) = (index / nb, index % nb);
            let (ti, i) = (row / tile, row % tile);
            let (ints, scale) = decode_block(dtype, raw);
            let tile_block = ti * nb + b;
            match &mut values {
                Encoded::Bytes(bytes) => {
                    let base = tile_block * tile * BLOCK;
                    for (g, four) in ints.chunks_exact(4).enumerate() {
                        let at = base + (g * tile + i) * 4;
                        bytes[at..at + 4].copy_from_slice(four);
                    }
                }
                Encoded::Packed5 {
                    nibbles,
                    high,
                    offset,
                } => {
                    let base = tile_block * tile * BLOCK / 2;
                    for (j, &v) in ints.iter().enumerate() {
                        let u = (v as i32 + *offset) as u8;
                        let (h, byte, upper, bit) = packed_position(j);
                        let at = base + (h * tile + i) * 4 + byte;
                        nibbles[at] |= if upper { (u & 15) << 4 } else { u & 15 };
                        high[tile_block * tile + i] |= ((u >> 4) as u32 & 1) << bit;
                    }
                }
            }
            scales[tile_block * tile + i] = scale;
        }
        Ok(Self {
            rows,
            cols,
            isa,
            values,
            scales,
        })
    }

    /// Value `(row, col)` as (integer, its block's scale): for tests of the encoding.
    #[cfg(test)]
    fn value(&self, row: usize, col: usize) -> (i32, f32) {
        let (tile, nb) = (self.isa.tile(), self.cols / BLOCK);
        let (t, i, b, j) = (row / tile, row % tile, col / BLOCK, col % BLOCK);
        let tile_block = t * nb + b;
        let scale = self.scales[tile_block * tile + i];
        match &self.values {
            Encoded::Bytes(bytes) => {
                let base = tile_block * tile * BLOCK;
                (bytes[base + ((j / 4) * tile + i) * 4 + j % 4] as i32, scale)
            }
            Encoded::Packed5 {
                nibbles,
                high,
                offset,
            } => {
                let (h, byte, upper, bit) = packed_position(j);
                let packed = nibbles[tile_block * tile * BLOCK / 2 + (h * tile + i) * 4 + byte];
                let low = if upper { packed >> 4 } else { packed & 15 } as i32;
                let fifth = ((high[tile_block * tile + i] >> bit) & 1) as i32;
                (low + 16 * fifth - offset, scale)
            }
        }
    }

    /// Tile `t`'s integers.
    fn tile_values(&self, t: usize) -> TileValues<'_> {
        let per_tile = self.cols / BLOCK * self.isa.tile();
        match &self.values {
            Encoded::Bytes(bytes) => {
                TileValues::Bytes(&bytes[t * per_tile * BLOCK..][..per_tile * BLOCK])
            }
            Encoded::Packed5 {
                nibbles,
                high,
                offset,
            } => TileValues::Packed5 {
                nibbles: &nibbles[t * per_tile * BLOCK / 2..][..per_tile * BLOCK / 2],
                high: &high[t * per_tile..][..per_tile],
                offset: *offset,
            },
        }
    }

    /// `x [m, cols] (f32) -> x Wᵀ [m, rows]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.cols {
            bail!("input has {k} features, weight expects {}", self.cols);
        }
        let x: Vec<f32> = x.contiguous()?.flatten_all()?.to_vec1()?;
        let xq = quantize_activations(&x);
        let (n, tile, nb) = (self.rows, self.isa.tile(), self.cols / BLOCK);
        let tile_len = nb * tile;
        let mut out = vec![0f32; m * n];
        let shared = SharedMut::new(&mut out);
        parallel_for(n.div_ceil(tile), |tiles| {
            TILE_OUT.with(|scratch| {
                let scratch = &mut scratch.borrow_mut();
                scratch.resize(m * tile, 0.0);
                for t in tiles {
                    let scales = &self.scales[t * tile_len..][..tile_len];
                    let values = self.tile_values(t);
                    int8_kernels::tile_rows(self.isa, values, scales, &xq, self.cols, scratch);
                    let (first, width) = (t * tile, tile.min(n - t * tile));
                    for r in 0..m {
                        // Safety: tile `t` owns columns first..first + width of every row.
                        let dst = unsafe { shared.slice(r * n + first, width) };
                        dst.copy_from_slice(&scratch[r * tile..r * tile + width]);
                    }
                }
            })
        });
        Tensor::from_vec(out, (m, n), &Device::Cpu)
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
        for isa in Isa::available() {
            check_on(dtype, isa);
        }
    }

    fn check_on(dtype: GgmlDType, isa: Isa) {
        // Fewer rows than a tile, one block per row; a partial last tile (17 = 16 + 1) and three
        // blocks; 40 rows of 8 blocks (a partial tile at width 16, whole ones at 8).
        for (n, k) in [(5, 32), (17, 96), (40, 256)] {
            let w = random_input(n, k, 1 + n as u64);
            check_shape(dtype, isa, &w);
        }
        // Every weight and activation at ±max, signs alternating: the largest pair sums the
        // AVX2 kernel's 16-bit intermediate products can reach.
        let (n, k) = (16, 64);
        let extreme: Vec<f32> = (0..n * k)
            .map(|i| if (i + i / k) % 2 == 0 { 3.0 } else { -3.0 })
            .collect();
        check_shape(
            dtype,
            isa,
            &Tensor::from_vec(extreme, (n, k), &Device::Cpu).unwrap(),
        );
    }

    fn check_shape(dtype: GgmlDType, isa: Isa, w: &Tensor) {
        let (_, k) = w.dims2().unwrap();
        let q = QTensor::quantize(w, dtype).unwrap();
        let ours = Int8BlockMatrix::from_qtensor_for(&q, isa).unwrap();
        // Re-encoding is exact: our integers times scales are candle's dequantized weights.
        let deq: Vec<f32> = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (index, &d) in deq.iter().enumerate() {
            let (row, col) = (index / k, index % k);
            let (int, scale) = ours.value(row, col);
            assert_eq!(int as f32 * scale, d, "{dtype:?} {isa:?} ({row}, {col})");
        }
        let candle = QMatMul::from_qtensor(q).unwrap();
        // Row counts around the kernels' 4-row groups, and the weights themselves as activations
        // (all at ±127 for the extreme matrix).
        let mut inputs: Vec<Tensor> = [1, 3, 4, 5, 9]
            .map(|m| random_input(m, k, 7 + m as u64))
            .into();
        inputs.push(w.clone());
        for x in inputs {
            let m = x.dims()[0];
            let a: Vec<Vec<f32>> = ours.forward(&x).unwrap().to_vec2().unwrap();
            let b: Vec<Vec<f32>> = candle.forward(&x).unwrap().to_vec2().unwrap();
            for (ra, rb) in a.iter().zip(&b) {
                for (va, vb) in ra.iter().zip(rb) {
                    // Same integer dots; only the f32 summation order of 8 block results differs.
                    assert!(
                        (va - vb).abs() <= 1e-5 * vb.abs().max(1.0),
                        "{dtype:?} {isa:?} m={m}: {va} vs {vb}"
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
