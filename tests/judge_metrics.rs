//! Prometheus metrics of a judge server, scraped over HTTP like Prometheus does. Its own test
//! binary: the recorder is process-wide, so no other engine may feed it here.

mod common;

use common::judge_server::{pair_request, start_with};
use rmr1::engine::EngineConfig;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body
}

/// The value of an unlabelled sample, or of the first sample whose labels contain `labels`.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with(' ')
                    || (l[name.len()..].starts_with('{') && l.contains(labels)))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_judgments_and_kv_usage_returns_to_zero_after_cancellation() {
    let metrics_addr = free_port();
    rmr1::metrics::install(Some(metrics_addr)).await.unwrap();
    // Without EOS no generation ends before it is cancelled below.
    let spec = common::TinySpec {
        suppress_eos: true,
        ..common::judge_server::tiny_judge_spec()
    };
    let server = start_with(&spec, EngineConfig::default()).await;
    let mut client = server.client().await;

    let judged = client
        .judge(pair_request("m1", "Q?", "A.", "B.", 5))
        .await
        .unwrap()
        .into_inner();
    let text = scrape(metrics_addr).await;
    let usage = judged.usage.unwrap();
    // Warm-up (2 tokens) + the judgment + its forced verdict probe (1 token).
    let generated = sample(&text, "rmr1_generation_tokens_total", "").unwrap();
    assert_eq!(generated, (2 + usage.completion_tokens + 1) as f64);
    assert_eq!(
        sample(&text, "rmr1_judge_verdicts_total", "verdict=\"invalid\""),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "rmr1_judge_parse_failures_total", "reason="),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "rmr1_rpc_requests_total",
            "rpc=\"Judge\",code=\"Ok\""
        ),
        Some(1.0)
    );
    for histogram in [
        "rmr1_time_to_first_token_seconds_count",
        "rmr1_e2e_request_latency_seconds_count",
        "rmr1_request_queue_time_seconds_count",
        "rmr1_inter_token_latency_seconds_count",
        "rmr1_judge_prob_a_count",
        "rmr1_judge_latency_seconds_count",
    ] {
        let count = sample(&text, histogram, "").unwrap_or_else(|| panic!("{histogram}"));
        assert!(count >= 1.0, "{histogram} = {count}");
    }
    assert!(sample(&text, "rmr1_prefix_cache_queries_total", "").unwrap() > 0.0);

    // Four long judgments in flight hold KV blocks...
    let mut streams = Vec::new();
    for i in 0..4 {
        let mut request = pair_request(&format!("c{i}"), "Write a lot.", "A.", "B.", 1500);
        request.options.as_mut().unwrap().seed = Some(i);
        streams.push(client.judge_stream(request).await.unwrap().into_inner());
    }
    for s in &mut streams {
        s.message().await.unwrap();
    }
    let busy = scrape(metrics_addr).await;
    assert!(sample(&busy, "rmr1_kv_cache_usage_perc", "").unwrap() > 0.0);
    assert!(sample(&busy, "rmr1_num_requests_running", "").unwrap() > 0.0);
    // ...and cancelling them brings usage and the running gauge back to zero.
    drop(streams);
    let mut last = String::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = scrape(metrics_addr).await;
        if sample(&last, "rmr1_kv_cache_usage_perc", "") == Some(0.0)
            && sample(&last, "rmr1_num_requests_running", "") == Some(0.0)
        {
            break;
        }
    }
    assert_eq!(sample(&last, "rmr1_kv_cache_usage_perc", ""), Some(0.0));
    assert_eq!(sample(&last, "rmr1_num_requests_running", ""), Some(0.0));
    assert_eq!(
        sample(
            &last,
            "rmr1_request_success_total",
            "finished_reason=\"cancelled\""
        ),
        Some(4.0)
    );
    // The calls whose clients went away are counted too, as CANCELLED.
    assert_eq!(
        sample(
            &last,
            "rmr1_rpc_requests_total",
            "rpc=\"JudgeStream\",code=\"Cancelled\""
        ),
        Some(4.0)
    );
}
