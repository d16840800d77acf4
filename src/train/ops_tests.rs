//! Forward checks against plain-loop references, and central-difference gradient checks in f64 for
//! every differentiable input.

use super::*;
use candle_core::{Device, Var};

/// Deterministic values in [-1, 1) (xorshift64*), so failures reproduce.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        bits as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.next()).collect()
    }
}

fn t64(data: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

pub(super) fn rand64(rng: &mut Rng, shape: &[usize]) -> Tensor {
    t64(rng.vec(shape.iter().product()), shape)
}

fn flat64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

pub(super) fn flat32(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

pub(super) fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

/// Relative tolerance of the f64 gradient checks: step 1e-5 gives truncation error ~1e-10 and
/// rounding error ~1e-11 on O(1) values, so 1e-6 leaves wide margin while catching any wrong term.
const FD_STEP: f64 = 1e-5;
const FD_TOL: f64 = 1e-6;

/// Checks autograd against central differences for every input of `f`, with the scalar
/// `sum(f(inputs) ⊙ r)` for a fixed random `r`. Inputs must be f64.
fn grad_check(f: impl Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor], seed: u64) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let tracked: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&tracked).unwrap();
    let r = rand64(&mut Rng::new(seed), out.dims());
    let scalar = |ts: &[Tensor]| -> f64 {
        let o = f(ts).unwrap();
        o.mul(&r).unwrap().sum_all().unwrap().to_scalar().unwrap()
    };
    let grads = out.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
    for (i, var) in vars.iter().enumerate() {
        let analytic = flat64(
            grads
                .get(var)
                .unwrap_or_else(|| panic!("input {i}: no gradient")),
        );
        let base = flat64(&inputs[i]);
        for j in 0..base.len() {
            let at = |delta: f64| {
                let mut v = base.clone();
                v[j] += delta;
                let mut ts = inputs.to_vec();
                ts[i] = t64(v, inputs[i].dims());
                scalar(&ts)
            };
            let numeric = (at(FD_STEP) - at(-FD_STEP)) / (2.0 * FD_STEP);
            let err = (analytic[j] - numeric).abs();
            assert!(
                err <= FD_TOL * numeric.abs().max(1.0),
                "input {i} elem {j}: autograd {} vs finite difference {numeric}",
                analytic[j]
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// frozen_linear

fn linear_ref(x: &[f32], w: &[f32], rows: usize, n_in: usize, n_out: usize) -> Vec<f32> {
    let mut y = vec![0f32; rows * n_out];
    for r in 0..rows {
        for o in 0..n_out {
            y[r * n_out + o] = (0..n_in).map(|i| x[r * n_in + i] * w[o * n_in + i]).sum();
        }
    }
    y
}

#[test]
fn frozen_linear_forward_2d_and_3d() {
    let mut rng = Rng::new(1);
    let w = rand64(&mut rng, &[5, 4]).to_dtype(DType::F32).unwrap();
    for shape in [&[3usize, 4][..], &[2, 3, 4]] {
        let x = rand64(&mut rng, shape).to_dtype(DType::F32).unwrap();
        let y = frozen_linear(&x, &w).unwrap();
        let mut want_dims = shape.to_vec();
        *want_dims.last_mut().unwrap() = 5;
        assert_eq!(y.dims(), &want_dims[..]);
        let want = linear_ref(&flat32(&x), &flat32(&w), x.elem_count() / 4, 4, 5);
        assert_close(&flat32(&y), &want, 1e-6, "frozen_linear");
    }
    // A non-contiguous input and a non-contiguous (transposed-storage) weight.
    let x = rand64(&mut rng, &[4, 3])
        .to_dtype(DType::F32)
        .unwrap()
        .t()
        .unwrap();
    let w = rand64(&mut rng, &[4, 5])
        .to_dtype(DType::F32)
        .unwrap()
        .t()
        .unwrap();
    let y = frozen_linear(&x, &w).unwrap();
    let want = linear_ref(&flat32(&x), &flat32(&w), 3, 4, 5);
    assert_close(&flat32(&y), &want, 1e-6, "frozen_linear strided");
}

#[test]
fn frozen_linear_gradient_in_x() {
    let mut rng = Rng::new(2);
    let w = rand64(&mut rng, &[3, 4]);
    grad_check(
        |t| frozen_linear(&t[0], &w),
        &[rand64(&mut rng, &[2, 4])],
        20,
    );
    grad_check(
        |t| frozen_linear(&t[0], &w),
        &[rand64(&mut rng, &[2, 2, 4])],
        21,
    );
}

#[test]
fn frozen_linear_stores_no_weight_gradient_where_matmul_does() {
    let mut rng = Rng::new(3);
    let x = Var::from_tensor(&rand64(&mut rng, &[2, 3, 4])).unwrap();
    // A Var weight is the strictest case: candle would give it a gradient if anything did.
    let w = Var::from_tensor(&rand64(&mut rng, &[5, 4])).unwrap();
    let w_plain = w.as_tensor().detach();
    let w_plain_t = w_plain.t().unwrap();

    // Plain matmul: a weight-sized gradient is computed and kept, for the Var and for a plain
    // tensor alike (the latter keyed by the transposed view the matmul saw).
    let plain = x.broadcast_matmul(&w.t().unwrap()).unwrap();
    let g = plain.sum_all().unwrap().backward().unwrap();
    assert!(
        g.get(&w).is_some(),
        "matmul gives the Var weight a gradient"
    );
    let plain = x.broadcast_matmul(&w_plain_t).unwrap();
    let g = plain.sum_all().unwrap().backward().unwrap();
    assert!(
        g.get(&w_plain_t).is_some(),
        "matmul stores a gradient for a non-Var weight"
    );

    // frozen_linear: x gets its gradient, and no tensor of the weight's size is in the store.
    for weight in [w.as_tensor(), &w_plain] {
        let y = frozen_linear(&x, weight).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        assert!(g.get(&x).is_some());
        assert!(g.get(weight).is_none(), "frozen weight got a gradient");
        for id in g.get_ids() {
            let dims = g.get_id(*id).unwrap().dims().to_vec();
            assert!(
                dims != [5, 4] && dims != [4, 5],
                "weight-sized gradient {dims:?} in the store"
            );
        }
        // dx equals what plain matmul gives.
        let want = x
            .broadcast_matmul(&w_plain_t)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert_close(
            &flat32(g.get(&x).unwrap()),
            &flat32(want.get(&x).unwrap()),
            1e-12,
            "dx",
        );
    }
}

#[test]
fn frozen_linear_bf16_runs() {
    let mut rng = Rng::new(4);
    let x = rand64(&mut rng, &[3, 8]).to_dtype(DType::BF16).unwrap();
    let w = rand64(&mut rng, &[2, 8]).to_dtype(DType::BF16).unwrap();
    let y = frozen_linear(&x, &w).unwrap();
    assert_eq!(y.dtype(), DType::BF16);
    let want = linear_ref(&flat32(&x), &flat32(&w), 3, 8, 2);
    assert_close(&flat32(&y), &want, 2e-2, "bf16 frozen_linear");
    assert!(frozen_linear(&x.to_dtype(DType::F32).unwrap(), &w).is_err());
}

// ---------------------------------------------------------------------------------------------
// rms_norm

fn rms_norm_ref(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let h = w.len();
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(h) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / h as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        out.extend(row.iter().zip(w).map(|(v, wi)| v * inv * wi));
    }
    out
}

#[test]
fn rms_norm_forward_matches_loops() {
    let mut rng = Rng::new(5);
    let w = rand64(&mut rng, &[6]).to_dtype(DType::F32).unwrap();
    for shape in [&[4usize, 6][..], &[2, 3, 6]] {
        let x = rand64(&mut rng, shape).to_dtype(DType::F32).unwrap();
        let y = rms_norm(&x, &w, 1e-6).unwrap();
        assert_eq!(y.dims(), shape);
        let want = rms_norm_ref(&flat32(&x), &flat32(&w), 1e-6);
        assert_close(&flat32(&y), &want, 1e-5, "rms_norm");
    }
    let x = rand64(&mut rng, &[2, 6]).to_dtype(DType::BF16).unwrap();
    let y = rms_norm(&x, &w, 1e-6).unwrap();
    assert_eq!(y.dtype(), DType::BF16);
    let want = rms_norm_ref(&flat32(&x), &flat32(&w), 1e-6);
    assert_close(&flat32(&y), &want, 2e-2, "bf16 rms_norm");
}

#[test]
fn rms_norm_gradients() {
    let mut rng = Rng::new(6);
    for shape in [&[3usize, 5][..], &[2, 3, 5]] {
        let inputs = [rand64(&mut rng, shape), rand64(&mut rng, &[5])];
        grad_check(|t| rms_norm(&t[0], &t[1], 1e-6), &inputs, 60);
    }
}

// ---------------------------------------------------------------------------------------------
// rope

/// x `[T, heads, d]` flattened; cos/sin `[T, d/2]`.
fn rope_ref(x: &[f32], cos: &[f32], sin: &[f32], t: usize, heads: usize, d: usize) -> Vec<f32> {
    let half = d / 2;
    let mut out = vec![0f32; x.len()];
    for p in 0..t {
        for h in 0..heads {
            let base = (p * heads + h) * d;
            for i in 0..half {
                let (x1, x2) = (x[base + i], x[base + half + i]);
                let (c, s) = (cos[p * half + i], sin[p * half + i]);
                out[base + i] = x1 * c - x2 * s;
                out[base + half + i] = x2 * c + x1 * s;
            }
        }
    }
    out
}

pub(super) fn rope_tables(rng: &mut Rng, t: usize, half: usize) -> (Tensor, Tensor) {
    let angles = rng
        .vec(t * half)
        .iter()
        .map(|a| a * 3.0)
        .collect::<Vec<_>>();
    let cos = t64(angles.iter().map(|a| a.cos()).collect(), &[t, half]);
    let sin = t64(angles.iter().map(|a| a.sin()).collect(), &[t, half]);
    (cos, sin)
}

#[test]
fn rope_forward_matches_loops() {
    let mut rng = Rng::new(7);
    let (t, heads, d) = (4, 3, 6);
    let (cos, sin) = rope_tables(&mut rng, t, d / 2);
    let (cos32, sin32) = (
        cos.to_dtype(DType::F32).unwrap(),
        sin.to_dtype(DType::F32).unwrap(),
    );
    let x = rand64(&mut rng, &[t, heads, d])
        .to_dtype(DType::F32)
        .unwrap();
    let y = rope(&x, &cos32, &sin32).unwrap();
    let want = rope_ref(&flat32(&x), &flat32(&cos32), &flat32(&sin32), t, heads, d);
    assert_close(&flat32(&y), &want, 1e-6, "rope");
    // A batch dim in front uses the same tables for every row.
    let xb = Tensor::stack(&[&x, &x], 0).unwrap();
    let yb = rope(&xb, &cos32, &sin32).unwrap();
    assert_close(&flat32(&yb.get(1).unwrap()), &want, 1e-6, "batched rope");
    // And it agrees with the inference path's fused kernel (forward only there).
    let fused = candle_nn::rotary_emb::rope_thd(&x.unsqueeze(0).unwrap(), &cos32, &sin32).unwrap();
    assert_close(&flat32(&fused), &want, 1e-6, "rope_thd");
}

#[test]
fn rope_gradient_in_x() {
    let mut rng = Rng::new(8);
    let (cos, sin) = rope_tables(&mut rng, 3, 2);
    grad_check(
        |t| rope(&t[0], &cos, &sin),
        &[rand64(&mut rng, &[3, 2, 4])],
        80,
    );
    grad_check(
        |t| rope(&t[0], &cos, &sin),
        &[rand64(&mut rng, &[2, 3, 1, 4])],
        81,
    );
}

// ---------------------------------------------------------------------------------------------
// softmax and attention

fn softmax_ref(row: &[f32]) -> Vec<f32> {
    let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = row.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

#[test]
fn softmax_forward_and_gradient() {
    let mut rng = Rng::new(9);
    let x = rand64(&mut rng, &[2, 3, 5]).affine(4.0, 0.0).unwrap();
    let y = softmax_last_dim(&x.to_dtype(DType::F32).unwrap()).unwrap();
    let want: Vec<f32> = flat32(&x).chunks(5).flat_map(softmax_ref).collect();
    assert_close(&flat32(&y), &want, 1e-6, "softmax");
    grad_check(|t| softmax_last_dim(&t[0]), &[x], 90);
}

/// q `[heads, T, d]`, k/v `[kv, T, d]` flattened; returns `[T, heads·d]`.
#[allow(clippy::too_many_arguments)]
fn attention_ref(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    heads: usize,
    kv: usize,
    t: usize,
    d: usize,
    scale: f32,
) -> Vec<f32> {
    let mut out = vec![0f32; t * heads * d];
    for h in 0..heads {
        let g = h / (heads / kv);
        for i in 0..t {
            let scores: Vec<f32> = (0..=i)
                .map(|j| {
                    (0..d)
                        .map(|c| q[(h * t + i) * d + c] * k[(g * t + j) * d + c])
                        .sum::<f32>()
                        * scale
                })
                .collect();
            let p = softmax_ref(&scores);
            for c in 0..d {
                out[i * heads * d + h * d + c] =
                    (0..=i).map(|j| p[j] * v[(g * t + j) * d + c]).sum();
            }
        }
    }
    out
}

#[test]
fn causal_attention_forward_matches_loops() {
    let mut rng = Rng::new(10);
    let (t, d) = (5, 3);
    for (heads, kv) in [(4, 2), (3, 3), (4, 1)] {
        let q = rand64(&mut rng, &[heads, t, d])
            .to_dtype(DType::F32)
            .unwrap();
        let k = rand64(&mut rng, &[kv, t, d]).to_dtype(DType::F32).unwrap();
        let v = rand64(&mut rng, &[kv, t, d]).to_dtype(DType::F32).unwrap();
        let y = causal_attention(&q, &k, &v, 0.7).unwrap();
        assert_eq!(y.dims(), &[t, heads * d]);
        let want = attention_ref(&flat32(&q), &flat32(&k), &flat32(&v), heads, kv, t, d, 0.7);
        assert_close(&flat32(&y), &want, 1e-5, "attention");
        let yb = causal_attention(
            &q.to_dtype(DType::BF16).unwrap(),
            &k.to_dtype(DType::BF16).unwrap(),
            &v.to_dtype(DType::BF16).unwrap(),
            0.7,
        )
        .unwrap();
        assert_eq!(yb.dtype(), DType::BF16);
        assert_close(&flat32(&yb), &want, 3e-2, "bf16 attention");
    }
}

#[test]
fn causal_attention_gradients_gqa() {
    let mut rng = Rng::new(11);
    let (heads, kv, t, d) = (4, 2, 4, 3);
    let inputs = [
        rand64(&mut rng, &[heads, t, d]),
        rand64(&mut rng, &[kv, t, d]),
        rand64(&mut rng, &[kv, t, d]),
    ];
    grad_check(|x| causal_attention(&x[0], &x[1], &x[2], 0.8), &inputs, 110);
}

// ---------------------------------------------------------------------------------------------
// log_softmax_gather, silu

#[test]
fn log_softmax_gather_forward_and_gradient() {
    let mut rng = Rng::new(12);
    let (n, vocab) = (4, 7);
    // Large offsets: without the max shift exp() would overflow f32.
    let logits = (rand64(&mut rng, &[n, vocab]).affine(5.0, 0.0).unwrap() + 1000.0).unwrap();
    let targets = Tensor::new(&[0u32, 6, 3, 3], &Device::Cpu).unwrap();
    let got = log_softmax_gather(&logits.to_dtype(DType::F32).unwrap(), &targets).unwrap();
    assert_eq!((got.dims(), got.dtype()), (&[n][..], DType::F32));
    // Reference in f64 from the f32-rounded inputs; the result sits next to values near 1000 where
    // an f32 ulp is 6e-5, hence the tolerance.
    let rows: Vec<f64> = flat32(&logits).iter().map(|&v| v as f64).collect();
    let want: Vec<f32> = rows
        .chunks(vocab)
        .zip([0usize, 6, 3, 3])
        .map(|(row, tg)| {
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            (row[tg] - lse) as f32
        })
        .collect();
    assert_close(&flat32(&got), &want, 1e-4, "log_softmax_gather");
    let bf = log_softmax_gather(&logits.to_dtype(DType::BF16).unwrap(), &targets).unwrap();
    assert_eq!(bf.dtype(), DType::F32);
    let small = rand64(&mut rng, &[n, vocab]).affine(3.0, 0.0).unwrap();
    grad_check(|t| log_softmax_gather(&t[0], &targets), &[small], 120);
}

/// `Tensor::silu` (and `candle_nn::ops::silu`, which calls it) records a Unary node with a written
/// backward: no replacement needed.
#[test]
fn silu_is_differentiable_in_candle() {
    let mut rng = Rng::new(13);
    let x = rand64(&mut rng, &[3, 4]).affine(4.0, 0.0).unwrap();
    grad_check(|t| t[0].silu(), std::slice::from_ref(&x), 130);
    grad_check(|t| candle_nn::ops::silu(&t[0]), &[x], 131);
}

// ---------------------------------------------------------------------------------------------
// The hazard these ops exist for: candle's fused kernels drop the gradient without an error.

#[test]
fn fused_candle_kernels_drop_gradients_ours_do_not() {
    let mut rng = Rng::new(14);
    let x = Var::from_tensor(&rand64(&mut rng, &[3, 8]).to_dtype(DType::F32).unwrap()).unwrap();
    let w = Var::from_tensor(&rand64(&mut rng, &[8]).to_dtype(DType::F32).unwrap()).unwrap();
    let grads = |y: Tensor| y.sqr().unwrap().sum_all().unwrap().backward().unwrap();

    let g = grads(candle_nn::ops::rms_norm(&x, &w, 1e-6).unwrap());
    assert!(
        g.get(&x).is_none() && g.get(&w).is_none(),
        "candle rms_norm gained a backward"
    );
    let g = grads(rms_norm(&x, &w, 1e-6).unwrap());
    assert!(g.get(&x).is_some() && g.get(&w).is_some());

    let g = grads(candle_nn::ops::softmax_last_dim(&x).unwrap());
    assert!(
        g.get(&x).is_none(),
        "candle softmax_last_dim gained a backward"
    );
    let g = grads(softmax_last_dim(&x).unwrap());
    assert!(g.get(&x).is_some());

    let xr = Var::from_tensor(
        &rand64(&mut rng, &[1, 3, 2, 4])
            .to_dtype(DType::F32)
            .unwrap(),
    )
    .unwrap();
    let (cos, sin) = rope_tables(&mut rng, 3, 2);
    let (cos, sin) = (
        cos.to_dtype(DType::F32).unwrap(),
        sin.to_dtype(DType::F32).unwrap(),
    );
    let g = grads(candle_nn::rotary_emb::rope_thd(&xr, &cos, &sin).unwrap());
    assert!(g.get(&xr).is_none(), "candle rope_thd gained a backward");
    let g = grads(rope(&xr, &cos, &sin).unwrap());
    assert!(g.get(&xr).is_some());
}
