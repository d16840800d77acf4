//! What a training job is asked to do: the spec a client submits (gRPC or `rmr1 train` spec file),
//! validated once into this plain, serde-serialisable form. It is stored as JSON in the job
//! database, so field names here are a persistence format: add fields with defaults, never rename.

pub use crate::model::adapter::LORA_MODULES;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A whole training job as submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSpec {
    /// Base model as `serve --model` takes it: HF dir, GGUF file or hub id.
    pub base_model: String,
    /// The stage to run.
    pub task: TaskSpec,
    /// `None` = full fine-tuning (f32 master weights).
    #[serde(default)]
    pub adapter: Option<LoraSpec>,
    #[serde(default)]
    pub optimizer: OptimizerSpec,
    #[serde(default)]
    pub run: RunPolicy,
    /// Where checkpoints and the final outputs go (must resolve inside the server's train roots).
    pub output_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskSpec {
    Sft(SftSpec),
    Grpo(GrpoSpec),
}

/// Stage 1: distillation SFT on `context_messages` + target trace rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftSpec {
    /// JSONL or parquet files in the RM-R1 distillation schema.
    pub train_files: Vec<PathBuf>,
    /// Held-out rows scored at the end (and every `eval_every_steps`); empty = none.
    #[serde(default)]
    pub eval_files: Vec<PathBuf>,
    /// Column holding the target trace (upstream's distill set calls it `winner`).
    #[serde(default = "default_target_field")]
    pub target_field: String,
    /// Longest rendered prompt + target, in tokens (upstream: 12,288).
    #[serde(default = "default_max_seq_len")]
    pub max_seq_len: usize,
    /// Skip bad rows (logged, counted) instead of failing the job.
    #[serde(default)]
    pub skip_bad_rows: bool,
    /// 0 = only at the end.
    #[serde(default)]
    pub eval_every_steps: u64,
}

fn default_target_field() -> String {
    "winner".into()
}
fn default_max_seq_len() -> usize {
    12_288
}

/// Stage 2: GRPO with verifiable rewards on `context_messages` + `winner` rows, rollouts from the
/// engine running the current policy. Defaults are upstream's (RM-R1 README §6, veRL's GRPO).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrpoSpec {
    /// JSONL or parquet files in the RLVR schema (`context_messages`, `winner` ∈ {model_a, model_b}).
    pub train_files: Vec<PathBuf>,
    /// Column holding the preferred side.
    #[serde(default = "default_target_field")]
    pub label_field: String,
    /// Samples per prompt (G).
    #[serde(default = "default_group_size")]
    pub group_size: usize,
    /// Prompts rolled out per step (upstream: 1,024).
    #[serde(default = "default_prompts_per_step")]
    pub prompts_per_step: usize,
    /// Prompts per optimizer update (upstream: 128, i.e. 8 updates per rollout batch).
    #[serde(default = "default_prompts_per_update")]
    pub prompts_per_update: usize,
    /// Passes over each rollout batch (veRL's ppo_epochs).
    #[serde(default = "default_update_epochs")]
    pub update_epochs: u32,
    /// Rows whose rendered prompt is longer fail the job (or are skipped).
    #[serde(default = "default_max_prompt_len")]
    pub max_prompt_len: usize,
    /// Generation cap per sample.
    #[serde(default = "default_max_response_len")]
    pub max_response_len: usize,
    #[serde(default = "default_one")]
    pub temperature: f64,
    #[serde(default = "default_one")]
    pub top_p: f64,
    /// The ratio is clipped to `[1 − clip_low, 1 + clip_high]`.
    #[serde(default = "default_clip")]
    pub clip_low: f64,
    #[serde(default = "default_clip")]
    pub clip_high: f64,
    /// Weight of the k3 KL estimate to the reference (starting) model in the loss; 0 = no
    /// reference model at all.
    #[serde(default = "default_kl_coef")]
    pub kl_coef: f64,
    /// Skip bad rows (logged, counted) instead of failing the job.
    #[serde(default)]
    pub skip_bad_rows: bool,
    /// KV cache of the rollout engine, MiB.
    #[serde(default = "default_rollout_kv_cache_mib")]
    pub rollout_kv_cache_mib: usize,
}

fn default_group_size() -> usize {
    7
}
fn default_prompts_per_step() -> usize {
    1024
}
fn default_prompts_per_update() -> usize {
    128
}
fn default_update_epochs() -> u32 {
    1
}
fn default_max_prompt_len() -> usize {
    4096
}
fn default_max_response_len() -> usize {
    8192
}
fn default_one() -> f64 {
    1.0
}
fn default_clip() -> f64 {
    0.2
}
fn default_kl_coef() -> f64 {
    0.001
}
fn default_rollout_kv_cache_mib() -> usize {
    2048
}

impl GrpoSpec {
    /// The spec with every default, for `train_files`.
    pub fn with_defaults(train_files: Vec<PathBuf>) -> Self {
        let mut spec: GrpoSpec =
            serde_json::from_str(r#"{"train_files": []}"#).expect("GrpoSpec has serde defaults");
        spec.train_files = train_files;
        spec
    }

    /// Optimizer updates per rollout batch.
    pub fn updates_per_step(&self) -> u64 {
        (self
            .prompts_per_step
            .div_ceil(self.prompts_per_update.max(1)) as u64)
            * self.update_epochs as u64
    }

    fn validate(&self) -> Result<(), SpecError> {
        if self.train_files.is_empty() {
            return Err(bad("grpo.train_files", "needs at least one file"));
        }
        if self.label_field.is_empty() {
            return Err(bad("grpo.label_field", "must not be empty"));
        }
        if self.group_size < 2 {
            return Err(bad(
                "grpo.group_size",
                "must be at least 2 (advantages are normalised within a group)",
            ));
        }
        if self.prompts_per_step == 0 {
            return Err(bad("grpo.prompts_per_step", "must be at least 1"));
        }
        if self.prompts_per_update == 0 || self.prompts_per_update > self.prompts_per_step {
            return Err(bad(
                "grpo.prompts_per_update",
                "must be in 1..=prompts_per_step",
            ));
        }
        if self.update_epochs == 0 {
            return Err(bad("grpo.update_epochs", "must be at least 1"));
        }
        if self.max_prompt_len == 0 {
            return Err(bad("grpo.max_prompt_len", "must be at least 1"));
        }
        if self.max_response_len == 0 {
            return Err(bad("grpo.max_response_len", "must be at least 1"));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(bad(
                "grpo.temperature",
                "must be a positive number (rollouts are sampled)",
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(bad("grpo.top_p", "must be in (0, 1]"));
        }
        if !(0.0..1.0).contains(&self.clip_low) {
            return Err(bad("grpo.clip_low", "must be in [0, 1)"));
        }
        if !(self.clip_high.is_finite() && self.clip_high >= 0.0) {
            return Err(bad("grpo.clip_high", "must be >= 0"));
        }
        if !(self.kl_coef.is_finite() && self.kl_coef >= 0.0) {
            return Err(bad("grpo.kl_coef", "must be >= 0"));
        }
        if self.rollout_kv_cache_mib == 0 {
            return Err(bad("grpo.rollout_kv_cache_mib", "must be at least 1"));
        }
        Ok(())
    }
}

/// LoRA on the chosen projections, PEFT-compatible.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    #[serde(default)]
    pub dropout: f64,
    /// Any of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj; empty = all seven.
    #[serde(default)]
    pub target_modules: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    Cosine,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OptimizerSpec {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Fraction of total steps spent warming up linearly (upstream SFT: 0.03).
    pub warmup_ratio: f64,
    pub schedule: Schedule,
    /// Global-norm clip; 0 = off.
    pub grad_clip: f64,
    /// Sequences per micro-batch (one forward/backward).
    pub micro_batch_size: usize,
    /// Micro-batches accumulated per optimizer step.
    pub grad_accumulation: usize,
}

impl OptimizerSpec {
    /// The optimizer a task gets when the spec names none: upstream's SFT recipe, or for GRPO
    /// upstream's RL recipe (lr 1e-6 constant, clip 1.0) with veRL's actor defaults (torch
    /// AdamW betas, weight decay 0.01).
    pub fn default_for(task: &TaskSpec) -> Self {
        match task {
            TaskSpec::Sft(_) => Self::default(),
            TaskSpec::Grpo(_) => Self {
                lr: 1e-6,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
                warmup_ratio: 0.0,
                schedule: Schedule::Constant,
                grad_clip: 1.0,
                micro_batch_size: 1,
                grad_accumulation: 1,
            },
        }
    }
}

impl Default for OptimizerSpec {
    /// Upstream's SFT recipe (RM-R1 README §6), except the batch, which the operator sizes.
    fn default() -> Self {
        Self {
            lr: 5e-6,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
            warmup_ratio: 0.03,
            schedule: Schedule::Cosine,
            grad_clip: 1.0,
            micro_batch_size: 1,
            grad_accumulation: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunPolicy {
    pub seed: u64,
    /// 0 = only the final checkpoint.
    pub checkpoint_every_steps: u64,
    /// Checkpoints kept (oldest deleted first); 0 = keep all.
    pub keep_last_checkpoints: usize,
    /// 0 = no limit (epochs decide).
    pub max_steps: u64,
    pub epochs: u32,
}

impl Default for RunPolicy {
    fn default() -> Self {
        Self {
            seed: 0,
            checkpoint_every_steps: 100,
            keep_last_checkpoints: 3,
            max_steps: 0,
            epochs: 1,
        }
    }
}

/// A spec field that is wrong, named the way clients spell it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

fn bad(field: &str, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        message: message.into(),
    }
}

impl TrainSpec {
    /// Reads a spec file (JSON). Optimizer fields left out take the task's defaults
    /// ([`OptimizerSpec::default_for`]), not SFT's.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        let mut value: serde_json::Value = serde_json::from_str(text)?;
        let task: TaskSpec = serde_json::from_value(
            value
                .get("task")
                .cloned()
                .ok_or_else(|| serde::de::Error::missing_field("task"))?,
        )?;
        let mut optimizer = serde_json::to_value(OptimizerSpec::default_for(&task))?;
        if let (Some(given), Some(defaults)) = (
            value.get("optimizer").and_then(|o| o.as_object()),
            optimizer.as_object_mut(),
        ) {
            for (k, v) in given {
                defaults.insert(k.clone(), v.clone());
            }
        }
        if let Some(obj) = value.as_object_mut() {
            obj.insert("optimizer".into(), optimizer);
        }
        serde_json::from_value(value)
    }

    /// Checks everything that can be checked without touching files or the model.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.base_model.trim().is_empty() {
            return Err(bad("base_model", "is required"));
        }
        if self.output_dir.as_os_str().is_empty() {
            return Err(bad("output_dir", "is required"));
        }
        match &self.task {
            TaskSpec::Sft(sft) => {
                if sft.train_files.is_empty() {
                    return Err(bad("sft.train_files", "needs at least one file"));
                }
                if sft.max_seq_len < 2 {
                    return Err(bad("sft.max_seq_len", "must be at least 2"));
                }
                if sft.target_field.is_empty() {
                    return Err(bad("sft.target_field", "must not be empty"));
                }
            }
            TaskSpec::Grpo(grpo) => grpo.validate()?,
        }
        if let Some(lora) = &self.adapter {
            if lora.rank == 0 || lora.rank > 1024 {
                return Err(bad("adapter.rank", "must be in 1..=1024"));
            }
            if !(lora.alpha.is_finite() && lora.alpha > 0.0) {
                return Err(bad("adapter.alpha", "must be a positive number"));
            }
            if !(0.0..1.0).contains(&lora.dropout) {
                return Err(bad("adapter.dropout", "must be in [0, 1)"));
            }
            for m in &lora.target_modules {
                if !LORA_MODULES.contains(&m.as_str()) {
                    return Err(bad(
                        "adapter.target_modules",
                        format!("unknown module {m:?} (expected some of {LORA_MODULES:?})"),
                    ));
                }
            }
        }
        let o = &self.optimizer;
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return Err(bad("optimizer.lr", "must be a positive number"));
        }
        for (name, b) in [("optimizer.beta1", o.beta1), ("optimizer.beta2", o.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(bad(name, "must be in [0, 1)"));
            }
        }
        if !(o.eps.is_finite() && o.eps > 0.0) {
            return Err(bad("optimizer.eps", "must be a positive number"));
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return Err(bad("optimizer.weight_decay", "must be >= 0"));
        }
        if !(0.0..1.0).contains(&o.warmup_ratio) {
            return Err(bad("optimizer.warmup_ratio", "must be in [0, 1)"));
        }
        if !(o.grad_clip.is_finite() && o.grad_clip >= 0.0) {
            return Err(bad("optimizer.grad_clip", "must be >= 0 (0 = off)"));
        }
        if o.micro_batch_size == 0 {
            return Err(bad("optimizer.micro_batch_size", "must be at least 1"));
        }
        if o.grad_accumulation == 0 {
            return Err(bad("optimizer.grad_accumulation", "must be at least 1"));
        }
        if self.run.epochs == 0 && self.run.max_steps == 0 {
            return Err(bad(
                "run.epochs",
                "must be at least 1 when run.max_steps is 0",
            ));
        }
        Ok(())
    }

    /// The LoRA target modules, with "empty" meaning all seven.
    pub fn lora_targets(&self) -> Vec<String> {
        match &self.adapter {
            Some(l) if !l.target_modules.is_empty() => l.target_modules.clone(),
            Some(_) => LORA_MODULES.iter().map(|s| s.to_string()).collect(),
            None => Vec::new(),
        }
    }
}
