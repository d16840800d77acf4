//! The demo model (Qwen2.5-Coder-1.5B-Instruct Q4_K_M, `scripts/fetch-test-model.sh --demo`) on the
//! demo's example pair: unlike the 0.5B test model it writes a whole RM-R1 judgment, which parses
//! into a task type, an evaluation and a valid verdict. Skipped unless the model is present (CI does
//! not fetch 1.1 GB); greedy, so the output is the one the README's transcript shows.

mod common;

use rmr1::judge::pipeline::JudgeParams;
use rmr1::judge::{PairInput, Turn};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_model_writes_a_judgment_that_parses() {
    let Some(dir) = common::demo_model_dir() else {
        return;
    };
    let example: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("deploy/clients/example-judgment.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let text = |k: &str| example[k].as_str().unwrap().to_string();
    let model = common::judge_server::load_gguf_judge(&dir.join("model.gguf"));
    let input = PairInput::Responses {
        conversation: vec![Turn::user(text("question"))],
        response_a: text("response_a"),
        response_b: text("response_b"),
    };
    let params = JudgeParams {
        max_new_tokens: 768,
        temperature: 0.0,
        top_p: 1.0,
        seed: None,
        both_orders: false,
        client: Default::default(),
    };
    let report = model.judge(&input, &params, None).await.unwrap();
    let order = &report.orders[0];
    eprintln!("{}", order.raw_output);
    assert!(
        report.combined.verdict.is_ok(),
        "{:?}",
        report.combined.verdict
    );
    assert!(
        order.strict_verdict_shown.is_some(),
        "the RL rule finds it too"
    );
    assert!(order.parsed.task_type.is_some(), "task type stated");
    let evaluation = order.parsed.evaluation.as_deref().unwrap_or("");
    assert!(!evaluation.trim().is_empty(), "an evaluation");
    assert!(
        !order.parsed.quotes_a.is_empty() && !order.parsed.quotes_b.is_empty(),
        "it quotes both chatbots"
    );
    assert!(order.parsed.truncated_sections.is_empty());
    let p = order.prob_a_shown.unwrap();
    assert!((0.0..=1.0).contains(&p) && !order.prob_forced);
}
