//! Output formats other tools load: PEFT adapters (names, shapes, config, round trip), serving an
//! adapter merged at load, merged and full Hugging Face checkpoints (sharding, metadata, tied
//! heads), checked against the engine, candle-transformers and hand-computed merges.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{max_abs_diff, tokens, write_tiny_model, Oracle, TinySpec};
use rmr1::gpu_check::model::prompt_logits;
use rmr1::model::adapter::module_path;
use rmr1::model::base_weights::BaseWeights;
use rmr1::model::chat_template::ChatMessage;
use rmr1::model::{self, LoadOptions, LoraAdapter};
use rmr1::train::export::{checkpoint_config, export_base, export_merged, write_hf_checkpoint};
use rmr1::train::TokenizerFiles;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const SEVEN: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Uniform values in [-amp, amp) from a seeded LCG: enough to make every adapter entry non-zero.
fn uniform(seed: &mut u64, n: usize, amp: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
        })
        .collect()
}

/// A random, non-zero rank-`rank` adapter on `modules` of every layer of `base`.
fn random_adapter(base: &BaseWeights, rank: usize, alpha: f64, modules: &[&str]) -> LoraAdapter {
    let mut seed = 7u64;
    let mut weights = BTreeMap::new();
    for layer in 0..base.config.num_hidden_layers {
        for m in modules {
            let path = module_path(layer, m).unwrap();
            let (out, inp) = base
                .get(&format!("{path}.weight"))
                .unwrap()
                .dims2()
                .unwrap();
            let a = Tensor::from_vec(
                uniform(&mut seed, rank * inp, 0.3),
                (rank, inp),
                &Device::Cpu,
            );
            let b = Tensor::from_vec(
                uniform(&mut seed, out * rank, 0.3),
                (out, rank),
                &Device::Cpu,
            );
            weights.insert(path, (a.unwrap(), b.unwrap()));
        }
    }
    LoraAdapter {
        rank,
        alpha,
        dropout: 0.05,
        target_modules: modules.iter().map(|s| s.to_string()).collect(),
        base_model: "tiny-base".into(),
        weights,
    }
}

/// The JSON header of a safetensors file, read by hand (8-byte little-endian length, then JSON).
fn header(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    serde_json::from_slice(&bytes[8..8 + n]).unwrap()
}

fn assert_pt_metadata(path: &Path) {
    assert_eq!(
        header(path)["__metadata__"],
        serde_json::json!({"format": "pt"}),
        "{} lacks the format metadata",
        path.display()
    );
}

fn safetensors_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    files
}

/// Logits at every position, from the engine's forward over `spec` (with `adapter` merged at load).
fn engine_logits(spec: &Path, adapter: Option<&Path>, toks: &[u32]) -> Vec<Vec<f32>> {
    let loaded = model::load(
        spec.to_str().unwrap(),
        &LoadOptions {
            adapter: adapter.map(Path::to_path_buf),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let (logits, _) = prompt_logits(&loaded.model, &[toks.to_vec()], toks.len()).unwrap();
    logits.to_vec2().unwrap()
}

fn worst(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| max_abs_diff(x, y))
        .fold(0.0, f32::max)
}

/// A tiny base, a rank-4 adapter on all seven projections saved beside it.
fn tiny_with_adapter(root: &Path, spec: &TinySpec) -> (PathBuf, BaseWeights, LoraAdapter, PathBuf) {
    let dir = write_tiny_model(&root.join("base"), spec);
    let base = BaseWeights::load(dir.to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
    let adapter = random_adapter(&base, 4, 8.0, &SEVEN);
    let adapter_dir = root.join("adapter");
    adapter.save_peft(&adapter_dir).unwrap();
    (dir, base, adapter, adapter_dir)
}

#[test]
fn peft_files_have_the_golden_names_shapes_config_and_metadata() {
    let root = tempfile::tempdir().unwrap();
    let (_, _, _, adapter_dir) = tiny_with_adapter(root.path(), &TinySpec::default());
    let weights = adapter_dir.join("adapter_model.safetensors");
    assert_pt_metadata(&weights);

    // Tiny model: hidden 64, 4 heads of 16, 2 KV heads (kv dim 32), intermediate 128; rank 4.
    let golden = "\
        base_model.model.model.layers.0.mlp.down_proj.lora_A.weight [4, 128]\n\
        base_model.model.model.layers.0.mlp.down_proj.lora_B.weight [64, 4]\n\
        base_model.model.model.layers.0.mlp.gate_proj.lora_A.weight [4, 64]\n\
        base_model.model.model.layers.0.mlp.gate_proj.lora_B.weight [128, 4]\n\
        base_model.model.model.layers.0.mlp.up_proj.lora_A.weight [4, 64]\n\
        base_model.model.model.layers.0.mlp.up_proj.lora_B.weight [128, 4]\n\
        base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight [4, 64]\n\
        base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight [32, 4]\n\
        base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight [4, 64]\n\
        base_model.model.model.layers.0.self_attn.o_proj.lora_B.weight [64, 4]\n\
        base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight [4, 64]\n\
        base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight [64, 4]\n\
        base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight [4, 64]\n\
        base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight [32, 4]\n\
        base_model.model.model.layers.1.mlp.down_proj.lora_A.weight [4, 128]\n\
        base_model.model.model.layers.1.mlp.down_proj.lora_B.weight [64, 4]\n\
        base_model.model.model.layers.1.mlp.gate_proj.lora_A.weight [4, 64]\n\
        base_model.model.model.layers.1.mlp.gate_proj.lora_B.weight [128, 4]\n\
        base_model.model.model.layers.1.mlp.up_proj.lora_A.weight [4, 64]\n\
        base_model.model.model.layers.1.mlp.up_proj.lora_B.weight [128, 4]\n\
        base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight [4, 64]\n\
        base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight [32, 4]\n\
        base_model.model.model.layers.1.self_attn.o_proj.lora_A.weight [4, 64]\n\
        base_model.model.model.layers.1.self_attn.o_proj.lora_B.weight [64, 4]\n\
        base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight [4, 64]\n\
        base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight [64, 4]\n\
        base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight [4, 64]\n\
        base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight [32, 4]";
    let head = header(&weights);
    let mut written: Vec<(String, Vec<usize>)> = head
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            assert_eq!(v["dtype"], "F32", "{k}");
            let shape = v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize);
            (k.clone(), shape.collect())
        })
        .collect();
    written.sort();
    let expected: Vec<(String, Vec<usize>)> = golden
        .lines()
        .map(|line| {
            let (key, shape) = line.trim().split_once(' ').unwrap();
            let shape: Vec<usize> = serde_json::from_str(shape).unwrap();
            (key.to_string(), shape)
        })
        .collect();
    assert_eq!(written, expected);

    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter_dir.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    for (field, value) in [
        ("peft_type", serde_json::json!("LORA")),
        ("task_type", serde_json::json!("CAUSAL_LM")),
        ("base_model_name_or_path", serde_json::json!("tiny-base")),
        ("r", serde_json::json!(4)),
        ("lora_alpha", serde_json::json!(8)),
        ("lora_dropout", serde_json::json!(0.05)),
        ("bias", serde_json::json!("none")),
        ("target_modules", serde_json::json!(SEVEN)),
        ("use_rslora", serde_json::json!(false)),
        ("use_dora", serde_json::json!(false)),
        ("fan_in_fan_out", serde_json::json!(false)),
        ("modules_to_save", serde_json::Value::Null),
        ("inference_mode", serde_json::json!(true)),
        ("init_lora_weights", serde_json::json!(true)),
        ("layers_to_transform", serde_json::Value::Null),
        ("revision", serde_json::Value::Null),
    ] {
        assert_eq!(
            config.get(field),
            Some(&value),
            "adapter_config.json field {field}"
        );
    }
}

fn same_tensor(a: &Tensor, b: &Tensor) -> bool {
    let bits = |t: &Tensor| -> Vec<u32> {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect()
    };
    a.dtype() == b.dtype() && a.dims() == b.dims() && bits(a) == bits(b)
}

#[test]
fn load_peft_round_trips_bit_exact_in_f32_and_bf16() {
    let root = tempfile::tempdir().unwrap();
    let (_, _, adapter, adapter_dir) = tiny_with_adapter(root.path(), &TinySpec::default());
    let mut bf16 = adapter.clone();
    for (a, b) in bf16.weights.values_mut() {
        *a = a.to_dtype(DType::BF16).unwrap();
        *b = b.to_dtype(DType::BF16).unwrap();
    }
    bf16.alpha = 6.5;
    bf16.target_modules = vec!["q_proj".into(), "v_proj".into()];
    bf16.weights
        .retain(|k, _| k.ends_with("q_proj") || k.ends_with("v_proj"));
    let bf16_dir = root.path().join("bf16");
    bf16.save_peft(&bf16_dir).unwrap();
    assert_pt_metadata(&bf16_dir.join("adapter_model.safetensors"));

    for (original, dir) in [(&adapter, &adapter_dir), (&bf16, &bf16_dir)] {
        let back = LoraAdapter::load_peft(dir, &Device::Cpu).unwrap();
        assert_eq!(back.rank, original.rank);
        assert_eq!(back.alpha, original.alpha);
        assert_eq!(back.dropout, original.dropout);
        assert_eq!(back.target_modules, original.target_modules);
        assert_eq!(back.base_model, original.base_model);
        assert_eq!(
            back.weights.keys().collect::<Vec<_>>(),
            original.weights.keys().collect::<Vec<_>>()
        );
        for (k, (a, b)) in &original.weights {
            let (a2, b2) = &back.weights[k];
            assert!(
                same_tensor(a, a2) && same_tensor(b, b2),
                "{k} changed in the round trip"
            );
        }
    }
}

#[test]
fn load_peft_refuses_what_it_cannot_merge_by_name() {
    let root = tempfile::tempdir().unwrap();
    let (_, _, adapter, adapter_dir) = tiny_with_adapter(root.path(), &TinySpec::default());
    let config_path = adapter_dir.join("adapter_config.json");
    let original = std::fs::read_to_string(&config_path).unwrap();
    let error_with = |field: &str, value: serde_json::Value| -> String {
        let mut config: serde_json::Value = serde_json::from_str(&original).unwrap();
        config[field] = value;
        std::fs::write(&config_path, config.to_string()).unwrap();
        let e = LoraAdapter::load_peft(&adapter_dir, &Device::Cpu).unwrap_err();
        std::fs::write(&config_path, &original).unwrap();
        format!("{e:#}")
    };
    assert!(error_with("use_dora", true.into()).contains("use_dora"));
    assert!(error_with("use_rslora", true.into()).contains("use_rslora"));
    assert!(error_with("bias", "all".into()).contains("bias"));
    assert!(error_with("r", 8.into()).contains("expected [8, in]"));
    assert!(error_with("target_modules", serde_json::json!(["q_proj"]))
        .contains("not in target_modules"));
    assert!(
        error_with("modules_to_save", serde_json::json!(["lm_head"])).contains("modules_to_save")
    );
    LoraAdapter::load_peft(&adapter_dir, &Device::Cpu).unwrap();

    // A tensor for a module LoRA here does not adapt (the embedding).
    let mut odd = adapter.clone();
    let (a, b) = odd.weights.values().next().unwrap().clone();
    odd.weights.insert("model.embed_tokens".into(), (a, b));
    assert!(
        odd.save_peft(&root.path().join("odd")).is_err(),
        "saving validates too"
    );
    let mut tensors =
        candle_core::safetensors::load(adapter_dir.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    let any = tensors.values().next().unwrap().clone();
    tensors.insert(
        "base_model.model.model.embed_tokens.lora_A.weight".into(),
        any,
    );
    candle_core::safetensors::save(&tensors, adapter_dir.join("adapter_model.safetensors"))
        .unwrap();
    let e = format!(
        "{:#}",
        LoraAdapter::load_peft(&adapter_dir, &Device::Cpu).unwrap_err()
    );
    assert!(e.contains("embed_tokens"), "{e}");
}

#[test]
fn served_adapter_equals_merged_export_and_differs_from_the_base() {
    let root = tempfile::tempdir().unwrap();
    let (dir, base, adapter, adapter_dir) = tiny_with_adapter(root.path(), &TinySpec::default());
    let merged_dir = root.path().join("merged");
    export_merged(&base, &adapter, &merged_dir).unwrap();
    for file in safetensors_in(&merged_dir) {
        assert_pt_metadata(&file);
    }
    let toks = tokens(3, 24, 96);
    let served = engine_logits(&dir, Some(&adapter_dir), &toks);
    let exported = engine_logits(&merged_dir, None, &toks);
    let plain = engine_logits(&dir, None, &toks);
    let same = worst(&served, &exported);
    let moved = worst(&served, &plain);
    eprintln!("served vs merged export: {same:e}; adapter vs base: {moved}");
    assert!(
        same <= 1e-6,
        "served-with-adapter and merged export differ by {same:e}"
    );
    assert!(
        moved > 0.1,
        "the adapter barely changed the logits ({moved})"
    );
}

/// `W + (alpha/r)·B·A` with plain loops over f32 vectors.
fn merge_by_hand(w: &Tensor, a: &Tensor, b: &Tensor, scale: f32) -> Tensor {
    let (out, inp) = w.dims2().unwrap();
    let rank = a.dims2().unwrap().0;
    let (w, a, b) = (
        w.to_vec2::<f32>().unwrap(),
        a.to_vec2::<f32>().unwrap(),
        b.to_vec2::<f32>().unwrap(),
    );
    let mut merged = Vec::with_capacity(out * inp);
    for i in 0..out {
        for j in 0..inp {
            let mut delta = 0f32;
            for k in 0..rank {
                delta += b[i][k] * a[k][j];
            }
            merged.push(w[i][j] + scale * delta);
        }
    }
    Tensor::from_vec(merged, (out, inp), &Device::Cpu).unwrap()
}

#[test]
fn merged_export_matches_candle_transformers_on_weights_merged_by_hand() {
    for tie in [false, true] {
        let root = tempfile::tempdir().unwrap();
        let spec = TinySpec {
            tie_embeddings: tie,
            ..TinySpec::default()
        };
        let (dir, base, adapter, adapter_dir) = tiny_with_adapter(root.path(), &spec);
        let merged_dir = root.path().join("merged");
        export_merged(&base, &adapter, &merged_dir).unwrap();

        let reference_dir = root.path().join("reference");
        std::fs::create_dir_all(&reference_dir).unwrap();
        std::fs::copy(dir.join("config.json"), reference_dir.join("config.json")).unwrap();
        let mut tensors =
            candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
        let scale = (8.0 / 4.0) as f32;
        for (path, (a, b)) in &adapter.weights {
            let key = format!("{path}.weight");
            let merged = merge_by_hand(&tensors[&key], a, b, scale);
            tensors.insert(key, merged);
        }
        candle_core::safetensors::save(&tensors, reference_dir.join("model.safetensors")).unwrap();

        let toks = tokens(5, 20, 96);
        let theirs = Oracle::new(&reference_dir).logits(&toks);
        let ours = engine_logits(&merged_dir, None, &toks);
        let served = engine_logits(&dir, Some(&adapter_dir), &toks);
        let (d_export, d_served) = (worst(&ours, &theirs), worst(&served, &theirs));
        eprintln!("tied={tie}: export vs reference {d_export:e}, served vs reference {d_served:e}");
        assert!(
            d_export <= 1e-4 && d_served <= 1e-4,
            "tied={tie}: {d_export:e} / {d_served:e}"
        );

        // A tied head stays tied: no lm_head.weight written, and the config says so.
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(merged_dir.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["tie_word_embeddings"], tie);
        let written = safetensors_in(&merged_dir)
            .iter()
            .flat_map(|f| {
                header(f)
                    .as_object()
                    .unwrap()
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>();
        assert_eq!(written.iter().any(|k| k == "lm_head.weight"), !tie);
    }
}

#[test]
fn sharded_full_checkpoint_reloads_with_identical_logits() {
    let root = tempfile::tempdir().unwrap();
    let dir = write_tiny_model(&root.path().join("base"), &TinySpec::default());
    let base = BaseWeights::load(dir.to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
    let out = root.path().join("full");
    // ~300 KB of f32 weights in shards of at most 100 KB.
    let config = checkpoint_config(&base, DType::F32).unwrap();
    write_hf_checkpoint(
        &out,
        &config,
        &base.tensors,
        DType::F32,
        TokenizerFiles::CopyFrom(&dir),
        100_000,
    )
    .unwrap();

    let shards = safetensors_in(&out);
    assert!(shards.len() >= 2, "expected several shards, got {shards:?}");
    let n = shards.len();
    for (k, shard) in shards.iter().enumerate() {
        let name = shard.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, format!("model-{:05}-of-{n:05}.safetensors", k + 1));
        assert_pt_metadata(shard);
    }
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let total: usize = base.tensors.values().map(|t| t.elem_count() * 4).sum();
    assert_eq!(index["metadata"]["total_size"], total);
    let map = index["weight_map"].as_object().unwrap();
    assert_eq!(map.len(), base.tensors.len());
    for (name, file) in map {
        let head = header(&out.join(file.as_str().unwrap()));
        assert!(head.get(name).is_some(), "{name} is not in {file}");
    }
    for file in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.join(file).exists(), "{file} missing");
    }
    let leftovers: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");

    let toks = tokens(9, 30, 96);
    assert_eq!(
        engine_logits(&dir, None, &toks),
        engine_logits(&out, None, &toks)
    );

    // bf16: the dtype in every header and in config.json; rewriting replaces the old checkpoint.
    let config = checkpoint_config(&base, DType::BF16).unwrap();
    write_hf_checkpoint(
        &out,
        &config,
        &base.tensors,
        DType::BF16,
        TokenizerFiles::CopyFrom(&dir),
        100_000,
    )
    .unwrap();
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(written["torch_dtype"], "bfloat16");
    for shard in safetensors_in(&out) {
        let head = header(&shard);
        for (name, info) in head.as_object().unwrap() {
            if name != "__metadata__" {
                assert_eq!(info["dtype"], "BF16", "{name}");
            }
        }
    }
    let bf16 = engine_logits(&out, None, &toks);
    let d = worst(&bf16, &engine_logits(&dir, None, &toks));
    assert!(d > 0.0 && d < 0.5, "bf16 checkpoint logits off by {d}");
}

#[test]
fn gguf_base_exports_a_checkpoint_that_predicts_like_the_gguf() {
    let Some(real) = common::real_model_dir() else {
        return;
    };
    let gguf = real.join("model.gguf");
    let base = BaseWeights::load(gguf.to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("qwen-hf");
    export_base(&base, &out, DType::BF16, 400_000_000).unwrap();
    drop(base);

    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["architectures"],
        serde_json::json!(["Qwen2ForCausalLM"])
    );
    assert_eq!(config["model_type"], "qwen2");
    assert_eq!(config["torch_dtype"], "bfloat16");
    // Tied exactly when the GGUF has no separate output head (some Qwen2.5-0.5B GGUFs carry one).
    let mut file = std::fs::File::open(&gguf).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let has_head = content.tensor_infos.contains_key("output.weight");
    assert_eq!(config["tie_word_embeddings"], !has_head);
    assert_eq!(config["num_hidden_layers"], 24);
    assert!(
        config["eos_token_id"].is_u64(),
        "{}",
        config["eos_token_id"]
    );
    for shard in safetensors_in(&out) {
        assert_pt_metadata(&shard);
    }
    assert!(
        safetensors_in(&out).len() >= 2,
        "0.5B in bf16 is ~1 GB: several 400 MB shards"
    );

    let from_gguf = model::load(gguf.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let from_hf = model::load(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert!(from_hf.tokenizer.has_chat_template());
    let messages = [ChatMessage::new("user", "What is the capital of France?")];
    let text = from_gguf
        .tokenizer
        .apply_chat_template(&messages, true)
        .unwrap();
    assert_eq!(
        text,
        from_hf
            .tokenizer
            .apply_chat_template(&messages, true)
            .unwrap()
    );
    let toks = from_gguf.tokenizer.encode(&text).unwrap();
    assert_eq!(toks, from_hf.tokenizer.encode(&text).unwrap());
    assert_eq!(from_gguf.tokenizer.eos_ids(), from_hf.tokenizer.eos_ids());

    let last = |m: &model::LoadedModel| -> Vec<f32> {
        let (l, _) = prompt_logits(&m.model, std::slice::from_ref(&toks), 1).unwrap();
        l.squeeze(0).unwrap().to_vec1().unwrap()
    };
    let (q, d) = (last(&from_gguf), last(&from_hf));
    let argmax = |v: &[f32]| rmr1::engine::sampler::argmax(v);
    // The quantized engine re-quantizes activations to 8 bits and the export rounds weights to
    // bf16; both are small next to a confident first answer token.
    let diff = max_abs_diff(&q, &d);
    eprintln!(
        "GGUF top-1 {} vs exported {}, max |Δlogit| {diff:.3}",
        argmax(&q),
        argmax(&d)
    );
    assert_eq!(
        argmax(&q),
        argmax(&d),
        "the exported checkpoint predicts another token"
    );
    assert!(diff < 2.0, "logits differ by {diff}");
}
