//! The base model's weights as dense tensors under Hugging Face names. The loader lives in
//! `model::base_weights` because serving an adapter merged at load needs it too; training code
//! keeps using it from here.

pub use crate::model::base_weights::{hf_name_of_gguf, BaseWeights};
