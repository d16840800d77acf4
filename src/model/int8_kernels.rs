//! The inner kernels of the int8 block GEMM (`int8_matmul.rs`): one tile of weight rows against
//! every activation row, for each instruction set the CPU may have, chosen at run time.
//!
//! Shared contract: `values` holds one row tile, per 32-value block `[group (8)][row (tile)][4]`
//! signed bytes, and `scales` `[block][row]`; `out[r * tile + i]` receives activation row `r` dotted
//! with tile row `i`. Activation rows are taken four at a time so each block's weights, once in
//! registers, serve four rows.

use super::int8_matmul::{QuantizedActivations, BLOCK};

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
    pub fn detect() -> Self {
        Self::available()[0]
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
    values: &[i8],
    scales: &[f32],
    x: &QuantizedActivations,
    cols: usize,
    out: &mut [f32],
) {
    let tile = isa.tile();
    let nb = cols / BLOCK;
    assert!(values.len() == nb * tile * BLOCK && scales.len() == nb * tile);
    assert!(x.values.len() * tile == out.len() * cols);
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

fn tile_rows_portable(
    values: &[i8],
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
                    let w = values[(b * tile * 8 + (j / 4) * tile + i) * 4 + j % 4];
                    isum += w as i32 * xv as i32;
                }
                sum += isum as f32 * scales[b * tile + i] * x.scales[r * nb + b];
            }
            *o = sum;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{QuantizedActivations, BLOCK, ROWS};
    use std::arch::x86_64::*;

    /// 16 weight rows per register. Weights are made unsigned (+128, by flipping the sign bit) for
    /// `vpdpbusd`'s u8 × i8 products, and 128 × the activation block's sum is taken back off: the
    /// block's integer dot stays exact.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile_rows_avx512(
        values: &[i8],
        scales: &[f32],
        x: &QuantizedActivations,
        cols: usize,
        out: &mut [f32],
    ) {
        const TILE: usize = 16;
        let nb = cols / BLOCK;
        let m = x.values.len() / cols;
        let flip = _mm512_set1_epi8(i8::MIN);
        let mut r0 = 0;
        while r0 < m {
            let rows = (m - r0).min(ROWS);
            let mut acc = [_mm512_setzero_ps(); ROWS];
            for b in 0..nb {
                let w_ptr = values.as_ptr().add(b * TILE * BLOCK) as *const __m512i;
                let mut w = [_mm512_setzero_si512(); 8];
                for (g, w) in w.iter_mut().enumerate() {
                    *w = _mm512_xor_si512(_mm512_loadu_si512(w_ptr.add(g)), flip);
                }
                let w_scale = _mm512_loadu_ps(scales.as_ptr().add(b * TILE));
                for (i, acc) in acc.iter_mut().enumerate().take(rows) {
                    let r = r0 + i;
                    let x_ptr = x.values.as_ptr().add(r * cols + b * BLOCK) as *const i32;
                    let mut isum = _mm512_set1_epi32(-128 * *x.sums.get_unchecked(r * nb + b));
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

    /// 8 weight rows per register. `vpmaddubsw` needs one unsigned operand: |w| times x carrying
    /// w's sign (|w| ≤ 128, |x| ≤ 127, so its pair sums stay below i16::MAX), then `vpmaddwd`
    /// widens the pairs to i32.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile_rows_avx2(
        values: &[i8],
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
                let w_ptr = values.as_ptr().add(b * TILE * BLOCK) as *const __m256i;
                let w_scale = _mm256_loadu_ps(scales.as_ptr().add(b * TILE));
                for (i, acc) in acc.iter_mut().enumerate().take(rows) {
                    let r = r0 + i;
                    let x_ptr = x.values.as_ptr().add(r * cols + b * BLOCK) as *const i32;
                    let mut isum = _mm256_setzero_si256();
                    for g in 0..8 {
                        let w = _mm256_loadu_si256(w_ptr.add(g));
                        let four = _mm256_set1_epi32(x_ptr.add(g).read_unaligned());
                        let pairs =
                            _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(four, w));
                        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(pairs, ones));
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
