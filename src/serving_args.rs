//! Command-line flags for a served judge model, shared by `rmr1 serve` and `rmr1 bench judge`.

use crate::engine::{EngineConfig, StepLimitFlags};
use crate::judge::judge_model::JudgeModelOptions;
use crate::judge::PromptFamily;
use crate::model::attention::KvCacheDtype;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// A Hugging Face model directory, a GGUF file, or a hub id (owner/name[@revision]).
    /// Required; optional to clap only so that commands embedding these flags can offer
    /// alternatives (`rmr1 eval --addr` / `--replay`).
    #[arg(long)]
    pub model: Option<String>,
    /// tokenizer.json to use instead of the model's own.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors) for
    /// --model. Merged into the weights at load (a GGUF base is dequantized to dense first): served
    /// at the base's full speed, one adapter per served model. The tokenizer is the base's.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// RM-R1 prompt family the model was trained on: instruct or reasoning. Default: from the
    /// manifest of a known checkpoint (models/*.json).
    #[arg(long)]
    pub family: Option<PromptFamily>,
    /// A model manifest (JSON, as in models/) for a checkpoint not built in.
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Name clients use in `model`; default: the model's own name.
    #[arg(long)]
    pub served_name: Option<String>,
    /// cpu, cuda, cuda:N, or auto (the first GPU if this build has CUDA and one is present).
    #[arg(long, default_value_t = crate::model::DeviceChoice::Auto)]
    pub device: crate::model::DeviceChoice,
    /// KV cache size in MiB on the CPU.
    #[arg(long, default_value_t = 1024)]
    pub kv_cache_mib: usize,
    /// Element type of the KV cache (f16 / bf16 halve the memory and traffic of f32). Default: for
    /// GGUF models f16 on the CPU and bf16 on a GPU; the model's dtype for dense ones.
    #[arg(long, value_enum)]
    pub kv_cache_dtype: Option<KvCacheDtype>,
    /// Fraction of the GPU's memory rmr1 may use: weights, activations, and a KV cache sized to the
    /// rest (as vLLM's --gpu-memory-utilization).
    #[arg(long, default_value_t = 0.90)]
    pub gpu_memory_fraction: f64,
    /// Sequences decoded together. Default: 64 on the CPU, 256 on a GPU.
    #[arg(long)]
    pub max_num_seqs: Option<usize>,
    /// Tokens per engine step (decode + prefill chunks). Default: 256 on the CPU, 2048 on a GPU.
    #[arg(long)]
    pub max_num_batched_tokens: Option<usize>,
    /// Longest prompt + judgment; default: the model's context length.
    #[arg(long)]
    pub max_model_len: Option<usize>,
    /// Requests queued or running before new ones get RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 4096)]
    pub max_pending_requests: usize,
    /// Of those, the most one client (token, certificate or IP) may hold; default: three
    /// quarters of --max-pending-requests, so one client cannot fill the queue for everyone.
    #[arg(long)]
    pub max_pending_per_client: Option<usize>,
}

impl ModelArgs {
    pub fn spec(&self) -> anyhow::Result<&str> {
        self.model
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("--model <dir|file.gguf|owner/name> is required"))
    }

    pub fn options(&self) -> JudgeModelOptions {
        JudgeModelOptions {
            tokenizer: self.tokenizer.clone(),
            adapter: self.adapter.clone(),
            family: self.family,
            manifest: self.manifest.clone(),
            name: self.served_name.clone(),
            device: self.device,
            engine: EngineConfig {
                kv_cache_bytes: self.kv_cache_mib << 20,
                kv_cache_dtype: self.kv_cache_dtype,
                gpu_memory_fraction: self.gpu_memory_fraction,
                max_model_len: self.max_model_len,
                max_pending_requests: self.max_pending_requests,
                max_pending_per_client: self.max_pending_per_client,
                ..EngineConfig::default()
            },
            step_limit_flags: Some(StepLimitFlags {
                max_num_seqs: self.max_num_seqs,
                max_num_batched_tokens: self.max_num_batched_tokens,
            }),
        }
    }
}
