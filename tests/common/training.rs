//! Helpers for the training tests: the engine's logits for one sequence, and trainable models over
//! the tiny test checkpoints.

use candle_core::{DType, Device};
use rmr1::model::base_weights::BaseWeights;
use rmr1::model::Qwen2;
use rmr1::train::forward::TrainableQwen2;
use rmr1::train::params::TrainParams;
use rmr1::train::LoraSpec;

/// The engine's logits of every position of `tokens`, one sequence in a fresh paged cache.
pub fn engine_logits(model: &Qwen2, tokens: &[u32]) -> Vec<Vec<f32>> {
    let (logits, _) =
        rmr1::gpu_check::model::prompt_logits(model, &[tokens.to_vec()], tokens.len()).unwrap();
    logits.to_vec2().unwrap()
}

/// `log softmax(row)[target]`, computed on the host in f64: the independent reference for the
/// trainer's and the engine's log-probabilities.
pub fn host_log_prob(row: &[f32], target: u32) -> f64 {
    let max = row.iter().fold(f32::MIN, |m, &x| m.max(x)) as f64;
    let lse = max
        + row
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    row[target as usize] as f64 - lse
}

pub fn base(dir: &std::path::Path) -> BaseWeights {
    BaseWeights::load(dir.to_str().unwrap(), DType::F32, &Device::Cpu).unwrap()
}

pub fn full_model(base: &BaseWeights) -> TrainableQwen2 {
    let params = TrainParams::full(&base.tensors, &Device::Cpu).unwrap();
    TrainableQwen2::new(base.config.clone(), params, DType::F32, 4096).unwrap()
}

pub fn lora_spec(rank: usize) -> LoraSpec {
    LoraSpec {
        rank,
        alpha: 2.0 * rank as f64,
        dropout: 0.0,
        target_modules: vec![],
    }
}

pub fn lora_model(base: &BaseWeights, spec: &LoraSpec, seed: u64) -> TrainableQwen2 {
    let targets: Vec<String> = rmr1::train::spec::LORA_MODULES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let params = TrainParams::with_lora(
        &base.tensors,
        spec,
        base.config.num_hidden_layers,
        &targets,
        seed,
        &Device::Cpu,
    )
    .unwrap();
    TrainableQwen2::new(base.config.clone(), params, DType::F32, 4096).unwrap()
}

/// A `JobContext` that records what the trainer reports and can cancel after a given step.
#[derive(Default)]
pub struct RecordingContext {
    pub job_id: String,
    pub cancel_after_step: Option<u64>,
    pub cancelled: std::sync::atomic::AtomicBool,
    pub running_calls: std::sync::atomic::AtomicUsize,
    pub steps: std::sync::Mutex<Vec<rmr1::train::StepReport>>,
    pub checkpoints: std::sync::Mutex<Vec<rmr1::train::CheckpointReport>>,
    pub evals: std::sync::Mutex<Vec<(u64, std::collections::BTreeMap<String, f64>)>>,
    pub messages: std::sync::Mutex<Vec<String>>,
}

impl RecordingContext {
    pub fn new(job_id: &str) -> Self {
        Self {
            job_id: job_id.into(),
            ..Default::default()
        }
    }

    pub fn losses(&self) -> Vec<f64> {
        self.series("loss")
    }

    /// Metric `key` of every reported step, in order.
    pub fn series(&self, key: &str) -> Vec<f64> {
        self.steps
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.metrics[key])
            .collect()
    }

    /// The step numbers reported, in order.
    pub fn step_numbers(&self) -> Vec<u64> {
        self.steps.lock().unwrap().iter().map(|s| s.step).collect()
    }
}

impl rmr1::train::JobContext for RecordingContext {
    fn job_id(&self) -> &str {
        &self.job_id
    }
    fn is_cancelled(&self) -> bool {
        self.cancelled.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn running(&self) {
        self.running_calls
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    fn step(&self, report: &rmr1::train::StepReport) {
        if Some(report.step) == self.cancel_after_step {
            self.cancelled
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        self.steps.lock().unwrap().push(report.clone());
    }
    fn checkpoint_saved(&self, report: &rmr1::train::CheckpointReport) {
        self.checkpoints.lock().unwrap().push(report.clone());
    }
    fn eval(&self, step: u64, metrics: &std::collections::BTreeMap<String, f64>) {
        self.evals.lock().unwrap().push((step, metrics.clone()));
    }
    fn warn(&self, message: &str) {
        self.messages
            .lock()
            .unwrap()
            .push(format!("warn: {message}"));
    }
    fn info(&self, message: &str) {
        self.messages
            .lock()
            .unwrap()
            .push(format!("info: {message}"));
    }
}

/// A learnable SFT task for the tiny word-level model: the target is the first prompt word
/// followed by three fixed words. Writes `n` rows of JSONL in the distillation schema.
pub fn write_copy_task(path: &std::path::Path, n: usize, seed: u64) {
    let mut lines = Vec::new();
    for i in 0..n {
        let words: Vec<String> = super::tokens(seed * 1000 + i as u64, 5, 60)
            .iter()
            .map(|t| format!("w{}", t + 20))
            .collect();
        let row = serde_json::json!({
            "context_messages": [
                {"role": "system", "content": "w3 w4"},
                {"role": "user", "content": words.join(" ")}
            ],
            "winner": format!("{} w10 w11 w12", words[0]),
        });
        lines.push(row.to_string());
    }
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// The trainable tensors of `job_id`'s newest checkpoint in `dir`, which must be at `step`.
fn final_weights(
    dir: &std::path::Path,
    job_id: &str,
    step: Option<u64>,
) -> std::collections::BTreeMap<String, candle_core::Tensor> {
    let c = rmr1::train::checkpoint::latest_for_job(dir, job_id)
        .unwrap()
        .unwrap_or_else(|| panic!("no checkpoint of {job_id} in {}", dir.display()));
    if let Some(step) = step {
        assert_eq!(c.state.step, step, "{}", dir.display());
    }
    rmr1::train::checkpoint::load_tensors(&c, &Device::Cpu)
        .unwrap()
        .0
}

/// Asserts the newest checkpoints of `job_id` in two output dirs hold the same weights (≤ 1e-6):
/// a resumed run against an uninterrupted one.
pub fn assert_same_final_weights(
    a: &std::path::Path,
    b: &std::path::Path,
    job_id: &str,
    step: Option<u64>,
) {
    let (wa, wb) = (
        final_weights(a, job_id, step),
        final_weights(b, job_id, step),
    );
    assert_eq!(wa.len(), wb.len());
    for (name, t) in &wa {
        let x: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let y: Vec<f32> = wb[name].flatten_all().unwrap().to_vec1().unwrap();
        assert!(super::max_abs_diff(&x, &y) <= 1e-6, "{name} differs");
    }
}

/// Checks `grads` (name → gradient of `loss_at` at the model's current weights) against central
/// finite differences: for every `stride`-th trainable tensor, the entry with the largest gradient
/// (well above f32 noise) is moved by ±1e-2. Tolerance `abs_tol + 2% · |analytic|`.
pub fn check_gradients_by_finite_differences(
    model: &TrainableQwen2,
    grads: &std::collections::HashMap<String, candle_core::Tensor>,
    loss_at: &dyn Fn(&TrainableQwen2) -> f64,
    stride: usize,
    abs_tol: f64,
) {
    let mut checked = 0;
    for (name, var) in model.params.trainable().into_iter().step_by(stride) {
        let g: Vec<f32> = grads[&name].flatten_all().unwrap().to_vec1().unwrap();
        let values: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let (idx, &analytic) = g
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap();
        let h = 1e-2f32;
        let set = |vals: &[f32]| {
            var.set(&candle_core::Tensor::from_slice(vals, var.shape(), &Device::Cpu).unwrap())
                .unwrap()
        };
        let mut shifted = values.clone();
        shifted[idx] = values[idx] + h;
        set(&shifted);
        let up = loss_at(model);
        shifted[idx] = values[idx] - h;
        set(&shifted);
        let down = loss_at(model);
        set(&values);
        let numeric = (up - down) / (2.0 * h as f64);
        let err = (numeric - analytic as f64).abs();
        assert!(
            err <= abs_tol + 2e-2 * (analytic as f64).abs(),
            "{name}[{idx}]: analytic {analytic:e}, numeric {numeric:e}"
        );
        checked += 1;
    }
    assert!(checked >= 5);
}
