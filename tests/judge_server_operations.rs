//! Operating the judge service over gRPC on loopback with the tiny test model: health before and
//! after loading, reflection, `ListModels`, a status code for every kind of bad request, a full
//! queue, and cancellations / deadlines that free the KV cache.

mod common;

use common::judge_server::{assistant, engine, options, pair_request, start, user};
use rmr1::api::proto::judge_service_client::JudgeServiceClient;
use rmr1::api::proto::model_service_client::ModelServiceClient;
use rmr1::api::proto::{
    self, judge_request, ConversationPair, JudgeRequest, ListModelsRequest, RankRequest,
    ResponsePair,
};
use rmr1::api::GrpcServer;
use rmr1::engine::EngineConfig;
use std::time::Duration;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_until_the_model_is_loaded_and_reflection_lists_services() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let server = GrpcServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let url = format!("http://{}", server.local_addr());
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    async fn status_of(health: &mut HealthClient<tonic::transport::Channel>, service: &str) -> i32 {
        let request = HealthCheckRequest {
            service: service.into(),
        };
        health.check(request).await.unwrap().into_inner().status
    }
    for service in ["", "rmr1.v1.JudgeService"] {
        let status = status_of(&mut health, service).await;
        assert_eq!(
            status,
            ServingStatus::NotServing as i32,
            "{service:?} before load"
        );
    }
    // Judge calls before the model is there are refused, not queued.
    let mut client = JudgeServiceClient::new(channel.clone());
    let err = client
        .judge(pair_request("early", "Q?", "A.", "B.", 2))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);

    let dir = tempfile::tempdir().unwrap();
    let model_dir = common::write_tiny_model(dir.path(), &common::judge_server::tiny_judge_spec());
    let model = common::judge_server::load_tiny_judge(&model_dir, engine());
    server.add_model(model).await.unwrap();
    for service in ["", "rmr1.v1.JudgeService", "rmr1.v1.ModelService"] {
        let status = status_of(&mut health, service).await;
        assert_eq!(
            status,
            ServingStatus::Serving as i32,
            "{service:?} after load"
        );
    }

    let models = ModelServiceClient::new(channel.clone())
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    assert_eq!(models.len(), 1);
    assert_eq!(models[0].name, "tiny");
    assert_eq!(models[0].family, "instruct");
    assert_eq!(models[0].context_length, 2048);
    assert_eq!(models[0].architecture, "qwen2");
    assert!(models[0].is_default);

    // Reflection (v1) lists every service, so grpcurl works without the .proto files.
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "rmr1.v1.JudgeService",
        "rmr1.v1.ModelService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    server.shutdown().await.unwrap();
}

async fn expect_code(
    client: &mut JudgeServiceClient<tonic::transport::Channel>,
    request: JudgeRequest,
    code: Code,
    needle: &str,
) {
    let status = client.judge(request).await.expect_err("must be refused");
    assert_eq!(status.code(), code, "{}", status.message());
    assert!(
        status.message().contains(needle),
        "{:?} should mention {needle:?}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_status_codes() {
    let server = start(engine()).await;
    let mut client = server.client().await;
    let ok = pair_request("e", "Q?", "A.", "B.", 2);
    let with_input = |input| JudgeRequest {
        input: Some(input),
        ..ok.clone()
    };
    let responses = |conversation, a: &str, b: &str| {
        with_input(judge_request::Input::Responses(ResponsePair {
            conversation,
            response_a: a.into(),
            response_b: b.into(),
        }))
    };
    let mut unspecified = user("Q?");
    unspecified.role = 0;
    let with_options = |edit: fn(&mut proto::JudgeOptions)| {
        let mut request = ok.clone();
        edit(request.options.as_mut().unwrap());
        request
    };
    let cases = vec![
        (
            JudgeRequest {
                input: None,
                ..ok.clone()
            },
            "input",
        ),
        (responses(vec![], "A.", "B."), "conversation"),
        (
            responses(vec![user("Q?"), assistant("x")], "A.", "B."),
            "user",
        ),
        (responses(vec![unspecified], "A.", "B."), "role"),
        (
            with_input(judge_request::Input::Conversations(ConversationPair {
                conversation_a: vec![user("Q?"), assistant("A.")],
                conversation_b: vec![],
            })),
            "conversation_b",
        ),
        (with_options(|o| o.temperature = Some(-1.0)), "temperature"),
        (
            with_options(|o| o.max_new_tokens = Some(0)),
            "max_new_tokens",
        ),
    ];
    for (request, field) in cases {
        expect_code(&mut client, request, Code::InvalidArgument, field).await;
    }
    let long_question = "word ".repeat(3000);
    let status = client
        .judge(pair_request("long", &long_question, "A.", "B.", 2))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("2048"),
        "names the context: {}",
        status.message()
    );
    assert!(status.message().contains("tokens"), "{}", status.message());
    let unknown_model = JudgeRequest {
        model: "nope".into(),
        ..ok.clone()
    };
    expect_code(&mut client, unknown_model, Code::NotFound, "nope").await;
    let rank = |candidates: Vec<&str>| RankRequest {
        request_id: "r".into(),
        model: String::new(),
        conversation: vec![user("Q?")],
        candidates: candidates.into_iter().map(String::from).collect(),
        options: Some(options(2)),
        strategy: 0,
    };
    let status = client.rank(rank(vec!["only one"])).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("at least 2"));
    // Empty replies are candidates like any other: judged, with a verdict, in Judge and Rank.
    for (a, b) in [("", "B."), ("A.", "  "), ("", "")] {
        let judged = client
            .judge(responses(vec![user("Q?")], a, b))
            .await
            .unwrap_or_else(|s| panic!("({a:?}, {b:?}) refused: {s}"))
            .into_inner();
        assert_eq!(judged.usage.unwrap().completion_tokens, 2);
        assert!(!judged.raw_output.is_empty());
    }
    let ranked = client.rank(rank(vec!["a", ""])).await.unwrap().into_inner();
    assert_eq!(ranked.scores.len(), 2);
    // Fan-out is capped: an explicit all-pairs ranking of 17 candidates (272 judgments) is refused.
    let mut many = rank(vec!["c"; 17]);
    many.strategy = proto::RankStrategy::AllPairs as i32;
    let status = client.rank(many).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("272 judgments") && status.message().contains("KNOCKOUT"),
        "{}",
        status.message()
    );
    // After all that the server still judges normally.
    let fine = client.judge(ok).await.unwrap().into_inner();
    assert_eq!(fine.usage.unwrap().completion_tokens, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_resource_exhausted_and_deadlines_free_the_kv_cache() {
    // Generations that cannot end early, so the deadline below always cuts one short.
    let spec = common::TinySpec {
        suppress_eos: true,
        ..common::judge_server::tiny_judge_spec()
    };
    let engine = EngineConfig {
        max_pending_requests: 2,
        // One client here: let it fill the whole queue (by default a client gets ¾ of it).
        max_pending_per_client: Some(2),
        ..engine()
    };
    let server = common::judge_server::start_with(&spec, engine).await;
    let mut client = server.client().await;
    // Two long judgments occupy the queue...
    let long = |id: &str| {
        let mut r = pair_request(id, "Write at length.", "A.", "B.", 2000);
        r.options.as_mut().unwrap().max_new_tokens = Some(1500);
        r
    };
    let mut s1 = client.judge_stream(long("l1")).await.unwrap().into_inner();
    let mut s2 = client.judge_stream(long("l2")).await.unwrap().into_inner();
    s1.message().await.unwrap();
    s2.message().await.unwrap();
    // ...so the next is refused at once.
    let status = client
        .judge(pair_request("x", "Q?", "A.", "B.", 2))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "{}",
        status.message()
    );
    // Dropping the streams cancels both generations and frees their blocks.
    drop((s1, s2));
    let stats = server.model.engine.stats();
    wait_until(|| stats.running.load(std::sync::atomic::Ordering::Relaxed) == 0).await;
    wait_until(|| stats.kv_usage() == 0.0).await;

    // A client deadline stops the generation too.
    let mut request = tonic::Request::new(long("deadline"));
    request.set_timeout(Duration::from_millis(300));
    let status = client.judge(request).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    wait_until(|| stats.kv_usage() == 0.0).await;
    wait_until(|| stats.cancelled.load(std::sync::atomic::Ordering::Relaxed) == 3).await;
    // Nothing ran to its budget: only the warm-up (2 tokens) finished by length.
    let by_length = stats
        .finished_length
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(by_length, 1);
    // And the queue has room again.
    client
        .judge(pair_request("y", "Q?", "A.", "B.", 2))
        .await
        .unwrap();
}

async fn wait_until(condition: impl Fn() -> bool) {
    for _ in 0..200 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not reached within 10 s");
}
