//! Helpers shared by the integration tests: a tiny random Qwen2 model written to disk, the
//! candle-transformers oracle over the same weights, and the real small GGUF model when present.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use rmr1::model::{self, LoadOptions, LoadedModel};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub struct TinySpec {
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub max_positions: usize,
    pub tie_embeddings: bool,
    /// Standard deviation of the output head: larger makes greedy choices clear-cut.
    pub head_scale: f32,
    pub seed: u64,
    /// Make the last two words "A" and "B" (instead of w{vocab-2}, w{vocab-1}), so a judge over
    /// this model has verdict tokens to report probabilities for.
    pub verdict_words: bool,
    /// With `verdict_words`: also make ids vocab-4 and vocab-3 the added tokens "[[A]]" and
    /// "[[B]]", their output-head rows scaled by this gain (> 0), so greedy outputs of different
    /// prompts contain verdicts of either side (or both). 0 = off.
    pub verdict_token_gain: f32,
    /// Zero the output-head row of EOS (id 1): its logit is then 0 while the maximum of the other
    /// 100+ random logits is positive, so greedy generation runs to its token budget.
    pub suppress_eos: bool,
}

impl Default for TinySpec {
    fn default() -> Self {
        Self {
            vocab: 96,
            hidden: 64,
            intermediate: 128,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            max_positions: 1024,
            tie_embeddings: false,
            head_scale: 0.5,
            seed: 1,
            verdict_words: false,
            verdict_token_gain: 0.0,
            suppress_eos: false,
        }
    }
}

/// Small deterministic generator so tests do not depend on an RNG crate's stream stability.
struct SplitMix(u64);

impl SplitMix {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Roughly normal: sum of uniforms (Irwin-Hall), scaled.
    fn normal(&mut self, std: f32) -> f32 {
        let s: f32 = (0..4).map(|_| self.next_f32()).sum::<f32>() - 2.0;
        s * std * (3.0f32).sqrt()
    }
}

fn random(rng: &mut SplitMix, shape: &[usize], std: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.normal(std)).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

fn norm_weight(rng: &mut SplitMix, n: usize) -> Tensor {
    let data: Vec<f32> = (0..n).map(|_| 1.0 + rng.normal(0.1)).collect();
    Tensor::from_vec(data, n, &Device::Cpu).unwrap()
}

/// Writes config.json, model.safetensors (f32), tokenizer.json and tokenizer_config.json.
pub fn write_tiny_model(dir: &Path, spec: &TinySpec) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let d = spec.hidden / spec.heads;
    let config = serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": spec.vocab,
        "hidden_size": spec.hidden,
        "intermediate_size": spec.intermediate,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "max_position_embeddings": spec.max_positions,
        "max_window_layers": spec.layers,
        "sliding_window": null,
        "use_sliding_window": false,
        "tie_word_embeddings": spec.tie_embeddings,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "eos_token_id": 1
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();

    let mut rng = SplitMix(spec.seed);
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let (h, i) = (spec.hidden, spec.intermediate);
    t.insert(
        "model.embed_tokens.weight".into(),
        random(&mut rng, &[spec.vocab, h], 1.0),
    );
    for l in 0..spec.layers {
        let p = format!("model.layers.{l}");
        let s = 1.0 / (h as f32).sqrt();
        t.insert(
            format!("{p}.input_layernorm.weight"),
            norm_weight(&mut rng, h),
        );
        t.insert(
            format!("{p}.post_attention_layernorm.weight"),
            norm_weight(&mut rng, h),
        );
        t.insert(
            format!("{p}.self_attn.q_proj.weight"),
            random(&mut rng, &[spec.heads * d, h], 2.0 * s),
        );
        t.insert(
            format!("{p}.self_attn.q_proj.bias"),
            random(&mut rng, &[spec.heads * d], 0.2),
        );
        t.insert(
            format!("{p}.self_attn.k_proj.weight"),
            random(&mut rng, &[spec.kv_heads * d, h], 2.0 * s),
        );
        t.insert(
            format!("{p}.self_attn.k_proj.bias"),
            random(&mut rng, &[spec.kv_heads * d], 0.2),
        );
        t.insert(
            format!("{p}.self_attn.v_proj.weight"),
            random(&mut rng, &[spec.kv_heads * d, h], s),
        );
        t.insert(
            format!("{p}.self_attn.v_proj.bias"),
            random(&mut rng, &[spec.kv_heads * d], 0.2),
        );
        t.insert(
            format!("{p}.self_attn.o_proj.weight"),
            random(&mut rng, &[h, spec.heads * d], s),
        );
        t.insert(
            format!("{p}.mlp.gate_proj.weight"),
            random(&mut rng, &[i, h], s),
        );
        t.insert(
            format!("{p}.mlp.up_proj.weight"),
            random(&mut rng, &[i, h], s),
        );
        t.insert(
            format!("{p}.mlp.down_proj.weight"),
            random(&mut rng, &[h, i], 1.0 / (i as f32).sqrt()),
        );
    }
    t.insert("model.norm.weight".into(), norm_weight(&mut rng, h));
    if !spec.tie_embeddings {
        let mut head = random(&mut rng, &[spec.vocab, h], spec.head_scale);
        if spec.verdict_token_gain > 0.0 || spec.suppress_eos {
            let mut gain = vec![1f32; spec.vocab];
            if spec.verdict_token_gain > 0.0 {
                gain[spec.vocab - 4] = spec.verdict_token_gain;
                gain[spec.vocab - 3] = spec.verdict_token_gain;
            }
            if spec.suppress_eos {
                gain[1] = 0.0;
            }
            let gain = Tensor::from_vec(gain, (spec.vocab, 1), &Device::Cpu).unwrap();
            head = head.broadcast_mul(&gain).unwrap();
        }
        t.insert("lm_head.weight".into(), head);
    }
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();

    // Word-level tokenizer: token k is the word "w{k}"; ids 0 and 1 are <unk> and the EOS "</s>".
    let mut vocab = serde_json::Map::new();
    vocab.insert("<unk>".into(), 0.into());
    vocab.insert("</s>".into(), 1.into());
    for k in 2..spec.vocab {
        let word = match k {
            k if spec.verdict_token_gain > 0.0 && k == spec.vocab - 4 => "[[A]]".to_string(),
            k if spec.verdict_token_gain > 0.0 && k == spec.vocab - 3 => "[[B]]".to_string(),
            k if spec.verdict_words && k == spec.vocab - 2 => "A".to_string(),
            k if spec.verdict_words && k == spec.vocab - 1 => "B".to_string(),
            k => format!("w{k}"),
        };
        vocab.insert(word, k.into());
    }
    let tokenizer = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{"id": 1, "content": "</s>", "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let tokenizer_config = serde_json::json!({
        "eos_token": "</s>",
        "chat_template": "{% for m in messages %}<{{ m.role }}> {{ m.content }} {% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    });
    std::fs::write(
        dir.join("tokenizer_config.json"),
        tokenizer_config.to_string(),
    )
    .unwrap();
    dir.to_path_buf()
}

pub fn load_tiny(dir: &Path) -> LoadedModel {
    model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap()
}

/// candle-transformers' Qwen2 over the same safetensors: full-sequence logits `[len, vocab]`.
pub struct Oracle {
    model: candle_transformers::models::qwen2::Model,
    lm_head: Tensor,
}

impl Oracle {
    pub fn new(dir: &Path) -> Self {
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let get = |k: &str| cfg[k].as_u64().unwrap() as usize;
        let config = candle_transformers::models::qwen2::Config {
            vocab_size: get("vocab_size"),
            hidden_size: get("hidden_size"),
            intermediate_size: get("intermediate_size"),
            num_hidden_layers: get("num_hidden_layers"),
            num_attention_heads: get("num_attention_heads"),
            num_key_value_heads: get("num_key_value_heads"),
            max_position_embeddings: get("max_position_embeddings"),
            // candle's config requires a number; a window as long as the context never masks.
            sliding_window: get("max_position_embeddings"),
            max_window_layers: get("num_hidden_layers"),
            tie_word_embeddings: cfg["tie_word_embeddings"].as_bool().unwrap(),
            rope_theta: cfg["rope_theta"].as_f64().unwrap(),
            rms_norm_eps: cfg["rms_norm_eps"].as_f64().unwrap(),
            use_sliding_window: false,
            hidden_act: candle_nn::Activation::Silu,
        };
        let files = rmr1::model::loader::safetensors_files(dir).unwrap();
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(&files, DType::F32, &Device::Cpu).unwrap()
        };
        let lm_head = if vb.contains_tensor("lm_head.weight") {
            vb.get((config.vocab_size, config.hidden_size), "lm_head.weight")
                .unwrap()
        } else {
            vb.get(
                (config.vocab_size, config.hidden_size),
                "model.embed_tokens.weight",
            )
            .unwrap()
        };
        let model = candle_transformers::models::qwen2::Model::new(&config, vb).unwrap();
        Self { model, lm_head }
    }

    /// Logits tensor `[len, vocab]` at every position of `tokens`, computed from scratch.
    fn logits_tensor(&mut self, tokens: &[u32]) -> Tensor {
        self.model.clear_kv_cache();
        let input = Tensor::new(tokens, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let hidden = self
            .model
            .forward(&input, 0, None)
            .unwrap()
            .squeeze(0)
            .unwrap();
        hidden.matmul(&self.lm_head.t().unwrap()).unwrap()
    }

    /// Logits at every position of `tokens`.
    pub fn logits(&mut self, tokens: &[u32]) -> Vec<Vec<f32>> {
        self.logits_tensor(tokens).to_vec2().unwrap()
    }

    /// log-softmax at every position.
    pub fn log_probs(&mut self, tokens: &[u32]) -> Vec<Vec<f32>> {
        let logits = self.logits_tensor(tokens);
        candle_nn::ops::log_softmax(&logits, D::Minus1)
            .unwrap()
            .to_vec2()
            .unwrap()
    }
}

/// candle-transformers' `quantized_qwen2` over a GGUF file: the independent reference for GGUF.
pub struct GgufOracle {
    model: candle_transformers::models::quantized_qwen2::ModelWeights,
}

impl GgufOracle {
    pub fn new(gguf: &Path) -> Self {
        let mut file = std::fs::File::open(gguf).unwrap();
        let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
        let model = candle_transformers::models::quantized_qwen2::ModelWeights::from_gguf(
            content,
            &mut file,
            &Device::Cpu,
        )
        .unwrap();
        Self { model }
    }

    /// Feeds `input` at position `pos` (its KV cache continues from earlier calls) and returns the
    /// logits after its last token.
    pub fn step(&mut self, input: &[u32], pos: usize) -> Vec<f32> {
        let x = Tensor::new(input, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        self.model
            .forward(&x, pos)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap()
    }
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Directory of the real small GGUF model, or `None` (with a clear message) when it is absent.
/// CI sets RMR1_REQUIRE_TEST_MODEL=1 so a missing model fails instead of skipping.
pub fn real_model_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("RMR1_TEST_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/rmr1/test-model")
        });
    if dir.join("model.gguf").exists() && dir.join("tokenizer.json").exists() {
        return Some(dir);
    }
    let msg = format!(
        "real test model not found in {} — run scripts/fetch-test-model.sh",
        dir.display()
    );
    if std::env::var_os("RMR1_REQUIRE_TEST_MODEL").is_some() {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

/// Directory of the 1.5B demo model (`scripts/fetch-test-model.sh --demo`), or `None` with a
/// message: CI does not fetch it, so its tests skip unless it is present.
pub fn demo_model_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("RMR1_DEMO_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/rmr1/demo-model")
        });
    if dir.join("model.gguf").exists() && dir.join("tokenizer.json").exists() {
        return Some(dir);
    }
    eprintln!(
        "SKIPPED: demo model not found in {} — run scripts/fetch-test-model.sh --demo",
        dir.display()
    );
    None
}

/// Deterministic pseudo-random token ids in `2..vocab` (never <unk> or EOS).
pub fn tokens(seed: u64, n: usize, vocab: usize) -> Vec<u32> {
    let mut rng = SplitMix(seed.wrapping_mul(0x1234_5678_9ABC_DEF1) ^ 0xDEAD_BEEF);
    (0..n)
        .map(|_| 2 + (rng.next_f32() * (vocab - 2) as f32) as u32 % (vocab as u32 - 2))
        .collect()
}
pub mod grpo;
pub mod judge_server;
pub mod serve_process;
pub mod training;
