//! The tokenizer with the model's special tokens and chat template.

use super::chat_template::{ChatMessage, ChatTemplate};
use anyhow::{anyhow, Context, Result};
use candle_core::quantized::{gguf_file, tokenizer::TokenizerFromGguf};
use std::path::Path;
use tokenizers::Tokenizer;

pub struct ModelTokenizer {
    tokenizer: Tokenizer,
    eos_ids: Vec<u32>,
    chat_template: Option<ChatTemplate>,
}

/// `tokenizer_config.json` fields that matter for serving.
#[derive(serde::Deserialize, Default)]
struct TokenizerConfig {
    #[serde(default)]
    chat_template: Option<serde_json::Value>,
    #[serde(default)]
    bos_token: Option<serde_json::Value>,
    #[serde(default)]
    eos_token: Option<serde_json::Value>,
}

/// Special tokens are a plain string or an `AddedToken` object with `content`.
fn token_text(v: &Option<serde_json::Value>) -> Option<String> {
    match v {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Object(o)) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// `chat_template` is a string, or a list of `{name, template}` where `default` is the chat one.
fn template_source(v: &Option<serde_json::Value>) -> Option<String> {
    match v {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .find(|t| t["name"] == "default")
            .or_else(|| items.first())
            .and_then(|t| t["template"].as_str().map(str::to_string)),
        _ => None,
    }
}

impl ModelTokenizer {
    pub fn new(
        tokenizer: Tokenizer,
        eos_ids: Vec<u32>,
        chat_template: Option<ChatTemplate>,
    ) -> Self {
        Self {
            tokenizer,
            eos_ids,
            chat_template,
        }
    }

    pub fn from_hf_files(tokenizer_json: &Path, tokenizer_config: &Path) -> Result<Self> {
        let tokenizer = Tokenizer::from_file(tokenizer_json)
            .map_err(|e| anyhow!("loading {}: {e}", tokenizer_json.display()))?;
        let config: TokenizerConfig = match std::fs::read_to_string(tokenizer_config) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", tokenizer_config.display()))?,
            Err(_) => TokenizerConfig::default(),
        };
        let eos_text = token_text(&config.eos_token);
        let eos_ids = eos_text
            .as_deref()
            .and_then(|t| tokenizer.token_to_id(t))
            .into_iter()
            .collect();
        let chat_template = template_source(&config.chat_template)
            .map(|src| {
                ChatTemplate::new(
                    &src,
                    &token_text(&config.bos_token).unwrap_or_default(),
                    &eos_text.clone().unwrap_or_default(),
                )
            })
            .transpose()?;
        Ok(Self::new(tokenizer, eos_ids, chat_template))
    }

    /// Tokenizer, EOS and chat template all from GGUF metadata.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let tokenizer = Tokenizer::from_gguf(content)
            .map_err(|e| anyhow!("building the tokenizer from GGUF metadata: {e}"))?;
        Self::with_gguf_metadata(tokenizer, content)
    }

    /// The tokenizer from a side `tokenizer.json`, EOS and chat template from GGUF metadata.
    pub fn from_gguf_with_tokenizer_file(
        content: &gguf_file::Content,
        file: &Path,
    ) -> Result<Self> {
        let tokenizer =
            Tokenizer::from_file(file).map_err(|e| anyhow!("loading {}: {e}", file.display()))?;
        Self::with_gguf_metadata(tokenizer, content)
    }

    fn with_gguf_metadata(tokenizer: Tokenizer, content: &gguf_file::Content) -> Result<Self> {
        let md = &content.metadata;
        let id_of = |key: &str| md.get(key).and_then(|v| v.to_u32().ok());
        let text_of = |id: Option<u32>| id.and_then(|id| tokenizer.id_to_token(id));
        let eos_id = id_of("tokenizer.ggml.eos_token_id");
        let eos_ids = eos_id.into_iter().collect();
        let chat_template = md
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .map(|src| {
                ChatTemplate::new(
                    src,
                    &text_of(id_of("tokenizer.ggml.bos_token_id")).unwrap_or_default(),
                    &text_of(eos_id).unwrap_or_default(),
                )
            })
            .transpose()?;
        Ok(Self::new(tokenizer, eos_ids, chat_template))
    }

    pub fn add_eos_ids(&mut self, ids: &[u32]) {
        for id in ids {
            if !self.eos_ids.contains(id) {
                self.eos_ids.push(*id);
            }
        }
    }

    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Encodes text as-is (no BOS added: Qwen has none and chat templates write their own markers).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(|e| anyhow!("tokenizing: {e}"))?
            .get_ids()
            .to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| anyhow!("detokenizing: {e}"))
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.chat_template
            .as_ref()
            .context("this model has no chat template")?
            .render(messages, add_generation_prompt)
    }

    /// The token ids a model is fed to answer `messages`: the chat template with the generation
    /// prompt, encoded as-is. The judge builds its prompts with this and SFT its training
    /// prompts, so a trained model sees at inference exactly the ids it was trained on.
    pub fn encode_chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        self.encode(&self.apply_chat_template(messages, true)?)
    }
}

/// A tokenizer whose token `i` is the word `t{i}`, for engines run on random-weight models
/// (benchmarks, GPU checks): the engine needs one to detokenize, nobody reads the text.
pub fn numbered_vocabulary(vocab: usize) -> Result<Tokenizer> {
    use tokenizers::models::wordlevel::WordLevel;
    let words = (0..vocab).map(|i| (format!("t{i}"), i as u32)).collect();
    let model = WordLevel::builder()
        .vocab(words)
        .unk_token("t0".into())
        .build()
        .map_err(|e| anyhow::anyhow!("building a numbered vocabulary: {e}"))?;
    Ok(Tokenizer::new(model))
}
