//! The ops on the GPU against the CPU: forward values and input gradients. Built with
//! `--features cuda`; skips itself where no device is present.

use super::tests::{assert_close, flat32, rand64, rope_tables, Rng};
use super::*;
use candle_core::{Device, Var};

/// Forward values and the gradient of `sum(out²)` for each float input, run on `device`.
fn run_on(
    f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    device: &Device,
) -> (Vec<f32>, Vec<Option<Vec<f32>>>) {
    let mut vars = Vec::new();
    let ts: Vec<Tensor> = inputs
        .iter()
        .map(|t| {
            let t = t.to_device(device).unwrap();
            if t.dtype().is_float() {
                let v = Var::from_tensor(&t).unwrap();
                vars.push(Some(v.clone()));
                v.as_tensor().clone()
            } else {
                vars.push(None);
                t
            }
        })
        .collect();
    let out = f(&ts).unwrap();
    let grads = out
        .to_dtype(DType::F32)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g = vars
        .iter()
        .map(|v| v.as_ref().and_then(|v| grads.get(v)).map(flat32))
        .collect();
    (flat32(&out), g)
}

#[test]
fn cuda_matches_cpu() {
    let Ok(gpu) = Device::new_cuda(0) else {
        eprintln!("no CUDA device: skipped");
        return;
    };
    let mut rng = Rng::new(15);
    let mut r32 = |shape: &[usize]| rand64(&mut rng, shape).to_dtype(DType::F32).unwrap();
    let (cos, sin) = rope_tables(&mut Rng::new(16), 5, 4);
    type Case = (
        &'static str,
        Box<dyn Fn(&[Tensor]) -> Result<Tensor>>,
        Vec<Tensor>,
    );
    let cases: Vec<Case> = vec![
        (
            "frozen_linear",
            Box::new(|t| frozen_linear(&t[0], &t[1])),
            vec![r32(&[2, 5, 8]), r32(&[6, 8])],
        ),
        (
            "frozen_linear bf16",
            Box::new(|t| frozen_linear(&t[0], &t[1])),
            vec![
                r32(&[5, 8]).to_dtype(DType::BF16).unwrap(),
                r32(&[6, 8]).to_dtype(DType::BF16).unwrap(),
            ],
        ),
        (
            "rms_norm",
            Box::new(|t| rms_norm(&t[0], &t[1], 1e-6)),
            vec![r32(&[2, 5, 8]), r32(&[8])],
        ),
        (
            "rope",
            Box::new(|t| rope(&t[0], &t[1], &t[2])),
            vec![
                r32(&[5, 3, 8]),
                cos.to_dtype(DType::F32).unwrap(),
                sin.to_dtype(DType::F32).unwrap(),
            ],
        ),
        (
            "softmax",
            Box::new(|t| softmax_last_dim(&t[0])),
            vec![r32(&[3, 4, 7])],
        ),
        (
            "attention",
            Box::new(|t| causal_attention(&t[0], &t[1], &t[2], 0.5)),
            vec![r32(&[4, 5, 8]), r32(&[2, 5, 8]), r32(&[2, 5, 8])],
        ),
        (
            "log_softmax_gather",
            Box::new(|t| log_softmax_gather(&t[0], &t[1])),
            vec![
                r32(&[3, 11]),
                Tensor::new(&[1u32, 10, 0], &Device::Cpu).unwrap(),
            ],
        ),
    ];
    for (name, f, inputs) in &cases {
        let (out_cpu, g_cpu) = run_on(f.as_ref(), inputs, &Device::Cpu);
        let (out_gpu, g_gpu) = run_on(f.as_ref(), inputs, &gpu);
        let tol = if inputs[0].dtype() == DType::BF16 {
            2e-2
        } else {
            1e-4
        };
        assert_close(&out_gpu, &out_cpu, tol, name);
        for (i, (a, b)) in g_gpu.iter().zip(&g_cpu).enumerate() {
            assert_eq!(
                a.is_some(),
                b.is_some(),
                "{name}: input {i} gradient presence"
            );
            if let (Some(a), Some(b)) = (a, b) {
                assert_close(a, b, tol, &format!("{name} grad {i}"));
            }
        }
    }
}
