//! `rmr1 serve`: listen first (health NOT_SERVING), load and warm the model, then SERVING. With
//! `--data-dir` and `--train-roots`, training jobs are served beside the judge.

use anyhow::{Context, Result};
use rmr1::api::{GrpcServer, ServerOptions, TlsFiles, TokenTable, TrainingConfig};
use rmr1::serving_args::ModelArgs;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// gRPC address. Loopback by default: exposing it is a deliberate choice (`--listen
    /// 0.0.0.0:50051`, as the container and deploy files do), best with --tls-cert and
    /// --auth-tokens.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Prometheus `/metrics` address (no TLS or authentication: keep it on a private network);
    /// "off" disables it.
    #[arg(long, default_value = "127.0.0.1:9090")]
    metrics_listen: String,
    /// Enables training jobs (rmr1.v1.TrainingService): the job database lives here.
    #[arg(long, requires = "train_roots")]
    data_dir: Option<PathBuf>,
    /// Directories training jobs may read data from and write outputs to (comma-separated);
    /// relative paths in job specs resolve against the first.
    #[arg(long, value_delimiter = ',', requires = "data_dir")]
    train_roots: Vec<PathBuf>,
    /// Largest request message, MiB; larger ones are refused before they are decoded.
    #[arg(long, default_value_t = 16)]
    max_request_mib: usize,
    /// Streams a client may reset before the server accepts them, per connection, before the
    /// connection is closed (GOAWAY). Bursts of short client deadlines need room here.
    #[arg(long, default_value_t = 1024)]
    http2_max_pending_resets: usize,
    /// Seconds between HTTP/2 keepalive pings on a connection; a ping unanswered for 20 s closes it.
    #[arg(long, default_value_t = 30)]
    http2_keepalive_secs: u64,
    /// On SIGTERM: seconds running judgments get to finish (health NOT_SERVING and new work
    /// refused at once) before the server stops.
    #[arg(long, default_value_t = 30)]
    drain_timeout_secs: u64,
    /// Seconds after which a connection is asked to go away (GOAWAY: its calls finish, the client
    /// reconnects), so idle connections do not live forever and clients spread over new
    /// replicas; 0: never.
    #[arg(long, default_value_t = 1800)]
    max_connection_age_secs: u64,
    /// Concurrent calls (HTTP/2 streams) per connection.
    #[arg(long, default_value_t = 1024)]
    max_concurrent_streams: u32,
    /// TLS: the server's certificate chain (PEM). Needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS: the server's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: clients must present a certificate signed by this CA (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Bearer-token authentication: a file of lines `<role> <token> [<name>]`, role `judge`
    /// (judge and model services) or `admin` (also training jobs and server paths). Health stays
    /// open for probes.
    #[arg(long)]
    auth_tokens: Option<PathBuf>,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("rmr1-rpc")
        .build()?;
    runtime.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> Result<()> {
    // A missing --model is reported before anything binds a port.
    args.model.spec()?;
    let metrics_addr = match args.metrics_listen.as_str() {
        "off" | "none" | "" => None,
        addr => Some(
            addr.parse::<SocketAddr>()
                .with_context(|| format!("--metrics-listen {addr:?} is not an address"))?,
        ),
    };
    let tokens = match &args.auth_tokens {
        Some(path) => {
            let table = TokenTable::read(path)?;
            tracing::info!(tokens = table.len(), "bearer-token authentication on");
            Some(std::sync::Arc::new(table))
        }
        None => None,
    };
    let tls = args.tls_cert.clone().map(|cert| TlsFiles {
        cert,
        key: args
            .tls_key
            .clone()
            .expect("clap requires --tls-key with --tls-cert"),
        client_ca: args.tls_client_ca.clone(),
    });
    if !args.listen.ip().is_loopback() {
        let missing: Vec<&str> = [
            tls.is_none().then_some("TLS"),
            (tokens.is_none() && tls.as_ref().is_none_or(|t| t.client_ca.is_none()))
                .then_some("authentication"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !missing.is_empty() {
            tracing::warn!(
                addr = %args.listen,
                "gRPC listens beyond loopback without {}: anyone who can reach it can use it \
                 (see --tls-cert, --tls-client-ca, --auth-tokens)",
                missing.join(" or ")
            );
        }
    }
    if let Some(addr) = metrics_addr.filter(|a| !a.ip().is_loopback()) {
        tracing::warn!(%addr, "metrics listen beyond loopback; they have no authentication");
    }
    rmr1::metrics::install(metrics_addr).await?;
    if let Some(addr) = metrics_addr {
        tracing::info!(%addr, "Prometheus metrics at /metrics");
    }
    let training = match args.data_dir {
        Some(data_dir) => Some(TrainingConfig {
            data_dir,
            train_roots: args.train_roots,
            // Jobs train on the device the judge serves from, one job at a time.
            executor: rmr1::train::default_executor(args.model.device.open()?),
        }),
        None => None,
    };
    let with_training = training.is_some();
    let options = ServerOptions {
        max_request_bytes: args.max_request_mib << 20,
        http2_max_pending_reset_streams: args.http2_max_pending_resets,
        http2_keepalive_interval: std::time::Duration::from_secs(args.http2_keepalive_secs.max(1)),
        drain_timeout: std::time::Duration::from_secs(args.drain_timeout_secs),
        max_connection_age: (args.max_connection_age_secs > 0)
            .then(|| std::time::Duration::from_secs(args.max_connection_age_secs)),
        max_concurrent_streams: args.max_concurrent_streams,
        tls,
        tokens,
        ..ServerOptions::default()
    };
    let server = GrpcServer::start_with_options(args.listen, training, options).await?;
    server
        .load_model(args.model.spec()?, args.model.options())
        .await?;
    eprintln!(
        "rmr1 serving on {} (gRPC: rmr1.v1.JudgeService, rmr1.v1.ModelService{}, health, \
         reflection)",
        server.local_addr(),
        if with_training {
            ", rmr1.v1.TrainingService"
        } else {
            ""
        }
    );
    server.run_until(termination()).await
}

/// Ctrl-C, or SIGTERM from an orchestrator.
async fn termination() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
