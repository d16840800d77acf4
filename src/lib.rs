//! rmr1: serving and training RM-R1-style reasoning reward models on candle.
//!
//! Layers, each depending only on the ones below: `engine` (continuous batching, paged KV cache,
//! sampling) over `model` (tensors: Qwen2 forward, weight loading, attention backends).

pub mod api;
pub mod bench;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod engine;
pub mod eval;
pub mod gpu_check;
pub mod judge;
pub mod metrics;
pub mod model;
pub mod remote_args;
pub mod serving_args;
pub mod train;
