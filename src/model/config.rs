//! Qwen2 / Qwen2.5 architecture hyper-parameters, read from a Hugging Face `config.json` or GGUF metadata.

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file;
use serde::Deserialize;
use std::path::Path;

/// The fields of a Hugging Face Qwen2 `config.json` that the forward needs.
///
/// Mirrors HF names so a config can be read as-is. Unlike candle-transformers' config, `sliding_window`
/// is optional: several re-saved Qwen2.5 configs carry `"sliding_window": null`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Qwen2Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub torch_dtype: Option<String>,
    #[serde(default)]
    pub eos_token_id: Option<EosTokenIds>,
    #[serde(default)]
    pub model_type: Option<String>,
}

/// `eos_token_id` is a single id in some configs and a list in others.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum EosTokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl EosTokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            EosTokenIds::One(id) => vec![*id],
            EosTokenIds::Many(ids) => ids.clone(),
        }
    }
}

fn default_max_position_embeddings() -> usize {
    32768
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_rms_norm_eps() -> f64 {
    1e-6
}

impl Qwen2Config {
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_json_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn from_json_str(text: &str) -> Result<Self> {
        let mut json: serde_json::Value = serde_json::from_str(text)?;
        // transformers 5 saves RoPE settings as `rope_parameters: {rope_theta, rope_type}` instead of
        // a top-level `rope_theta`; falling back to the 10k default there would silently skew every
        // position.
        if let Some(obj) = json.as_object_mut() {
            if !obj.contains_key("rope_theta") {
                let nested = obj
                    .get("rope_parameters")
                    .and_then(|p| p.get("rope_theta"))
                    .cloned();
                if let Some(theta) = nested {
                    obj.insert("rope_theta".to_string(), theta);
                }
            }
        }
        let cfg: Self = serde_json::from_value(json)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads the `qwen2.*` metadata keys of a GGUF file (llama.cpp's naming).
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<Self> {
        let arch = ct
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        if arch != "qwen2" {
            bail!("GGUF architecture is {arch:?}; rmr1 serves the `qwen2` architecture only");
        }
        let get = |key: &str| {
            ct.metadata
                .get(key)
                .with_context(|| format!("GGUF metadata lacks `{key}`"))
        };
        let usize_of = |key: &str| -> Result<usize> { Ok(get(key)?.to_u32()? as usize) };
        let vocab_size = match ct.metadata.get("qwen2.vocab_size") {
            Some(v) => v.to_u32()? as usize,
            None => get("tokenizer.ggml.tokens")?.to_vec()?.len(),
        };
        let hidden_size = usize_of("qwen2.embedding_length")?;
        let cfg = Self {
            vocab_size,
            hidden_size,
            intermediate_size: usize_of("qwen2.feed_forward_length")?,
            num_hidden_layers: usize_of("qwen2.block_count")?,
            num_attention_heads: usize_of("qwen2.attention.head_count")?,
            num_key_value_heads: usize_of("qwen2.attention.head_count_kv")?,
            max_position_embeddings: usize_of("qwen2.context_length")?,
            sliding_window: None,
            use_sliding_window: false,
            tie_word_embeddings: !ct.tensor_infos.contains_key("output.weight"),
            rope_theta: match ct.metadata.get("qwen2.rope.freq_base") {
                Some(v) => v.to_f32()? as f64,
                None => default_rope_theta(),
            },
            rms_norm_eps: get("qwen2.attention.layer_norm_rms_epsilon")?.to_f32()? as f64,
            torch_dtype: None,
            eos_token_id: None,
            model_type: Some("qwen2".into()),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        if self.num_attention_heads == 0
            || self.num_key_value_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            bail!(
                "inconsistent attention shape: hidden {} heads {} kv heads {}",
                self.hidden_size,
                self.num_attention_heads,
                self.num_key_value_heads
            );
        }
        if self.use_sliding_window {
            // Released Qwen2.5 / RM-R1 checkpoints all set use_sliding_window=false; the paged
            // attention here is full causal, so refuse rather than silently compute the wrong thing.
            bail!("use_sliding_window=true is not supported");
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#""vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2"#;

    #[test]
    fn rope_theta_from_top_level_or_transformers5_rope_parameters() {
        let top =
            Qwen2Config::from_json_str(&format!("{{{BASE}, \"rope_theta\": 1000000.0}}")).unwrap();
        assert_eq!(top.rope_theta, 1e6);
        let nested = Qwen2Config::from_json_str(&format!(
            "{{{BASE}, \"rope_parameters\": {{\"rope_theta\": 500000.0, \"rope_type\": \"default\"}}}}"
        ))
        .unwrap();
        assert_eq!(nested.rope_theta, 5e5);
        let neither = Qwen2Config::from_json_str(&format!("{{{BASE}}}")).unwrap();
        assert_eq!(neither.rope_theta, 10_000.0);
    }
}
