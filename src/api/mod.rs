//! gRPC services only: request validation, status codes, streaming. No tensors; judgments come
//! from `crate::judge`.

pub mod convert;
pub mod judge_service;
pub mod model_service;
pub mod proto;
pub mod registry;
pub mod server;
pub mod status;

pub use server::GrpcServer;
