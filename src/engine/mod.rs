//! Continuous batching: requests, scheduler, paged KV block management, sampling and the engine
//! thread. No gRPC here, and no tensor code beyond calling the model's batched forward.

pub mod block_manager;
pub mod block_pool;
pub mod cache_plan;
pub mod core;
pub mod detokenizer;
pub mod fair_queue;
pub mod fault;
pub mod handle;
pub mod request;
pub mod sampler;
pub mod scheduler;
pub mod sequence;
pub mod stats;
pub mod step_limits;
pub mod token_sampler;
pub mod token_text;

pub use self::core::{EngineConfig, EngineCore};
pub use fault::EngineFault;
pub use handle::{EngineHandle, RequestStream, SubmitError};
pub use request::{
    ClientId, EngineEvent, FinishReason, Finished, GenerateRequest, LogprobProbe, ProbeTrigger,
    SamplingParams, TokenEvent, Usage,
};
pub use step_limits::StepLimitFlags;
