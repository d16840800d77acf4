//! Who may call what: bearer tokens with roles (judge / admin), TLS and mutual TLS from PEM files,
//! filesystem paths shown to admins only, and the metrics listener answering `/metrics` only.

mod common;

use common::judge_server::{pair_request, start_configured, tiny_judge_spec, TestServer};
use rmr1::api::proto::model_service_client::ModelServiceClient;
use rmr1::api::proto::training_service_client::TrainingServiceClient;
use rmr1::api::proto::ListModelsRequest;
use rmr1::api::proto::{judge_service_client::JudgeServiceClient, ListTrainJobsRequest};
use rmr1::api::{ServerOptions, TlsFiles, TokenTable};
use rmr1::engine::EngineConfig;
use std::sync::Arc;
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request};

const JUDGE_TOKEN: &str = "judge-0f1e2d3c4b5a69788796a5b4";
const ADMIN_TOKEN: &str = "admin-8796a5b4c3d2e1f00f1e2d3c";

async fn server(options: ServerOptions) -> TestServer {
    start_configured(&tiny_judge_spec(), EngineConfig::default(), options).await
}

fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        let value: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_and_roles_cover_their_services() {
    let tokens = TokenTable::parse(&format!(
        "judge {JUDGE_TOKEN} rlhf-loop\nadmin {ADMIN_TOKEN} ops\n"
    ))
    .unwrap();
    let test = server(ServerOptions {
        tokens: Some(Arc::new(tokens)),
        ..ServerOptions::default()
    })
    .await;
    let channel = Channel::from_shared(test.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut judge = JudgeServiceClient::new(channel.clone());
    let call = |token| with_token(pair_request("r", "Q?", "A.", "B.", 2), token);

    let missing = judge.judge(call(None)).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated, "{missing:?}");
    let wrong = judge
        .judge(call(Some("judge-0f1e2d3c4b5a69788796a5b5")))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    judge.judge(call(Some(JUDGE_TOKEN))).await.unwrap();
    judge.judge(call(Some(ADMIN_TOKEN))).await.unwrap();

    // Training jobs are for admins: a judge token is refused before routing; an admin token gets
    // through (this server has no training service, hence UNIMPLEMENTED).
    let mut training = TrainingServiceClient::new(channel.clone());
    let denied = training
        .list_train_jobs(with_token(
            ListTrainJobsRequest::default(),
            Some(JUDGE_TOKEN),
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("role judge"), "{denied:?}");
    let passed = training
        .list_train_jobs(with_token(
            ListTrainJobsRequest::default(),
            Some(ADMIN_TOKEN),
        ))
        .await
        .unwrap_err();
    assert_eq!(passed.code(), Code::Unimplemented, "{passed:?}");

    // Health stays open for probes.
    assert_eq!(
        common::serve_process::health_status(&test.url(), "").await,
        Ok(tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
    );

    // The model's source path: whole for admins, its last component for everyone else.
    let mut models = ModelServiceClient::new(channel);
    let source = |token| {
        let mut models = models.clone();
        async move {
            models
                .list_models(with_token(ListModelsRequest::default(), Some(token)))
                .await
                .unwrap()
                .into_inner()
                .models[0]
                .source
                .clone()
        }
    };
    let full = test.model_dir.to_str().unwrap().to_string();
    assert_eq!(source(ADMIN_TOKEN).await, full);
    let shown = source(JUDGE_TOKEN).await;
    assert!(!shown.contains('/'), "{shown}");
    assert!(full.ends_with(&shown), "{shown} vs {full}");
    let _ = models.list_models(ListModelsRequest::default()).await;
}

/// Writes `text` to `name` in `dir` and returns the path.
fn writer(dir: &std::path::Path) -> impl Fn(&str, &str) -> std::path::PathBuf + '_ {
    move |name, text| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// A CA, and certificates it signs: a server one for localhost, and client ones.
struct Pki {
    ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let ca_pem = params.self_signed(&key).unwrap().pem();
        Self {
            ca_pem,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// (certificate PEM, key PEM) for `name`.
    fn leaf(&self, name: &str) -> (String, String) {
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

async fn tls_channel(
    url: &str,
    ca: &str,
    client: Option<&(String, String)>,
) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = client {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(url.replace("http://", "https://"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

async fn judged(channel: Result<Channel, String>) -> Result<(), String> {
    let mut judge = JudgeServiceClient::new(channel?);
    judge
        .judge(pair_request("tls", "Q?", "A.", "B.", 2))
        .await
        .map(|_| ())
        .map_err(|s| format!("{s:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mutual_tls_accept_and_refuse_the_right_clients() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("rmr1 test CA");
    let (cert, key) = pki.leaf("localhost");
    let write = writer(dir.path());
    let files = TlsFiles {
        cert: write("server.crt", &cert),
        key: write("server.key", &key),
        client_ca: None,
    };

    // TLS: a client that trusts the CA is served; a plaintext one is not.
    let test = server(ServerOptions {
        tls: Some(files.clone()),
        ..ServerOptions::default()
    })
    .await;
    judged(tls_channel(&test.url(), &pki.ca_pem, None).await)
        .await
        .unwrap();
    let plaintext = JudgeServiceClient::connect(test.url()).await;
    let refused = match plaintext {
        Err(_) => true,
        Ok(mut c) => c
            .judge(pair_request("p", "Q?", "A.", "B.", 2))
            .await
            .is_err(),
    };
    assert!(refused, "a plaintext client was served by a TLS server");

    // Mutual TLS: only clients with a certificate from the client CA.
    let clients = Pki::new("rmr1 client CA");
    let mtls = server(ServerOptions {
        tls: Some(TlsFiles {
            client_ca: Some(write("clients-ca.crt", &clients.ca_pem)),
            ..files
        }),
        ..ServerOptions::default()
    })
    .await;
    let good = clients.leaf("rlhf-loop");
    judged(tls_channel(&mtls.url(), &pki.ca_pem, Some(&good)).await)
        .await
        .unwrap();
    let none = judged(tls_channel(&mtls.url(), &pki.ca_pem, None).await).await;
    assert!(none.is_err(), "served without a client certificate");
    let rogue = Pki::new("someone else").leaf("rlhf-loop");
    let rogue = judged(tls_channel(&mtls.url(), &pki.ca_pem, Some(&rogue)).await).await;
    assert!(rogue.is_err(), "served with a certificate from another CA");
}

/// A raw HTTP/1.1 exchange: (status code, body).
async fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_answers_get_metrics_only() {
    let handle = rmr1::metrics::install_recorder().unwrap();
    metrics::counter!(rmr1::metrics::RPC_REQUESTS, "rpc" => "Judge", "code" => "Ok").increment(1);
    let (addr, _task) = rmr1::api::metrics_http::serve("127.0.0.1:0".parse().unwrap(), handle)
        .await
        .unwrap();
    let (status, body) = http(addr, "GET", "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("rmr1_rpc_requests_total"), "{body}");
    assert_eq!(http(addr, "GET", "/").await.0, 404);
    assert_eq!(http(addr, "GET", "/admin/.env").await.0, 404);
    assert_eq!(http(addr, "POST", "/metrics").await.0, 405);
}

/// `rmr1 judge` against a server with TLS and tokens: trusted through `--tls-ca`, authenticated
/// by `RMR1_TOKEN` (or `--token-file`); without a token it fails saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reaches_a_tls_and_token_server() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("rmr1 test CA");
    let (cert, key) = pki.leaf("localhost");
    let write = writer(dir.path());
    let ca = write("ca.crt", &pki.ca_pem);
    let token_file = write("token", &format!("{JUDGE_TOKEN}\n"));
    let test = server(ServerOptions {
        tls: Some(TlsFiles {
            cert: write("server.crt", &cert),
            key: write("server.key", &key),
            client_ca: None,
        }),
        tokens: Some(Arc::new(
            TokenTable::parse(&format!("judge {JUDGE_TOKEN}")).unwrap(),
        )),
        ..ServerOptions::default()
    })
    .await;
    // `localhost`, as the certificate names it.
    let addr = format!("https://localhost:{}", test.server.local_addr().port());
    let judge = |auth: Vec<String>, env_token: Option<&'static str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_rmr1"));
        command
            .args([
                "judge",
                "--quiet",
                "--max-new-tokens",
                "2",
                "--question",
                "Q?",
            ])
            .args(["--a", "A.", "--b", "B.", "--addr", &addr, "--tls-ca"])
            .arg(&ca)
            .args(auth)
            .env_remove("RMR1_TOKEN");
        if let Some(token) = env_token {
            command.env("RMR1_TOKEN", token);
        }
        tokio::task::spawn_blocking(move || command.output().unwrap())
    };
    let by_file = judge(
        vec!["--token-file".into(), token_file.display().to_string()],
        None,
    )
    .await
    .unwrap();
    assert!(
        by_file.status.success(),
        "{}",
        String::from_utf8_lossy(&by_file.stderr)
    );
    let by_env = judge(vec![], Some(JUDGE_TOKEN)).await.unwrap();
    assert!(
        by_env.status.success(),
        "{}",
        String::from_utf8_lossy(&by_env.stderr)
    );
    let without = judge(vec![], None).await.unwrap();
    assert!(!without.status.success());
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert!(stderr.contains("authorization"), "{stderr}");
}
