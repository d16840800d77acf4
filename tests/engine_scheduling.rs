//! The engine under memory pressure: preemption and recompute must not change a single distribution,
//! and a soak of random requests through a tiny pool must reproduce every request's solo output.

mod common;

use common::{max_abs_diff, tokens, write_tiny_model, Oracle, TinySpec};
use rmr1::engine::{
    EngineConfig, EngineCore, EngineEvent, GenerateRequest, LogprobProbe, ProbeTrigger,
    SamplingParams,
};
use std::sync::Arc;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

fn core(dir: &std::path::Path, config: EngineConfig) -> EngineCore {
    let loaded = common::load_tiny(dir);
    EngineCore::new(
        loaded.model,
        Arc::new(loaded.tokenizer.inner().clone()),
        loaded.tokenizer.eos_ids().to_vec(),
        &config,
    )
    .unwrap()
}

/// Drains a finished stream: (generated tokens, per-step probe log-probs, preemptions).
fn collect(rx: &mut UnboundedReceiver<EngineEvent>) -> Option<(Vec<u32>, Vec<Vec<f32>>, u32)> {
    let mut probes = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        match ev {
            EngineEvent::Token(t) => {
                if let Some(p) = t.probes.first() {
                    probes.push(p.logprobs.iter().map(|x| x.1).collect());
                }
            }
            EngineEvent::Finished(f) => return Some((f.token_ids, probes, f.timings.preemptions)),
            EngineEvent::Error(e) => panic!("request failed: {e}"),
        }
    }
    None
}

#[test]
fn preempted_sequences_resume_with_identical_distributions() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &TinySpec::default());
    let mut oracle = Oracle::new(dir.path());
    // 12 blocks of 4 tokens: four requests needing up to 7 blocks each cannot all stay resident.
    let mut engine = core(
        dir.path(),
        EngineConfig {
            block_size: 4,
            num_blocks: Some(12),
            max_num_batched_tokens: 16,
            ..EngineConfig::default()
        },
    );
    let all_ids: Vec<u32> = (0..96).collect();
    let mut streams = Vec::new();
    let mut prompts = Vec::new();
    for i in 0..4 {
        let prompt = tokens(100 + i, 10, 96);
        let (tx, rx) = unbounded_channel();
        engine.add_request(
            GenerateRequest {
                prompt_tokens: prompt.clone(),
                sampling: SamplingParams {
                    max_new_tokens: 15,
                    ignore_eos: true,
                    probes: vec![LogprobProbe {
                        at: ProbeTrigger::EveryStep,
                        token_ids: all_ids.clone(),
                    }],
                    ..SamplingParams::default()
                },
            },
            tx,
        );
        streams.push(rx);
        prompts.push(prompt);
    }
    let mut steps = 0;
    while engine.has_work() {
        engine.step().unwrap();
        steps += 1;
        assert!(steps < 1000, "engine made no progress");
    }
    let mut preempted = 0;
    for (prompt, rx) in prompts.iter().zip(streams.iter_mut()) {
        let (generated, probes, preemptions) = collect(rx).expect("request finished");
        assert_eq!(generated.len(), 15);
        preempted += preemptions;
        let mut full = prompt.clone();
        full.extend(&generated);
        let reference = oracle.log_probs(&full);
        for (step, ours) in probes.iter().enumerate() {
            let diff = max_abs_diff(ours, &reference[prompt.len() - 1 + step]);
            assert!(
                diff <= 1e-4,
                "step {step} (preemptions {preemptions}): |Δ log p| = {diff:e}"
            );
        }
    }
    assert!(preempted > 0, "the pool was meant to force preemption");
    assert_eq!(
        engine.scheduler().blocks().num_free(),
        12,
        "all blocks returned"
    );
}

/// Tiny deterministic generator for the soak's random choices.
struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn soak_of_random_requests_through_a_tiny_pool_matches_solo_runs() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(
        dir.path(),
        &TinySpec {
            head_scale: 1.0,
            ..TinySpec::default()
        },
    );
    let num_blocks = 40;
    let mut engine = core(
        dir.path(),
        EngineConfig {
            block_size: 4,
            num_blocks: Some(num_blocks),
            max_num_seqs: 8,
            max_num_batched_tokens: 32,
            ..EngineConfig::default()
        },
    );
    let mut rng = Lcg(2024);
    struct Req {
        prompt: Vec<u32>,
        max_new: usize,
        rx: Option<UnboundedReceiver<EngineEvent>>,
        cancel_at_step: Option<usize>,
        result: Option<Vec<u32>>,
    }
    let mut reqs: Vec<Req> = (0..200)
        .map(|i| {
            // Some prompts share a long prefix so the prefix cache is exercised under pressure too.
            let mut prompt = if i % 3 == 0 {
                tokens(7, 12, 96)
            } else {
                Vec::new()
            };
            prompt.extend(tokens(1000 + i, 1 + rng.below(50) as usize, 96));
            Req {
                prompt,
                max_new: 1 + rng.below(40) as usize,
                rx: None,
                cancel_at_step: (rng.below(5) == 0).then(|| rng.below(200) as usize),
                result: None,
            }
        })
        .collect();
    let mut submitted = 0;
    let mut step = 0;
    let mut preemptions = 0;
    while submitted < reqs.len() || engine.has_work() {
        // Requests arrive in random bursts while the engine runs.
        for _ in 0..rng.below(4) {
            if submitted < reqs.len() {
                let (tx, rx) = unbounded_channel();
                let r = &mut reqs[submitted];
                engine.add_request(
                    GenerateRequest {
                        prompt_tokens: r.prompt.clone(),
                        sampling: SamplingParams::greedy(r.max_new),
                    },
                    tx,
                );
                r.rx = Some(rx);
                submitted += 1;
            }
        }
        for r in reqs.iter_mut() {
            if r.cancel_at_step == Some(step) && r.result.is_none() {
                r.rx = None; // dropping the stream cancels the request
            }
            if let Some(rx) = r.rx.as_mut() {
                while let Ok(ev) = rx.try_recv() {
                    match ev {
                        EngineEvent::Finished(f) => {
                            preemptions += f.timings.preemptions;
                            r.result = Some(f.token_ids);
                        }
                        EngineEvent::Error(e) => panic!("request failed: {e}"),
                        EngineEvent::Token(_) => {}
                    }
                }
            }
        }
        engine.step().unwrap();
        step += 1;
        assert!(step < 100_000, "soak did not drain");
    }
    for r in reqs.iter_mut() {
        if let Some(rx) = r.rx.as_mut() {
            while let Ok(ev) = rx.try_recv() {
                if let EngineEvent::Finished(f) = ev {
                    preemptions += f.timings.preemptions;
                    r.result = Some(f.token_ids);
                }
            }
        }
    }
    assert_eq!(
        engine.scheduler().blocks().num_free(),
        num_blocks,
        "pool full again at the end"
    );
    assert!(
        preemptions > 0,
        "the tiny pool was meant to force preemptions"
    );

    // Every request that was not cancelled finished, with exactly its solo output.
    let mut solo = core(
        dir.path(),
        EngineConfig {
            num_blocks: Some(256),
            ..EngineConfig::default()
        },
    );
    let mut checked = 0;
    for (i, r) in reqs.iter().enumerate() {
        if r.rx.is_none() {
            continue;
        }
        let got = r
            .result
            .as_ref()
            .unwrap_or_else(|| panic!("request {i} never finished"));
        let (tx, mut rx) = unbounded_channel();
        solo.add_request(
            GenerateRequest {
                prompt_tokens: r.prompt.clone(),
                sampling: SamplingParams::greedy(r.max_new),
            },
            tx,
        );
        while solo.has_work() {
            solo.step().unwrap();
        }
        let (alone, _, _) = collect(&mut rx).unwrap();
        assert_eq!(got, &alone, "request {i} differs from its solo run");
        checked += 1;
    }
    assert!(
        checked >= 120,
        "only {checked} requests were left uncancelled"
    );
}

#[test]
fn group_samples_share_the_prompt_and_match_solo_runs() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &TinySpec::default());
    let config = EngineConfig {
        block_size: 16,
        num_blocks: Some(32),
        ..EngineConfig::default()
    };
    let sampled = |seed| SamplingParams {
        temperature: 1.0,
        seed: Some(seed),
        max_new_tokens: 12,
        ignore_eos: true,
        ..SamplingParams::default()
    };
    // 21 prompt tokens: the second block is partial, so the samples' first decode writes diverge
    // inside a shared block and must copy it.
    let prompt = tokens(77, 21, 96);

    let mut group = core(dir.path(), config.clone());
    let mut rxs = Vec::new();
    let mut txs = Vec::new();
    for _ in 0..4 {
        let (tx, rx) = unbounded_channel();
        txs.push(tx);
        rxs.push(rx);
    }
    group.add_group(
        GenerateRequest {
            prompt_tokens: prompt.clone(),
            sampling: sampled(10),
        },
        txs,
    );
    while group.has_work() {
        group.step().unwrap();
    }
    // The prompt went through the model once; afterwards one token per sample per step.
    let computed = group
        .stats()
        .step_tokens
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(computed, 21 + 4 * 11);
    assert_eq!(group.scheduler().blocks().num_free(), 32);

    let mut outputs = Vec::new();
    for rx in rxs.iter_mut() {
        outputs.push(collect(rx).expect("sample finished").0);
    }
    assert!(
        outputs.iter().any(|o| o != &outputs[0]),
        "different seeds should diverge"
    );
    for (i, got) in outputs.iter().enumerate() {
        let mut solo = core(dir.path(), config.clone());
        let (tx, mut rx) = unbounded_channel();
        solo.add_request(
            GenerateRequest {
                prompt_tokens: prompt.clone(),
                sampling: sampled(10 + i as u64),
            },
            tx,
        );
        while solo.has_work() {
            solo.step().unwrap();
        }
        assert_eq!(got, &collect(&mut rx).unwrap().0, "sample {i}");
    }
}

#[test]
fn concurrent_requests_sharing_a_prefix_compute_it_once() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &TinySpec::default());
    let config = EngineConfig {
        block_size: 16,
        num_blocks: Some(64),
        max_num_batched_tokens: 512,
        ..EngineConfig::default()
    };
    // Eight judgments arriving together: a 96-token shared "system prompt" (six blocks) and ten
    // tokens of their own. All fit one step's budget, so without care each would compute the
    // shared blocks itself.
    let shared = tokens(5, 96, 96);
    let prompts: Vec<Vec<u32>> = (0..8u64)
        .map(|i| [shared.clone(), tokens(100 + i, 10, 96)].concat())
        .collect();
    let greedy = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(4)
    };
    let mut engine = core(dir.path(), config.clone());
    let mut rxs = Vec::new();
    for prompt in &prompts {
        let (tx, rx) = unbounded_channel();
        engine.add_request(
            GenerateRequest {
                prompt_tokens: prompt.clone(),
                sampling: greedy.clone(),
            },
            tx,
        );
        rxs.push(rx);
    }
    while engine.has_work() {
        engine.step().unwrap();
    }
    let stats = engine.stats();
    let computed = stats.step_tokens.load(std::sync::atomic::Ordering::Relaxed);
    // The shared blocks once, each request's own tokens, then three decode steps each.
    assert_eq!(computed, 96 + 8 * 10 + 8 * 3);
    assert_eq!(
        stats
            .prefix_hit_tokens
            .load(std::sync::atomic::Ordering::Relaxed),
        7 * 96
    );
    for (prompt, rx) in prompts.iter().zip(rxs.iter_mut()) {
        let (got, _, _) = collect(rx).expect("request finished");
        let mut solo = core(dir.path(), config.clone());
        let (tx, mut solo_rx) = unbounded_channel();
        solo.add_request(
            GenerateRequest {
                prompt_tokens: prompt.clone(),
                sampling: greedy.clone(),
            },
            tx,
        );
        while solo.has_work() {
            solo.step().unwrap();
        }
        assert_eq!(got, collect(&mut solo_rx).unwrap().0);
    }
}
