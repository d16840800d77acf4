//! Rotary position embedding tables, always computed in f32.
//!
//! candle-transformers builds its tables in the model dtype, which in bf16 makes every position above
//! 256 inexact. Here the sin/cos tables are f32 and the rotation itself runs in f32, gathered per token
//! so every token of a flat batch can sit at its own position.

use super::config::Qwen2Config;
use candle_core::{DType, Device, Result, Tensor};

pub struct RopeTables {
    cos: Tensor,
    sin: Tensor,
}

impl RopeTables {
    pub fn new(config: &Qwen2Config, device: &Device) -> Result<Self> {
        Self::with_max_positions(config, config.max_position_embeddings, device)
    }

    /// Tables for positions `0..max` only (the trainer sizes them to its longest sequence).
    pub fn with_max_positions(config: &Qwen2Config, max: usize, device: &Device) -> Result<Self> {
        let d = config.head_dim();
        let inv_freq: Vec<f32> = (0..d)
            .step_by(2)
            .map(|i| 1.0 / config.rope_theta.powf(i as f64 / d as f64) as f32)
            .collect();
        let mut cos = Vec::with_capacity(max * d / 2);
        let mut sin = Vec::with_capacity(max * d / 2);
        for p in 0..max {
            for f in &inv_freq {
                // The product is formed in f32 like the reference implementations (the inverse
                // frequencies come from f64 here, f32 there: a last-bit difference at most).
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (max, d / 2), device)?,
            sin: Tensor::from_vec(sin, (max, d / 2), device)?,
        })
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }

    /// Rows of the tables for each token's position (`[n, d/2]` each).
    pub fn gather(&self, positions: &Tensor) -> Result<StepRotary> {
        Ok(StepRotary {
            cos: self.cos.index_select(positions, 0)?,
            sin: self.sin.index_select(positions, 0)?,
        })
    }
}

/// One step's rotary tables: each token's cos / sin rows, `[n, d/2]` f32.
pub struct StepRotary {
    pub cos: Tensor,
    pub sin: Tensor,
}

impl StepRotary {
    /// Rotates `x` `[1, n, heads, d]` (non-interleaved halves, as HF Qwen2) in f32.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        candle_nn::rotary_emb::rope_thd(&x, &self.cos, &self.sin)?.to_dtype(dtype)
    }
}
