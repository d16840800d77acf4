//! Training protos ↔ the job layer's types. The spec mapping is one to one with `TrainSpec`;
//! zero values the proto cannot tell from "unset" mean the spec's default (see training.proto).

use super::proto::{self, train_job_event, train_job_spec};
use crate::train::job::JobState;
use crate::train::record::{
    CheckpointRecord, EventKind, JobEvent, JobFailure, JobOutput, JobProgress, JobRecord, LogLevel,
};
use crate::train::spec::{
    GrpoSpec, LoraSpec, OptimizerSpec, RunPolicy, Schedule, SftSpec, SpecError, TaskSpec, TrainSpec,
};
use std::collections::HashMap;
use std::path::PathBuf;

fn bad(field: &str, message: &str) -> SpecError {
    SpecError {
        field: field.into(),
        message: message.into(),
    }
}

/// The spec a client sent, with defaults filled in (not yet validated).
pub fn train_spec(p: &proto::TrainJobSpec) -> Result<TrainSpec, SpecError> {
    let task = match &p.task {
        Some(train_job_spec::Task::Sft(s)) => TaskSpec::Sft(sft_spec(s)),
        Some(train_job_spec::Task::Grpo(g)) => TaskSpec::Grpo(grpo_spec(g)),
        None => return Err(bad("task", "is required (sft or grpo)")),
    };
    let default_optimizer = OptimizerSpec::default_for(&task);
    Ok(TrainSpec {
        base_model: p.base_model.clone(),
        task,
        adapter: p.adapter.as_ref().map(|l| LoraSpec {
            rank: l.rank as usize,
            alpha: l.alpha,
            dropout: l.dropout,
            target_modules: l.target_modules.clone(),
        }),
        optimizer: match &p.optimizer {
            Some(o) => optimizer_spec(o, &default_optimizer)?,
            None => default_optimizer,
        },
        run: p.run.as_ref().map(run_policy).unwrap_or_default(),
        output_dir: PathBuf::from(&p.output_dir),
    })
}

fn sft_spec(s: &proto::SftSpec) -> SftSpec {
    // The serde defaults are the spec's defaults; start from them so there is one source.
    let defaults: SftSpec =
        serde_json::from_str(r#"{"train_files": []}"#).expect("SftSpec has serde defaults");
    SftSpec {
        train_files: s.train_files.iter().map(PathBuf::from).collect(),
        eval_files: s.eval_files.iter().map(PathBuf::from).collect(),
        target_field: if s.target_field.is_empty() {
            defaults.target_field
        } else {
            s.target_field.clone()
        },
        max_seq_len: match s.max_seq_len {
            0 => defaults.max_seq_len,
            n => n as usize,
        },
        skip_bad_rows: s.skip_bad_rows,
        eval_every_steps: s.eval_every_steps,
    }
}

fn grpo_spec(g: &proto::GrpoSpec) -> GrpoSpec {
    let d = GrpoSpec::with_defaults(Vec::new());
    let or = |v: u32, default: usize| if v == 0 { default } else { v as usize };
    let or_f = |v: f64, default: f64| if v == 0.0 { default } else { v };
    GrpoSpec {
        train_files: g.train_files.iter().map(PathBuf::from).collect(),
        label_field: if g.label_field.is_empty() {
            d.label_field
        } else {
            g.label_field.clone()
        },
        group_size: or(g.group_size, d.group_size),
        prompts_per_step: or(g.prompts_per_step, d.prompts_per_step),
        prompts_per_update: or(g.prompts_per_update, d.prompts_per_update),
        update_epochs: if g.update_epochs == 0 {
            d.update_epochs
        } else {
            g.update_epochs
        },
        max_prompt_len: or(g.max_prompt_len, d.max_prompt_len),
        max_response_len: or(g.max_response_len, d.max_response_len),
        temperature: or_f(g.temperature, d.temperature),
        top_p: or_f(g.top_p, d.top_p),
        clip_low: g.clip_low.unwrap_or(d.clip_low),
        clip_high: g.clip_high.unwrap_or(d.clip_high),
        kl_coef: g.kl_coef.unwrap_or(d.kl_coef),
        skip_bad_rows: g.skip_bad_rows,
        rollout_kv_cache_mib: or(g.rollout_kv_cache_mib, d.rollout_kv_cache_mib),
    }
}

fn optimizer_spec(o: &proto::OptimizerSpec, d: &OptimizerSpec) -> Result<OptimizerSpec, SpecError> {
    let nonzero = |v: f64, default: f64| if v == 0.0 { default } else { v };
    let schedule = match proto::Schedule::try_from(o.schedule) {
        Ok(proto::Schedule::Unspecified) => d.schedule,
        Ok(proto::Schedule::Constant) => Schedule::Constant,
        Ok(proto::Schedule::Cosine) => Schedule::Cosine,
        Err(_) => return Err(bad("optimizer.schedule", "unknown schedule")),
    };
    Ok(OptimizerSpec {
        lr: nonzero(o.lr, d.lr),
        beta1: o.beta1.unwrap_or(d.beta1),
        beta2: o.beta2.unwrap_or(d.beta2),
        eps: nonzero(o.eps, d.eps),
        weight_decay: o.weight_decay,
        warmup_ratio: o.warmup_ratio.unwrap_or(d.warmup_ratio),
        schedule,
        grad_clip: o.grad_clip.unwrap_or(d.grad_clip),
        micro_batch_size: match o.micro_batch_size {
            0 => d.micro_batch_size,
            n => n as usize,
        },
        grad_accumulation: match o.grad_accumulation {
            0 => d.grad_accumulation,
            n => n as usize,
        },
    })
}

fn run_policy(r: &proto::RunPolicy) -> RunPolicy {
    let d = RunPolicy::default();
    RunPolicy {
        seed: r.seed,
        checkpoint_every_steps: r.checkpoint_every_steps.unwrap_or(d.checkpoint_every_steps),
        keep_last_checkpoints: r
            .keep_last_checkpoints
            .map(|n| n as usize)
            .unwrap_or(d.keep_last_checkpoints),
        max_steps: r.max_steps,
        epochs: if r.epochs == 0 { d.epochs } else { r.epochs },
    }
}

fn path_string(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

fn to_u32(n: usize) -> u32 {
    n.try_into().unwrap_or(u32::MAX)
}

/// A spec as the proto carries it, every field explicit (what `rmr1 train submit` sends and what
/// jobs report).
pub fn spec_proto(s: &TrainSpec) -> proto::TrainJobSpec {
    let task = match &s.task {
        TaskSpec::Sft(sft) => train_job_spec::Task::Sft(proto::SftSpec {
            train_files: sft.train_files.iter().map(|p| path_string(p)).collect(),
            eval_files: sft.eval_files.iter().map(|p| path_string(p)).collect(),
            target_field: sft.target_field.clone(),
            max_seq_len: to_u32(sft.max_seq_len),
            skip_bad_rows: sft.skip_bad_rows,
            eval_every_steps: sft.eval_every_steps,
        }),
        TaskSpec::Grpo(g) => train_job_spec::Task::Grpo(proto::GrpoSpec {
            train_files: g.train_files.iter().map(|p| path_string(p)).collect(),
            label_field: g.label_field.clone(),
            group_size: to_u32(g.group_size),
            prompts_per_step: to_u32(g.prompts_per_step),
            prompts_per_update: to_u32(g.prompts_per_update),
            update_epochs: g.update_epochs,
            max_prompt_len: to_u32(g.max_prompt_len),
            max_response_len: to_u32(g.max_response_len),
            temperature: g.temperature,
            top_p: g.top_p,
            clip_low: Some(g.clip_low),
            clip_high: Some(g.clip_high),
            kl_coef: Some(g.kl_coef),
            skip_bad_rows: g.skip_bad_rows,
            rollout_kv_cache_mib: to_u32(g.rollout_kv_cache_mib),
        }),
    };
    let o = &s.optimizer;
    proto::TrainJobSpec {
        base_model: s.base_model.clone(),
        task: Some(task),
        adapter: s.adapter.as_ref().map(|l| proto::LoraSpec {
            rank: to_u32(l.rank),
            alpha: l.alpha,
            dropout: l.dropout,
            target_modules: l.target_modules.clone(),
        }),
        optimizer: Some(proto::OptimizerSpec {
            lr: o.lr,
            beta1: Some(o.beta1),
            beta2: Some(o.beta2),
            eps: o.eps,
            weight_decay: o.weight_decay,
            warmup_ratio: Some(o.warmup_ratio),
            schedule: match o.schedule {
                Schedule::Constant => proto::Schedule::Constant,
                Schedule::Cosine => proto::Schedule::Cosine,
            } as i32,
            grad_clip: Some(o.grad_clip),
            micro_batch_size: to_u32(o.micro_batch_size),
            grad_accumulation: to_u32(o.grad_accumulation),
        }),
        run: Some(proto::RunPolicy {
            seed: s.run.seed,
            checkpoint_every_steps: Some(s.run.checkpoint_every_steps),
            keep_last_checkpoints: Some(to_u32(s.run.keep_last_checkpoints)),
            max_steps: s.run.max_steps,
            epochs: s.run.epochs,
        }),
        output_dir: path_string(&s.output_dir),
    }
}

pub fn state_proto(s: JobState) -> proto::TrainJobState {
    match s {
        JobState::Queued => proto::TrainJobState::Queued,
        JobState::Pending => proto::TrainJobState::Pending,
        JobState::Running => proto::TrainJobState::Running,
        JobState::Succeeded => proto::TrainJobState::Succeeded,
        JobState::Failed => proto::TrainJobState::Failed,
        JobState::Cancelling => proto::TrainJobState::Cancelling,
        JobState::Cancelled => proto::TrainJobState::Cancelled,
    }
}

/// A state a client named; `None` for UNSPECIFIED and unknown numbers.
pub fn state_from_proto(value: i32) -> Option<JobState> {
    Some(match proto::TrainJobState::try_from(value).ok()? {
        proto::TrainJobState::Unspecified => return None,
        proto::TrainJobState::Queued => JobState::Queued,
        proto::TrainJobState::Pending => JobState::Pending,
        proto::TrainJobState::Running => JobState::Running,
        proto::TrainJobState::Succeeded => JobState::Succeeded,
        proto::TrainJobState::Failed => JobState::Failed,
        proto::TrainJobState::Cancelling => JobState::Cancelling,
        proto::TrainJobState::Cancelled => JobState::Cancelled,
    })
}

pub fn progress_proto(p: &JobProgress) -> proto::TrainProgress {
    proto::TrainProgress {
        step: p.step,
        total_steps: p.total_steps,
        epoch: p.epoch,
        tokens_seen: p.tokens_seen,
        metrics: p.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        eta_seconds: p.eta_seconds,
    }
}

fn error_proto(e: &JobFailure) -> proto::TrainJobError {
    proto::TrainJobError {
        code: e.code.number(),
        code_name: e.code.name().into(),
        message: e.message.clone(),
    }
}

fn result_proto(r: &JobOutput) -> proto::TrainJobResult {
    proto::TrainJobResult {
        artifacts: r
            .artifacts
            .iter()
            .map(|a| proto::TrainArtifact {
                path: path_string(&a.path),
                format: a.format.clone(),
            })
            .collect(),
        final_metrics: r
            .final_metrics
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
    }
}

pub fn job_proto(j: &JobRecord) -> proto::TrainJob {
    proto::TrainJob {
        job_id: j.job_id.clone(),
        labels: j
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        spec: Some(spec_proto(&j.spec)),
        state: state_proto(j.state) as i32,
        create_time_ms: j.create_ms,
        start_time_ms: j.start_ms.unwrap_or(0),
        end_time_ms: j.end_ms.unwrap_or(0),
        update_time_ms: j.update_ms,
        progress: j.progress.as_ref().map(progress_proto),
        error: j.error.as_ref().map(error_proto),
        result: j.result.as_ref().map(result_proto),
        restart_count: j.restart_count,
    }
}

pub fn event_proto(e: &JobEvent) -> proto::TrainJobEvent {
    use train_job_event::Event;
    let event = match &e.kind {
        EventKind::StateChanged { from, to, message } => Event::StateChanged(proto::StateChanged {
            from: from.map_or(proto::TrainJobState::Unspecified, state_proto) as i32,
            to: state_proto(*to) as i32,
            message: message.clone(),
        }),
        EventKind::Step(p) => Event::Step(progress_proto(p)),
        EventKind::CheckpointSaved { step, path, loss } => {
            Event::CheckpointSaved(proto::CheckpointSaved {
                step: *step,
                path: path_string(path),
                loss: *loss,
            })
        }
        EventKind::Eval { step, metrics } => Event::Eval(proto::EvalResult {
            step: *step,
            metrics: metrics.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        }),
        EventKind::Log { level, message } => Event::Log(proto::LogMessage {
            level: match level {
                LogLevel::Info => proto::LogLevel::Info,
                LogLevel::Warn => proto::LogLevel::Warn,
                LogLevel::Error => proto::LogLevel::Error,
            } as i32,
            message: message.clone(),
        }),
    };
    proto::TrainJobEvent {
        sequence: e.seq,
        time_ms: e.time_ms,
        job_id: e.job_id.clone(),
        event: Some(event),
    }
}

pub fn checkpoint_proto(c: &CheckpointRecord) -> proto::Checkpoint {
    proto::Checkpoint {
        step: c.step,
        path: path_string(&c.path),
        loss: c.loss,
        time_ms: c.time_ms,
    }
}

pub fn labels(map: &HashMap<String, String>) -> std::collections::BTreeMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> proto::TrainJobSpec {
        proto::TrainJobSpec {
            base_model: "m".into(),
            task: Some(train_job_spec::Task::Sft(proto::SftSpec {
                train_files: vec!["a.jsonl".into()],
                ..Default::default()
            })),
            output_dir: "out".into(),
            ..Default::default()
        }
    }

    #[test]
    fn unset_fields_take_the_spec_defaults() {
        let spec = train_spec(&minimal()).unwrap();
        assert_eq!(spec.optimizer, OptimizerSpec::default());
        assert_eq!(spec.run, RunPolicy::default());
        let TaskSpec::Sft(sft) = &spec.task else {
            panic!("an sft spec")
        };
        assert_eq!(sft.target_field, "winner");
        assert_eq!(sft.max_seq_len, 12_288);
        // An optimizer message with only zeros still means the defaults where zero is no value.
        let mut p = minimal();
        p.optimizer = Some(proto::OptimizerSpec::default());
        p.run = Some(proto::RunPolicy::default());
        let spec = train_spec(&p).unwrap();
        assert_eq!(spec.optimizer, OptimizerSpec::default());
        assert_eq!(spec.run, RunPolicy::default());
    }

    #[test]
    fn explicit_zeros_survive_where_they_mean_something() {
        let mut p = minimal();
        p.optimizer = Some(proto::OptimizerSpec {
            grad_clip: Some(0.0),
            warmup_ratio: Some(0.0),
            beta1: Some(0.0),
            ..Default::default()
        });
        p.run = Some(proto::RunPolicy {
            checkpoint_every_steps: Some(0),
            keep_last_checkpoints: Some(0),
            ..Default::default()
        });
        let spec = train_spec(&p).unwrap();
        assert_eq!(spec.optimizer.grad_clip, 0.0);
        assert_eq!(spec.optimizer.warmup_ratio, 0.0);
        assert_eq!(spec.optimizer.beta1, 0.0);
        assert_eq!(spec.run.checkpoint_every_steps, 0);
        assert_eq!(spec.run.keep_last_checkpoints, 0);
    }

    #[test]
    fn specs_round_trip() {
        let mut spec = train_spec(&minimal()).unwrap();
        spec.adapter = Some(LoraSpec {
            rank: 8,
            alpha: 16.0,
            dropout: 0.05,
            target_modules: vec!["q_proj".into()],
        });
        spec.optimizer.schedule = Schedule::Constant;
        spec.optimizer.grad_clip = 0.0;
        spec.run.max_steps = 7;
        assert_eq!(train_spec(&spec_proto(&spec)).unwrap(), spec);
    }

    #[test]
    fn a_missing_task_is_named() {
        let mut p = minimal();
        p.task = None;
        assert_eq!(train_spec(&p).unwrap_err().field, "task");
    }

    fn minimal_grpo() -> proto::TrainJobSpec {
        proto::TrainJobSpec {
            task: Some(train_job_spec::Task::Grpo(proto::GrpoSpec {
                train_files: vec!["rl.jsonl".into()],
                ..Default::default()
            })),
            ..minimal()
        }
    }

    #[test]
    fn a_grpo_spec_takes_upstreams_defaults_and_its_own_optimizer() {
        let spec = train_spec(&minimal_grpo()).unwrap();
        let TaskSpec::Grpo(g) = &spec.task else {
            panic!("a grpo spec")
        };
        assert_eq!(g, &GrpoSpec::with_defaults(vec!["rl.jsonl".into()]));
        assert_eq!(
            (g.group_size, g.prompts_per_step, g.prompts_per_update),
            (7, 1024, 128)
        );
        assert_eq!((g.clip_low, g.clip_high, g.kl_coef), (0.2, 0.2, 0.001));
        assert_eq!((g.max_prompt_len, g.max_response_len), (4096, 8192));
        assert_eq!(spec.optimizer, OptimizerSpec::default_for(&spec.task));
        assert_eq!(spec.optimizer.lr, 1e-6);
        // An optimizer message with zeros fills GRPO's defaults, not SFT's.
        let mut p = minimal_grpo();
        p.optimizer = Some(proto::OptimizerSpec::default());
        assert_eq!(
            train_spec(&p).unwrap().optimizer.schedule,
            Schedule::Constant
        );
        spec.validate().unwrap();
    }

    #[test]
    fn a_grpo_spec_round_trips_and_an_explicit_zero_kl_survives() {
        let mut p = minimal_grpo();
        if let Some(train_job_spec::Task::Grpo(g)) = &mut p.task {
            g.kl_coef = Some(0.0);
            g.group_size = 3;
            g.temperature = 0.7;
        }
        let spec = train_spec(&p).unwrap();
        let TaskSpec::Grpo(g) = &spec.task else {
            panic!("a grpo spec")
        };
        assert_eq!((g.kl_coef, g.group_size, g.temperature), (0.0, 3, 0.7));
        assert_eq!(train_spec(&spec_proto(&spec)).unwrap(), spec);
    }

    #[test]
    fn bad_grpo_fields_are_named() {
        let mut spec = train_spec(&minimal_grpo()).unwrap();
        let TaskSpec::Grpo(g) = &mut spec.task else {
            panic!("a grpo spec")
        };
        g.group_size = 1;
        assert_eq!(spec.validate().unwrap_err().field, "grpo.group_size");
        let TaskSpec::Grpo(g) = &mut spec.task else {
            unreachable!()
        };
        g.group_size = 7;
        g.prompts_per_update = 2048;
        assert_eq!(
            spec.validate().unwrap_err().field,
            "grpo.prompts_per_update"
        );
    }
}
