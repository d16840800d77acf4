//! Finds and loads a model: a Hugging Face directory, a GGUF file, or a hub id downloaded into the
//! usual Hugging Face cache.

use super::adapter::LoraAdapter;
use super::base_weights::BaseWeights;
use super::config::Qwen2Config;
use super::qwen2::Qwen2;
use super::tokenizer::ModelTokenizer;
use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Where a model comes from, decided from the `--model` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A directory with `config.json`, safetensors and tokenizer files.
    HfDir(PathBuf),
    /// A GGUF file; the tokenizer is `tokenizer.json` beside it if present, else built from metadata.
    Gguf(PathBuf),
    /// `owner/name[@revision]` on the Hugging Face hub.
    Hub { repo: String, revision: String },
}

impl ModelSource {
    pub fn parse(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        if path.is_dir() {
            return Ok(Self::HfDir(path.to_path_buf()));
        }
        if path.is_file() {
            return Ok(Self::Gguf(path.to_path_buf()));
        }
        if spec.ends_with(".gguf") || spec.starts_with('/') || spec.starts_with('.') {
            bail!("model path {spec} does not exist");
        }
        let (repo, revision) = spec.split_once('@').unwrap_or((spec, "main"));
        if repo.split('/').count() != 2 || repo.split('/').any(str::is_empty) {
            bail!("{spec:?} is neither an existing path nor a hub id of the form owner/name[@revision]");
        }
        Ok(Self::Hub {
            repo: repo.to_string(),
            revision: revision.to_string(),
        })
    }
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// Dtype for dense weights and activations. `None`: f32 on CPU (candle's CPU bf16 matmul is slow
    /// and tests compare at f32), bf16 on GPUs.
    pub dtype: Option<DType>,
    /// Overrides the tokenizer file.
    pub tokenizer: Option<PathBuf>,
    /// A PEFT LoRA adapter directory, merged into the base weights at load: the base is read as
    /// dense tensors (a GGUF base is dequantized), `W + (alpha/r)·B·A` computed once, and the
    /// result served like any dense model — no per-request adapter cost, one adapter per model.
    pub adapter: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: None,
            tokenizer: None,
            adapter: None,
        }
    }
}

/// A model ready to serve: weights, tokenizer and the generation defaults that came with it.
pub struct LoadedModel {
    pub name: String,
    pub model: Qwen2,
    pub tokenizer: ModelTokenizer,
}

#[derive(Deserialize, Default)]
struct GenerationConfig {
    #[serde(default)]
    eos_token_id: Option<super::config::EosTokenIds>,
}

pub fn load(spec: &str, options: &LoadOptions) -> Result<LoadedModel> {
    if let Some(adapter) = &options.adapter {
        return load_with_adapter(spec, adapter, options);
    }
    match ModelSource::parse(spec)? {
        ModelSource::HfDir(dir) => load_hf_dir(&dir, options),
        ModelSource::Gguf(path) => load_gguf(&path, options),
        ModelSource::Hub { repo, revision } => {
            let dir = download_from_hub(&repo, &revision)?;
            let mut loaded = load_hf_dir(&dir, options)?;
            loaded.name = repo;
            Ok(loaded)
        }
    }
}

/// f32 on the CPU (candle's CPU bf16 matmul is slow, and tests compare at f32), bf16 on GPUs.
pub fn default_dtype(device: &Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    }
}

/// The safetensors files of a directory: the shards named in `model.safetensors.index.json`, or the
/// single `model.safetensors`.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index)?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", index.display()))?;
        let map = json["weight_map"]
            .as_object()
            .with_context(|| format!("{} has no weight_map", index.display()))?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    bail!(
        "{} has neither model.safetensors nor model.safetensors.index.json",
        dir.display()
    )
}

/// The weights of a Hugging Face directory, without its tokenizer (random-weight checks have none).
pub fn load_hf_weights(
    dir: &Path,
    config: &Qwen2Config,
    dtype: DType,
    device: &Device,
) -> Result<Qwen2> {
    let files = safetensors_files(dir)?;
    // Safety: the files are memory-mapped read-only; rmr1 never writes model files while serving.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, device)? };
    Ok(Qwen2::from_var_builder(config, vb)?)
}

/// A model source with hub ids resolved to their local snapshot directory (downloading if needed).
pub fn resolve_local(spec: &str) -> Result<ModelSource> {
    Ok(match ModelSource::parse(spec)? {
        ModelSource::Hub { repo, revision } => {
            ModelSource::HfDir(download_from_hub(&repo, &revision)?)
        }
        local => local,
    })
}

/// `config.json` of a directory, with the EOS ids of `generation_config.json` when it has them.
pub fn hf_dir_config(dir: &Path) -> Result<Qwen2Config> {
    let mut config = Qwen2Config::from_json_file(&dir.join("config.json"))?;
    let generation: GenerationConfig =
        match std::fs::read_to_string(dir.join("generation_config.json")) {
            Ok(text) => serde_json::from_str(&text).context("parsing generation_config.json")?,
            Err(_) => GenerationConfig::default(),
        };
    if let Some(eos) = generation.eos_token_id {
        config.eos_token_id = Some(eos);
    }
    Ok(config)
}

/// The tokenizer of a directory (or `override_file`), with the config's EOS ids added.
pub fn hf_dir_tokenizer(
    dir: &Path,
    config: &Qwen2Config,
    override_file: Option<&Path>,
) -> Result<ModelTokenizer> {
    let tokenizer_path = override_file
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.join("tokenizer.json"));
    let mut tokenizer =
        ModelTokenizer::from_hf_files(&tokenizer_path, &dir.join("tokenizer_config.json"))?;
    if let Some(eos) = &config.eos_token_id {
        tokenizer.add_eos_ids(&eos.to_vec());
    }
    Ok(tokenizer)
}

/// The tokenizer of a GGUF file: `override_file` or `tokenizer.json` beside it, else its metadata.
pub fn gguf_tokenizer(
    path: &Path,
    content: &gguf_file::Content,
    override_file: Option<&Path>,
) -> Result<ModelTokenizer> {
    let side_tokenizer = override_file.map(Path::to_path_buf).or_else(|| {
        let beside = path.with_file_name("tokenizer.json");
        beside.exists().then_some(beside)
    });
    match side_tokenizer {
        Some(file) => ModelTokenizer::from_gguf_with_tokenizer_file(content, &file),
        None => ModelTokenizer::from_gguf(content),
    }
}

fn load_hf_dir(dir: &Path, options: &LoadOptions) -> Result<LoadedModel> {
    let config = hf_dir_config(dir)?;
    let dtype = options
        .dtype
        .unwrap_or_else(|| default_dtype(&options.device));
    let model = load_hf_weights(dir, &config, dtype, &options.device)?;
    let tokenizer = hf_dir_tokenizer(dir, &config, options.tokenizer.as_deref())?;
    Ok(LoadedModel {
        name: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string()),
        model,
        tokenizer,
    })
}

fn load_gguf(path: &Path, options: &LoadOptions) -> Result<LoadedModel> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let content = gguf_file::Content::read(&mut file)
        .map_err(|e| e.with_path(path))
        .with_context(|| format!("{} is not a readable GGUF file", path.display()))?;
    let model = Qwen2::from_gguf(&content, &mut file, &options.device)?;
    let tokenizer = gguf_tokenizer(path, &content, options.tokenizer.as_deref())?;
    Ok(LoadedModel {
        name: path
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        model,
        tokenizer,
    })
}

/// The base as dense tensors with the adapter merged in, built into the same dense [`Qwen2`] a
/// Hugging Face directory gives.
fn load_with_adapter(spec: &str, adapter_dir: &Path, options: &LoadOptions) -> Result<LoadedModel> {
    let dtype = options
        .dtype
        .unwrap_or_else(|| default_dtype(&options.device));
    let base = BaseWeights::load_with_tokenizer(
        spec,
        dtype,
        &options.device,
        options.tokenizer.as_deref(),
    )?;
    let adapter = LoraAdapter::load_peft(adapter_dir, &options.device)?;
    let BaseWeights {
        config,
        mut tensors,
        tokenizer,
        ..
    } = base;
    adapter
        .merge_into(&mut tensors)
        .with_context(|| format!("merging {} into {spec}", adapter_dir.display()))?;
    tracing::info!(
        base = spec,
        adapter = %adapter_dir.display(),
        rank = adapter.rank,
        modules = adapter.weights.len(),
        "LoRA adapter merged at load"
    );
    let vb = VarBuilder::from_tensors(tensors.into_iter().collect(), dtype, &options.device);
    let model = Qwen2::from_var_builder(&config, vb)?;
    let base_name = match ModelSource::parse(spec)? {
        ModelSource::Hub { repo, .. } => repo,
        ModelSource::HfDir(p) | ModelSource::Gguf(p) => p
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| spec.to_string()),
    };
    let adapter_name = adapter_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "adapter".into());
    Ok(LoadedModel {
        name: format!("{base_name}+{adapter_name}"),
        model,
        tokenizer,
    })
}

/// Downloads (or finds in the Hugging Face cache) every file a model directory needs and returns the
/// snapshot directory.
fn download_from_hub(repo: &str, revision: &str) -> Result<PathBuf> {
    use hf_hub::{api::sync::ApiBuilder, Repo, RepoType};
    let api = ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .context("setting up the Hugging Face hub client")?;
    let repo_api = api.repo(Repo::with_revision(
        repo.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    let fetch = |file: &str| {
        repo_api.get(file).with_context(|| {
            format!(
                "downloading {file} of {repo}@{revision} from the Hugging Face hub failed \
                 (no network? set HF_HUB_OFFLINE / HF_HOME, or pass a local directory or GGUF file)"
            )
        })
    };
    let config = fetch("config.json")?;
    let dir = config
        .parent()
        .context("hub cache path has no parent")?
        .to_path_buf();
    for optional in ["generation_config.json", "tokenizer_config.json"] {
        let _ = repo_api.get(optional);
    }
    fetch("tokenizer.json")?;
    match repo_api.get("model.safetensors.index.json") {
        Ok(index) => {
            let text = std::fs::read_to_string(&index)?;
            let json: serde_json::Value = serde_json::from_str(&text)?;
            let mut shards: Vec<&str> = json["weight_map"]
                .as_object()
                .context("weight_map missing from the hub index")?
                .values()
                .filter_map(|v| v.as_str())
                .collect();
            shards.sort();
            shards.dedup();
            for shard in shards {
                fetch(shard)?;
            }
        }
        Err(_) => {
            fetch("model.safetensors")?;
        }
    }
    Ok(dir)
}
