//! Training, two floors. The job layer (`job`, `store`, `runner`, `events`) knows nothing of tensors;
//! the trainer layer (`forward`, `ops`, `lora`, `optim`, `checkpoint`, `sft`, `export`) knows nothing
//! of gRPC. They meet at [`executor`].

pub mod base_weights;
pub mod default_executor;
pub mod events;
pub mod executor;
pub mod job;
pub mod jobs;
pub mod record;
pub mod roots;
pub mod runner;
pub mod spec;
pub mod store;

pub use default_executor::default_executor;
pub use executor::{
    Artifact, CheckpointReport, JobContext, RunOutcome, StepReport, TrainError, TrainErrorKind,
    TrainExecutor, TrainResult,
};
pub use jobs::{JobsError, TrainJobs, TrainingConfig};
pub use spec::{LoraSpec, OptimizerSpec, RunPolicy, Schedule, SftSpec, TaskSpec, TrainSpec};
