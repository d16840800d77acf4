//! Faults a real `rmr1 serve` process must survive or end cleanly, checked from outside: an engine
//! that dies (in-flight calls UNAVAILABLE, health and liveness NOT_SERVING, exit non-zero), a step
//! failure that concerns its own requests only (the server goes on), the file-descriptor limit
//! (no busy accept loop, service resumes), and requests of many megabytes (refused unread, with
//! memory and health checks unaffected).

mod common;

use common::judge_server::{pair_request, tiny_judge_spec};
use common::serve_process::{health_status, ServeProcess};
use common::{write_tiny_model, TinySpec};
use rmr1::api::proto::judge_service_client::JudgeServiceClient;
use std::time::{Duration, Instant};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const SERVING: i32 = ServingStatus::Serving as i32;
const NOT_SERVING: i32 = ServingStatus::NotServing as i32;

/// A tiny judge that never stops on its own (every generation runs to max_new_tokens).
fn endless_judge(dir: &std::path::Path) -> std::path::PathBuf {
    write_tiny_model(
        dir,
        &TinySpec {
            suppress_eos: true,
            ..tiny_judge_spec()
        },
    )
}

async fn client(server: &ServeProcess) -> JudgeServiceClient<tonic::transport::Channel> {
    JudgeServiceClient::connect(server.url()).await.unwrap()
}

/// Starts a long judgment, fires the injected fault (creates its trigger file) while it runs, and
/// returns the status the judgment ended with.
async fn fail_a_running_judgment(
    judge: &JudgeServiceClient<tonic::transport::Channel>,
    trigger: &std::path::Path,
) -> tonic::Status {
    let mut judge = judge.clone();
    let in_flight = tokio::spawn(async move {
        judge
            .judge(pair_request("long", "Write at length.", "A.", "B.", 4000))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(trigger, b"").unwrap();
    tokio::time::timeout(Duration::from_secs(30), in_flight)
        .await
        .expect("the in-flight call never ended")
        .unwrap()
        .expect_err("the judgment survived the fault")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_panic_fails_in_flight_calls_goes_not_serving_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let model = endless_judge(dir.path());
    let trigger = dir.path().join("panic-now");
    let spec = format!("panic:{}", trigger.display());
    let mut server = ServeProcess::start(&model, &[], &[("RMR1_TEST_ENGINE_FAULT", &spec)], None);
    let mut judge = client(&server).await;
    judge
        .judge(pair_request("before", "Q?", "A.", "B.", 2))
        .await
        .expect("a judgment before the fault");
    // Watch readiness and liveness from before the fault: the stream shows every change, even
    // when the process exits right after.
    let mut watches = Vec::new();
    for service in ["", "liveness"] {
        let channel = tonic::transport::Endpoint::from_shared(server.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut stream = HealthClient::new(channel)
            .watch(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap().status;
        assert_eq!(first, SERVING, "{service:?}");
        watches.push(stream);
    }

    let status = fail_a_running_judgment(&judge, &trigger).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("panicked"), "{status:?}");
    // Readiness and liveness both went red before the process stopped.
    for mut stream in watches {
        let next = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("no health change")
            .expect("the watch broke before reporting NOT_SERVING");
        assert_eq!(next.map(|m| m.status), Some(NOT_SERVING));
    }
    // New calls are refused (UNAVAILABLE), or find the connection going away (tonic reports a
    // GOAWAY that races the call as INTERNAL "h2 protocol error"): never queued on a dead engine.
    let refused = judge
        .judge(pair_request("after", "Q?", "A.", "B.", 2))
        .await
        .unwrap_err();
    let gone = format!("{refused:?}");
    assert!(
        refused.code() == Code::Unavailable
            || gone.contains("GoAway")
            || gone.contains("transport"),
        "{refused:?}"
    );
    let exit = server
        .wait_exit(Duration::from_secs(20))
        .expect("the server kept running with a dead engine");
    assert!(!exit.success(), "exit status {exit:?}");
    let log = server.log();
    assert!(log.contains("the engine failed"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_error_fails_only_that_steps_requests_and_the_server_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let model = endless_judge(dir.path());
    let trigger = dir.path().join("fail-one-step");
    let spec = format!("error-once:{}", trigger.display());
    let mut server = ServeProcess::start(&model, &[], &[("RMR1_TEST_ENGINE_FAULT", &spec)], None);
    let mut judge = client(&server).await;
    let status = fail_a_running_judgment(&judge, &trigger).await;
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(
        status.message().contains("injected step error"),
        "{status:?}"
    );
    // Contained: the next judgment succeeds and the server still serves.
    let after = judge
        .judge(pair_request("after", "Q?", "A.", "B.", 3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.usage.unwrap().completion_tokens, 3);
    assert_eq!(health_status(&server.url(), "").await, Ok(SERVING));
    assert!(server.child.try_wait().unwrap().is_none());
}

/// At the descriptor limit `accept` fails with EMFILE while connections wait in the backlog. tonic
/// retries at once, which spun a core (93%) and starved the connections that could free
/// descriptors. Now the loop backs off, and service resumes once descriptors are free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_descriptor_limit_the_accept_loop_backs_off_and_service_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_tiny_model(dir.path(), &tiny_judge_spec());
    let server = ServeProcess::start(&model, &[], &[], Some(64));
    let addr: std::net::SocketAddr = server.addr.parse().unwrap();
    // Far more connections than the server has descriptors for (until the listen backlog is
    // full too: then a connect would hang).
    let mut flood = Vec::new();
    for _ in 0..200 {
        let connect = tokio::net::TcpStream::connect(addr);
        match tokio::time::timeout(Duration::from_millis(500), connect).await {
            Ok(Ok(c)) => flood.push(c),
            _ => break,
        }
    }
    assert!(flood.len() > 64, "only {} connections", flood.len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        server.log().contains("cannot accept connections"),
        "{}",
        server.log()
    );
    let before = server.cpu_time();
    let measured = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let busy = (server.cpu_time() - before).as_secs_f64() / measured.elapsed().as_secs_f64();
    eprintln!(
        "CPU while out of descriptors: {:.0}% of a core",
        busy * 100.0
    );
    assert!(
        busy < 0.25,
        "the accept loop spins: {:.0}% of a core",
        busy * 100.0
    );
    drop(flood);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if health_status(&server.url(), "").await == Ok(SERVING) {
            break;
        }
        assert!(Instant::now() < deadline, "service did not resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two 12 MiB requests at once (under the 16 MiB message limit): far more text than the model's
/// context can hold, so they are refused by size before they are rendered or tokenized. Before,
/// each was tokenized in full on the async workers: seconds each, gigabytes of memory, and health
/// checks stalled behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_many_megabytes_are_refused_unread_with_memory_and_health_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_tiny_model(dir.path(), &tiny_judge_spec());
    let server = ServeProcess::start(&model, &[], &[], None);
    let rss_before = server.rss_bytes();
    let big = "w1 ".repeat(4 << 20); // 12 MiB of short words
    let calls: Vec<_> = (0..2)
        .map(|i| {
            let request = pair_request(&format!("big{i}"), "Q?", &big, "B.", 2);
            let url = server.url();
            tokio::spawn(async move {
                let started = Instant::now();
                let mut judge = JudgeServiceClient::connect(url)
                    .await
                    .unwrap()
                    .max_encoding_message_size(64 << 20);
                (judge.judge(request).await, started.elapsed())
            })
        })
        .collect();
    let mut slowest_health = Duration::ZERO;
    let health_deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < health_deadline {
        let started = Instant::now();
        assert_eq!(health_status(&server.url(), "").await, Ok(SERVING));
        slowest_health = slowest_health.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut outcomes = Vec::new();
    for call in calls {
        outcomes.push(call.await.unwrap());
    }
    let grown = server.rss_bytes().saturating_sub(rss_before);
    eprintln!(
        "slowest health check {slowest_health:?}; RSS grew {} MiB; refused after {:?}",
        grown >> 20,
        outcomes.iter().map(|(_, took)| *took).collect::<Vec<_>>()
    );
    // The two requests themselves are 24 MiB; tokenizing them took gigabytes.
    assert!(grown < 256 << 20, "RSS grew {} MiB", grown >> 20);
    assert!(
        slowest_health < Duration::from_millis(500),
        "{slowest_health:?}"
    );
    for (result, took) in outcomes {
        let status = result.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("bytes of text"), "{status:?}");
        assert!(took < Duration::from_secs(5), "refused after {took:?}");
    }
    // And an ordinary request right after is served.
    let mut judge = client(&server).await;
    judge
        .judge(pair_request("small", "Q?", "A.", "B.", 2))
        .await
        .unwrap();
}
