//! Full checkpoints in the Hugging Face layout, loadable by transformers, vLLM and `rmr1 serve
//! --model DIR`: config.json, generation_config.json, tokenizer files, safetensors shards and their
//! index. Used for full fine-tuning results and for merging a LoRA adapter into its base.
//!
//! Everything is written into a sibling `DIR.tmp-…` directory which is renamed to `DIR` last, so a
//! crash never leaves a half-written checkpoint at `DIR`.

use crate::model::base_weights::BaseWeights;
use crate::model::safetensors_io::{fsync_dir, write_json_atomically, write_sharded};
use crate::model::{LoraAdapter, ModelTokenizer, Qwen2Config};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// transformers' default `max_shard_size`.
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// Tokenizer files copied from a Hugging Face directory when present. tokenizer.json and
/// tokenizer_config.json are required: rmr1 reads the first and the chat template from the second.
const HF_TOKENIZER_FILES: [&str; 6] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
];

/// Where a checkpoint's tokenizer files come from.
pub enum TokenizerFiles<'a> {
    /// Copy the tokenizer files of a Hugging Face directory, and its generation_config.json (which
    /// may hold several EOS ids and sampling defaults) when it has one.
    CopyFrom(&'a Path),
    /// Write them from a loaded tokenizer (a GGUF base): `tokenizer_json` copied when given (the
    /// file beside the GGUF), else the loaded tokenizer serialized; plus a minimal
    /// tokenizer_config.json with its chat template and special tokens.
    Loaded {
        tokenizer: &'a ModelTokenizer,
        tokenizer_json: Option<&'a Path>,
    },
}

impl<'a> TokenizerFiles<'a> {
    /// The base's own: its directory's files, or the GGUF's loaded tokenizer.
    pub fn of_base(base: &'a BaseWeights, beside_gguf: Option<&'a Path>) -> Self {
        match &base.hf_dir {
            Some(dir) => Self::CopyFrom(dir),
            None => Self::Loaded {
                tokenizer: &base.tokenizer,
                tokenizer_json: beside_gguf,
            },
        }
    }
}

/// transformers' name of a dtype (`torch_dtype` in config.json).
pub fn torch_dtype_name(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "float32",
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        other => bail!("checkpoints are written as f32, bf16 or f16, not {other:?}"),
    })
}

/// A Qwen2 config.json built from the hyper-parameters alone (a GGUF base has no config.json).
pub fn qwen2_config_json(config: &Qwen2Config, dtype: DType, eos_ids: &[u32]) -> Result<Value> {
    Ok(json!({
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "max_position_embeddings": config.max_position_embeddings,
        "max_window_layers": config.num_hidden_layers,
        "sliding_window": config.sliding_window,
        "use_sliding_window": false,
        "tie_word_embeddings": config.tie_word_embeddings,
        "rope_theta": config.rope_theta,
        "rope_scaling": null,
        "rms_norm_eps": config.rms_norm_eps,
        "hidden_act": "silu",
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": true,
        "torch_dtype": torch_dtype_name(dtype)?,
        "eos_token_id": eos_value(eos_ids),
    }))
}

fn eos_value(eos_ids: &[u32]) -> Value {
    match eos_ids {
        [] => Value::Null,
        [one] => json!(one),
        many => json!(many),
    }
}

/// The config.json for a checkpoint of `base`'s architecture in `dtype`: the base's own config.json
/// (unknown fields kept) when it came from a directory, else one built from its hyper-parameters.
/// Either way `architectures`, `model_type`, `torch_dtype` and `tie_word_embeddings` are set to
/// what is written.
pub fn checkpoint_config(base: &BaseWeights, dtype: DType) -> Result<Value> {
    let tied = !base.tensors.contains_key("lm_head.weight");
    let mut config = match &base.hf_dir {
        Some(dir) => {
            let path = dir.join("config.json");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => qwen2_config_json(&base.config, dtype, base.tokenizer.eos_ids())?,
    };
    let obj = config
        .as_object_mut()
        .context("the base config.json is not an object")?;
    obj.insert("architectures".into(), json!(["Qwen2ForCausalLM"]));
    obj.insert("model_type".into(), json!("qwen2"));
    obj.insert("torch_dtype".into(), json!(torch_dtype_name(dtype)?));
    // transformers 5 writes `dtype` instead; keep the two in step when the base has it.
    if obj.contains_key("dtype") {
        obj.insert("dtype".into(), json!(torch_dtype_name(dtype)?));
    }
    obj.insert("tie_word_embeddings".into(), json!(tied));
    Ok(config)
}

/// Writes a full checkpoint of `tensors` (HF names; a tied head has no `lm_head.weight`) cast to
/// `dtype` into `dir`, replacing whatever `dir` held only once the new one is complete.
pub fn write_hf_checkpoint(
    dir: &Path,
    config_json: &Value,
    tensors: &BTreeMap<String, Tensor>,
    dtype: DType,
    tokenizer: TokenizerFiles,
    max_shard_bytes: u64,
) -> Result<()> {
    torch_dtype_name(dtype)?;
    if config_json["tie_word_embeddings"].as_bool() == Some(true)
        && tensors.contains_key("lm_head.weight")
    {
        bail!("config.json says tie_word_embeddings but the tensors have an lm_head.weight");
    }
    let staging = staging_dir(dir)?;
    let result = (|| {
        std::fs::create_dir_all(&staging)
            .with_context(|| format!("creating {}", staging.display()))?;
        let cast = tensors
            .iter()
            .map(|(name, t)| Ok((name.clone(), t.to_dtype(dtype)?)))
            .collect::<Result<BTreeMap<_, _>>>()?;
        write_sharded(&staging, &cast, max_shard_bytes)?;
        drop(cast);
        write_json_atomically(&staging.join("config.json"), config_json)?;
        let base_generation = match &tokenizer {
            TokenizerFiles::CopyFrom(from) => Some(from.join("generation_config.json")),
            TokenizerFiles::Loaded { .. } => None,
        }
        .filter(|p| p.exists());
        match base_generation {
            Some(file) => copy_file(&file, &staging.join("generation_config.json"))?,
            None => write_json_atomically(
                &staging.join("generation_config.json"),
                &generation_config(config_json),
            )?,
        }
        write_tokenizer_files(&staging, tokenizer)?;
        fsync_dir(&staging)?;
        replace_dir(&staging, dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// Merges `adapter` into a copy of `base`'s weights and writes the full checkpoint: in the base
/// directory's dtype when it had one (`torch_dtype`), bf16 for a GGUF base.
pub fn export_merged(base: &BaseWeights, adapter: &LoraAdapter, dir: &Path) -> Result<()> {
    let dtype = default_export_dtype(base);
    export_merged_with(base, adapter, dir, dtype, DEFAULT_MAX_SHARD_BYTES)
}

/// [`export_merged`] with the dtype and shard size chosen.
pub fn export_merged_with(
    base: &BaseWeights,
    adapter: &LoraAdapter,
    dir: &Path,
    dtype: DType,
    max_shard_bytes: u64,
) -> Result<()> {
    let mut tensors = base.tensors.clone();
    adapter.merge_into(&mut tensors)?;
    let beside = gguf_side_tokenizer(base);
    write_hf_checkpoint(
        dir,
        &checkpoint_config(base, dtype)?,
        &tensors,
        dtype,
        TokenizerFiles::of_base(base, beside.as_deref()),
        max_shard_bytes,
    )
}

/// Writes `base` itself as a Hugging Face checkpoint (GGUF → safetensors, or a re-shard).
pub fn export_base(
    base: &BaseWeights,
    dir: &Path,
    dtype: DType,
    max_shard_bytes: u64,
) -> Result<()> {
    let beside = gguf_side_tokenizer(base);
    write_hf_checkpoint(
        dir,
        &checkpoint_config(base, dtype)?,
        &base.tensors,
        dtype,
        TokenizerFiles::of_base(base, beside.as_deref()),
        max_shard_bytes,
    )
}

/// The base directory's `torch_dtype` when it is f32/bf16/f16, else bf16 (GGUF, or unknown).
pub fn default_export_dtype(base: &BaseWeights) -> DType {
    match base.config.torch_dtype.as_deref() {
        Some("float32") if base.hf_dir.is_some() => DType::F32,
        Some("float16") if base.hf_dir.is_some() => DType::F16,
        _ => DType::BF16,
    }
}

/// `tokenizer.json` beside a GGUF base, which the engine also prefers over GGUF metadata.
fn gguf_side_tokenizer(base: &BaseWeights) -> Option<PathBuf> {
    if base.hf_dir.is_some() {
        return None;
    }
    let beside = Path::new(&base.spec).with_file_name("tokenizer.json");
    beside.exists().then_some(beside)
}

/// generation_config.json: the EOS ids (rmr1 and transformers stop on these) and greedy defaults
/// left to the caller of the model.
fn generation_config(config: &Value) -> Value {
    let mut g = json!({ "_from_model_config": true });
    for key in ["bos_token_id", "eos_token_id"] {
        if !config[key].is_null() {
            g[key] = config[key].clone();
        }
    }
    g
}

fn write_tokenizer_files(dir: &Path, source: TokenizerFiles) -> Result<()> {
    match source {
        TokenizerFiles::CopyFrom(from) => {
            for name in HF_TOKENIZER_FILES {
                let src = from.join(name);
                if src.exists() {
                    copy_file(&src, &dir.join(name))?;
                } else if name == "tokenizer.json" {
                    bail!("{} has no tokenizer.json to copy", from.display());
                }
            }
        }
        TokenizerFiles::Loaded {
            tokenizer,
            tokenizer_json,
        } => {
            match tokenizer_json {
                Some(file) => copy_file(file, &dir.join("tokenizer.json"))?,
                None => {
                    let text = tokenizer
                        .inner()
                        .to_string(false)
                        .map_err(|e| anyhow::anyhow!("serializing the tokenizer: {e}"))?;
                    crate::model::safetensors_io::write_bytes_atomically(
                        &dir.join("tokenizer.json"),
                        text.as_bytes(),
                    )?;
                }
            }
            write_json_atomically(
                &dir.join("tokenizer_config.json"),
                &minimal_tokenizer_config(tokenizer),
            )?;
        }
    }
    Ok(())
}

/// What `ModelTokenizer::from_hf_files` and transformers' `AutoTokenizer` need to load a bare
/// tokenizer.json: the fast-tokenizer class, the special tokens and the chat template.
fn minimal_tokenizer_config(tokenizer: &ModelTokenizer) -> Value {
    let text_of = |id: u32| tokenizer.inner().id_to_token(id);
    let eos = tokenizer.eos_ids().first().and_then(|&id| text_of(id));
    let template = tokenizer.chat_template();
    let bos = template
        .map(|t| t.bos_token().to_string())
        .filter(|s| !s.is_empty());
    json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": eos,
        "add_bos_token": false,
        "clean_up_tokenization_spaces": false,
        "model_max_length": 131072,
        "chat_template": template.map(|t| t.source()),
    })
}

fn copy_file(from: &Path, to: &Path) -> Result<()> {
    crate::model::safetensors_io::write_atomically(to, |tmp| {
        std::fs::copy(from, tmp)
            .map(|_| ())
            .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))
    })
}

/// `DIR.tmp-<pid>-<nanos>` beside `dir`: same filesystem, so the final rename is atomic.
fn staging_dir(dir: &Path) -> Result<PathBuf> {
    let name = dir
        .file_name()
        .with_context(|| format!("{} has no directory name", dir.display()))?
        .to_string_lossy()
        .into_owned();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    Ok(dir.with_file_name(format!("{name}.tmp-{}-{nanos}", std::process::id())))
}

/// Renames `staging` to `dir`. An existing `dir` is first renamed aside and deleted after, so at
/// every instant one complete checkpoint exists (at `dir`, or at the aside name during the swap).
fn replace_dir(staging: &Path, dir: &Path) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    if let Some(p) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    }
    let aside = if dir.exists() {
        let mut aside_name = staging.file_name().unwrap_or_default().to_os_string();
        aside_name.push(".old");
        let aside = staging.with_file_name(aside_name);
        std::fs::rename(dir, &aside)
            .with_context(|| format!("moving the old {} aside", dir.display()))?;
        Some(aside)
    } else {
        None
    };
    std::fs::rename(staging, dir)
        .with_context(|| format!("renaming {} to {}", staging.display(), dir.display()))?;
    fsync_dir(parent)?;
    if let Some(aside) = aside {
        std::fs::remove_dir_all(&aside)
            .with_context(|| format!("removing the replaced {}", aside.display()))?;
    }
    Ok(())
}
