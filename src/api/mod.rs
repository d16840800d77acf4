//! gRPC services only: request validation, status codes, streaming. No tensors; judgments come
//! from `crate::judge`, training jobs from `crate::train::jobs`.

pub mod accept;
pub mod access;
pub mod codec;
pub mod convert;
pub mod drain;
pub mod judge_service;
pub mod metrics_http;
pub mod model_service;
pub mod options;
pub mod proto;
pub mod readiness;
pub mod registry;
pub mod remote;
pub mod server;
pub mod status;
pub mod training_convert;
pub mod training_service;

pub use crate::train::TrainingConfig;
pub use access::{Caller, Role, TokenTable};
pub use options::{ServerOptions, TlsFiles};
pub use server::GrpcServer;
