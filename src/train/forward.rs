//! The differentiable Qwen2 forward used for training.
//!
//! It reads the same weights, by the same Hugging Face names, as the engine's batched forward
//! (`model::qwen2`), but runs one sequence at a time with plain candle ops that all have a backward:
//! no paged cache, no quantized matmul, none of the candle ops whose gradients silently vanish
//! (`reference/training.md`). Frozen weights go through [`ops::frozen_linear`] so backward never
//! computes a weight gradient for them. Everything here is device-generic tensor code.
//!
//! Layout: activations are `[T, hidden]` for one sequence; attention works on `[heads, T, head_dim]`.

use super::ops;
use super::params::{Param, TrainParams};
use crate::model::rope::RopeTables;
use crate::model::Qwen2Config;
use candle_core::{DType, Device, Result, Tensor};

/// Per-forward randomness (LoRA dropout), derived from a key so a recomputed layer (gradient
/// checkpointing) and a resumed run draw exactly the same masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropoutKey {
    pub seed: u64,
    /// Which micro-batch sequence of the whole run this forward belongs to.
    pub sequence: u64,
}

pub struct TrainableQwen2 {
    config: Qwen2Config,
    pub params: TrainParams,
    /// The engine's RoPE tables (f32), so both rotate by the same bits.
    rope: RopeTables,
    /// Dtype of activations and of the weights as used (masters stay f32).
    compute_dtype: DType,
}

/// `log softmax(logits)[target]` per row, f32: `[n, V]`, `[n]` → `[n]`.
pub fn target_log_probs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    ops::log_softmax_gather(logits, targets)
}

impl TrainableQwen2 {
    pub fn new(
        config: Qwen2Config,
        params: TrainParams,
        compute_dtype: DType,
        max_positions: usize,
    ) -> Result<Self> {
        let max = max_positions.min(config.max_position_embeddings).max(1);
        let rope = RopeTables::with_max_positions(&config, max, params.device())?;
        Ok(Self {
            config,
            params,
            rope,
            compute_dtype,
        })
    }

    pub fn config(&self) -> &Qwen2Config {
        &self.config
    }

    pub fn max_positions(&self) -> usize {
        self.rope.max_positions()
    }

    pub fn device(&self) -> &Device {
        self.params.device()
    }

    fn cast(&self, t: &Tensor) -> Result<Tensor> {
        t.to_dtype(self.compute_dtype)
    }

    /// `x Wᵀ + b` for module `module` (an HF prefix such as `model.layers.0.self_attn.q_proj`), plus
    /// its LoRA delta when it has one.
    fn linear(
        &self,
        x: &Tensor,
        module: &str,
        bias: bool,
        dropout: Option<(DropoutKey, u64)>,
    ) -> Result<Tensor> {
        let weight = self.params.get(&format!("{module}.weight"))?;
        let b = if bias {
            Some(self.params.get(&format!("{module}.bias"))?)
        } else {
            None
        };
        let y = match &weight {
            Param::Frozen(w) => ops::frozen_linear(x, &self.cast(w)?)?,
            Param::Trainable(w) => x.broadcast_matmul(&self.cast(w)?.t()?)?,
        };
        // A frozen bias leaves only an activation-sized gradient for its broadcast view (no
        // weight-sized one): not worth an op of its own.
        let y = match b {
            Some(b) => y.broadcast_add(&self.cast(b.tensor())?)?,
            None => y,
        };
        match self.params.lora(module) {
            Some(lora) => {
                let input = match dropout {
                    Some((key, salt)) if lora.dropout > 0.0 => lora
                        .dropout_mask(x, key, salt)?
                        .map_or(Ok(x.clone()), |m| x.broadcast_mul(&m))?,
                    _ => x.clone(),
                };
                let a = self.cast(lora.a.as_tensor())?;
                let bm = self.cast(lora.b.as_tensor())?;
                let delta = input
                    .broadcast_matmul(&a.t()?)?
                    .broadcast_matmul(&bm.t()?)?;
                y + (delta * lora.scale)?
            }
            None => Ok(y),
        }
    }

    fn norm(&self, x: &Tensor, name: &str) -> Result<Tensor> {
        let w = self.params.get(name)?;
        ops::rms_norm(x, &self.cast(w.tensor())?, self.config.rms_norm_eps)
    }

    /// Token embeddings `[T, hidden]` (tracked only when the embedding is trained).
    pub fn embed(&self, tokens: &Tensor) -> Result<Tensor> {
        let e = self.params.get("model.embed_tokens.weight")?;
        self.cast(&e.tensor().embedding(tokens)?)
    }

    /// Rows of the RoPE tables for positions `0..t`.
    pub fn rope_rows(&self, t: usize) -> Result<(Tensor, Tensor)> {
        if t > self.max_positions() {
            candle_core::bail!(
                "sequence of {t} tokens exceeds the {} positions",
                self.max_positions()
            );
        }
        let rows = self
            .rope
            .gather(&Tensor::arange(0u32, t as u32, self.device())?)?;
        Ok((rows.cos, rows.sin))
    }

    /// Decoder layer `idx` on `x` `[T, hidden]` at positions `0..T`.
    pub fn layer(
        &self,
        idx: usize,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        key: Option<DropoutKey>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (heads, kv_heads, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim());
        let t = x.dim(0)?;
        let p = format!("model.layers.{idx}");
        // Each projection of each layer draws its own dropout mask.
        let salt = |m: u64| key.map(|k| (k, (idx as u64) << 8 | m));
        let h = self.norm(x, &format!("{p}.input_layernorm.weight"))?;
        let q = self.linear(&h, &format!("{p}.self_attn.q_proj"), true, salt(0))?;
        let k = self.linear(&h, &format!("{p}.self_attn.k_proj"), true, salt(1))?;
        let v = self.linear(&h, &format!("{p}.self_attn.v_proj"), true, salt(2))?;
        let q = ops::rope(&q.reshape((t, heads, d))?, cos, sin)?.transpose(0, 1)?;
        let k = ops::rope(&k.reshape((t, kv_heads, d))?, cos, sin)?.transpose(0, 1)?;
        let v = v.reshape((t, kv_heads, d))?.transpose(0, 1)?;
        let attn = ops::causal_attention(&q, &k, &v, 1.0 / (d as f64).sqrt())?;
        let x = (x + self.linear(&attn, &format!("{p}.self_attn.o_proj"), false, salt(3))?)?;
        let h = self.norm(&x, &format!("{p}.post_attention_layernorm.weight"))?;
        let gate = self.linear(&h, &format!("{p}.mlp.gate_proj"), false, salt(4))?;
        let up = self.linear(&h, &format!("{p}.mlp.up_proj"), false, salt(5))?;
        let mlp = (candle_nn::ops::silu(&gate)? * up)?;
        x + self.linear(&mlp, &format!("{p}.mlp.down_proj"), false, salt(6))?
    }

    /// Final norm and output head on hidden rows `[n, hidden]` → logits `[n, V]` f32.
    pub fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        let normed = self.norm(hidden, "model.norm.weight")?;
        let name = if self.params.contains("lm_head.weight") {
            "lm_head.weight"
        } else {
            "model.embed_tokens.weight"
        };
        let logits = match self.params.get(name)? {
            Param::Frozen(w) => ops::frozen_linear(&normed, &self.cast(&w)?)?,
            Param::Trainable(w) => normed.broadcast_matmul(&self.cast(&w)?.t()?)?,
        };
        logits.to_dtype(DType::F32)
    }

    /// Logits of every position `[T, V]`, with the whole graph kept: for tests and short inputs.
    pub fn forward_logits(&self, tokens: &[u32]) -> Result<Tensor> {
        let t = tokens.len();
        let ids = Tensor::from_slice(tokens, t, self.device())?;
        let (cos, sin) = self.rope_rows(t)?;
        let mut x = self.embed(&ids)?;
        for idx in 0..self.config.num_hidden_layers {
            x = self.layer(idx, &x, &cos, &sin, None)?;
        }
        self.head(&x)
    }
}
