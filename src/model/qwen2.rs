//! The batched Qwen2 forward: one call runs a flat batch of tokens from many sequences, each at its
//! own positions (prefill chunks and decode tokens mixed), against the paged KV cache.
//!
//! Weights follow Hugging Face names (safetensors) or llama.cpp names (GGUF); both land in the same
//! [`Qwen2`] struct, where every projection is a candle `QMatMul` (a dense tensor or k-quant blocks).

use super::attention::{AttentionBatch, PagedAttention};
use super::config::Qwen2Config;
use super::fused;
use super::int8_matmul::Int8BlockMatrix;
use super::rope::RopeTables;
use candle_core::quantized::{gguf_file, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use std::io::{Read, Seek};
use std::sync::Arc;

/// A projection's weights: candle's `QMatMul` (dense tensors and k-quants), or our batched kernel for
/// the 32-value block formats that candle only runs one row at a time.
#[derive(Debug, Clone)]
enum Weight {
    Candle(QMatMul),
    Int8Blocks(Arc<Int8BlockMatrix>),
}

impl Weight {
    fn from_qtensor(t: Arc<QTensor>) -> Result<Self> {
        // CANDLE_DEQUANTIZE_ALL asks for f32 weights everywhere; honour it so that switch means the
        // same for us as for candle (tests use it to compare without activation re-quantization).
        let dequantize_all =
            std::env::var("CANDLE_DEQUANTIZE_ALL").is_ok_and(|v| !v.is_empty() && v != "0");
        if Int8BlockMatrix::supports(t.dtype()) && t.device().is_cpu() && !dequantize_all {
            Ok(Self::Int8Blocks(Arc::new(Int8BlockMatrix::from_qtensor(
                &t,
            )?)))
        } else {
            Ok(Self::Candle(QMatMul::from_arc(t)?))
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Candle(w) => w.forward(x),
            Self::Int8Blocks(w) => w.forward(x),
        }
    }
}

/// `y = x Wᵀ (+ b)` over dense or quantized weights.
#[derive(Debug, Clone)]
struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

impl Linear {
    fn dense(vb: &VarBuilder, out_dim: usize, in_dim: usize, with_bias: bool) -> Result<Self> {
        let weight = Weight::Candle(QMatMul::Tensor(vb.get((out_dim, in_dim), "weight")?));
        let bias = with_bias.then(|| vb.get(out_dim, "bias")).transpose()?;
        Ok(Self { weight, bias })
    }

    /// Several dense projections of the same input stacked into one matmul: one launch instead of
    /// several on a GPU, and one pass over the input everywhere.
    fn dense_stacked(
        parts: &[(VarBuilder, usize)],
        in_dim: usize,
        with_bias: bool,
    ) -> Result<Self> {
        let weights = parts
            .iter()
            .map(|(vb, out_dim)| vb.get((*out_dim, in_dim), "weight"))
            .collect::<Result<Vec<_>>>()?;
        let bias = with_bias
            .then(|| {
                let biases = parts
                    .iter()
                    .map(|(vb, out_dim)| vb.get(*out_dim, "bias"))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&biases, 0)
            })
            .transpose()?;
        Ok(Self {
            weight: Weight::Candle(QMatMul::Tensor(Tensor::cat(&weights, 0)?)),
            bias,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.weight.forward(x)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// Projections of one input that are used side by side (q/k/v, gate/up): stacked into one matmul for
/// dense weights, kept apart for quantized ones (k-quant blocks cannot be stacked).
#[derive(Debug, Clone)]
enum SideBySide {
    Stacked { linear: Linear, widths: Vec<usize> },
    Apart(Vec<Linear>),
}

impl SideBySide {
    /// One output per projection, each `[tokens, width]`.
    fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        match self {
            Self::Stacked { linear, widths } => {
                let y = linear.forward(x)?;
                let mut start = 0;
                widths
                    .iter()
                    .map(|&w| {
                        let part = y.narrow(1, start, w);
                        start += w;
                        part
                    })
                    .collect()
            }
            Self::Apart(linears) => linears.iter().map(|l| l.forward(x)).collect(),
        }
    }
}

#[derive(Debug, Clone)]
struct Layer {
    input_norm: Tensor,
    /// q, k, v.
    qkv: SideBySide,
    o_proj: Linear,
    post_attention_norm: Tensor,
    /// gate, up.
    gate_up: SideBySide,
    down_proj: Linear,
}

/// Reads named tensors out of a GGUF file.
struct GgufTensors<'a, R> {
    ct: &'a gguf_file::Content,
    reader: &'a mut R,
    device: &'a Device,
}

impl<R: Read + Seek> GgufTensors<'_, R> {
    fn quantized(&mut self, name: &str) -> Result<Arc<QTensor>> {
        Ok(Arc::new(self.ct.tensor(self.reader, name, self.device)?))
    }

    /// Norm weights and biases are small: keep them dense f32.
    fn dense(&mut self, name: &str) -> Result<Tensor> {
        self.quantized(name)?
            .dequantize(self.device)?
            .to_dtype(DType::F32)
    }

    fn linear(&mut self, prefix: &str, name: &str, with_bias: bool) -> Result<Linear> {
        let weight = Weight::from_qtensor(self.quantized(&format!("{prefix}.{name}.weight"))?)?;
        let bias = with_bias
            .then(|| self.dense(&format!("{prefix}.{name}.bias")))
            .transpose()?;
        Ok(Linear { weight, bias })
    }
}

/// A flat batch for one forward step.
#[derive(Debug, Clone, Default)]
pub struct ForwardBatch {
    pub tokens: Vec<u32>,
    /// Absolute position of each token in its sequence.
    pub positions: Vec<u32>,
    pub attention: AttentionBatch,
    /// Rows whose logits are wanted (usually the last token of each sequence that samples).
    pub logit_rows: Vec<u32>,
}

/// Describes the loaded weights for operators (`Models` listing, start-up log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightFormat {
    Dense(DType),
    Gguf(String),
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WeightFormat::Dense(dtype) => write!(f, "{dtype:?}"),
            WeightFormat::Gguf(kind) => write!(f, "gguf {kind}"),
        }
    }
}

pub struct Qwen2 {
    config: Qwen2Config,
    embed_tokens: QMatMul,
    layers: Vec<Layer>,
    final_norm: Tensor,
    lm_head: Weight,
    rope: RopeTables,
    /// Activation dtype: f32 on CPU, bf16/f16 on GPUs.
    dtype: DType,
    device: Device,
    format: WeightFormat,
}

impl Qwen2 {
    /// Builds the model from Hugging Face tensor names (`model.layers.{i}.self_attn.q_proj.weight`, ...).
    pub fn from_var_builder(config: &Qwen2Config, vb: VarBuilder) -> Result<Self> {
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let (q_dim, kv_dim) = (
            config.num_attention_heads * config.head_dim(),
            config.kv_dim(),
        );
        let m = vb.pp("model");
        let embed = m.pp("embed_tokens").get((config.vocab_size, h), "weight")?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for idx in 0..config.num_hidden_layers {
            let l = m.pp("layers").pp(idx);
            let attn = l.pp("self_attn");
            let mlp = l.pp("mlp");
            layers.push(Layer {
                input_norm: l.pp("input_layernorm").get(h, "weight")?,
                qkv: SideBySide::Stacked {
                    linear: Linear::dense_stacked(
                        &[
                            (attn.pp("q_proj"), q_dim),
                            (attn.pp("k_proj"), kv_dim),
                            (attn.pp("v_proj"), kv_dim),
                        ],
                        h,
                        true,
                    )?,
                    widths: vec![q_dim, kv_dim, kv_dim],
                },
                o_proj: Linear::dense(&attn.pp("o_proj"), h, q_dim, false)?,
                post_attention_norm: l.pp("post_attention_layernorm").get(h, "weight")?,
                gate_up: SideBySide::Stacked {
                    linear: Linear::dense_stacked(
                        &[(mlp.pp("gate_proj"), i), (mlp.pp("up_proj"), i)],
                        h,
                        false,
                    )?,
                    widths: vec![i, i],
                },
                down_proj: Linear::dense(&mlp.pp("down_proj"), h, i, false)?,
            });
        }
        let lm_head = if vb.contains_tensor("lm_head.weight") {
            vb.pp("lm_head").get((config.vocab_size, h), "weight")?
        } else {
            embed.clone()
        };
        Ok(Self {
            config: config.clone(),
            embed_tokens: QMatMul::Tensor(embed),
            layers,
            final_norm: m.pp("norm").get(h, "weight")?,
            lm_head: Weight::Candle(QMatMul::Tensor(lm_head)),
            rope: RopeTables::new(config, vb.device())?,
            dtype: vb.dtype(),
            device: vb.device().clone(),
            format: WeightFormat::Dense(vb.dtype()),
        })
    }

    /// Builds the model from a GGUF file with llama.cpp's `qwen2` tensor names, keeping k-quant
    /// weights quantized (candle's quantized matmul) and norms/biases dense in f32.
    pub fn from_gguf<R: Read + Seek>(
        ct: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Self> {
        let config = Qwen2Config::from_gguf(ct).map_err(candle_core::Error::wrap)?;
        let mut g = GgufTensors { ct, reader, device };
        let embed = g.quantized("token_embd.weight")?;
        let format = WeightFormat::Gguf(
            ct.tensor_infos
                .get("blk.0.ffn_down.weight")
                .map(|t| format!("{:?}", t.ggml_dtype))
                .unwrap_or_default(),
        );
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for idx in 0..config.num_hidden_layers {
            let p = format!("blk.{idx}");
            layers.push(Layer {
                input_norm: g.dense(&format!("{p}.attn_norm.weight"))?,
                qkv: SideBySide::Apart(vec![
                    g.linear(&p, "attn_q", true)?,
                    g.linear(&p, "attn_k", true)?,
                    g.linear(&p, "attn_v", true)?,
                ]),
                o_proj: g.linear(&p, "attn_output", false)?,
                post_attention_norm: g.dense(&format!("{p}.ffn_norm.weight"))?,
                gate_up: SideBySide::Apart(vec![
                    g.linear(&p, "ffn_gate", false)?,
                    g.linear(&p, "ffn_up", false)?,
                ]),
                down_proj: g.linear(&p, "ffn_down", false)?,
            });
        }
        let lm_head = if ct.tensor_infos.contains_key("output.weight") {
            Weight::from_qtensor(g.quantized("output.weight")?)?
        } else {
            Weight::from_qtensor(embed.clone())?
        };
        let final_norm = g.dense("output_norm.weight")?;
        Ok(Self {
            rope: RopeTables::new(&config, device)?,
            config,
            embed_tokens: QMatMul::from_arc(embed)?,
            layers,
            final_norm,
            lm_head,
            dtype: DType::F32,
            device: device.clone(),
            format,
        })
    }

    pub fn config(&self) -> &Qwen2Config {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn weight_format(&self) -> &WeightFormat {
        &self.format
    }

    /// Runs every token of `batch` through the model, writing K/V through `attention`, and returns
    /// f32 logits `[batch.logit_rows.len(), vocab]`.
    pub fn forward(
        &self,
        batch: &ForwardBatch,
        attention: &mut dyn PagedAttention,
    ) -> Result<Tensor> {
        let n = batch.tokens.len();
        if n == 0 || batch.positions.len() != n || batch.attention.num_tokens() != n {
            candle_core::bail!(
                "malformed batch: {n} tokens, {} positions, {} slots",
                batch.positions.len(),
                batch.attention.num_tokens()
            );
        }
        let cfg = &self.config;
        let eps = cfg.rms_norm_eps as f32;
        let tokens = Tensor::from_slice(&batch.tokens, n, &self.device)?;
        let positions = Tensor::from_slice(&batch.positions, n, &self.device)?;
        let rotary = self.rope.gather(&positions)?;
        attention.prepare(&batch.attention)?;

        let mut x = self.embed_tokens.embedding(&tokens)?.to_dtype(self.dtype)?;
        // The residual stream and its normalised copy for the next projection: each residual add
        // and the norm after it are one fused step on a GPU.
        let mut h = match self.layers.first() {
            Some(first) => candle_nn::ops::rms_norm(&x, &first.input_norm, eps)?,
            None => x.clone(),
        };
        for (idx, layer) in self.layers.iter().enumerate() {
            let qkv = layer.qkv.forward(&h)?;
            let attn = attention
                .forward_rotary(idx, (&qkv[0], &qkv[1], &qkv[2]), &rotary, &batch.attention)?
                .to_device(&self.device)?
                .to_dtype(self.dtype)?;
            let post_attention = layer.o_proj.forward(&attn)?;
            (x, h) = fused::add_rms_norm(&x, &post_attention, &layer.post_attention_norm, eps)?;

            let gate_up = layer.gate_up.forward(&h)?;
            let mlp = layer
                .down_proj
                .forward(&fused::silu_mul(&gate_up[0], &gate_up[1])?)?;
            match self.layers.get(idx + 1) {
                Some(next) => (x, h) = fused::add_rms_norm(&x, &mlp, &next.input_norm, eps)?,
                None => x = (x + mlp)?,
            }
        }
        if batch.logit_rows.is_empty() {
            // A step that only advances prefill chunks samples nothing. Empty device tensors are not
            // safe in candle's CUDA backend (a 0-byte allocation, a 0-block launch), so answer on the
            // host.
            return Tensor::zeros((0, cfg.vocab_size), DType::F32, &Device::Cpu);
        }
        let rows = Tensor::from_slice(&batch.logit_rows, batch.logit_rows.len(), &self.device)?;
        let last = x.index_select(&rows, 0)?;
        let last = candle_nn::ops::rms_norm(&last, &self.final_norm, eps)?;
        self.lm_head.forward(&last)?.to_dtype(DType::F32)
    }
}
