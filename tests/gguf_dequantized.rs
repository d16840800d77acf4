//! The GGUF forward with k-quant weights dequantized to f32 (candle's CANDLE_DEQUANTIZE_ALL), against
//! candle-transformers' `quantized_qwen2` dequantized the same way. Without 8-bit activation
//! re-quantization the two must agree tightly, which pins down that the GGUF path (tensor names,
//! biases, RoPE variant, tied head, norms) is the same model and not merely close.
//!
//! One test per binary on purpose: the switch is an environment variable that candle reads once per
//! thread.

mod common;

use rmr1::engine::block_manager::BlockManager;
use rmr1::model::attention::cpu::CpuPagedAttention;
use rmr1::model::attention::KvCacheDtype;
use rmr1::model::chat_template::ChatMessage;
use rmr1::model::{self, CacheShape, ForwardBatch, LoadOptions, SequenceSpan};

#[test]
fn dequantized_gguf_logits_match_candle_to_1e_3() {
    let Some(dir) = common::real_model_dir() else {
        return;
    };
    std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
    let gguf = dir.join("model.gguf");
    let loaded = model::load(gguf.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let cfg = loaded.model.config().clone();
    let mut reference = common::GgufOracle::new(&gguf);

    let text = loaded
        .tokenizer
        .apply_chat_template(
            &[ChatMessage::new("user", "Explain recursion to a child.")],
            true,
        )
        .unwrap();
    let mut seq = loaded.tokenizer.encode(&text).unwrap();
    let shape = CacheShape {
        num_layers: cfg.num_hidden_layers,
        num_blocks: 16,
        block_size: 16,
        num_kv_heads: cfg.num_key_value_heads,
        head_dim: cfg.head_dim(),
    };
    let mut attention = CpuPagedAttention::new(shape, cfg.num_attention_heads, KvCacheDtype::F32);
    let mut blocks = BlockManager::new(16, 16);
    let empty = blocks.match_prefix(&[]);
    blocks.admit(0, &empty, 256).unwrap();

    // Prefill, then 8 greedy decode steps, comparing the sampling logits at each.
    let (mut start, mut worst) = (0usize, 0f32);
    for step in 0..9 {
        let input = &seq[start..];
        let theirs = reference.step(input, start);
        let mut batch = ForwardBatch::default();
        for (p, &token) in seq.iter().enumerate().skip(start) {
            batch.tokens.push(token);
            batch.positions.push(p as u32);
            batch.attention.slot_mapping.push(blocks.slot(0, p));
        }
        batch.attention.sequences.push(SequenceSpan {
            query_start: 0,
            query_len: input.len(),
            context_len: seq.len(),
            block_table: blocks.block_table(0).to_vec(),
        });
        batch.logit_rows.push((input.len() - 1) as u32);
        let ours: Vec<f32> = loaded
            .model
            .forward(&batch, &mut attention)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        let diff = common::max_abs_diff(&ours, &theirs);
        worst = worst.max(diff);
        assert!(diff <= 1e-3, "step {step}: max |Δlogit| {diff:e}");
        start = seq.len();
        seq.push(rmr1::engine::sampler::argmax(&theirs));
    }
    eprintln!("dequantized GGUF: worst max |Δlogit| over 9 steps = {worst:e}");
}
