//! A served judge: a loaded model bound to its RM-R1 prompt family, tokenizer and engine.

use super::manifest::FamilyChoice;
use super::templates::PromptFamily;
use crate::engine::{EngineConfig, EngineEvent, EngineHandle, GenerateRequest, SamplingParams};
use crate::model::{LoadedModel, ModelTokenizer};
use anyhow::{bail, Context, Result};
use std::sync::Arc;

/// What operators see in `ListModels` and the start-up log.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelDescription {
    pub name: String,
    pub family: PromptFamily,
    pub architecture: String,
    pub context_length: usize,
    pub dtype: String,
    pub quantization: String,
    pub source: String,
    /// Hub id of the matching released checkpoint, if any.
    pub manifest: Option<String>,
}

/// Generation budget when neither the request nor a manifest gives one.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 4096;

pub struct JudgeModel {
    pub description: ModelDescription,
    pub tokenizer: Arc<ModelTokenizer>,
    pub engine: EngineHandle,
    /// Token ids of `A` and `B`, the token right after `<answer>[[`; `None` when the vocabulary
    /// has no single-token `A`/`B` (then no verdict probabilities are reported).
    pub verdict_tokens: Option<[u32; 2]>,
    pub default_max_new_tokens: usize,
    pub render_limit: RenderLimit,
}

/// Prompts tokenized at once, at most. A judge prompt of a few kilobytes takes about a millisecond,
/// so four keep well ahead of any engine; a prompt near the size limit takes seconds and memory
/// in proportion (about 150 bytes per byte of text), which four at a time bound.
pub const MAX_CONCURRENT_RENDERS: usize = 4;

/// Bounds on rendering and tokenizing prompts, which happens before the engine can refuse
/// anything: a request of many megabytes would otherwise cost seconds of CPU and gigabytes of
/// memory only to be found too long.
pub struct RenderLimit {
    /// The longest token of the vocabulary, in bytes of the text it stands for (an upper bound).
    pub max_token_bytes: usize,
    /// Text longer than this cannot fit the context whatever it tokenizes to: refused unread.
    pub max_input_bytes: usize,
    /// Prompts tokenized at once (one per core, at most [`MAX_CONCURRENT_RENDERS`]).
    pub permits: Arc<tokio::sync::Semaphore>,
}

impl RenderLimit {
    pub fn new(tokenizer: &ModelTokenizer, max_model_len: usize) -> Self {
        // Each token decoded alone: the bytes of text it stands for (a lone piece of a multi-byte
        // character decodes to U+FFFD, 3 bytes for 1: an overestimate, which is the safe side).
        let vocab = tokenizer.vocab_size() as u32;
        let max_token_bytes = (0..vocab)
            .filter_map(|id| tokenizer.inner().decode(&[id], false).ok())
            .map(|text| text.len())
            .max()
            .unwrap_or(1)
            .max(1);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            max_token_bytes,
            max_input_bytes: max_model_len.saturating_mul(max_token_bytes),
            permits: Arc::new(tokio::sync::Semaphore::new(
                cores.min(MAX_CONCURRENT_RENDERS),
            )),
        }
    }
}

impl JudgeModel {
    /// Starts the engine for `loaded`; `source` is what the operator passed (`--model`).
    pub fn start(
        loaded: LoadedModel,
        source: &str,
        choice: FamilyChoice,
        engine_config: EngineConfig,
    ) -> Result<Self> {
        let LoadedModel {
            name,
            model,
            tokenizer,
        } = loaded;
        if !tokenizer.has_chat_template() {
            bail!("{source} has no chat template; RM-R1 prompts are rendered with the model's own");
        }
        let description = ModelDescription {
            name,
            family: choice.family,
            architecture: "qwen2".into(),
            context_length: model.config().max_position_embeddings,
            dtype: format!("{:?}", model.dtype()).to_lowercase(),
            quantization: model.weight_format().to_string().to_lowercase(),
            source: source.into(),
            manifest: choice.manifest.as_ref().map(|m| m.hub_id.clone()),
        };
        let verdict_tokens = single_token(&tokenizer, "A")?
            .zip(single_token(&tokenizer, "B")?)
            .filter(|(a, b)| a != b);
        let engine = EngineHandle::start(
            model,
            Arc::new(tokenizer.inner().clone()),
            tokenizer.eos_ids().to_vec(),
            engine_config,
        )?;
        let render_limit = RenderLimit::new(&tokenizer, engine.limits().max_model_len);
        Ok(Self {
            description,
            tokenizer: Arc::new(tokenizer),
            engine,
            render_limit,
            verdict_tokens: verdict_tokens.map(|(a, b)| [a, b]),
            default_max_new_tokens: choice
                .manifest
                .map_or(DEFAULT_MAX_NEW_TOKENS, |m| m.max_new_tokens),
        })
    }

    pub fn name(&self) -> &str {
        &self.description.name
    }

    pub fn family(&self) -> PromptFamily {
        self.description.family
    }

    /// Runs a few tokens through the engine so the first real request does not pay for page
    /// faults and lazily built kernels. Health reports SERVING only after this.
    pub async fn warm_up(&self) -> Result<()> {
        let prompt_tokens = self.tokenizer.encode("Warm-up: say hello.")?;
        let mut stream = self.engine.submit(GenerateRequest {
            prompt_tokens,
            sampling: SamplingParams {
                ignore_eos: true,
                ..SamplingParams::greedy(2)
            },
        })?;
        while let Some(event) = stream.next().await {
            match event {
                EngineEvent::Token(_) => {}
                EngineEvent::Finished(_) => return Ok(()),
                EngineEvent::Error(e) => bail!("warm-up generation failed: {e}"),
            }
        }
        bail!("engine stopped during warm-up")
    }
}

fn single_token(tokenizer: &ModelTokenizer, text: &str) -> Result<Option<u32>> {
    let ids = tokenizer
        .encode(text)
        .with_context(|| format!("tokenizing {text:?}"))?;
    // An unknown-token id also encodes as one token; it must decode back to the text.
    Ok(match ids.as_slice() {
        [id] if tokenizer.decode(&[*id])? == text => Some(*id),
        _ => None,
    })
}

/// Everything needed to load a judge besides the model itself.
#[derive(Debug, Clone, Default)]
pub struct JudgeModelOptions {
    pub tokenizer: Option<std::path::PathBuf>,
    /// A PEFT LoRA adapter merged into the base at load.
    pub adapter: Option<std::path::PathBuf>,
    pub family: Option<PromptFamily>,
    pub manifest: Option<std::path::PathBuf>,
    /// Served name; default: the model's own name.
    pub name: Option<String>,
    pub device: crate::model::DeviceChoice,
    pub engine: EngineConfig,
    /// `Some` (the command line): `engine`'s step limits are replaced by these flags, and what they
    /// leave unset by the defaults of the device the model lands on. `None`: `engine` as given.
    pub step_limit_flags: Option<crate::engine::StepLimitFlags>,
}

impl JudgeModel {
    /// Loads `spec` (directory, GGUF file or hub id) and starts its engine. Blocking: weights are
    /// read and the KV cache allocated here.
    pub fn load(spec: &str, options: &JudgeModelOptions) -> Result<Self> {
        // Decide the family first: a missing one is a configuration error, found before loading.
        let choice =
            super::manifest::choose_family(spec, options.family, options.manifest.as_deref())?;
        let device = options.device.open()?;
        let mut engine = options.engine.clone();
        if let Some(flags) = options.step_limit_flags {
            flags.apply(&device, &mut engine);
        }
        let mut loaded = crate::model::load(
            spec,
            &crate::model::LoadOptions {
                tokenizer: options.tokenizer.clone(),
                adapter: options.adapter.clone(),
                device,
                ..crate::model::LoadOptions::default()
            },
        )?;
        if let Some(name) = &options.name {
            loaded.name = name.clone();
        }
        let source = match &options.adapter {
            Some(adapter) => format!("{spec} + adapter {}", adapter.display()),
            None => spec.to_string(),
        };
        let model = Self::start(loaded, &source, choice, engine)?;
        tracing::info!(
            name = model.name(),
            family = %model.family(),
            context = model.description.context_length,
            weights = %model.description.quantization,
            manifest = ?model.description.manifest,
            verdict_probabilities = model.verdict_tokens.is_some(),
            "judge model loaded"
        );
        Ok(model)
    }
}
