//! Model loading: sharded bf16 safetensors with an index, `sliding_window: null`, generation-config
//! EOS ids, the chat template from tokenizer_config.json, and how `--model` arguments are read.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{max_abs_diff, tokens, write_tiny_model, Oracle, TinySpec};
use rmr1::model::chat_template::ChatMessage;
use rmr1::model::{ForwardBatch, ModelSource, PagedAttention, SequenceSpan};
use std::collections::HashMap;

/// Rewrites `model.safetensors` as two bf16 shards plus `model.safetensors.index.json`.
fn shard_as_bf16(dir: &std::path::Path) {
    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut shards: [HashMap<String, Tensor>; 2] = Default::default();
    let mut weight_map = serde_json::Map::new();
    for (i, name) in names.into_iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i % 2 + 1);
        shards[i % 2].insert(name.clone(), tensors[name].to_dtype(DType::BF16).unwrap());
        weight_map.insert(name.clone(), file.into());
    }
    for (i, shard) in shards.iter().enumerate() {
        candle_core::safetensors::save(
            shard,
            dir.join(format!("model-0000{}-of-00002.safetensors", i + 1)),
        )
        .unwrap();
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

#[test]
fn sharded_bf16_directory_loads_and_matches_candle() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &TinySpec::default());
    shard_as_bf16(dir.path());
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"eos_token_id": [1, 7]}"#,
    )
    .unwrap();
    let loaded = common::load_tiny(dir.path());
    assert_eq!(
        loaded.model.dtype(),
        DType::F32,
        "CPU computes in f32 whatever the file dtype"
    );
    assert_eq!(loaded.tokenizer.eos_ids(), &[1, 7]);

    // Our forward on the bf16 weights equals candle's on the same bf16 weights (both upcast).
    let mut oracle = Oracle::new(dir.path());
    let t = tokens(3, 20, 96);
    let cfg = loaded.model.config().clone();
    let shape = rmr1::model::CacheShape {
        num_layers: cfg.num_hidden_layers,
        num_blocks: 4,
        block_size: 16,
        num_kv_heads: cfg.num_key_value_heads,
        head_dim: cfg.head_dim(),
    };
    let mut attention = rmr1::model::attention::cpu::CpuPagedAttention::new(
        shape,
        cfg.num_attention_heads,
        rmr1::model::attention::KvCacheDtype::F32,
    );
    let mut batch = ForwardBatch {
        tokens: t.clone(),
        positions: (0..20).collect(),
        ..Default::default()
    };
    batch.attention.slot_mapping = (0..20).collect();
    batch.attention.sequences.push(SequenceSpan {
        query_start: 0,
        query_len: 20,
        context_len: 20,
        block_table: vec![0, 1],
    });
    batch.logit_rows = (0..20).collect();
    let ours: Vec<Vec<f32>> = loaded
        .model
        .forward(&batch, &mut attention as &mut dyn PagedAttention)
        .unwrap()
        .to_vec2()
        .unwrap();
    let reference = oracle.logits(&t);
    for (a, b) in ours.iter().zip(&reference) {
        assert!(max_abs_diff(a, b) <= 1e-4);
    }
}

#[test]
fn chat_template_from_tokenizer_config_renders() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &TinySpec::default());
    let loaded = common::load_tiny(dir.path());
    let text = loaded
        .tokenizer
        .apply_chat_template(
            &[
                ChatMessage::new("system", "w5"),
                ChatMessage::new("user", "w6 w7"),
            ],
            true,
        )
        .unwrap();
    assert_eq!(text, "<system> w5 <user> w6 w7 <assistant>");
    assert_eq!(loaded.tokenizer.encode("w5 w6").unwrap(), vec![5, 6]);
}

#[test]
fn model_arguments_resolve_to_sources() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        ModelSource::parse(dir.path().to_str().unwrap()).unwrap(),
        ModelSource::HfDir(dir.path().to_path_buf())
    );
    let file = dir.path().join("m.gguf");
    std::fs::write(&file, b"not really").unwrap();
    assert_eq!(
        ModelSource::parse(file.to_str().unwrap()).unwrap(),
        ModelSource::Gguf(file.clone())
    );
    assert_eq!(
        ModelSource::parse("gaotang/RM-R1-Qwen2.5-Instruct-7B").unwrap(),
        ModelSource::Hub {
            repo: "gaotang/RM-R1-Qwen2.5-Instruct-7B".into(),
            revision: "main".into()
        }
    );
    assert_eq!(
        ModelSource::parse("gaotang/RM-R1-DeepSeek-Distilled-Qwen-7B@abc123").unwrap(),
        ModelSource::Hub {
            repo: "gaotang/RM-R1-DeepSeek-Distilled-Qwen-7B".into(),
            revision: "abc123".into()
        }
    );
    assert!(ModelSource::parse("/no/such/model.gguf").is_err());
    assert!(ModelSource::parse("not-a-hub-id").is_err());
    // A file that is not GGUF fails with a message naming it.
    let err = rmr1::model::load(file.to_str().unwrap(), &Default::default())
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("m.gguf"), "{err:#}");
}
