//! The base model's weights as dense tensors under Hugging Face names, for training and for
//! adapter merging: the same sources the engine serves (HF directory, sharded safetensors, hub id,
//! GGUF), with GGUF's llama.cpp names mapped to HF ones and its blocks dequantized.
//!
//! It lives in `model` (not `train`) because serving a LoRA adapter merged at load needs the same
//! dense weights.

use super::loader::{
    gguf_tokenizer, hf_dir_config, hf_dir_tokenizer, resolve_local, safetensors_files,
};
use super::{ModelSource, ModelTokenizer, Qwen2Config};
use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct BaseWeights {
    pub config: Qwen2Config,
    /// HF tensor names (`model.layers.0.self_attn.q_proj.weight`, ...) → dense tensors. A tied output
    /// head has no `lm_head.weight` entry.
    pub tensors: BTreeMap<String, Tensor>,
    pub tokenizer: ModelTokenizer,
    /// The HF directory the weights came from (its config and tokenizer files are copied into full
    /// checkpoints); `None` for GGUF.
    pub hf_dir: Option<PathBuf>,
    /// The `--model` spec as given, for `base_model_name_or_path`.
    pub spec: String,
}

impl BaseWeights {
    pub fn load(spec: &str, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_with_tokenizer(spec, dtype, device, None)
    }

    /// As [`BaseWeights::load`], with `tokenizer` (a tokenizer.json) instead of the model's own, as
    /// `--tokenizer` asks.
    pub fn load_with_tokenizer(
        spec: &str,
        dtype: DType,
        device: &Device,
        tokenizer: Option<&Path>,
    ) -> Result<Self> {
        match resolve_local(spec)? {
            ModelSource::HfDir(dir) => {
                let config = hf_dir_config(&dir)?;
                let mut tensors = BTreeMap::new();
                for file in safetensors_files(&dir)? {
                    let loaded = candle_core::safetensors::load(&file, device)
                        .with_context(|| format!("reading {}", file.display()))?;
                    for (name, t) in loaded {
                        tensors.insert(name, t.to_dtype(dtype)?);
                    }
                }
                let tokenizer = hf_dir_tokenizer(&dir, &config, tokenizer)?;
                Ok(Self {
                    config,
                    tensors,
                    tokenizer,
                    hf_dir: Some(dir),
                    spec: spec.to_string(),
                })
            }
            ModelSource::Gguf(path) => Self::load_gguf(&path, spec, dtype, device, tokenizer),
            ModelSource::Hub { .. } => unreachable!("resolve_local downloads hub models"),
        }
    }

    fn load_gguf(
        path: &Path,
        spec: &str,
        dtype: DType,
        device: &Device,
        tokenizer: Option<&Path>,
    ) -> Result<Self> {
        let mut file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| e.with_path(path))
            .with_context(|| format!("{} is not a readable GGUF file", path.display()))?;
        let mut config = Qwen2Config::from_gguf(&content)?;
        let mut tensors = BTreeMap::new();
        for name in content.tensor_infos.keys() {
            let Some(hf) = hf_name_of_gguf(name) else {
                bail!("unexpected tensor {name:?} in a qwen2 GGUF file");
            };
            let q = content.tensor(&mut file, name, device)?;
            tensors.insert(hf, q.dequantize(device)?.to_dtype(dtype)?);
        }
        config.tie_word_embeddings = !tensors.contains_key("lm_head.weight");
        let tokenizer = gguf_tokenizer(path, &content, tokenizer)?;
        Ok(Self {
            config,
            tensors,
            tokenizer,
            hf_dir: None,
            spec: spec.to_string(),
        })
    }

    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .with_context(|| format!("the base model has no tensor {name}"))
    }

    /// The output head: `lm_head.weight`, or the embedding when tied.
    pub fn lm_head(&self) -> Result<&Tensor> {
        match self.tensors.get("lm_head.weight") {
            Some(t) => Ok(t),
            None => self.get("model.embed_tokens.weight"),
        }
    }
}

/// llama.cpp's qwen2 tensor names → Hugging Face names.
pub fn hf_name_of_gguf(name: &str) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    let hf_module = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf_module}.{kind}"))
}
