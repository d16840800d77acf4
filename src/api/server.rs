//! The gRPC server: judge and model services, training jobs when configured, standard health,
//! and reflection on one port.
//!
//! The server listens before any model is loaded so orchestrators can probe it: health says
//! NOT_SERVING until [`GrpcServer::add_model`] has loaded and warmed a model up. The training
//! service needs no judge model and reports SERVING as soon as its job store is open.

use super::drain::Drain;
use super::judge_service::JudgeApi;
use super::model_service::ModelApi;
use super::proto::judge_service_server::JudgeServiceServer;
use super::proto::model_service_server::ModelServiceServer;
use super::proto::training_service_server::TrainingServiceServer;
use super::proto::FILE_DESCRIPTOR_SET;
use super::registry::ModelRegistry;
use super::training_service::TrainingApi;
use crate::judge::judge_model::JudgeModel;
use crate::serving_args::ModelArgs;
use crate::train::{TrainJobs, TrainingConfig};
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// Largest response message (raw outputs with 50k tokens, both orders).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Connection-level limits of the gRPC server (HTTP/2 and message sizes). Plain data: the CLI maps
/// its flags onto it, tests and embedders build it directly.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerOptions {
    /// Largest request message. A judge request is two replies and a conversation; anything larger
    /// is refused (RESOURCE_EXHAUSTED) before it is decoded, let alone tokenized.
    pub max_request_bytes: usize,
    /// Streams a client may reset before the server accepted them, per connection, before the
    /// HTTP/2 layer answers with GOAWAY. h2's default (20) lets one burst of short client deadlines
    /// kill every call sharing the connection; rapid-reset floods are still bounded.
    pub http2_max_pending_reset_streams: usize,
    /// Ping an idle connection this often, and drop it when a ping goes unanswered for
    /// `http2_keepalive_timeout`: dead peers do not hold connections (and file descriptors).
    pub http2_keepalive_interval: std::time::Duration,
    pub http2_keepalive_timeout: std::time::Duration,
    /// Concurrent streams per connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 flow-control windows, bytes. The connection window also sets h2's budget for DATA
    /// frame overhead (half of it): with the 64 KiB default, a client sending a few thousand small
    /// `JudgeBatch` items ahead got the connection closed (`too_many_data_frames`).
    pub http2_connection_window: u32,
    pub http2_stream_window: u32,
    /// On shutdown, how long running judgments may take to finish before the server stops anyway.
    pub drain_timeout: std::time::Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            max_request_bytes: 16 << 20,
            http2_max_pending_reset_streams: 1024,
            http2_keepalive_interval: std::time::Duration::from_secs(30),
            http2_keepalive_timeout: std::time::Duration::from_secs(20),
            max_concurrent_streams: 1024,
            http2_connection_window: 16 << 20,
            http2_stream_window: 4 << 20,
            drain_timeout: std::time::Duration::from_secs(30),
        }
    }
}

pub struct GrpcServer {
    local_addr: SocketAddr,
    drain: Arc<Drain>,
    drain_timeout: std::time::Duration,
    registry: Arc<ModelRegistry>,
    health: HealthReporter,
    training: Option<Arc<TrainJobs>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl GrpcServer {
    /// Binds `addr` (port 0 picks a free port) and starts serving, NOT_SERVING until a model is added.
    pub async fn start(addr: SocketAddr) -> Result<Self> {
        Self::start_with(addr, None).await
    }

    /// [`Self::start`], plus the training service when `training` is given: its job store is
    /// opened (jobs a previous process left running are queued again) and its runner started
    /// before the port is bound.
    pub async fn start_with(addr: SocketAddr, training: Option<TrainingConfig>) -> Result<Self> {
        Self::start_with_options(addr, training, ServerOptions::default()).await
    }

    /// [`Self::start_with`] under `options`.
    pub async fn start_with_options(
        addr: SocketAddr,
        training: Option<TrainingConfig>,
        options: ServerOptions,
    ) -> Result<Self> {
        let training = match training {
            Some(config) => Some(Arc::new(
                tokio::task::spawn_blocking(move || TrainJobs::open(config))
                    .await?
                    .context("starting training jobs")?,
            )),
            None => None,
        };
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the gRPC listener on {addr}"))?;
        let local_addr = listener.local_addr()?;
        let registry = Arc::new(ModelRegistry::default());
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        health
            .set_not_serving::<JudgeServiceServer<JudgeApi>>()
            .await;
        health
            .set_not_serving::<ModelServiceServer<ModelApi>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building the reflection service")?;
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .context("building the reflection service")?;
        let drain = Arc::new(Drain::default());
        let judge = JudgeServiceServer::new(JudgeApi {
            registry: registry.clone(),
            drain: drain.clone(),
        })
        .max_decoding_message_size(options.max_request_bytes)
        .max_encoding_message_size(MAX_RESPONSE_BYTES);
        let models = ModelServiceServer::new(ModelApi {
            registry: registry.clone(),
        });
        let training_service = training
            .as_ref()
            .map(|jobs| TrainingServiceServer::new(TrainingApi { jobs: jobs.clone() }));
        if training_service.is_some() {
            health
                .set_serving::<TrainingServiceServer<TrainingApi>>()
                .await;
        }
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let router = tonic::transport::Server::builder()
            .http2_max_pending_accept_reset_streams(Some(options.http2_max_pending_reset_streams))
            .http2_keepalive_interval(Some(options.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(options.http2_keepalive_timeout))
            .max_concurrent_streams(options.max_concurrent_streams)
            .initial_connection_window_size(options.http2_connection_window)
            .initial_stream_window_size(options.http2_stream_window)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(judge)
            .add_service(models)
            .add_optional_service(training_service);
        let task = tokio::spawn(router.serve_with_incoming_shutdown(
            TcpListenerStream::new(listener),
            async {
                let _ = shutdown_rx.await;
            },
        ));
        tracing::info!(%local_addr, "gRPC listening (NOT_SERVING until the model is loaded)");
        Ok(Self {
            local_addr,
            drain,
            drain_timeout: options.drain_timeout,
            registry,
            health,
            training,
            shutdown: Some(shutdown_tx),
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Judgments running now (calls and batch items).
    pub fn in_flight(&self) -> usize {
        self.drain.in_flight()
    }

    pub fn registry(&self) -> &Arc<ModelRegistry> {
        &self.registry
    }

    /// The training jobs, when the server was started with a [`TrainingConfig`].
    pub fn training(&self) -> Option<&Arc<TrainJobs>> {
        self.training.as_ref()
    }

    /// Loads the model `args` name (off the async threads: reading weights blocks), then
    /// [`Self::add_model`]s it.
    pub async fn load_model(&self, args: &ModelArgs) -> Result<Arc<JudgeModel>> {
        let (spec, options) = (args.spec()?.to_string(), args.options());
        let model = tokio::task::spawn_blocking(move || JudgeModel::load(&spec, &options))
            .await?
            .context("loading the model")?;
        self.add_model(model).await
    }

    /// Warms `model` up, makes it servable, and reports SERVING.
    pub async fn add_model(&self, model: JudgeModel) -> Result<Arc<JudgeModel>> {
        model.warm_up().await.context("warming the model up")?;
        let model = Arc::new(model);
        self.registry.add(model.clone());
        self.health
            .set_service_status("", ServingStatus::Serving)
            .await;
        self.health
            .set_serving::<JudgeServiceServer<JudgeApi>>()
            .await;
        self.health
            .set_serving::<ModelServiceServer<ModelApi>>()
            .await;
        tracing::info!(model = model.name(), family = %model.family(), "SERVING");
        Ok(model)
    }

    /// Stops accepting calls, lets running ones finish, stops the training runner (a running job
    /// stays RUNNING and resumes on the next start), and returns when all have stopped — or, when
    /// a client keeps a connection open past the drain timeout, stops the server anyway.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Training first: it ends open watches, which the graceful shutdown would wait for.
        if let Some(jobs) = self.training.take() {
            tokio::task::spawn_blocking(move || jobs.shutdown()).await?;
        }
        match tokio::time::timeout(self.drain_timeout, &mut self.task).await {
            Ok(result) => result?.context("gRPC server failed"),
            Err(_) => {
                tracing::warn!("connections still open after the drain timeout; closing them");
                self.task.abort();
                Ok(())
            }
        }
    }

    /// Serves until `signal` resolves, then drains and shuts down; returns early if the server
    /// fails. The drain: health goes NOT_SERVING (load balancers stop sending), new judgments and
    /// new batch items are refused UNAVAILABLE, running ones get up to the drain timeout to finish
    /// (open batch streams then end with a status saying what was not done), and the server stops
    /// — also when a client holds a connection open.
    pub async fn run_until(mut self, signal: impl std::future::Future<Output = ()>) -> Result<()> {
        tokio::select! {
            result = &mut self.task => return result?.context("gRPC server failed"),
            _ = signal => {}
        }
        self.drain().await;
        self.shutdown().await
    }

    /// The drain of [`Self::run_until`], without stopping the server.
    pub async fn drain(&self) {
        tracing::info!(
            in_flight = self.drain.in_flight(),
            timeout_s = self.drain_timeout.as_secs_f64(),
            "stopping: NOT_SERVING, refusing new judgments, finishing running ones"
        );
        self.health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        self.health
            .set_not_serving::<JudgeServiceServer<JudgeApi>>()
            .await;
        self.health
            .set_not_serving::<ModelServiceServer<ModelApi>>()
            .await;
        self.drain.begin();
        if !self.drain.wait_idle(self.drain_timeout).await {
            tracing::warn!(
                in_flight = self.drain.in_flight(),
                "drain timeout: stopping with judgments still running"
            );
        }
    }
}
