//! Training, two floors. The job layer (`job`, `store`, `runner`, `events`) knows nothing of tensors;
//! the trainer layer (`forward`, `ops`, `lora`, `optim`, `checkpoint`, `sft`, `export`) knows nothing
//! of gRPC. They meet at [`executor`].

pub mod base_weights;
pub mod executor;
pub mod sft_data;
pub mod spec;

pub use executor::{
    Artifact, CheckpointReport, JobContext, RunOutcome, StepReport, TrainError, TrainErrorKind,
    TrainExecutor, TrainResult,
};
pub use spec::{LoraSpec, OptimizerSpec, RunPolicy, Schedule, SftSpec, TaskSpec, TrainSpec};
