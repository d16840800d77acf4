//! Judgments over gRPC on loopback, with a tiny random model the test writes. Outputs are
//! random words, so verdicts are INVALID: these tests check the service's plumbing against
//! independent references (candle-transformers' Qwen2 for generated tokens and verdict
//! probabilities), not judging quality.

mod common;

use common::judge_server::{engine, options, pair_request, start, user, TestServer};
use common::Oracle;
use rmr1::api::proto::judge_service_client::JudgeServiceClient;
use rmr1::api::proto::{
    self, judge_batch_result, judge_stream_event, JudgeRequest, RankRequest, Verdict,
};
use rmr1::api::GrpcServer;
use rmr1::judge::{judge_messages, PairInput, Turn};
use std::collections::HashMap;
use tonic::Code;

/// Prompt ids for `input` as the server renders it (template and tokenizer of the test model).
fn prompt_ids(server: &TestServer, input: &PairInput) -> Vec<u32> {
    let tokenizer = &server.model.tokenizer;
    let messages = judge_messages(server.model.family(), input);
    tokenizer
        .encode(&tokenizer.apply_chat_template(&messages, true).unwrap())
        .unwrap()
}

fn word_ids(server: &TestServer, text: &str) -> Vec<u32> {
    server.model.tokenizer.encode(text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_judgment_matches_the_candle_reference() {
    let server = start(engine()).await;
    let mut client = server.client().await;
    let request = pair_request("r1", "What is two plus two?", "Four.", "Five.", 12);
    let response = client.judge(request).await.unwrap().into_inner();

    assert_eq!(response.request_id, "r1");
    assert_eq!(response.model, "tiny");
    assert_eq!(
        response.verdict(),
        Verdict::Invalid,
        "random words carry no verdict"
    );
    assert!(
        response.invalid_reason.contains("neither"),
        "{}",
        response.invalid_reason
    );
    let order = &response.orders[0];
    assert!(!order.swapped);
    assert!(order.prob_forced, "random words never reach <answer>[[");
    assert_eq!(order.strict_verdict(), Verdict::Invalid);

    // The prompt the server ran is the RM-R1 instruct prompt in this model's chat template.
    let input = PairInput::Responses {
        conversation: vec![Turn::user("What is two plus two?")],
        response_a: "Four.".into(),
        response_b: "Five.".into(),
    };
    let prompt = prompt_ids(&server, &input);
    let usage = response.usage.unwrap();
    assert_eq!(usage.prompt_tokens as usize, prompt.len());
    assert!(
        prompt.len() > 500,
        "system prompt included: {} tokens",
        prompt.len()
    );

    // Every generated token is the reference model's greedy choice.
    let generated = word_ids(&server, &response.raw_output);
    assert_eq!(
        generated.len(),
        usage.completion_tokens as usize - (order.finish_reason == "stop") as usize
    );
    let mut oracle = Oracle::new(&server.model_dir);
    let mut tokens = prompt.clone();
    for &t in &generated {
        let rows = oracle.log_probs(&tokens);
        let last = rows.last().unwrap();
        let best = last.iter().cloned().fold(f32::MIN, f32::max);
        assert!(
            last[t as usize] >= best - 1e-4,
            "token {t} is not the greedy choice"
        );
        tokens.push(t);
    }

    // The model never wrote "<answer>[[", so P(A) was read after appending it to the output.
    let [a, b] = server
        .model
        .verdict_tokens
        .expect("the test vocabulary has A and B");
    let mut forced = tokens.clone();
    forced.extend(word_ids(&server, "\n<answer>[["));
    let rows = oracle.log_probs(&forced);
    let last = rows.last().unwrap();
    let expected = 1.0 / (1.0 + ((last[b as usize] - last[a as usize]) as f64).exp());
    let p_a = response.prob_a.expect("a forced verdict probability");
    assert!(
        (p_a - expected).abs() < 1e-4,
        "P(A) {p_a} vs reference {expected}"
    );
    assert!((p_a + response.prob_b.unwrap() - 1.0).abs() < 1e-12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_orders_run_swapped_and_combine_probabilities() {
    let server = start(engine()).await;
    let mut client = server.client().await;
    let mut request = pair_request("r2", "Name a colour.", "Blue.", "Seven.", 6);
    request.options.as_mut().unwrap().both_orders = true;
    let response = client.judge(request.clone()).await.unwrap().into_inner();
    assert_eq!(response.orders.len(), 2);
    assert!(!response.orders[0].swapped && response.orders[1].swapped);
    // The swapped order saw B's reply first: its prompt is the swapped rendering.
    let swapped_input = PairInput::Responses {
        conversation: vec![Turn::user("Name a colour.")],
        response_a: "Seven.".into(),
        response_b: "Blue.".into(),
    };
    let usage = response.orders[1].usage.unwrap();
    assert_eq!(
        usage.prompt_tokens as usize,
        prompt_ids(&server, &swapped_input).len()
    );
    // Combined P(A) is the mean of the per-order P(original A wins).
    let mean = (response.orders[0].prob_a.unwrap() + response.orders[1].prob_a.unwrap()) / 2.0;
    assert!((response.prob_a.unwrap() - mean).abs() < 1e-12);
    // The swapped order's P(A) is 1 - P(shown A) of a plain judgment of the swapped pair.
    let mut swapped = pair_request("r3", "Name a colour.", "Seven.", "Blue.", 6);
    swapped.options = request.options;
    swapped.options.as_mut().unwrap().both_orders = false;
    let plain = client.judge(swapped).await.unwrap().into_inner();
    let p = response.orders[1].prob_a.unwrap();
    assert!((p - (1.0 - plain.prob_a.unwrap())).abs() < 1e-6);
    // The orders run together; the swapped one reuses the system prompt blocks the plain one has
    // computed by the time it is admitted (prefill is chunked at 512 tokens).
    let cached = response.orders[1].usage.unwrap().cached_tokens;
    eprintln!("swapped order: {cached} cached prompt tokens");
    assert!(cached >= 256, "{cached}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_deltas_add_up_to_the_raw_output() {
    let server = start(engine()).await;
    let mut client = server.client().await;
    let request = pair_request("s1", "Say hi.", "Hi!", "Hello.", 10);
    let mut stream = client
        .judge_stream(request.clone())
        .await
        .unwrap()
        .into_inner();
    let mut text = String::new();
    let mut result = None;
    while let Some(event) = stream.message().await.unwrap() {
        match event.event.unwrap() {
            judge_stream_event::Event::Delta(d) => {
                assert!(result.is_none(), "deltas come before the result");
                assert_eq!(d.order, 0);
                text.push_str(&d.text);
            }
            judge_stream_event::Event::Result(r) => result = Some(r),
        }
    }
    let result = result.unwrap();
    assert_eq!(text, result.raw_output);
    let unary = client.judge(request).await.unwrap().into_inner();
    assert_eq!(
        unary.raw_output, result.raw_output,
        "greedy: same output either way"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_stream_of_64_returns_every_result_by_id() {
    let server = start(engine()).await;
    let mut client = server.client().await;
    let questions = [
        "Add 1 and 2.",
        "Name a fruit.",
        "Spell cat.",
        "Is ice cold?",
    ];
    let mut requests: Vec<JudgeRequest> = (0..64)
        .map(|i| {
            let q = questions[i % questions.len()];
            pair_request(&format!("b{i}"), q, &format!("Answer {i}."), "No idea.", 4)
        })
        .collect();
    // Bad items get an error result under their own id and do not disturb the others.
    requests[10].input = None;
    requests[20].options.as_mut().unwrap().top_p = Some(1.5);
    let outbound = tokio_stream::iter(requests.clone());
    let mut inbound = client.judge_batch(outbound).await.unwrap().into_inner();
    let mut results = HashMap::new();
    while let Some(item) = inbound.message().await.unwrap() {
        assert!(
            results.insert(item.request_id.clone(), item).is_none(),
            "one result per id"
        );
    }
    assert_eq!(results.len(), 64);
    for (i, request) in requests.iter().enumerate() {
        let item = &results[&request.request_id];
        match (i, item.outcome.as_ref().unwrap()) {
            (10, judge_batch_result::Outcome::Error(e)) => {
                assert_eq!(e.code, Code::InvalidArgument as i32);
                assert!(e.message.contains("input"), "{}", e.message);
            }
            (20, judge_batch_result::Outcome::Error(e)) => {
                assert_eq!(e.code, Code::InvalidArgument as i32);
                assert!(e.message.contains("top_p"), "{}", e.message);
            }
            (10 | 20, other) => panic!("item {i}: expected an error, got {other:?}"),
            (_, judge_batch_result::Outcome::Response(r)) => {
                assert_eq!(r.request_id, request.request_id);
                assert_eq!(r.usage.unwrap().completion_tokens, 4);
            }
            (_, judge_batch_result::Outcome::Error(e)) => panic!("item {i}: {e:?}"),
        }
    }
    // Batched results equal solo runs of the same requests (greedy; neighbours do not leak in).
    for i in [0, 33, 63] {
        let solo = client
            .judge(requests[i].clone())
            .await
            .unwrap()
            .into_inner();
        let judge_batch_result::Outcome::Response(batched) =
            results[&requests[i].request_id].outcome.clone().unwrap()
        else {
            unreachable!()
        };
        assert_eq!(solo.raw_output, batched.raw_output, "request {i}");
        assert!((solo.prob_a.unwrap() - batched.prob_a.unwrap()).abs() < 1e-4);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_missing_batch_ids_are_refused() {
    // The first judgment cannot end early, so it is surely in flight when its twin arrives.
    let spec = common::TinySpec {
        suppress_eos: true,
        ..common::judge_server::tiny_judge_spec()
    };
    let server = common::judge_server::start_with(&spec, engine()).await;
    let mut client = server.client().await;
    let requests = vec![
        pair_request("same", "Q one.", "A.", "B.", 300),
        pair_request("same", "Q two.", "A.", "B.", 8),
        pair_request("", "Q three.", "A.", "B.", 2),
    ];
    let mut inbound = client
        .judge_batch(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut errors = Vec::new();
    let mut responses = 0;
    while let Some(item) = inbound.message().await.unwrap() {
        match item.outcome.unwrap() {
            judge_batch_result::Outcome::Error(e) => errors.push(e.message),
            judge_batch_result::Outcome::Response(_) => responses += 1,
        }
    }
    assert_eq!(responses, 1);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("already in flight")));
    assert!(errors.iter().any(|e| e.contains("request_id is required")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rank_four_candidates_all_pairs_and_knockout() {
    let server = start(engine()).await;
    let mut client = server.client().await;
    let candidates: Vec<String> = ["Paris.", "London.", "It is Paris, France.", "Rome."]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let request = RankRequest {
        request_id: "rank1".into(),
        model: String::new(),
        conversation: vec![user("What is the capital of France?")],
        candidates: candidates.clone(),
        options: Some(options(3)),
        strategy: proto::RankStrategy::AllPairs as i32,
    };
    let ranked = client.rank(request.clone()).await.unwrap().into_inner();
    assert_eq!(ranked.method, "bradley_terry");
    assert_eq!(ranked.comparisons.len(), 12, "every ordered pair");
    let mut order = ranked.order.clone();
    order.sort();
    assert_eq!(order, vec![0, 1, 2, 3]);
    // Scores follow from the comparisons: recompute Bradley-Terry from the returned probabilities.
    let outcomes: Vec<rmr1::judge::PairOutcome> = ranked
        .comparisons
        .iter()
        .map(|c| rmr1::judge::PairOutcome {
            first: c.first as usize,
            second: c.second as usize,
            p_first: c.prob_first,
            winner: None,
        })
        .collect();
    let expected = rmr1::judge::bradley_terry(4, &outcomes);
    for s in &ranked.scores {
        assert!((s.score - expected[s.index as usize]).abs() < 1e-9);
        assert_eq!(s.comparisons, 6);
    }
    // Each comparison's probability is that of a plain judgment of the same shown pair.
    let c = &ranked.comparisons[5];
    let mut single = pair_request(
        "pair",
        "What is the capital of France?",
        &candidates[c.first as usize],
        &candidates[c.second as usize],
        3,
    );
    single.options.as_mut().unwrap().include_reasoning = false;
    let solo = client.judge(single).await.unwrap().into_inner();
    assert!((solo.prob_a.unwrap() - c.prob_first.unwrap()).abs() < 1e-4);

    let knockout = client
        .rank(RankRequest {
            strategy: proto::RankStrategy::Knockout as i32,
            ..request
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(knockout.method, "knockout");
    assert_eq!(knockout.comparisons.len(), 6, "3 matches, both orders each");
    let mut order = knockout.order.clone();
    order.sort();
    assert_eq!(order, vec![0, 1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reasoning_family_sends_no_system_prompt() {
    use rmr1::judge::PromptFamily;
    let dir = tempfile::tempdir().unwrap();
    let model_dir = common::write_tiny_model(dir.path(), &common::judge_server::tiny_judge_spec());
    let server = GrpcServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let model =
        common::judge_server::load_tiny_judge_as(&model_dir, PromptFamily::Reasoning, engine());
    let model = server.add_model(model).await.unwrap();
    let mut client = JudgeServiceClient::connect(format!("http://{}", server.local_addr()))
        .await
        .unwrap();
    let response = client
        .judge(pair_request(
            "r",
            "What is two plus two?",
            "Four.",
            "Five.",
            3,
        ))
        .await
        .unwrap()
        .into_inner();
    let input = PairInput::Responses {
        conversation: vec![Turn::user("What is two plus two?")],
        response_a: "Four.".into(),
        response_b: "Five.".into(),
    };
    let messages = judge_messages(PromptFamily::Reasoning, &input);
    assert_eq!(messages.len(), 1, "user message only");
    let tokenizer = &model.tokenizer;
    let expected = tokenizer
        .encode(&tokenizer.apply_chat_template(&messages, true).unwrap())
        .unwrap();
    assert_eq!(
        response.usage.unwrap().prompt_tokens as usize,
        expected.len()
    );
    assert!(
        expected.len() < 200,
        "no 650-token system prompt: {}",
        expected.len()
    );
    server.shutdown().await.unwrap();
}
