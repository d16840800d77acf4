//! The engine through its async handle: streaming text, cancellation by dropping the stream, seeds
//! independent of batch composition, stop strings, log-prob probes, and request validation.

mod common;

use common::{tokens, write_tiny_model, TinySpec};
use rmr1::engine::{
    EngineConfig, EngineEvent, EngineHandle, FinishReason, Finished, GenerateRequest, LogprobProbe,
    ProbeTrigger, SamplingParams, SubmitError,
};
use std::sync::Arc;
use std::time::Duration;

fn start(dir: &std::path::Path, config: EngineConfig) -> EngineHandle {
    let loaded = common::load_tiny(dir);
    EngineHandle::start(
        loaded.model,
        Arc::new(loaded.tokenizer.inner().clone()),
        loaded.tokenizer.eos_ids().to_vec(),
        config,
    )
    .unwrap()
}

fn tiny() -> (tempfile::TempDir, EngineHandle) {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path(), &TinySpec::default());
    let engine = start(
        dir.path(),
        EngineConfig {
            num_blocks: Some(128),
            ..EngineConfig::default()
        },
    );
    (dir, engine)
}

/// Runs a request to the end: (concatenated text deltas, token events, final event).
async fn run(
    engine: &EngineHandle,
    req: GenerateRequest,
) -> (String, Vec<rmr1::engine::TokenEvent>, Finished) {
    let mut stream = engine.submit(req).unwrap();
    let mut text = String::new();
    let mut events = Vec::new();
    loop {
        match stream.next().await.expect("stream ended without Finished") {
            EngineEvent::Token(t) => {
                text.push_str(&t.text);
                events.push(t);
            }
            EngineEvent::Finished(f) => {
                text.push_str(&f.final_delta);
                return (text, events, f);
            }
            EngineEvent::Error(e) => panic!("{e}"),
        }
    }
}

fn req(prompt: Vec<u32>, sampling: SamplingParams) -> GenerateRequest {
    GenerateRequest {
        prompt_tokens: prompt,
        sampling,
    }
}

#[tokio::test]
async fn streamed_deltas_add_up_to_the_final_text() {
    let (_dir, engine) = tiny();
    let (text, events, fin) = run(
        &engine,
        req(
            tokens(1, 9, 96),
            SamplingParams {
                max_new_tokens: 12,
                ignore_eos: true,
                ..Default::default()
            },
        ),
    )
    .await;
    assert_eq!(fin.reason, FinishReason::Length);
    assert_eq!(fin.token_ids.len(), 12);
    assert_eq!(events.len(), 12);
    assert_eq!(text, fin.text);
    assert_eq!(
        text.split(' ').count(),
        12,
        "word-level tokenizer: one word per token: {text:?}"
    );
    assert_eq!(
        (fin.usage.prompt_tokens, fin.usage.completion_tokens),
        (9, 12)
    );
    assert!(fin.timings.time_to_first_token <= fin.timings.total);
}

#[tokio::test]
async fn dropping_the_stream_cancels_and_frees_blocks() {
    let (_dir, engine) = tiny();
    let mut stream = engine
        .submit(req(
            tokens(2, 40, 96),
            SamplingParams {
                max_new_tokens: 900,
                ignore_eos: true,
                ..Default::default()
            },
        ))
        .unwrap();
    for _ in 0..3 {
        assert!(matches!(stream.next().await, Some(EngineEvent::Token(_))));
    }
    assert!(engine.stats().kv_usage() > 0.0);
    drop(stream);
    let mut waited = 0;
    while engine.stats().kv_usage() > 0.0
        || engine
            .stats()
            .running
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
        waited += 1;
        assert!(waited < 2000, "cancelled request kept its blocks");
    }
    assert_eq!(
        engine
            .stats()
            .cancelled
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn same_seed_same_tokens_regardless_of_batch_neighbours() {
    let (_dir, engine) = tiny();
    let sampled = |seed| SamplingParams {
        temperature: 1.0,
        top_p: 0.95,
        seed: Some(seed),
        max_new_tokens: 24,
        ignore_eos: true,
        ..Default::default()
    };
    let prompt = tokens(3, 11, 96);
    let (_, _, alone) = run(&engine, req(prompt.clone(), sampled(7))).await;
    // Same request again, this time sharing every step with other sampled requests.
    let mut others = Vec::new();
    for i in 0..5 {
        others.push(
            engine
                .submit(req(
                    tokens(50 + i, 5 + i as usize * 3, 96),
                    SamplingParams {
                        temperature: 1.0,
                        max_new_tokens: 30,
                        ..Default::default()
                    },
                ))
                .unwrap(),
        );
    }
    let (_, _, crowded) = run(&engine, req(prompt.clone(), sampled(7))).await;
    assert_eq!(alone.token_ids, crowded.token_ids);
    let (_, _, other_seed) = run(&engine, req(prompt, sampled(8))).await;
    assert_ne!(alone.token_ids, other_seed.token_ids);
    drop(others);
}

#[tokio::test]
async fn stop_strings_end_generation_before_the_match() {
    let (_dir, engine) = tiny();
    let prompt = tokens(4, 7, 96);
    let greedy = SamplingParams {
        max_new_tokens: 10,
        ignore_eos: true,
        ..Default::default()
    };
    let (full, _, _) = run(&engine, req(prompt.clone(), greedy.clone())).await;
    let words: Vec<&str> = full.split(' ').collect();
    let stop = format!(" {} ", words[2]);
    let expected_cut = full.find(&stop).unwrap();
    let (text, _, fin) = run(
        &engine,
        req(
            prompt,
            SamplingParams {
                stop_strings: vec![stop.clone()],
                ..greedy
            },
        ),
    )
    .await;
    assert_eq!(fin.reason, FinishReason::Stop);
    assert_eq!(text, full[..expected_cut], "stop string {stop:?}");
    assert_eq!(fin.text, text);
}

#[tokio::test]
async fn probes_report_named_token_logprobs_at_marked_steps() {
    let (_dir, engine) = tiny();
    let prompt = tokens(5, 8, 96);
    let base = SamplingParams {
        max_new_tokens: 6,
        ignore_eos: true,
        logprobs: true,
        ..Default::default()
    };
    let (full, events, _) = run(&engine, req(prompt.clone(), base.clone())).await;
    let words: Vec<&str> = full.split(' ').collect();
    let probes = vec![
        LogprobProbe {
            at: ProbeTrigger::AfterText(format!("{} {}", words[0], words[1])),
            token_ids: vec![events[2].token_id, 3, 4],
        },
        LogprobProbe {
            at: ProbeTrigger::Step(4),
            token_ids: vec![events[4].token_id],
        },
    ];
    let (_, probed, _) = run(&engine, req(prompt, SamplingParams { probes, ..base })).await;
    let fired: Vec<usize> = probed
        .iter()
        .enumerate()
        .filter(|(_, e)| !e.probes.is_empty())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(fired, vec![2, 4]);
    // The probe of the token that was then sampled equals that token's reported log-prob.
    let p2 = &probed[2].probes[0];
    assert_eq!(p2.step, 2);
    assert_eq!(
        p2.logprobs[0],
        (events[2].token_id, probed[2].logprob.unwrap())
    );
    assert!(p2.logprobs.iter().all(|(_, lp)| *lp <= 0.0));
    let greedy_lp = probed[4].logprob.unwrap();
    assert_eq!(probed[4].probes[0].logprobs[0].1, greedy_lp);
    // Greedy picks the most likely token: its log-prob beats the other named ones.
    assert!(p2.logprobs[1].1 <= p2.logprobs[0].1 && p2.logprobs[2].1 <= p2.logprobs[0].1);
}

#[tokio::test]
async fn bad_requests_are_refused_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(
        dir.path(),
        &TinySpec {
            max_positions: 64,
            ..TinySpec::default()
        },
    );
    let engine = start(
        dir.path(),
        EngineConfig {
            max_pending_requests: 2,
            num_blocks: Some(64),
            ..EngineConfig::default()
        },
    );
    let ok = SamplingParams::greedy(4);
    assert_eq!(
        engine.submit(req(vec![], ok.clone())).err(),
        Some(SubmitError::EmptyPrompt)
    );
    assert_eq!(
        engine.submit(req(tokens(1, 64, 96), ok.clone())).err(),
        Some(SubmitError::PromptTooLong {
            prompt: 64,
            max: 64
        })
    );
    assert_eq!(
        engine.submit(req(vec![5, 96], ok.clone())).err(),
        Some(SubmitError::UnknownToken(96, 96))
    );
    assert!(matches!(
        engine
            .submit(req(
                vec![5],
                SamplingParams {
                    top_p: 0.0,
                    ..ok.clone()
                }
            ))
            .err(),
        Some(SubmitError::InvalidParams(_))
    ));
    let a = engine
        .submit(req(
            vec![5, 6],
            SamplingParams {
                max_new_tokens: 50,
                ..ok.clone()
            },
        ))
        .unwrap();
    let b = engine
        .submit(req(
            vec![5, 7],
            SamplingParams {
                max_new_tokens: 50,
                ..ok.clone()
            },
        ))
        .unwrap();
    assert!(matches!(
        engine.submit(req(vec![5], ok.clone())).err(),
        Some(SubmitError::QueueFull(2))
    ));
    drop(a);
    drop(b);
    // Capacity comes back as soon as streams are gone.
    let (_, _, fin) = run(&engine, req(vec![5], ok)).await;
    assert!(!fin.token_ids.is_empty() && fin.token_ids.len() <= 4);
}
