//! The Prometheus scrape endpoint: `GET /metrics` and nothing else.
//!
//! The exporter crate's own listener answers every path and method with the metrics; a scanner
//! probing `/admin` or `/.env` should get 404, and a POST 405, like any other HTTP server.

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Prometheus text exposition format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// A scrape that has not sent its request line in this long is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

fn respond(
    handle: &PrometheusHandle,
    request: &Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        response.headers_mut().insert(
            hyper::header::ALLOW,
            "GET, HEAD".parse().expect("static header"),
        );
        return response;
    }
    let mut response = Response::new(Full::new(Bytes::from(handle.render())));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        CONTENT_TYPE.parse().expect("static header"),
    );
    response
}

/// Binds `addr` and serves `/metrics` from `handle` until the task is aborted.
pub async fn serve(
    addr: SocketAddr,
    handle: PrometheusHandle,
) -> Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics listener on {addr}"))?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        use futures::StreamExt;
        let mut connections = std::pin::pin!(super::accept::incoming(listener));
        while let Some(Ok(stream)) = connections.next().await {
            let handle = handle.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = respond(&handle, &request);
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "metrics connection ended with an error");
                }
            });
        }
    });
    Ok((local, task))
}
