//! Who owns which weight during training: frozen base tensors (never in the autograd graph), f32
//! trainable `Var`s (full fine-tuning: every base weight as an f32 master copy), and LoRA modules.

use super::forward::DropoutKey;
use super::rng::{mix64, SplitMix64};
use super::spec::LoraSpec;
use crate::model::adapter::module_path;
use candle_core::{DType, Device, Result, Tensor, Var};
use std::collections::BTreeMap;

/// A weight as the forward sees it.
#[derive(Clone)]
pub enum Param {
    Frozen(Tensor),
    /// The `Var`'s own tensor (same id, so its gradient is found by it).
    Trainable(Tensor),
}

impl Param {
    pub fn tensor(&self) -> &Tensor {
        match self {
            Param::Frozen(t) | Param::Trainable(t) => t,
        }
    }
}

/// One adapted projection: `y += scale · (dropout(x) Aᵀ) Bᵀ`, A `[r, in]`, B `[out, r]` (PEFT's layout).
pub struct LoraModule {
    pub a: Var,
    pub b: Var,
    pub scale: f64,
    pub dropout: f64,
}

impl LoraModule {
    /// Inverted-dropout mask `[T, in]` for input `x`, drawn from `key` and `salt` alone so a
    /// recomputation draws the same one. `None` when dropout is off.
    pub fn dropout_mask(&self, x: &Tensor, key: DropoutKey, salt: u64) -> Result<Option<Tensor>> {
        if self.dropout <= 0.0 {
            return Ok(None);
        }
        let n = x.elem_count();
        let keep = 1.0 - self.dropout;
        let mut rng = SplitMix64::new(mix64(key.seed ^ mix64(key.sequence ^ mix64(salt))));
        let mask: Vec<f32> = (0..n)
            .map(|_| {
                if rng.next_f64() < keep {
                    (1.0 / keep) as f32
                } else {
                    0.0
                }
            })
            .collect();
        Ok(Some(
            Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?,
        ))
    }
}

pub struct TrainParams {
    frozen: BTreeMap<String, Tensor>,
    trainable: BTreeMap<String, Var>,
    /// Module prefix (`model.layers.0.self_attn.q_proj`) → adapter.
    lora: BTreeMap<String, LoraModule>,
    device: Device,
}

/// The module prefix of every projection LoRA adapts, for `layers` layers and the PEFT module
/// names in `targets`, in a fixed order (layer, then q, k, v, o, gate, up, down).
pub fn lora_module_paths(layers: usize, targets: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for layer in 0..layers {
        for m in super::spec::LORA_MODULES {
            if targets.iter().any(|t| t == m) {
                out.push(module_path(layer, m).map_err(candle_core::Error::wrap)?);
            }
        }
    }
    Ok(out)
}

impl TrainParams {
    /// Full fine-tuning: every base weight becomes an f32 master `Var`.
    pub fn full(base: &BTreeMap<String, Tensor>, device: &Device) -> Result<Self> {
        let mut trainable = BTreeMap::new();
        for (name, t) in base {
            trainable.insert(name.clone(), Var::from_tensor(&t.to_dtype(DType::F32)?)?);
        }
        Ok(Self {
            frozen: BTreeMap::new(),
            trainable,
            lora: BTreeMap::new(),
            device: device.clone(),
        })
    }

    /// Every weight frozen, nothing trained: a reference model (GRPO's KL anchor).
    pub fn frozen_only(base: &BTreeMap<String, Tensor>, device: &Device) -> Self {
        Self {
            frozen: base.clone(),
            trainable: BTreeMap::new(),
            lora: BTreeMap::new(),
            device: device.clone(),
        }
    }

    /// LoRA: base weights frozen as given; adapters initialised as PEFT does (A Kaiming-uniform with
    /// a = √5, i.e. U(±1/√in); B zero, so training starts exactly at the base model).
    pub fn with_lora(
        base: &BTreeMap<String, Tensor>,
        spec: &LoraSpec,
        layers: usize,
        targets: &[String],
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let mut lora = BTreeMap::new();
        for (i, module) in lora_module_paths(layers, targets)?.into_iter().enumerate() {
            let w = base.get(&format!("{module}.weight")).ok_or_else(|| {
                candle_core::Error::Msg(format!("base model lacks {module}.weight"))
            })?;
            let (out_dim, in_dim) = w.dims2()?;
            let bound = 1.0 / (in_dim as f64).sqrt();
            let mut rng = SplitMix64::new(seed.wrapping_add(0xA5A5_0000).wrapping_add(i as u64));
            let a: Vec<f32> = (0..spec.rank * in_dim)
                .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
                .collect();
            let a = Var::from_tensor(&Tensor::from_vec(a, (spec.rank, in_dim), device)?)?;
            let b = Var::zeros((out_dim, spec.rank), DType::F32, device)?;
            lora.insert(
                module,
                LoraModule {
                    a,
                    b,
                    scale: spec.alpha / spec.rank as f64,
                    dropout: spec.dropout,
                },
            );
        }
        Ok(Self {
            frozen: base.clone(),
            trainable: BTreeMap::new(),
            lora,
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn contains(&self, name: &str) -> bool {
        self.frozen.contains_key(name) || self.trainable.contains_key(name)
    }

    pub fn get(&self, name: &str) -> Result<Param> {
        if let Some(v) = self.trainable.get(name) {
            return Ok(Param::Trainable(v.as_tensor().clone()));
        }
        match self.frozen.get(name) {
            Some(t) => Ok(Param::Frozen(t.clone())),
            None => candle_core::bail!("the model has no weight {name}"),
        }
    }

    pub fn lora(&self, module: &str) -> Option<&LoraModule> {
        self.lora.get(module)
    }

    pub fn lora_modules(&self) -> &BTreeMap<String, LoraModule> {
        &self.lora
    }

    pub fn is_lora(&self) -> bool {
        !self.lora.is_empty()
    }

    /// Every trainable `Var` with a stable name: base names for full fine-tuning,
    /// `{module}.lora_A` / `{module}.lora_B` for LoRA. Sorted by name.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        let mut out: Vec<(String, Var)> = self
            .trainable
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        for (module, l) in &self.lora {
            out.push((format!("{module}.lora_A"), l.a.clone()));
            out.push((format!("{module}.lora_B"), l.b.clone()));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub fn frozen(&self) -> &BTreeMap<String, Tensor> {
        &self.frozen
    }

    pub fn trainable_elements(&self) -> usize {
        self.trainable().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Overwrites trainable values (checkpoint restore); every name must exist with the same shape.
    pub fn load_trainable(&self, values: &BTreeMap<String, Tensor>) -> Result<()> {
        let params = self.trainable();
        if values.len() != params.len() {
            candle_core::bail!(
                "checkpoint has {} trainable tensors, the model {}",
                values.len(),
                params.len()
            );
        }
        for (name, var) in params {
            let v = values
                .get(&name)
                .ok_or_else(|| candle_core::Error::Msg(format!("checkpoint lacks {name}")))?;
            if v.shape() != var.shape() {
                candle_core::bail!(
                    "checkpoint {name} has shape {:?}, the model {:?}",
                    v.shape(),
                    var.shape()
                );
            }
            var.set(&v.to_dtype(DType::F32)?.to_device(&self.device)?)?;
        }
        Ok(())
    }

    /// The adapters as PEFT data (detached copies of the current values).
    pub fn to_adapter(
        &self,
        spec: &LoraSpec,
        targets: &[String],
        base_model: &str,
    ) -> Result<crate::model::adapter::LoraAdapter> {
        let weights = self
            .lora
            .iter()
            .map(|(m, l)| {
                Ok((
                    m.clone(),
                    (
                        l.a.as_tensor().detach().copy()?,
                        l.b.as_tensor().detach().copy()?,
                    ),
                ))
            })
            .collect::<Result<BTreeMap<_, _>>>()?;
        Ok(crate::model::adapter::LoraAdapter {
            rank: spec.rank,
            alpha: spec.alpha,
            dropout: spec.dropout,
            target_modules: targets.to_vec(),
            base_model: base_model.to_string(),
            weights,
        })
    }
}
