//! The arithmetic of one CPU attention work item: a tile of query vectors that share a kv head,
//! against that head's cache blocks, with the softmax computed online (flash-attention style) so
//! each block is read once and no score row of the whole context is kept.
//!
//! Per chunk of positions the two products are GEMMs over every query vector of the tile
//! (`gemm`, the crate behind candle's CPU matmul, with run-time AVX2 / AVX-512 dispatch); between
//! them the softmax update runs over 8 lanes at a time with a vectorized `exp`.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// A K/V cache element: stored compactly, computed in f32.
pub trait KvElement: Copy + Send + Sync + 'static {
    const ZERO: Self;
    fn from_f32(src: &[f32], dst: &mut [Self]);
    fn to_f32(src: &[Self], dst: &mut [f32]);
}

impl KvElement for f32 {
    const ZERO: Self = 0.0;
    fn from_f32(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }
    fn to_f32(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

impl KvElement for f16 {
    const ZERO: Self = f16::ZERO;
    fn from_f32(src: &[f32], dst: &mut [Self]) {
        dst.convert_from_f32_slice(src);
    }
    fn to_f32(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
}

impl KvElement for bf16 {
    const ZERO: Self = bf16::ZERO;
    fn from_f32(src: &[f32], dst: &mut [Self]) {
        dst.convert_from_f32_slice(src);
    }
    fn to_f32(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
}

/// What every tile of a layer shares.
pub struct TileShape {
    pub head_dim: usize,
    /// Query heads per kv head.
    pub group: usize,
    pub block_size: usize,
    pub scale: f32,
}

/// Per-thread buffers, reused across items and steps.
#[derive(Default)]
pub struct TileScratch {
    /// Scaled query vectors, `[rows * group][head_dim]`.
    queries: Vec<f32>,
    /// Unnormalised outputs, same shape.
    outputs: Vec<f32>,
    /// Running max and sum of exp(score - max) per query vector.
    running_max: Vec<f32>,
    running_sum: Vec<f32>,
    /// The current chunk's K and V as f32, `[position][head_dim]`.
    keys: Vec<f32>,
    values: Vec<f32>,
    /// Scores, then weights, of every query vector for the chunk, `[vector][chunk]`.
    scores: Vec<f32>,
}

const LANES: usize = 8;

/// Positions handled per pair of GEMMs (rounded to whole blocks): large enough that the GEMMs
/// amortise their setup, small enough that K, V and the scores stay in L2.
const CHUNK: usize = 64;

/// `dst[m × n] (+)= lhs[m × k] · rhs[k × n]` in f32 on this thread; `*_rs` / `*_cs` are row and
/// column strides in elements. The `gemm` crate (candle's own matmul) picks AVX2 or AVX-512
/// micro-kernels at run time.
#[allow(clippy::too_many_arguments)]
fn sgemm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
) {
    let last = |rows: usize, rs: usize, cols: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(m > 0 && n > 0 && k > 0);
    assert!(last(m, dst_rs, n, 1) < dst.len());
    assert!(last(m, lhs_rs, k, lhs_cs) < lhs.len() && last(k, rhs_rs, n, rhs_cs) < rhs.len());
    // Safety: the asserts bound every element the strides reach.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// `e^x` of 8 values at once (a scalar `exp` per score would cost more than the two dot products
/// it weighs). Range reduction `x = n·ln2 + r`, |r| ≤ ln2/2, then a degree-7 Taylor polynomial:
/// relative error under 2 ulp. Inputs below -87 (including -inf) give ~0.
#[inline(always)]
fn exp8(x: [f32; LANES]) -> [f32; LANES] {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // An indexed loop over fixed arrays (not `map`, which was left as a call) vectorizes whole.
    let mut out = [0f32; LANES];
    for j in 0..LANES {
        let x = x[j].clamp(-87.0, 88.0);
        let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
        let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
        let mut p: f32 = 1.0 / 5040.0;
        for c in [
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ] {
            p = p.mul_add(r, c);
        }
        out[j] = p * f32::from_bits(((n as i32 + 127) as u32) << 23);
    }
    out
}

/// Causal attention of `rows` consecutive query rows (each `group * head_dim` values, the first at
/// `first_position`) over positions `0..=` their own. `block(b)` gives this kv head's K and V of
/// the `b`-th block of the sequence (`block_size * head_dim` each); `out_row(r)` where row `r`'s
/// `group * head_dim` outputs go.
///
/// Per chunk of positions: S = Q·Kᵀ as one GEMM for every query vector of the tile, the online
/// softmax update of each row (masking positions past the row's own), then O += P·V as a second
/// GEMM.
pub fn attend_tile<'q, 'c, 'o, E: KvElement>(
    tile: &TileShape,
    scratch: &mut TileScratch,
    queries: impl ExactSizeIterator<Item = &'q [f32]>,
    first_position: usize,
    block: impl Fn(usize) -> (&'c [E], &'c [E]),
    mut out_row: impl FnMut(usize) -> &'o mut [f32],
) {
    let (d, bs, group) = (tile.head_dim, tile.block_size, tile.group);
    let chunk = (CHUNK / bs).max(1) * bs;
    let rows = queries.len();
    let vectors = rows * group;
    let TileScratch {
        queries: qs,
        outputs,
        running_max,
        running_sum,
        keys,
        values,
        scores,
    } = scratch;
    qs.clear();
    for row in queries {
        qs.extend(row.iter().map(|x| x * tile.scale));
    }
    outputs.clear();
    outputs.resize(vectors * d, 0.0);
    running_max.clear();
    running_max.resize(vectors, f32::NEG_INFINITY);
    running_sum.clear();
    running_sum.resize(vectors, 0.0);
    keys.resize(chunk * d, 0.0);
    values.resize(chunk * d, 0.0);
    scores.resize(vectors * chunk, 0.0);

    let end = first_position + rows;
    let mut base = 0;
    while base < end {
        let len = (end - base).min(chunk);
        for p in (0..len).step_by(bs) {
            let n = bs.min(len - p);
            let (k, v) = block((base + p) / bs);
            E::to_f32(&k[..n * d], &mut keys[p * d..(p + n) * d]);
            E::to_f32(&v[..n * d], &mut values[p * d..(p + n) * d]);
        }
        // S[vector][p] = q_vector · k_p.
        sgemm(
            (vectors, len, d),
            scores,
            chunk,
            false,
            qs,
            (d, 1),
            keys,
            (1, d),
        );
        for r in 0..rows {
            let position = first_position + r;
            // Positions base..=position of this chunk are visible to row r.
            let visible = (position + 1).saturating_sub(base).min(len);
            for h in 0..group {
                let vector = r * group + h;
                let row = &mut scores[vector * chunk..][..len];
                if visible == 0 {
                    row.fill(0.0);
                    continue;
                }
                let chunk_max = row[..visible]
                    .iter()
                    .fold(f32::NEG_INFINITY, |m, &s| m.max(s));
                let old_max = running_max[vector];
                let new_max = old_max.max(chunk_max);
                let mut sum = 0.0;
                for part in row[..visible].chunks_mut(LANES) {
                    let mut lanes = [f32::NEG_INFINITY; LANES];
                    lanes[..part.len()].copy_from_slice(part);
                    for lane in &mut lanes {
                        *lane -= new_max;
                    }
                    let e = exp8(lanes);
                    part.copy_from_slice(&e[..part.len()]);
                    sum += part.iter().sum::<f32>();
                }
                row[visible..].fill(0.0);
                if new_max > old_max {
                    // exp(-inf) = 0 on the first chunk: nothing accumulated yet.
                    let correction = (old_max - new_max).exp();
                    running_sum[vector] *= correction;
                    outputs[vector * d..][..d]
                        .iter_mut()
                        .for_each(|o| *o *= correction);
                }
                running_sum[vector] += sum;
                running_max[vector] = new_max;
            }
        }
        // O[vector] += Σ_p w[vector][p] · v_p.
        sgemm(
            (vectors, d, len),
            outputs,
            d,
            true,
            scores,
            (chunk, 1),
            values,
            (d, 1),
        );
        base += len;
    }
    for r in 0..rows {
        let out = out_row(r);
        for h in 0..group {
            let vector = r * group + h;
            let inv = 1.0 / running_sum[vector];
            for (o, &x) in out[h * d..(h + 1) * d]
                .iter_mut()
                .zip(&outputs[vector * d..][..d])
            {
                *o = x * inv;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp8_is_within_two_ulp_of_exp() {
        let mut worst = 0f32;
        for i in 0..200_000 {
            let x = -87.0 + i as f32 * (87.0 + 88.0) / 200_000.0;
            let got = exp8([x; LANES])[0];
            let want = (x as f64).exp() as f32;
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 2.5e-7, "relative error {worst}");
        assert!(exp8([f32::NEG_INFINITY; LANES])[0] < 1e-37);
        assert_eq!(exp8([0.0; LANES])[0], 1.0);
    }
}
