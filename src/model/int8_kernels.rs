//! The inner kernels of the int8 block GEMM (`int8_matmul.rs`): one tile of weight rows against
//! every activation row, for each instruction set the CPU may have, chosen at run time.
//!
//! Shared contract: `values` holds one row tile in a [`TileValues`] layout and `scales` its
//! `[block][row]` scales; `out[r * tile + i]` receives activation row `r` dotted with tile row `i`.
//! Activation rows are taken four at a time so each block's weights, once unpacked into registers,
//! serve four rows.

use super::int8_matmul::{QuantizedActivations, TileValues, BLOCK};

/// Activation rows that share one load of a block's weights.
const ROWS: usize = 4;

/// The instruction set a matrix is encoded and multiplied for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// `vpdpbusd` on 512-bit registers: 16 weight rows per tile.
    Avx512Vnni,
    /// `vpmaddubsw` + `vpmaddwd` on 256-bit registers: 8 weight rows per tile.
    Avx2,
    /// Plain loops (non-x86 builds); same layout as AVX2.
    Portable,
}

impl Isa {
    /// The fastest this CPU has, unless `RMR1_CPU_KERNELS=avx2|portable` asks for a slower one that
    /// it also has (to measure what a machine without AVX-512 would do, on this one).
    pub fn detect() -> Self {
        let available = Self::available();
        let wanted = match std::env::var("RMR1_CPU_KERNELS").as_deref() {
            Ok("avx2") => Some(Isa::Avx2),
            Ok("portable") => Some(Isa::Portable),
            _ => None,
        };
        wanted
            .filter(|isa| available.contains(isa))
            .unwrap_or(available[0])
    }

    /// Every instruction set this CPU can run, fastest first.
    pub fn available() -> Vec<Self> {
        let mut found = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
            {
                found.push(Isa::Avx512Vnni);
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                found.push(Isa::Avx2);
            }
        }
        found.push(Isa::Portable);
        found
    }

    /// Weight rows per tile.
    pub fn tile(self) -> usize {
        match self {
            Isa::Avx512Vnni => 16,
            Isa::Avx2 | Isa::Portable => 8,
        }
    }
}

/// `out[r * tile + i] = Σ_b isum(x_r,b · w_i,b) · x_scale · w_scale` for every activation row `r`.
pub fn tile_rows(
    isa: Isa,
    values: TileValues,
    scales: &[f32],
    x: &QuantizedActivations,
    cols: usize,
    out: &mut [f32],
) {
    let tile = isa.tile();
    let nb = cols / BLOCK;
    match values {
        TileValues::Bytes(v) => assert_eq!(v.len(), nb * tile * BLOCK),
        TileValues::Packed5 { nibbles, high, .. } => {
            assert!(nibbles.len() == nb * tile * BLOCK / 2 && high.len() == nb * tile)
        }
    }
    assert!(scales.len() == nb * tile && x.values.len() * tile == out.len() * cols);
    match isa {
        // Safety: the features were detected before this `Isa` was chosen, and the asserts above
        // bound every pointer the kernels form.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => unsafe { x86::tile_rows_avx512(values, scales, x, cols, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::tile_rows_avx2(values, scales, x, cols, out) },
        _ => tile_rows_portable(values, scales, x, cols, tile, out),
    }
}

/// Tile row `i`'s integer in column `j` of block `b`.
fn value_at(values: &TileValues, tile: usize, b: usize, i: usize, j: usize) -> i32 {
    let (g, byte) = (j / 4, j % 4);
    match values {
        TileValues::Bytes(v) => v[(b * tile * 8 + g * tile + i) * 4 + byte] as i32,
        TileValues::Packed5 {
            nibbles,
            high,
            offset,
        } => {
            let packed = nibbles[b * tile * 16 + ((g / 2) * tile + i) * 4 + byte];
            let low = if g % 2 == 1 { packed >> 4 } else { packed & 15 } as i32;
            let fifth = ((high[b * tile + i] >> (byte * 8 + g)) & 1) as i32;
            low + 16 * fifth - offset
        }
    }
}

fn tile_rows_portable(
    values: TileValues,
    scales: &[f32],
    x: &QuantizedActivations,
    cols: usize,
    tile: usize,
    out: &mut [f32],
) {
    let nb = cols / BLOCK;
    for (r, out) in out.chunks_exact_mut(tile).enumerate() {
        for (i, o) in out.iter_mut().enumerate() {
            let mut sum = 0f32;
            for b in 0..nb {
                let xb = &x.values[r * cols + b * BLOCK..][..BLOCK];
                let mut isum = 0i32;
                for (j, &xv) in xb.iter().enumerate() {
                    isum += value_at(&values, tile, b, i, j) * xv as i32;
                }
                sum += isum as f32 * scales[b * tile + i] * x.scales[r * nb + b];
            }
            *o = sum;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{QuantizedActivations, TileValues, BLOCK, ROWS};
    use std::arch::x86_64::*;

    /// Group g's fifth bits moved to bit 4 of every byte (see [`TileValues::Packed5`]).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn fifth_bits_512(high: __m512i, g: usize) -> __m512i {
        let shifted = if g <= 4 {
            _mm512_sll_epi32(high, _mm_cvtsi32_si128(4 - g as i32))
        } else {
            _mm512_srl_epi32(high, _mm_cvtsi32_si128(g as i32 - 4))
        };
        _mm512_and_si512(shifted, _mm512_set1_epi8(0x10))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn fifth_bits_256(high: __m256i, g: usize) -> __m256i {
        let shifted = if g <= 4 {
            _mm256_sll_epi32(high, _mm_cvtsi32_si128(4 - g as i32))
        } else {
            _mm256_srl_epi32(high, _mm_cvtsi32_si128(g as i32 - 4))
        };
        _mm256_and_si256(shifted, _mm256_set1_epi8(0x10))
    }

    /// Block `b`'s eight groups for 16 rows as unsigned bytes, and the offset to take off.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn unsigned_block_512(values: &TileValues, b: usize) -> ([__m512i; 8], i32) {
        const TILE: usize = 16;
        let mut w = [_mm512_setzero_si512(); 8];
        match values {
            TileValues::Bytes(v) => {
                let ptr = v.as_ptr().add(b * TILE * BLOCK) as *const __m512i;
                for (g, w) in w.iter_mut().enumerate() {
                    *w =
                        _mm512_xor_si512(_mm512_loadu_si512(ptr.add(g)), _mm512_set1_epi8(i8::MIN));
                }
                (w, 128)
            }
            TileValues::Packed5 {
                nibbles,
                high,
                offset,
            } => {
                let ptr = nibbles.as_ptr().add(b * TILE * BLOCK / 2) as *const __m512i;
                let high = _mm512_loadu_si512(high.as_ptr().add(b * TILE) as *const __m512i);
                let low4 = _mm512_set1_epi8(0x0F);
                for h in 0..4 {
                    let n = _mm512_loadu_si512(ptr.add(h));
                    let lo = _mm512_and_si512(n, low4);
                    let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(n), low4);
                    w[2 * h] = _mm512_or_si512(lo, fifth_bits_512(high, 2 * h));
                    w[2 * h + 1] = _mm512_or_si512(hi, fifth_bits_512(high, 2 * h + 1));
                }
                (w, *offset)
            }
        }
    }

    /// 16 weight rows per register. Weights are unsigned for `vpdpbusd`'s u8 × i8 products (bytes
    /// get +128 by flipping the sign bit; packed values are stored so), and offset × the activation
    /// block's sum is taken back off: the block's integer dot stays exact.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile_rows_avx512(
        values: TileValues,
        scales: &[f32],
        x: &QuantizedActivations,
        cols: usize,
        out: &mut [f32],
    ) {
        const TILE: usize = 16;
        let nb = cols / BLOCK;
        let m = x.values.len() / cols;
        let mut r0 = 0;
        while r0 < m {
            let rows = (m - r0).min(ROWS);
            let mut acc = [_mm512_setzero_ps(); ROWS];
            for b in 0..nb {
                let (w, offset) = unsigned_block_512(&values, b);
                let w_scale = _mm512_loadu_ps(scales.as_ptr().add(b * TILE));
                for (i, acc) in acc.iter_mut().enumerate().take(rows) {
                    let r = r0 + i;
                    let x_ptr = x.values.as_ptr().add(r * cols + b * BLOCK) as *const i32;
                    let mut isum = _mm512_set1_epi32(-offset * *x.sums.get_unchecked(r * nb + b));
                    for (g, &w) in w.iter().enumerate() {
                        let four = _mm512_set1_epi32(x_ptr.add(g).read_unaligned());
                        isum = _mm512_dpbusd_epi32(isum, w, four);
                    }
                    let d =
                        _mm512_mul_ps(w_scale, _mm512_set1_ps(*x.scales.get_unchecked(r * nb + b)));
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), d, *acc);
                }
            }
            for (i, acc) in acc.iter().enumerate().take(rows) {
                _mm512_storeu_ps(out.as_mut_ptr().add((r0 + i) * TILE), *acc);
            }
            r0 += rows;
        }
    }

    /// 8 weight rows per register. `vpmaddubsw` needs one unsigned operand: packed values are
    /// (u ≤ 31, offset taken off after as above); bytes give |w| times x carrying w's sign
    /// (|w| ≤ 128, |x| ≤ 127, so pair sums stay below i16::MAX). `vpmaddwd` widens the pairs.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile_rows_avx2(
        values: TileValues,
        scales: &[f32],
        x: &QuantizedActivations,
        cols: usize,
        out: &mut [f32],
    ) {
        const TILE: usize = 8;
        let nb = cols / BLOCK;
        let m = x.values.len() / cols;
        let ones = _mm256_set1_epi16(1);
        let mut r0 = 0;
        while r0 < m {
            let rows = (m - r0).min(ROWS);
            let mut acc = [_mm256_setzero_ps(); ROWS];
            for b in 0..nb {
                let w_scale = _mm256_loadu_ps(scales.as_ptr().add(b * TILE));
                // Packed values unpacked once per block for all rows of the group.
                let mut unsigned = [_mm256_setzero_si256(); 8];
                let mut offset = 0;
                if let TileValues::Packed5 {
                    nibbles,
                    high,
                    offset: o,
                } = &values
                {
                    let ptr = nibbles.as_ptr().add(b * TILE * BLOCK / 2) as *const __m256i;
                    let high = _mm256_loadu_si256(high.as_ptr().add(b * TILE) as *const __m256i);
                    let low4 = _mm256_set1_epi8(0x0F);
                    for h in 0..4 {
                        let n = _mm256_loadu_si256(ptr.add(h));
                        let lo = _mm256_and_si256(n, low4);
                        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(n), low4);
                        unsigned[2 * h] = _mm256_or_si256(lo, fifth_bits_256(high, 2 * h));
                        unsigned[2 * h + 1] = _mm256_or_si256(hi, fifth_bits_256(high, 2 * h + 1));
                    }
                    offset = *o;
                }
                for (i, acc) in acc.iter_mut().enumerate().take(rows) {
                    let r = r0 + i;
                    let x_ptr = x.values.as_ptr().add(r * cols + b * BLOCK) as *const i32;
                    let mut isum = _mm256_set1_epi32(-offset * *x.sums.get_unchecked(r * nb + b));
                    match &values {
                        TileValues::Bytes(v) => {
                            let w_ptr = v.as_ptr().add(b * TILE * BLOCK) as *const __m256i;
                            for g in 0..8 {
                                let four = _mm256_set1_epi32(x_ptr.add(g).read_unaligned());
                                let w = _mm256_loadu_si256(w_ptr.add(g));
                                let pairs = _mm256_maddubs_epi16(
                                    _mm256_sign_epi8(w, w),
                                    _mm256_sign_epi8(four, w),
                                );
                                isum = _mm256_add_epi32(isum, _mm256_madd_epi16(pairs, ones));
                            }
                        }
                        TileValues::Packed5 { .. } => {
                            // Pair sums of u ≤ 31 and |x| ≤ 127 are ≤ 7,874, so four groups add
                            // up in 16 bits (≤ 31,496) before one widening.
                            for (k, quad) in unsigned.chunks_exact(4).enumerate() {
                                let mut pairs = _mm256_setzero_si256();
                                for (g, &w) in quad.iter().enumerate() {
                                    let four =
                                        _mm256_set1_epi32(x_ptr.add(4 * k + g).read_unaligned());
                                    pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(w, four));
                                }
                                isum = _mm256_add_epi32(isum, _mm256_madd_epi16(pairs, ones));
                            }
                        }
                    }
                    let d =
                        _mm256_mul_ps(w_scale, _mm256_set1_ps(*x.scales.get_unchecked(r * nb + b)));
                    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), d, *acc);
                }
            }
            for (i, acc) in acc.iter().enumerate().take(rows) {
                _mm256_storeu_ps(out.as_mut_ptr().add((r0 + i) * TILE), *acc);
            }
            r0 += rows;
        }
    }
}
