//! What every training stage shares: the base model loaded for training, the trainable parameters,
//! the optimizer and schedule, checkpoints and resume, progress reports and the final exports.
//! SFT drives it now; GRPO will drive the same session with its own loss and rollouts.

use super::checkpoint::{self, TrainerState};
use super::executor::{
    Artifact, CheckpointReport, JobContext, StepReport, TrainError, TrainErrorKind,
};
use super::forward::TrainableQwen2;
use super::optim::GradAccumulator;
use super::optim::{clip_global_norm, lr_at, AdamW, AdamWConfig};
use super::params::TrainParams;
use super::spec::TrainSpec;
use crate::model::base_weights::BaseWeights;
use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Instant;

pub struct TrainSession {
    pub spec: TrainSpec,
    pub job_id: String,
    pub base: BaseWeights,
    pub model: TrainableQwen2,
    pub optimizer: AdamW,
    pub state: TrainerState,
    pub total_steps: u64,
    /// Optimizer updates per step (SFT: 1; GRPO: the mini-batches of a rollout batch). The
    /// learning-rate schedule runs over `total_steps × updates_per_step` updates.
    pub updates_per_step: u64,
    /// When this process started (or resumed) the run, and at which step: the pace for ETAs.
    started: Instant,
    started_step: u64,
}

/// Identifies a spec: checkpoints made under another spec are not resumed.
pub fn spec_fingerprint(spec: &TrainSpec) -> String {
    let json = serde_json::to_vec(spec).unwrap_or_default();
    let digest = Sha256::digest(&json);
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

fn failed_precondition(message: String) -> TrainError {
    TrainError::new(TrainErrorKind::FailedPrecondition, message)
}

impl TrainSession {
    /// Loads the base model on `device` and builds the trainable parameters: f32 masters for full
    /// fine-tuning; for LoRA a frozen base in the compute dtype (f32 on CPU, bf16 on GPUs) and f32
    /// adapters. `max_positions` bounds the RoPE tables (the longest sequence to train on).
    pub fn load(
        spec: &TrainSpec,
        job_id: &str,
        device: &Device,
        max_positions: usize,
    ) -> Result<Self, TrainError> {
        let compute_dtype = crate::model::loader::default_dtype(device);
        let base_dtype = if spec.adapter.is_some() {
            compute_dtype
        } else {
            DType::F32
        };
        let mut base = BaseWeights::load(&spec.base_model, base_dtype, device).map_err(|e| {
            failed_precondition(format!(
                "base_model {:?} cannot be loaded: {e:#}",
                spec.base_model
            ))
        })?;
        let layers = base.config.num_hidden_layers;
        let params = match &spec.adapter {
            Some(lora) => TrainParams::with_lora(
                &base.tensors,
                lora,
                layers,
                &spec.lora_targets(),
                spec.run.seed,
                device,
            )?,
            None => {
                let params = TrainParams::full(&base.tensors, device)?;
                // The f32 masters take the loaded copies' place: holding both would double a full
                // fine-tune's weight memory. Later readers of `base.tensors` (export) only need
                // the names and shapes, which are the same.
                base.tensors = params
                    .trainable()
                    .into_iter()
                    .map(|(name, var)| (name, var.as_tensor().clone()))
                    .collect();
                params
            }
        };
        let model = TrainableQwen2::new(base.config.clone(), params, compute_dtype, max_positions)?;
        let optimizer = AdamW::new(AdamWConfig::from(&spec.optimizer));
        let state = TrainerState {
            format_version: 1,
            job_id: job_id.to_string(),
            step: 0,
            examples_consumed: 0,
            tokens_seen: 0,
            seed: spec.run.seed,
            optimizer_steps: 0,
            loss: None,
            spec_fingerprint: spec_fingerprint(spec),
        };
        Ok(Self {
            spec: spec.clone(),
            job_id: job_id.to_string(),
            base,
            model,
            optimizer,
            state,
            total_steps: 0,
            updates_per_step: 1,
            started: Instant::now(),
            started_step: 0,
        })
    }

    /// Continues from the newest complete checkpoint of this job, if there is one.
    pub fn resume(&mut self, ctx: &dyn JobContext) -> Result<(), TrainError> {
        let latest = checkpoint::latest_for_job(&self.spec.output_dir, &self.job_id)
            .map_err(|e| failed_precondition(format!("output_dir: {e:#}")))?;
        let Some(ckpt) = latest else {
            return Ok(());
        };
        if ckpt.state.spec_fingerprint != self.state.spec_fingerprint {
            return Err(failed_precondition(format!(
                "checkpoint {} was made under another spec",
                ckpt.path.display()
            )));
        }
        let (trainable, optimizer) = checkpoint::load_tensors(&ckpt, self.model.device())?;
        self.model.params.load_trainable(&trainable)?;
        let config = *self.optimizer.config();
        self.optimizer = AdamW::from_state(
            config,
            optimizer.into_iter().collect(),
            ckpt.state.optimizer_steps,
        )?;
        ctx.info(&format!(
            "resuming from {} (step {})",
            ckpt.path.display(),
            ckpt.state.step
        ));
        self.state = ckpt.state;
        self.started_step = self.state.step;
        self.started = Instant::now();
        Ok(())
    }

    /// Clips, schedules and applies one optimizer update; returns (pre-clip grad norm, lr). The
    /// step counter is the caller's (a GRPO step makes several updates).
    pub fn apply_update(&mut self, sums: GradAccumulator) -> Result<(f64, f64), TrainError> {
        let mut grads = sums.into_scaled(1.0)?;
        let o = &self.spec.optimizer;
        let norm = clip_global_norm(&mut grads, o.grad_clip)?;
        if !norm.is_finite() {
            return Err(TrainError::internal(format!(
                "gradient norm is {norm} at step {}: the run diverged",
                self.state.step + 1
            )));
        }
        let total_updates = self.total_steps.saturating_mul(self.updates_per_step);
        let warmup = (o.warmup_ratio * total_updates as f64).ceil() as u64;
        let lr = lr_at(
            o.schedule,
            o.lr,
            warmup,
            total_updates,
            self.optimizer.step_count(),
        );
        self.optimizer
            .step(&self.model.params.trainable(), &grads, lr)?;
        self.state.optimizer_steps = self.optimizer.step_count();
        Ok((norm, lr))
    }

    /// The policy as dense HF-named weights, for the rollout engine: the base with the adapters
    /// merged (`W + scale·B·A`), or the full-fine-tuning masters. Unchanged weights are shared,
    /// not copied.
    pub fn policy_weights(&self) -> Result<BTreeMap<String, Tensor>, TrainError> {
        let params = &self.model.params;
        match &self.spec.adapter {
            Some(lora) if params.is_lora() => {
                let mut weights = params.frozen().clone();
                params
                    .to_adapter(lora, &self.spec.lora_targets(), &self.base.spec)?
                    .merge_into(&mut weights)
                    .map_err(|e| TrainError::internal(format!("merging the adapter: {e:#}")))?;
                Ok(weights)
            }
            _ => Ok(self.trainable_tensors()),
        }
    }

    /// Seconds to the end at this process's pace so far.
    pub fn eta_seconds(&self) -> Option<f64> {
        let done = self.state.step.saturating_sub(self.started_step);
        if done == 0 {
            return None;
        }
        let per_step = self.started.elapsed().as_secs_f64() / done as f64;
        Some(per_step * self.total_steps.saturating_sub(self.state.step) as f64)
    }

    pub fn report_step(&self, ctx: &dyn JobContext, epoch: u32, metrics: BTreeMap<String, f64>) {
        ctx.step(&StepReport {
            step: self.state.step,
            total_steps: self.total_steps,
            epoch,
            tokens_seen: self.state.tokens_seen,
            metrics,
            eta_seconds: self.eta_seconds(),
        });
    }

    pub fn trainable_tensors(&self) -> BTreeMap<String, Tensor> {
        self.model
            .params
            .trainable()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect()
    }

    /// Writes a checkpoint of the current step and reports it.
    pub fn checkpoint(&self, ctx: &dyn JobContext) -> Result<(), TrainError> {
        let optimizer: BTreeMap<String, Tensor> =
            self.optimizer.state_tensors().into_iter().collect();
        let path = checkpoint::save(
            &self.spec.output_dir,
            &self.state,
            &self.trainable_tensors(),
            &optimizer,
            self.spec.run.keep_last_checkpoints,
        )
        .map_err(|e| {
            TrainError::new(
                TrainErrorKind::ResourceExhausted,
                format!("writing a checkpoint: {e:#}"),
            )
        })?;
        ctx.checkpoint_saved(&CheckpointReport {
            step: self.state.step,
            path,
            loss: self.state.loss,
        });
        Ok(())
    }

    /// Whether a checkpoint is due after the current step.
    pub fn checkpoint_due(&self) -> bool {
        let every = self.spec.run.checkpoint_every_steps;
        every > 0 && self.state.step.is_multiple_of(every)
    }

    /// The end of a run: the exports and the final metrics (loss, steps, tokens seen, plus the
    /// stage's own `extra`).
    pub fn finish(
        &self,
        extra: BTreeMap<String, f64>,
    ) -> Result<super::executor::TrainResult, TrainError> {
        let artifacts = self.export()?;
        let mut final_metrics = extra;
        if let Some(loss) = self.state.loss {
            final_metrics.insert("loss".to_string(), loss);
        }
        final_metrics.insert("steps".to_string(), self.state.step as f64);
        final_metrics.insert("tokens_seen".to_string(), self.state.tokens_seen as f64);
        Ok(super::executor::TrainResult {
            artifacts,
            final_metrics,
        })
    }

    /// The outputs other tools load: a PEFT adapter and its merged export (LoRA), or a full HF
    /// checkpoint.
    pub fn export(&self) -> Result<Vec<Artifact>, TrainError> {
        let out = &self.spec.output_dir;
        let io = |e: anyhow::Error| {
            TrainError::new(
                TrainErrorKind::ResourceExhausted,
                format!("exporting: {e:#}"),
            )
        };
        if self.model.params.is_lora() {
            let lora = self
                .spec
                .adapter
                .as_ref()
                .expect("LoRA params come from a LoRA spec");
            let adapter =
                self.model
                    .params
                    .to_adapter(lora, &self.spec.lora_targets(), &self.base.spec)?;
            let adapter_dir = out.join("adapter");
            adapter.save_peft(&adapter_dir).map_err(io)?;
            let merged_dir = out.join("merged");
            super::export::export_merged(&self.base, &adapter, &merged_dir).map_err(io)?;
            Ok(vec![
                Artifact {
                    path: adapter_dir,
                    format: "peft_lora".into(),
                },
                Artifact {
                    path: merged_dir,
                    format: "hf_merged".into(),
                },
            ])
        } else {
            let model_dir = out.join("model");
            let dtype = super::export::default_export_dtype(&self.base);
            super::export::write_hf_checkpoint(
                &model_dir,
                &super::export::checkpoint_config(&self.base, dtype).map_err(io)?,
                &self.trainable_tensors(),
                dtype,
                super::export::TokenizerFiles::of_base(&self.base, None),
                super::export::DEFAULT_MAX_SHARD_BYTES,
            )
            .map_err(io)?;
            Ok(vec![Artifact {
                path: model_dir,
                format: "hf_full".into(),
            }])
        }
    }
}
