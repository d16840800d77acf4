//! Training, two floors. The job layer (`job`, `record`, `store`, `runner`, `events`, `jobs`,
//! `roots`) knows nothing of tensors; the trainer layer (`forward`, `ops`, `params`, `optim`,
//! `grad_step`, `checkpoint`, `session`, `sft`, `sft_data`, `grpo`, `grpo_loss`, `rlvr_data`,
//! `rollout`, `export`) knows nothing of gRPC. They
//! meet at [`executor`]; [`trainer::Trainer`] is the executor the server runs.
//!
//! The output formats that serving reads too (PEFT adapter, safetensors with metadata, dense base
//! weights) live in `model` and are re-exported here; `export` writes full Hugging Face checkpoints.

pub mod checkpoint;
pub mod default_executor;
pub mod events;
pub mod executor;
pub mod export;
pub mod forward;
pub mod grad_step;
pub mod grpo;
pub mod grpo_loss;
pub mod job;
pub mod jobs;
pub mod ops;
pub mod optim;
pub mod params;
pub mod record;
pub mod rlvr_data;
pub mod rng;
pub mod rollout;
pub mod roots;
pub mod runner;
pub mod session;
pub mod sft;
pub mod sft_data;
pub mod spec;
pub mod store;
mod store_rows;
pub mod trainer;

pub use crate::model::adapter::LoraAdapter;
pub use default_executor::default_executor;
pub use executor::{
    Artifact, CheckpointReport, JobContext, RunOutcome, StepReport, TrainError, TrainErrorKind,
    TrainExecutor, TrainResult,
};
pub use export::{export_merged, write_hf_checkpoint, TokenizerFiles};
pub use jobs::{JobsError, TrainJobs, TrainingConfig};
pub use spec::{
    GrpoSpec, LoraSpec, OptimizerSpec, RunPolicy, Schedule, SftSpec, TaskSpec, TrainSpec,
};
