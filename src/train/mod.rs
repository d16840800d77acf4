//! Training, two floors. The job layer (`job`, `store`, `runner`, `events`) knows nothing of tensors;
//! the trainer layer (`forward`, `ops`, `lora`, `optim`, `checkpoint`, `sft`, `export`) knows nothing
//! of gRPC. They meet at [`executor`].
//!
//! The output formats that serving reads too (PEFT adapter, safetensors with metadata, dense base
//! weights) live in `model` and are re-exported here; `export` writes full Hugging Face checkpoints.

pub mod base_weights;
pub mod checkpoint;
pub mod executor;
pub mod export;
pub mod forward;
pub mod grad_step;
pub mod ops;
pub mod optim;
pub mod params;
pub mod rng;
pub mod session;
pub mod sft;
pub mod sft_data;
pub mod spec;
pub mod trainer;

pub use crate::model::adapter::LoraAdapter;
pub use executor::{
    Artifact, CheckpointReport, JobContext, RunOutcome, StepReport, TrainError, TrainErrorKind,
    TrainExecutor, TrainResult,
};
pub use export::{export_merged, write_hf_checkpoint, TokenizerFiles};
pub use spec::{LoraSpec, OptimizerSpec, RunPolicy, Schedule, SftSpec, TaskSpec, TrainSpec};
