//! Tensors: the Qwen2 architecture, weight loading and attention backends.

pub mod adapter;
pub mod attention;
pub mod base_weights;
pub mod chat_template;
pub mod config;
pub mod device;
pub mod fused;
mod int8_kernels;
pub mod int8_matmul;
pub mod loader;
pub mod parallel;
pub mod qwen2;
pub mod rope;
pub mod safetensors_io;
pub mod tokenizer;

pub use adapter::LoraAdapter;
pub use attention::{AttentionBatch, BlockId, CacheShape, PagedAttention, SequenceSpan};
pub use config::Qwen2Config;
pub use device::DeviceChoice;
pub use loader::{load, LoadOptions, LoadedModel, ModelSource};
pub use qwen2::{ForwardBatch, Qwen2, WeightFormat};
pub use tokenizer::ModelTokenizer;
