//! A LoRA adapter as data, in PEFT's on-disk format (`adapter_config.json` +
//! `adapter_model.safetensors`), and its merge into dense base weights: `W' = W + (alpha/r)·B·A`.
//!
//! It sits in `model` rather than `train` because serving reads it (`--adapter`, merged at load);
//! the trainer converts its variables into this type and saves it. Only what rmr1 trains is
//! accepted: plain LoRA on the seven Qwen2 projections, no bias, DoRA, rsLoRA or per-module ranks —
//! anything else is refused by name rather than merged wrongly.

use super::safetensors_io::{write_json_atomically, write_safetensors};
use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The projections LoRA may adapt, by PEFT module name, with their HF parent (`self_attn`/`mlp`).
const MODULES: [(&str, &str); 7] = [
    ("q_proj", "self_attn"),
    ("k_proj", "self_attn"),
    ("v_proj", "self_attn"),
    ("o_proj", "self_attn"),
    ("gate_proj", "mlp"),
    ("up_proj", "mlp"),
    ("down_proj", "mlp"),
];

/// The seven projections LoRA may adapt, in PEFT's module names (the order adapters are listed in).
pub const LORA_MODULES: [&str; 7] = [
    MODULES[0].0,
    MODULES[1].0,
    MODULES[2].0,
    MODULES[3].0,
    MODULES[4].0,
    MODULES[5].0,
    MODULES[6].0,
];

/// PEFT prefixes every key of a causal-LM adapter with this (its `PeftModel` wraps the HF model).
const PEFT_PREFIX: &str = "base_model.model.";

#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub rank: usize,
    pub alpha: f64,
    /// Training-time only; kept so a saved adapter says how it was trained.
    pub dropout: f64,
    /// PEFT module names (`q_proj`, ...).
    pub target_modules: Vec<String>,
    /// `base_model_name_or_path`.
    pub base_model: String,
    /// HF module path (`model.layers.{i}.self_attn.q_proj`) → (A `[r, in]`, B `[out, r]`).
    pub weights: BTreeMap<String, (Tensor, Tensor)>,
}

/// The HF module path of projection `module` (a PEFT name such as `q_proj`) in `layer`.
pub fn module_path(layer: usize, module: &str) -> Result<String> {
    let parent = MODULES
        .iter()
        .find(|(m, _)| *m == module)
        .map(|(_, p)| *p)
        .with_context(|| format!("{module:?} is not a projection LoRA can adapt"))?;
    Ok(format!("model.layers.{layer}.{parent}.{module}"))
}

/// Checks a module path is one of the seven projections of some layer; returns its PEFT name.
fn projection_of(path: &str) -> Result<&str> {
    let fail = || {
        format!("{path:?} is not a module LoRA can adapt (model.layers.N.self_attn.q_proj, ...)")
    };
    let rest = path.strip_prefix("model.layers.").with_context(fail)?;
    let (layer, rest) = rest.split_once('.').with_context(fail)?;
    layer.parse::<usize>().ok().with_context(fail)?;
    let (parent, module) = rest.split_once('.').with_context(fail)?;
    ensure!(MODULES.contains(&(module, parent)), fail());
    Ok(MODULES.iter().find(|(m, _)| *m == module).unwrap().0)
}

impl LoraAdapter {
    /// The factor PEFT applies to `B·A` (plain LoRA; rsLoRA is refused at load).
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Rank, shapes, module names and target list agree with each other.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.rank > 0, "LoRA rank must be positive");
        ensure!(
            self.alpha.is_finite() && self.alpha > 0.0,
            "lora_alpha must be a positive number, not {}",
            self.alpha
        );
        ensure!(!self.weights.is_empty(), "the adapter has no LoRA weights");
        for m in &self.target_modules {
            ensure!(
                MODULES.iter().any(|(name, _)| name == m),
                "target module {m:?} is not one of {:?}",
                MODULES.map(|(m, _)| m)
            );
        }
        for (path, (a, b)) in &self.weights {
            let module = projection_of(path)?;
            ensure!(
                self.target_modules.iter().any(|m| m == module),
                "{path} has LoRA weights but {module} is not in target_modules {:?}",
                self.target_modules
            );
            let (a_rows, _) = a
                .dims2()
                .with_context(|| format!("{path}: lora_A is not a matrix"))?;
            let (_, b_cols) = b
                .dims2()
                .with_context(|| format!("{path}: lora_B is not a matrix"))?;
            ensure!(
                a_rows == self.rank && b_cols == self.rank,
                "{path}: lora_A is {:?} and lora_B {:?}, expected [{r}, in] and [out, {r}]",
                a.dims(),
                b.dims(),
                r = self.rank
            );
        }
        Ok(())
    }

    /// Writes `adapter_model.safetensors` then `adapter_config.json` (last, so a directory with a
    /// config is complete), each atomically.
    pub fn save_peft(&self, dir: &Path) -> Result<()> {
        self.validate()?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut tensors: Vec<(String, &Tensor)> = Vec::with_capacity(2 * self.weights.len());
        for (path, (a, b)) in &self.weights {
            tensors.push((format!("{PEFT_PREFIX}{path}.lora_A.weight"), a));
            tensors.push((format!("{PEFT_PREFIX}{path}.lora_B.weight"), b));
        }
        write_safetensors(
            &dir.join(ADAPTER_WEIGHTS_FILE),
            tensors.iter().map(|(n, t)| (n.as_str(), *t)),
        )?;
        write_json_atomically(&dir.join(ADAPTER_CONFIG_FILE), &self.peft_config())
    }

    /// `adapter_config.json` as PEFT's `LoraConfig` writes it, limited to fields every PEFT
    /// version since rsLoRA/DoRA (0.9) knows: older ones reject unknown keys.
    pub fn peft_config(&self) -> Value {
        // PEFT and vLLM type lora_alpha as an int; write one whenever the value is integral.
        let alpha = if self.alpha.fract() == 0.0 && self.alpha.abs() < 1e15 {
            json!(self.alpha as i64)
        } else {
            json!(self.alpha)
        };
        json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": self.base_model,
            "revision": null,
            "inference_mode": true,
            "r": self.rank,
            "lora_alpha": alpha,
            "lora_dropout": self.dropout,
            "target_modules": self.target_modules,
            "bias": "none",
            "fan_in_fan_out": false,
            "use_rslora": false,
            "use_dora": false,
            "modules_to_save": null,
            "init_lora_weights": true,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
        })
    }

    /// Reads a PEFT LoRA adapter directory; tensors keep their stored dtype.
    pub fn load_peft(dir: &Path, device: &Device) -> Result<Self> {
        let config_path = dir.join(ADAPTER_CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path)
            .with_context(|| format!("reading {}", config_path.display()))?;
        let config: Value = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", config_path.display()))?;
        let adapter = Self::from_peft_parts(&config, dir, device)
            .with_context(|| format!("loading the LoRA adapter in {}", dir.display()))?;
        Ok(adapter)
    }

    fn from_peft_parts(config: &Value, dir: &Path, device: &Device) -> Result<Self> {
        check_supported(config)?;
        let rank = config["r"]
            .as_u64()
            .context("adapter_config.json has no integer `r`")? as usize;
        let alpha = config["lora_alpha"]
            .as_f64()
            .context("adapter_config.json has no numeric `lora_alpha`")?;
        let target_modules = match &config["target_modules"] {
            Value::Array(items) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .context("target_modules holds a non-string")
                })
                .collect::<Result<Vec<_>>>()?,
            // PEFT also accepts a single name or a regex; a name is fine, a regex is not ours.
            Value::String(s) if MODULES.iter().any(|(m, _)| m == s) => vec![s.clone()],
            other => {
                bail!("unsupported target_modules {other} (expected a list of projection names)")
            }
        };
        let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
        ensure!(
            weights_path.exists(),
            "{} is missing (adapter_model.bin is not read: re-save with safetensors)",
            weights_path.display()
        );
        let tensors = candle_core::safetensors::load(&weights_path, device)
            .with_context(|| format!("reading {}", weights_path.display()))?;
        let mut halves: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
        for (key, tensor) in tensors {
            let (path, is_a) = parse_peft_key(&key)?;
            let slot = halves.entry(path).or_default();
            if is_a {
                slot.0 = Some(tensor);
            } else {
                slot.1 = Some(tensor);
            }
        }
        let mut weights = BTreeMap::new();
        for (path, pair) in halves {
            match pair {
                (Some(a), Some(b)) => {
                    weights.insert(path, (a, b));
                }
                (Some(_), None) => bail!("{path} has lora_A but no lora_B"),
                (None, _) => bail!("{path} has lora_B but no lora_A"),
            }
        }
        let adapter = Self {
            rank,
            alpha,
            dropout: config["lora_dropout"].as_f64().unwrap_or(0.0),
            target_modules,
            base_model: config["base_model_name_or_path"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            weights,
        };
        adapter.validate()?;
        Ok(adapter)
    }

    /// `W ← W + scale·B·A` for every adapted module of `tensors` (HF names → dense weights), the
    /// product and sum in f32 and the result cast back to `W`'s dtype and device.
    pub fn merge_into(&self, tensors: &mut BTreeMap<String, Tensor>) -> Result<()> {
        self.validate()?;
        for (path, (a, b)) in &self.weights {
            let key = format!("{path}.weight");
            let w = tensors.get(&key).with_context(|| {
                format!("the base model has no {key} for the adapter to merge into")
            })?;
            let (out_dim, in_dim) = w.dims2()?;
            let (_, a_in) = a.dims2()?;
            let (b_out, _) = b.dims2()?;
            ensure!(
                (b_out, a_in) == (out_dim, in_dim),
                "{path}: B·A is [{b_out}, {a_in}] but the base weight is [{out_dim}, {in_dim}] \
                 (an adapter for another model?)"
            );
            let device = w.device();
            let a = a.to_device(device)?.to_dtype(DType::F32)?;
            let b = b.to_device(device)?.to_dtype(DType::F32)?;
            let delta = (b.matmul(&a)? * self.scale())?;
            let merged = (w.to_dtype(DType::F32)? + delta)?.to_dtype(w.dtype())?;
            tensors.insert(key, merged);
        }
        Ok(())
    }
}

/// `base_model.model.{path}.lora_A.weight` → (`path`, is A).
fn parse_peft_key(key: &str) -> Result<(String, bool)> {
    let unknown = || {
        format!(
            "unsupported tensor {key:?} in the adapter (only \
             base_model.model.<module>.lora_A/lora_B.weight are read: no bias, DoRA \
             magnitudes, modules_to_save or embedding adapters)"
        )
    };
    let rest = key.strip_prefix(PEFT_PREFIX).with_context(unknown)?;
    let (path, is_a) = if let Some(p) = rest.strip_suffix(".lora_A.weight") {
        (p, true)
    } else if let Some(p) = rest.strip_suffix(".lora_B.weight") {
        (p, false)
    } else {
        bail!(unknown());
    };
    projection_of(path).with_context(unknown)?;
    Ok((path.to_string(), is_a))
}

/// Refuses, by name, the PEFT options whose merge would differ from plain `W + (alpha/r)·B·A`.
fn check_supported(config: &Value) -> Result<()> {
    let peft_type = config["peft_type"].as_str().unwrap_or("LORA");
    ensure!(
        peft_type == "LORA",
        "peft_type {peft_type:?} is not supported (only LORA)"
    );
    if let Some(task) = config["task_type"].as_str() {
        ensure!(
            task == "CAUSAL_LM",
            "task_type {task:?} is not supported (only CAUSAL_LM)"
        );
    }
    let is_true = |k: &str| config[k].as_bool() == Some(true);
    ensure!(
        !is_true("use_dora"),
        "use_dora = true (DoRA) is not supported"
    );
    ensure!(
        !is_true("use_rslora"),
        "use_rslora = true (rank-stabilised scaling alpha/sqrt(r)) is not supported"
    );
    ensure!(
        !is_true("fan_in_fan_out"),
        "fan_in_fan_out = true is not supported"
    );
    ensure!(!is_true("lora_bias"), "lora_bias = true is not supported");
    let bias = config["bias"].as_str().unwrap_or("none");
    ensure!(
        bias == "none",
        "bias = {bias:?} is not supported (only \"none\")"
    );
    let non_empty = |k: &str| match &config[k] {
        Value::Null => false,
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    };
    for key in [
        "modules_to_save",
        "rank_pattern",
        "alpha_pattern",
        "layer_replication",
        "trainable_token_indices",
        "target_parameters",
    ] {
        ensure!(!non_empty(key), "{key} = {} is not supported", config[key]);
    }
    Ok(())
}
