//! The model half of the GPU check (`rmr1 gpu-check model`), run on the CPU: the same code path the
//! GPU machine runs before scripts/gpu_check.py compares it with transformers. Here the reference is
//! candle-transformers' Qwen2: the one-step logits of mixed-length prompts must match it, the engine's
//! greedy tokens must follow its argmax, and the second wave must be served from the prefix cache.

mod common;

use candle_core::{Device, Tensor};
use common::{max_abs_diff, tokens, write_tiny_model, Oracle, TinySpec};

#[test]
fn model_check_outputs_match_the_candle_oracle() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec {
        head_scale: 2.0,
        suppress_eos: true,
        ..TinySpec::default()
    };
    let model_dir = write_tiny_model(&dir.path().join("model"), &spec);
    let prompts: Vec<Vec<u32>> = [1usize, 7, 33, 70]
        .iter()
        .enumerate()
        .map(|(i, &n)| tokens(10 + i as u64, n, spec.vocab))
        .collect();
    let mut shared = prompts[3][..48].to_vec();
    shared.extend(tokens(99, 5, spec.vocab));
    let second = vec![shared, prompts[2].clone()];
    let input = serde_json::json!({
        "prompts": prompts, "logit_positions": 2, "new_tokens": 5, "second_wave": second,
    });
    let input_path = dir.path().join("input.json");
    std::fs::write(&input_path, input.to_string()).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    rmr1::gpu_check::model::run(&model_dir, &input_path, &out, &Device::Cpu).unwrap();

    let ours: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("ours.json")).unwrap()).unwrap();
    let logits = Tensor::read_npy(out.join("ours_logits.npy")).unwrap();
    let rows: Vec<(usize, usize)> = serde_json::from_value(ours["logit_rows"].clone()).unwrap();
    // The last two positions of each prompt (one for the 1-token prompt), in prompt order.
    assert_eq!(
        rows,
        vec![(0, 0), (1, 5), (1, 6), (2, 31), (2, 32), (3, 68), (3, 69)]
    );
    assert_eq!(logits.dims(), [rows.len(), spec.vocab]);
    let ours_rows = logits.to_vec2::<f32>().unwrap();
    let mut oracle = Oracle::new(&model_dir);
    for (r, &(i, pos)) in rows.iter().enumerate() {
        let want = &oracle.logits(&prompts[i])[pos];
        let err = max_abs_diff(&ours_rows[r], want);
        assert!(
            err < 1e-4,
            "prompt {i} position {pos}: logits differ by {err}"
        );
    }

    let generations = ours["generations"].as_array().unwrap();
    assert_eq!(generations.len(), 6);
    let tokens_of = |wave: u64, index: u64| -> Vec<u32> {
        let g = generations
            .iter()
            .find(|g| g["wave"] == wave && g["index"] == index)
            .unwrap();
        serde_json::from_value(g["tokens"].clone()).unwrap()
    };
    for (i, prompt) in prompts.iter().enumerate() {
        // Greedy through the engine = repeated argmax of the oracle.
        let mut sequence = prompt.clone();
        for _ in 0..5 {
            let last = oracle.logits(&sequence).pop().unwrap();
            sequence.push(rmr1::engine::sampler::argmax(&last));
        }
        assert_eq!(
            tokens_of(1, i as u64),
            sequence[prompt.len()..],
            "prompt {i}"
        );
    }
    // The identical second-wave prompt gives the same tokens, from cached blocks.
    assert_eq!(tokens_of(2, 1), tokens_of(1, 2));
    let cached: Vec<u64> = generations
        .iter()
        .filter(|g| g["wave"] == 2)
        .map(|g| g["cached_tokens"].as_u64().unwrap())
        .collect();
    assert_eq!(
        cached,
        vec![48, 32],
        "block-aligned prefixes served from the cache"
    );
    assert!(ours["prefix_hit_tokens"].as_u64().unwrap() >= 80);
}
