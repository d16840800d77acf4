use super::*;
use candle_core::Device;

fn var(v: &[f32]) -> Var {
    Var::new(v, &Device::Cpu).unwrap()
}

fn vals(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn grads(entries: &[(&str, &[f32])]) -> HashMap<String, Tensor> {
    entries
        .iter()
        .map(|(n, g)| (n.to_string(), Tensor::new(*g, &Device::Cpu).unwrap()))
        .collect()
}

const CFG: AdamWConfig = AdamWConfig {
    lr: 1e-2,
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    weight_decay: 0.0,
};

/// The textbook AdamW update in f64, written independently of the implementation:
/// decoupled decay, moments, bias-corrected m̂ and v̂, `p -= lr·m̂/(√v̂ + eps)`.
struct RefAdamW {
    p: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl RefAdamW {
    fn new(p: &[f32]) -> Self {
        let p: Vec<f64> = p.iter().map(|&x| x as f64).collect();
        let n = p.len();
        Self {
            p,
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
        }
    }
    fn step(&mut self, g: &[f32], lr: f64, c: &AdamWConfig) {
        self.t += 1;
        for i in 0..self.p.len() {
            let g = g[i] as f64;
            self.p[i] -= lr * c.weight_decay * self.p[i];
            self.m[i] = c.beta1 * self.m[i] + (1.0 - c.beta1) * g;
            self.v[i] = c.beta2 * self.v[i] + (1.0 - c.beta2) * g * g;
            let m_hat = self.m[i] / (1.0 - c.beta1.powi(self.t));
            let v_hat = self.v[i] / (1.0 - c.beta2.powi(self.t));
            self.p[i] -= lr * m_hat / (v_hat.sqrt() + c.eps);
        }
    }
}

fn assert_near(got: &[f32], want: &[f64], tol: f64) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((*g as f64 - w).abs() <= tol, "[{i}]: got {g}, want {w}");
    }
}

const P0: [f32; 3] = [1.0, -2.0, 0.5];
const G1: [f32; 3] = [0.1, -0.2, 0.3];
const G2: [f32; 3] = [-0.4, 0.05, 0.2];

#[test]
fn adamw_two_steps_match_hand_computation() {
    let p = var(&P0);
    let params = vec![("w".to_string(), p.clone())];
    let mut opt = AdamW::new(CFG);
    let mut reference = RefAdamW::new(&P0);

    opt.step(&params, &grads(&[("w", &G1)]), 0.01).unwrap();
    reference.step(&G1, 0.01, &CFG);
    // First Adam step: m̂/√v̂ = g/|g|, so every element moves by lr against its gradient's sign.
    assert_near(&vals(&p), &[0.99, -1.99, 0.49], 1e-6);
    assert_near(&vals(&p), &reference.p, 1e-6);

    opt.step(&params, &grads(&[("w", &G2)]), 0.005).unwrap();
    reference.step(&G2, 0.005, &CFG);
    assert_near(&vals(&p), &reference.p, 1e-6);
    assert_eq!(opt.step_count(), 2);
    // Element 0 by hand: m = 0.9·0.01 + 0.1·(−0.4) = −0.031, v = 0.999·1e-5 + 0.001·0.16
    // = 1.6999e-4; m̂ = −0.031/0.19, v̂ = 1.6999e-4/0.001999; step = 0.005·m̂/√v̂.
    let (m_hat, v_hat) = (-0.031 / 0.19, 1.6999e-4 / (1.0 - 0.999f64.powi(2)));
    assert_near(&vals(&p)[..1], &[0.99 - 0.005 * m_hat / v_hat.sqrt()], 1e-6);
}

#[test]
fn adamw_weight_decay_is_decoupled() {
    let cfg = AdamWConfig {
        weight_decay: 0.1,
        ..CFG
    };
    let p = var(&P0);
    let params = vec![("w".to_string(), p.clone())];
    let mut opt = AdamW::new(cfg);
    let mut reference = RefAdamW::new(&P0);
    for g in [&G1, &G2] {
        opt.step(&params, &grads(&[("w", g)]), 0.01).unwrap();
        reference.step(g, 0.01, &cfg);
        assert_near(&vals(&p), &reference.p, 1e-6);
    }
    // Step one by hand: p·(1 − lr·wd) − lr·sign(g).
    let mut q = RefAdamW::new(&P0);
    q.step(&G1, 0.01, &cfg);
    assert_near(&[q.p[0] as f32], &[1.0 * (1.0 - 0.001) - 0.01], 1e-6);
    // A zero gradient still decays the weight (decay is independent of the moments).
    let z = var(&[2.0]);
    let mut opt = AdamW::new(cfg);
    opt.step(&[("z".into(), z.clone())], &grads(&[("z", &[0.0])]), 0.5)
        .unwrap();
    assert_near(&vals(&z), &[2.0 * (1.0 - 0.5 * 0.1)], 1e-6);
}

#[test]
fn adamw_skips_params_without_gradient() {
    let (a, b) = (var(&P0), var(&[3.0, 4.0]));
    let params = vec![("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
    let mut opt = AdamW::new(AdamWConfig {
        weight_decay: 0.1,
        ..CFG
    });
    opt.step(&params, &grads(&[("a", &G1)]), 0.01).unwrap();
    assert_eq!(vals(&b), vec![3.0, 4.0]);
    assert_ne!(vals(&a), P0.to_vec());
    let names: Vec<String> = opt.state_tensors().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["a.exp_avg", "a.exp_avg_sq"]);
    // A gradient of the wrong shape is an error, not a broadcast.
    assert!(opt.step(&params, &grads(&[("b", &[1.0])]), 0.01).is_err());
}

#[test]
fn adamw_state_round_trip_is_bit_exact() {
    let named = |n: &str, v: &[f32]| (n.to_string(), var(v));
    let run_a = vec![named("l.0.w", &P0), named("l.1.w", &[0.25, -0.75])];
    let g1 = grads(&[("l.0.w", &G1), ("l.1.w", &[0.3, 0.01])]);
    let g2 = grads(&[("l.0.w", &G2), ("l.1.w", &[-0.02, 0.7])]);
    let mut a = AdamW::new(CFG);
    a.step(&run_a, &g1, 0.01).unwrap();

    // "Checkpoint": params and optimizer state copied out, a new optimizer built from them.
    let run_b: Vec<(String, Var)> = run_a
        .iter()
        .map(|(n, v)| {
            (
                n.clone(),
                Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap(),
            )
        })
        .collect();
    let saved: Vec<(String, Tensor)> = a
        .state_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.copy().unwrap()))
        .collect();
    assert_eq!(saved.len(), 4);
    let mut b = AdamW::from_state(CFG, saved, a.step_count()).unwrap();
    assert_eq!(b.step_count(), 1);

    a.step(&run_a, &g2, 0.007).unwrap();
    b.step(&run_b, &g2, 0.007).unwrap();
    for ((_, va), (_, vb)) in run_a.iter().zip(&run_b) {
        let bits = |v: &Var| {
            vals(v.as_tensor())
                .iter()
                .map(|x| x.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(va), bits(vb));
    }
    for ((na, ta), (nb, tb)) in a.state_tensors().iter().zip(&b.state_tensors()) {
        assert_eq!(na, nb);
        assert_eq!(vals(ta), vals(tb));
    }

    // Incomplete state is refused.
    let mut partial = a.state_tensors();
    partial.pop();
    assert!(AdamW::from_state(CFG, partial, 2).is_err());
    let bogus = vec![(
        "w.momentum".to_string(),
        Tensor::new(&[0f32], &Device::Cpu).unwrap(),
    )];
    assert!(AdamW::from_state(CFG, bogus, 2).is_err());
}

#[test]
fn schedules_match_hf() {
    let lr = |s, step| lr_at(s, 2.0, 10, 100, step);
    for s in [Schedule::Constant, Schedule::Cosine] {
        assert_eq!(lr(s, 0), 0.0, "warmup starts at 0");
        assert!((lr(s, 5) - 1.0).abs() < 1e-12, "linear warmup");
        assert!((lr(s, 10) - 2.0).abs() < 1e-12, "warmup end = base");
    }
    assert_eq!(lr(Schedule::Constant, 99), 2.0);
    // Cosine: progress = (step − 10) / 90; lr = base·½(1 + cos(π·progress)).
    assert!(
        (lr(Schedule::Cosine, 40) - 2.0 * 0.75).abs() < 1e-12,
        "progress 1/3"
    );
    assert!((lr(Schedule::Cosine, 55) - 1.0).abs() < 1e-12, "half way");
    assert!(lr(Schedule::Cosine, 100).abs() < 1e-12, "end");
    assert!(
        lr(Schedule::Cosine, 130).abs() < 1e-12,
        "stays at 0 past the end"
    );
    // No warmup: the first update already uses the base rate.
    assert_eq!(lr_at(Schedule::Cosine, 3.0, 0, 10, 0), 3.0);
    assert_eq!(lr_at(Schedule::Constant, 3.0, 0, 10, 0), 3.0);
}

#[test]
fn clip_global_norm_measures_and_scales() {
    let g = || grads(&[("a", &[3.0, 4.0]), ("b", &[12.0])]);
    // sqrt(9 + 16 + 144) = 13.
    let mut gs = g();
    assert!((clip_global_norm(&mut gs, 0.0).unwrap() - 13.0).abs() < 1e-9);
    assert_eq!(vals(&gs["a"]), vec![3.0, 4.0], "max_norm 0 only measures");

    let mut gs = g();
    assert!((clip_global_norm(&mut gs, 26.0).unwrap() - 13.0).abs() < 1e-9);
    assert_eq!(vals(&gs["b"]), vec![12.0], "under the limit: untouched");

    let mut gs = g();
    assert!((clip_global_norm(&mut gs, 1.3).unwrap() - 13.0).abs() < 1e-9);
    let coef = 1.3 / (13.0 + 1e-6);
    assert_near(&vals(&gs["a"]), &[3.0 * coef, 4.0 * coef], 1e-6);
    assert_near(&vals(&gs["b"]), &[12.0 * coef], 1e-6);
    let mut after = gs.clone();
    assert!((clip_global_norm(&mut after, 0.0).unwrap() - 1.3).abs() < 1e-6);

    assert_eq!(clip_global_norm(&mut HashMap::new(), 1.0).unwrap(), 0.0);
}

#[test]
fn grad_accumulator_sums_and_scales() {
    let w = var(&[1.0, 2.0]);
    let frozen = var(&[5.0]);
    let params = vec![("w".to_string(), w.clone()), ("f".to_string(), frozen)];
    let mut acc = GradAccumulator::new();
    // d/dw sum(c·w²) = 2·c·w: passes with c = 1 and c = 3 give [2, 4] and [6, 12].
    for c in [1.0, 3.0] {
        let loss = w
            .as_tensor()
            .sqr()
            .unwrap()
            .affine(c, 0.0)
            .unwrap()
            .sum_all()
            .unwrap();
        let store = loss.backward().unwrap();
        assert_eq!(
            acc.accumulate(&params, &store).unwrap(),
            1,
            "f has no gradient"
        );
    }
    assert_eq!(acc.passes(), 2);
    acc.add("extra", &Tensor::new(&[1f32], &Device::Cpu).unwrap())
        .unwrap();
    assert!(acc
        .add("w", &Tensor::new(&[1f32], &Device::Cpu).unwrap())
        .is_err());
    let mean = acc.into_mean().unwrap();
    assert_eq!(vals(&mean["w"]), vec![4.0, 8.0]);
    assert_eq!(vals(&mean["extra"]), vec![0.5]);
    assert!(!mean.contains_key("f"));

    let mut acc = GradAccumulator::new();
    acc.add("w", &Tensor::new(&[2f32, 4.0], &Device::Cpu).unwrap())
        .unwrap();
    acc.add("w", &Tensor::new(&[1f32, 1.0], &Device::Cpu).unwrap())
        .unwrap();
    assert_eq!(vals(&acc.into_scaled(0.5).unwrap()["w"]), vec![1.5, 2.5]);
}
