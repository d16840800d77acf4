//! A judge server on loopback over a tiny model the test writes, and request builders.

use super::{write_tiny_model, TinySpec};
use rmr1::api::proto::judge_service_client::JudgeServiceClient;
use rmr1::api::proto::{self, judge_request, JudgeOptions, JudgeRequest, Message, ResponsePair};
use rmr1::api::GrpcServer;
use rmr1::engine::EngineConfig;
use rmr1::judge::judge_model::{JudgeModel, JudgeModelOptions};
use rmr1::judge::PromptFamily;
use std::path::PathBuf;
use std::sync::Arc;
use tonic::transport::Channel;

pub struct TestServer {
    pub server: GrpcServer,
    pub model: Arc<JudgeModel>,
    pub model_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.server.local_addr())
    }

    pub async fn client(&self) -> JudgeServiceClient<Channel> {
        JudgeServiceClient::connect(self.url()).await.unwrap()
    }
}

/// The engine settings the server tests use.
pub fn engine() -> EngineConfig {
    EngineConfig {
        max_num_seqs: 16,
        ..EngineConfig::default()
    }
}

pub fn tiny_judge_spec() -> TinySpec {
    TinySpec {
        vocab: 128,
        max_positions: 2048,
        verdict_words: true,
        ..TinySpec::default()
    }
}

pub fn load_tiny_judge(dir: &std::path::Path, engine: EngineConfig) -> JudgeModel {
    load_tiny_judge_as(dir, PromptFamily::Instruct, engine)
}

pub fn load_tiny_judge_as(
    dir: &std::path::Path,
    family: PromptFamily,
    engine: EngineConfig,
) -> JudgeModel {
    JudgeModel::load(
        dir.to_str().unwrap(),
        &JudgeModelOptions {
            family: Some(family),
            name: Some("tiny".into()),
            engine,
            ..JudgeModelOptions::default()
        },
    )
    .unwrap()
}

/// A real GGUF model as an instruct-family judge with a 256 MiB KV cache.
pub fn load_gguf_judge(gguf: &std::path::Path) -> JudgeModel {
    JudgeModel::load(
        gguf.to_str().unwrap(),
        &JudgeModelOptions {
            family: Some(PromptFamily::Instruct),
            engine: EngineConfig {
                kv_cache_bytes: 256 << 20,
                ..EngineConfig::default()
            },
            ..JudgeModelOptions::default()
        },
    )
    .unwrap()
}

/// Starts a server with no model, then adds the tiny judge.
pub async fn start(engine: EngineConfig) -> TestServer {
    start_with(&tiny_judge_spec(), engine).await
}

pub async fn start_with(spec: &TinySpec, engine: EngineConfig) -> TestServer {
    start_configured(spec, engine, rmr1::api::ServerOptions::default()).await
}

/// [`start_with`] under the given connection limits.
pub async fn start_configured(
    spec: &TinySpec,
    engine: EngineConfig,
    options: rmr1::api::ServerOptions,
) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = write_tiny_model(dir.path(), spec);
    let server = GrpcServer::start_with_options("127.0.0.1:0".parse().unwrap(), None, options)
        .await
        .unwrap();
    let model = load_tiny_judge(&model_dir, engine);
    let model = server.add_model(model).await.unwrap();
    TestServer {
        server,
        model,
        model_dir,
        _dir: dir,
    }
}

pub fn user(content: &str) -> Message {
    Message {
        role: proto::Role::User as i32,
        content: content.into(),
    }
}

pub fn assistant(content: &str) -> Message {
    Message {
        role: proto::Role::Assistant as i32,
        content: content.into(),
    }
}

pub fn options(max_new_tokens: u32) -> JudgeOptions {
    JudgeOptions {
        max_new_tokens: Some(max_new_tokens),
        include_reasoning: true,
        ..JudgeOptions::default()
    }
}

pub fn pair_request(
    id: &str,
    question: &str,
    a: &str,
    b: &str,
    max_new_tokens: u32,
) -> JudgeRequest {
    JudgeRequest {
        request_id: id.into(),
        model: String::new(),
        input: Some(judge_request::Input::Responses(ResponsePair {
            conversation: vec![user(question)],
            response_a: a.into(),
            response_b: b.into(),
        })),
        options: Some(options(max_new_tokens)),
    }
}

/// A tiny judge whose greedy outputs contain "[[A]]" / "[[B]]" for some prompts, so evaluation
/// scores are not trivially 0.
pub fn eval_judge_spec() -> TinySpec {
    TinySpec {
        vocab: 128,
        max_positions: 2048,
        verdict_words: true,
        verdict_token_gain: 2.5,
        ..TinySpec::default()
    }
}

/// `rmr1 eval` options against `server`: seed 7, 8 in flight, 6 new tokens, one order per pair.
pub fn eval_options(
    server: &TestServer,
    benchmark: rmr1::eval::Benchmark,
    data: &std::path::Path,
    log: &std::path::Path,
) -> rmr1::eval::runner::EvalOptions {
    rmr1::eval::runner::EvalOptions {
        benchmark,
        data: data.into(),
        log: log.into(),
        target: rmr1::eval::runner::Target::Remote {
            addr: server.url(),
            wait_seconds: 0,
            access: Default::default(),
        },
        model: String::new(),
        concurrency: 8,
        seed: 7,
        both_orders: false,
        max_new_tokens: Some(6),
        on_bad_record: rmr1::eval::task::OnBadRecord::Fail,
    }
}
