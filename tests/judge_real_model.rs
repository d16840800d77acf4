//! The judge on the real small GGUF model (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M): the RM-R1
//! prompt rendered byte-exact by the GGUF's own ChatML template, and a judgment over gRPC that is
//! well formed. A 0.5B coder model is no RM-R1 judge: the test asserts structure, not quality.

mod common;

use common::judge_server::pair_request;
use rmr1::api::proto::judge_service_client::JudgeServiceClient;
use rmr1::api::proto::Verdict;
use rmr1::api::GrpcServer;
use rmr1::judge::templates::{INSTRUCT_SYSTEM, INSTRUCT_USER_SINGLE_TURN};
use rmr1::judge::{fill_template, judge_messages, PairInput, PromptFamily, Turn};

const QUESTION: &str = "What is the capital of Australia? Answer in one sentence.";
const ANSWER_A: &str = "The capital of Australia is Sydney, its largest city.";
const ANSWER_B: &str = "The capital of Australia is Canberra.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_model_renders_chatml_exactly_and_judges_over_grpc() {
    let Some(dir) = common::real_model_dir() else {
        return;
    };
    let gguf = dir.join("model.gguf");
    let model = common::judge_server::load_gguf_judge(&gguf);

    // The instruct family in Qwen ChatML, spelled out independently of our prompt builder.
    let user = fill_template(
        INSTRUCT_USER_SINGLE_TURN,
        &[
            ("question", QUESTION),
            ("answer_a", ANSWER_A),
            ("answer_b", ANSWER_B),
        ],
    );
    assert!(user.starts_with("[Client Question]\nWhat is the capital of Australia?"));
    let expected = format!(
        "<|im_start|>system\n{INSTRUCT_SYSTEM}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    );
    let input = PairInput::Responses {
        conversation: vec![Turn::user(QUESTION)],
        response_a: ANSWER_A.into(),
        response_b: ANSWER_B.into(),
    };
    let rendered = model
        .tokenizer
        .apply_chat_template(&judge_messages(PromptFamily::Instruct, &input), true)
        .unwrap();
    assert_eq!(rendered, expected);
    let prompt = model.render_prompt(&input).unwrap();
    // ChatML markers are single special tokens, not spelled-out text.
    let im_start = model.tokenizer.token_id("<|im_start|>").unwrap();
    assert_eq!(prompt.iter().filter(|&&t| t == im_start).count(), 3);
    assert!(
        model.verdict_tokens.is_some(),
        "A and B are single tokens in Qwen's vocabulary"
    );

    let server = GrpcServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    server.add_model(model).await.unwrap();
    let mut client = JudgeServiceClient::connect(format!("http://{}", server.local_addr()))
        .await
        .unwrap();
    let response = client
        .judge(pair_request("real", QUESTION, ANSWER_A, ANSWER_B, 40))
        .await
        .unwrap()
        .into_inner();
    eprintln!("raw output: {:?}", response.raw_output);
    assert_eq!(response.usage.unwrap().prompt_tokens as usize, prompt.len());
    assert!(response.usage.unwrap().completion_tokens <= 40);
    assert!(!response.raw_output.is_empty());
    match response.verdict() {
        Verdict::A | Verdict::B => assert!(response.invalid_reason.is_empty()),
        Verdict::Invalid => assert!(!response.invalid_reason.is_empty()),
        Verdict::Unspecified => panic!("verdict must be set"),
    }
    let (p_a, p_b) = (response.prob_a.unwrap(), response.prob_b.unwrap());
    assert!((0.0..=1.0).contains(&p_a), "P(A) = {p_a}");
    assert!((p_a + p_b - 1.0).abs() < 1e-9);
    server.shutdown().await.unwrap();
}
