//! Fair admission: the engine's waiting queue takes turns between clients (told apart by token,
//! certificate, or here by IP address), so a client flooding the server does not push a light
//! client's requests behind its whole backlog; and one client cannot hold every pending slot.

mod common;

use common::judge_server::{pair_request, start_configured, tiny_judge_spec, TestServer};
use common::TinySpec;
use rmr1::api::proto::judge_service_client::JudgeServiceClient;
use rmr1::api::proto::JudgeRequest;
use rmr1::api::ServerOptions;
use rmr1::engine::EngineConfig;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

/// A client whose connections come from `ip` (any 127.0.0.0/8 address is loopback on Linux).
async fn client_from(server: &TestServer, ip: &str) -> JudgeServiceClient<Channel> {
    let channel = Endpoint::from_shared(server.url())
        .unwrap()
        .local_address(Some(ip.parse().unwrap()))
        .connect()
        .await
        .unwrap();
    JudgeServiceClient::new(channel)
}

/// Waits (up to 60 s) until the engine's (waiting, running) sequence counts satisfy `ready`.
async fn wait_for_queue(test: &TestServer, what: &str, ready: impl Fn(u64, u64) -> bool) {
    use std::sync::atomic::Ordering::Relaxed;
    let stats = test.model.engine.stats();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready(stats.waiting.load(Relaxed), stats.running.load(Relaxed)) {
        assert!(Instant::now() < deadline, "{what} never queued up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Both orders: two engine requests per judgment.
fn both_orders(mut request: JudgeRequest) -> JudgeRequest {
    request.options.as_mut().unwrap().both_orders = true;
    request
}

fn queue_wait(response: &rmr1::api::proto::JudgeResponse) -> Duration {
    Duration::from_secs_f64(response.timings.as_ref().unwrap().queue_seconds)
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

async fn endless_server(engine: EngineConfig) -> TestServer {
    let spec = TinySpec {
        suppress_eos: true,
        ..tiny_judge_spec()
    };
    start_configured(&spec, engine, ServerOptions::default()).await
}

/// A flooder keeps 96 long judgments (one order each) queued against 4 engine slots while a light
/// client sends short judgments one after another. First come, first served put each light
/// judgment behind the whole backlog, waiting as long as the flooder's own; taking turns admits it
/// at about the next slot release. Measured as the engine's queue wait (submission to first
/// scheduling, reported in each response), which CPU contention on a small test machine does not
/// blur. Stated bound: the light client's p99 wait stays under a fifth of the flooder's median
/// wait (side by side, so it holds on any machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_does_not_starve_a_light_one() {
    let test = endless_server(EngineConfig {
        max_num_seqs: 4,
        ..EngineConfig::default()
    })
    .await;
    let flooder = client_from(&test, "127.0.0.2").await;
    let mut light = client_from(&test, "127.0.0.1").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flood = Vec::new();
    for worker in 0..96 {
        let (mut flooder, stop) = (flooder.clone(), stop.clone());
        flood.push(tokio::spawn(async move {
            let mut waits = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let request = pair_request(&format!("flood{worker}-{n}"), "Q?", "A.", "B.", 128);
                let response = flooder.judge(request).await.expect("a flood judgment");
                waits.push(queue_wait(&response.into_inner()));
                n += 1;
            }
            waits
        }));
    }
    // Let the backlog build up.
    wait_for_queue(&test, "the flood", |waiting, _| waiting >= 80).await;
    let mut light_waits = Vec::new();
    for i in 0..12 {
        let response = light
            .judge(pair_request(&format!("light{i}"), "Q?", "A.", "B.", 4))
            .await
            .unwrap();
        light_waits.push(queue_wait(&response.into_inner()));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut flood_waits: Vec<Duration> = Vec::new();
    for worker in flood {
        flood_waits.extend(worker.await.unwrap());
    }
    let light_p99 = percentile(&mut light_waits, 0.99);
    let flood_p50 = percentile(&mut flood_waits, 0.5);
    eprintln!(
        "queue wait: light p99 {light_p99:?} (p50 {:?}); flood p50 {flood_p50:?} over {} judgments",
        percentile(&mut light_waits, 0.5),
        flood_waits.len()
    );
    assert!(
        light_p99 * 5 < flood_p50,
        "light client's queue wait p99 {light_p99:?} vs the flooder's p50 {flood_p50:?}"
    );
}

/// One client may hold at most three quarters of the pending requests: the rest stays free for
/// others, who are served while the first is refused RESOURCE_EXHAUSTED saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_take_every_pending_slot() {
    let test = endless_server(EngineConfig {
        max_num_seqs: 2,
        max_pending_requests: 8,
        ..EngineConfig::default()
    })
    .await;
    let flooder = client_from(&test, "127.0.0.2").await;
    let mut light = client_from(&test, "127.0.0.1").await;
    // Three judgments of two orders each: the flooder's share of 6.
    let mut held = Vec::new();
    for i in 0..3 {
        let mut flooder = flooder.clone();
        held.push(tokio::spawn(async move {
            flooder
                .judge(both_orders(pair_request(
                    &format!("hold{i}"),
                    "Q?",
                    "A.",
                    "B.",
                    3000,
                )))
                .await
        }));
    }
    wait_for_queue(&test, "the held judgments", |waiting, running| {
        waiting + running >= 6
    })
    .await;
    let refused = flooder
        .clone()
        .judge(both_orders(pair_request("one-more", "Q?", "A.", "B.", 2)))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(refused.message().contains("this client"), "{refused:?}");
    // The light client still gets in: its two orders take the slots left free.
    let light_call = tokio::spawn(async move {
        light
            .judge(both_orders(pair_request("light", "Q?", "A.", "B.", 2)))
            .await
    });
    wait_for_queue(&test, "the light judgment", |waiting, running| {
        waiting + running >= 8
    })
    .await;
    assert!(!light_call.is_finished(), "{:?}", light_call.await);
    // Free the slots (the server sees the held calls cancelled) and the light one completes.
    for h in &held {
        h.abort();
    }
    let served = tokio::time::timeout(Duration::from_secs(60), light_call)
        .await
        .expect("the light client waited forever")
        .unwrap();
    assert!(served.is_ok(), "{served:?}");
}
