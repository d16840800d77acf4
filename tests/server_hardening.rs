//! Abusive and unlucky clients on loopback: bytes that do not decode are INVALID_ARGUMENT (unary
//! and inside a JudgeBatch stream, where the judgments accepted before them still arrive and the
//! stream ends non-OK), an oversized request is refused before it is decoded while health stays
//! responsive, and a burst of calls with short deadlines does not take down the other calls on the
//! same connection.

mod common;

use bytes::{Buf, BufMut, Bytes};
use common::judge_server::{pair_request, start_configured, tiny_judge_spec, TestServer};
use prost::Message;
use rmr1::api::proto::JudgeBatchResult;
use rmr1::api::ServerOptions;
use rmr1::engine::EngineConfig;
use std::time::{Duration, Instant};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

/// Sends raw bytes as messages and hands back raw bytes: lets a test send what no well-behaved
/// client would.
#[derive(Default, Clone)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

async fn raw_client(server: &TestServer) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::new(channel)
}

/// A JudgeRequest whose `request_id` (field 1) holds invalid UTF-8.
fn invalid_utf8() -> Bytes {
    Bytes::from_static(&[0x0a, 0x02, 0xff, 0xfe])
}

async fn server() -> TestServer {
    start_configured(
        &tiny_judge_spec(),
        EngineConfig {
            max_num_seqs: 16,
            ..EngineConfig::default()
        },
        ServerOptions {
            max_request_bytes: 1 << 20,
            ..ServerOptions::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_requests_are_invalid_argument_and_batches_end_non_ok_without_losing_work() {
    let server = server().await;
    let mut raw = raw_client(&server).await;
    let judge = http::uri::PathAndQuery::from_static("/rmr1.v1.JudgeService/Judge");
    for bytes in [invalid_utf8(), Bytes::from_static(&[0xff; 12])] {
        raw.ready().await.unwrap();
        let status = raw
            .unary(tonic::Request::new(bytes), judge.clone(), RawCodec)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("not a valid protobuf message"));
    }

    // Three good items, then one that does not decode: the three are judged and sent, then the
    // stream ends INVALID_ARGUMENT saying where it stopped.
    let mut items: Vec<Bytes> = (0..3)
        .map(|i| Bytes::from(pair_request(&format!("ok{i}"), "Q?", "A.", "B.", 3).encode_to_vec()))
        .collect();
    items.push(invalid_utf8());
    let batch = http::uri::PathAndQuery::from_static("/rmr1.v1.JudgeService/JudgeBatch");
    raw.ready().await.unwrap();
    let mut results = raw
        .streaming(
            tonic::Request::new(tokio_stream::iter(items)),
            batch,
            RawCodec,
        )
        .await
        .unwrap()
        .into_inner();
    let mut ids = Vec::new();
    let end = loop {
        match results.message().await {
            Ok(Some(bytes)) => {
                let r = JudgeBatchResult::decode(bytes).unwrap();
                assert!(
                    matches!(
                        r.outcome,
                        Some(rmr1::api::proto::judge_batch_result::Outcome::Response(_))
                    ),
                    "{r:?}"
                );
                ids.push(r.request_id);
            }
            Ok(None) => panic!("the stream ended OK after a malformed item"),
            Err(status) => break status,
        }
    };
    ids.sort();
    assert_eq!(ids, ["ok0", "ok1", "ok2"]);
    assert_eq!(end.code(), Code::InvalidArgument, "{end:?}");
    assert!(
        end.message().contains("stopped reading after 3 requests"),
        "{end:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_is_refused_before_decoding_and_health_stays_responsive() {
    let server = server().await;
    let mut client = server.client().await;
    let big = "x ".repeat(2 << 20); // 4 MiB, limit 1 MiB
    let started = Instant::now();
    let status = client
        .judge(pair_request("big", "Q?", &big, "B.", 2))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("message length too large"),
        "{status:?}"
    );
    eprintln!("refused in {:?}", started.elapsed());
    // The connection and the server are fine: a normal call right after succeeds.
    let fine = client
        .judge(pair_request("small", "Q?", "A.", "B.", 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fine.usage.unwrap().completion_tokens, 2);
}

/// What a burst of client deadlines looks like on the wire, made deterministic: `n` streams opened
/// and reset at once on one raw HTTP/2 connection (each RST arrives before the server accepted its
/// stream). Returns whether the connection survived (no GOAWAY) and still carries a call.
async fn reset_burst_survives(server: &TestServer, n: usize) -> bool {
    let addr = server.server.local_addr();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let request = || {
        http::Request::post(format!("http://{addr}/rmr1.v1.JudgeService/Judge"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap()
    };
    let mut client = match client.ready().await {
        Ok(c) => c,
        Err(_) => return false,
    };
    for _ in 0..n {
        match client.send_request(request(), false) {
            Ok((_, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
            Err(_) => return false,
        }
    }
    // One real call on the same connection: a Judge request, framed as gRPC.
    let body = pair_request("after-burst", "Q?", "A.", "B.", 2).encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
    framed.extend_from_slice(&body);
    let Ok(mut client) = client.ready().await else {
        return false;
    };
    let Ok((response, mut stream)) = client.send_request(request(), false) else {
        return false;
    };
    if stream.send_data(Bytes::from(framed), true).is_err() {
        return false;
    }
    let survived = match tokio::time::timeout(Duration::from_secs(30), response).await {
        Ok(Ok(response)) => {
            let mut body = response.into_body();
            let mut got = 0;
            while let Some(Ok(chunk)) = body.data().await {
                got += chunk.len();
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            let trailers = body.trailers().await.ok().flatten();
            let ok = trailers
                .as_ref()
                .and_then(|t| t.get("grpc-status"))
                .is_some_and(|s| s == "0");
            got > 0 && ok
        }
        _ => false,
    };
    connection.abort();
    survived
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_reset_streams_leaves_the_connection_and_its_other_calls_intact() {
    let server = server().await;
    assert!(reset_burst_survives(&server, 400).await);
    // The control: with h2's default allowance (20) the same burst gets GOAWAY, and the call
    // after it on that connection fails — the defect this setting removes.
    let strict = start_configured(
        &tiny_judge_spec(),
        EngineConfig::default(),
        ServerOptions {
            http2_max_pending_reset_streams: 20,
            ..ServerOptions::default()
        },
    )
    .await;
    assert!(!reset_burst_survives(&strict, 400).await);
}

/// `n` small `JudgeBatch` items written ahead on one raw HTTP/2 stream, each in its own DATA frame
/// (as grpcio clients send them). Returns how many results came back and the final grpc-status.
async fn small_items_ahead(server: &TestServer, n: usize) -> (usize, Option<String>) {
    let addr = server.server.local_addr();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::post(format!("http://{addr}/rmr1.v1.JudgeService/JudgeBatch"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let mut client = client.ready().await.unwrap();
    let (response, mut stream) = client.send_request(request, false).unwrap();
    for i in 0..n {
        let body = pair_request(&format!("i{i}"), "Q?", "A.", "B.", 1).encode_to_vec();
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
        framed.extend_from_slice(&body);
        if stream.send_data(Bytes::from(framed), i + 1 == n).is_err() {
            break;
        }
    }
    let mut results = 0;
    let mut status = None;
    if let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(120), response).await {
        let mut body = response.into_body();
        let mut buffer = bytes::BytesMut::new();
        while let Some(Ok(chunk)) = body.data().await {
            let _ = body.flow_control().release_capacity(chunk.len());
            buffer.extend_from_slice(&chunk);
            while buffer.len() >= 5 {
                let len = u32::from_be_bytes(buffer[1..5].try_into().unwrap()) as usize;
                if buffer.len() < 5 + len {
                    break;
                }
                let message = buffer.split_to(5 + len);
                let r = JudgeBatchResult::decode(&message[5..]).unwrap();
                assert!(
                    matches!(
                        r.outcome,
                        Some(rmr1::api::proto::judge_batch_result::Outcome::Response(_))
                    ),
                    "{r:?}"
                );
                results += 1;
            }
        }
        status = body.trailers().await.ok().flatten().and_then(|t| {
            t.get("grpc-status")
                .map(|v| v.to_str().unwrap().to_string())
        });
    }
    connection.abort();
    (results, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_small_batch_items_sent_ahead_are_all_answered() {
    let test = server().await;
    assert_eq!(
        small_items_ahead(&test, 10_000).await,
        (10_000, Some("0".into()))
    );
    // The control: with HTTP/2's default 64 KiB windows the connection is closed and nothing
    // comes back.
    let strict = start_configured(
        &tiny_judge_spec(),
        EngineConfig::default(),
        ServerOptions {
            http2_connection_window: 65_535,
            http2_stream_window: 65_535,
            ..ServerOptions::default()
        },
    )
    .await;
    let (results, _) = small_items_ahead(&strict, 4000).await;
    assert!(results < 4000, "{results}");
}

/// SIGTERM (here: the signal future of `run_until`) with a JudgeBatch stream open: health goes
/// NOT_SERVING, the running items finish and arrive, an item sent after the signal is refused
/// UNAVAILABLE, the stream then ends UNAVAILABLE saying so, a new call is refused, and the server
/// stops within the drain timeout although the client never closed its stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_open_batch_stream_and_stops() {
    use rmr1::api::proto::judge_batch_result::Outcome;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let spec = common::TinySpec {
        suppress_eos: true,
        ..tiny_judge_spec()
    };
    let test = start_configured(
        &spec,
        EngineConfig::default(),
        ServerOptions {
            drain_timeout: Duration::from_secs(20),
            ..ServerOptions::default()
        },
    )
    .await;
    let url = test.url();
    let mut client = test.client().await;
    let (items, rx) = tokio::sync::mpsc::channel(8);
    let mut results = client
        .judge_batch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for id in ["long1", "long2"] {
        items
            .send(pair_request(id, "Write at length.", "A.", "B.", 600))
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while test.server.in_flight() < 2 {
        assert!(Instant::now() < deadline, "items never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (signal_tx, signal_rx) = tokio::sync::oneshot::channel::<()>();
    let server = test.server;
    let stopped = tokio::spawn(server.run_until(async {
        let _ = signal_rx.await;
    }));
    let signalled = Instant::now();
    signal_tx.send(()).unwrap();

    let mut health = HealthClient::new(
        tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::NotServing as i32);
    let status = client
        .judge(pair_request("late", "Q?", "A.", "B.", 2))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    items
        .send(pair_request("after", "Q?", "A.", "B.", 2))
        .await
        .unwrap();

    let mut judged = Vec::new();
    let mut refused = Vec::new();
    let end = loop {
        match results.message().await {
            Ok(Some(r)) => match r.outcome {
                Some(Outcome::Response(_)) => judged.push(r.request_id),
                Some(Outcome::Error(e)) => {
                    assert_eq!(e.code, Code::Unavailable as i32, "{e:?}");
                    refused.push(r.request_id);
                }
                None => panic!("empty outcome"),
            },
            Ok(None) => panic!("the stream ended OK during a drain with the client still sending"),
            Err(status) => break status,
        }
    };
    judged.sort();
    assert_eq!(judged, ["long1", "long2"]);
    assert_eq!(refused, ["after"]);
    assert_eq!(end.code(), Code::Unavailable);
    assert!(end.message().contains("shutting down"), "{end:?}");
    // The client still holds its stream open; the server stops regardless, well within the
    // drain timeout.
    tokio::time::timeout(Duration::from_secs(25), stopped)
        .await
        .expect("the server did not stop")
        .unwrap()
        .unwrap();
    eprintln!("stopped {:?} after the signal", signalled.elapsed());
    drop(items);
}

/// Whether an idle HTTP/2 connection (handshake done, no calls) is closed by the server within
/// `within`.
async fn idle_connection_closed(server: &TestServer, within: Duration) -> bool {
    let tcp = tokio::net::TcpStream::connect(server.server.local_addr())
        .await
        .unwrap();
    let (_client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::time::timeout(within, connection).await.is_ok()
}

/// Idle connections do not live forever: past `max_connection_age` the server sends GOAWAY and
/// closes a connection without calls (one with calls closes once they finish). Without an age
/// (the control), an idle connection stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_maximum_age() {
    let aged = start_configured(
        &tiny_judge_spec(),
        EngineConfig::default(),
        ServerOptions {
            max_connection_age: Some(Duration::from_secs(1)),
            ..ServerOptions::default()
        },
    )
    .await;
    assert!(idle_connection_closed(&aged, Duration::from_secs(10)).await);
    // A client reconnects after the GOAWAY and its calls go on.
    let mut client = aged.client().await;
    for i in 0..3 {
        client
            .judge(pair_request(&format!("r{i}"), "Q?", "A.", "B.", 2))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let ageless = start_configured(
        &tiny_judge_spec(),
        EngineConfig::default(),
        ServerOptions {
            max_connection_age: None,
            ..ServerOptions::default()
        },
    )
    .await;
    assert!(!idle_connection_closed(&ageless, Duration::from_secs(3)).await);
}
