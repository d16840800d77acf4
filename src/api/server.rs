//! The gRPC server: judge and model services, training jobs when configured, standard health,
//! and reflection on one port.
//!
//! The server listens before any model is loaded so orchestrators can probe it: health says
//! NOT_SERVING until [`GrpcServer::add_model`] has loaded and warmed a model up. The training
//! service needs no judge model and reports SERVING as soon as its job store is open.

use super::access::AccessLayer;
use super::drain::Drain;
use super::judge_service::JudgeApi;
use super::model_service::ModelApi;
use super::options::ServerOptions;
use super::proto::judge_service_server::JudgeServiceServer;
use super::proto::model_service_server::ModelServiceServer;
use super::proto::training_service_server::TrainingServiceServer;
use super::proto::FILE_DESCRIPTOR_SET;
use super::registry::ModelRegistry;
use super::training_service::TrainingApi;
use crate::judge::judge_model::{JudgeModel, JudgeModelOptions};
use crate::train::{TrainJobs, TrainingConfig};
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// Largest response message (raw outputs with 50k tokens, both orders).
const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// The health service name of the liveness probe: SERVING from start-up (also while a model
/// loads, which can take minutes) until the engine dies. Readiness is the overall status ("").
pub const LIVENESS_SERVICE: &str = "liveness";
/// After the engine died: how long in-flight calls get to receive their error before the server
/// stops.
const ENGINE_FAILURE_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

pub struct GrpcServer {
    local_addr: SocketAddr,
    drain: Arc<Drain>,
    drain_timeout: std::time::Duration,
    registry: Arc<ModelRegistry>,
    health: HealthReporter,
    training: Option<Arc<TrainJobs>>,
    /// Set (with the reason) when a served model's engine has stopped for good.
    engine_failed: watch::Sender<Option<String>>,
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
        report_judging(&health, ServingStatus::NotServing).await;
        health
            .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
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
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &options.tls {
            builder = builder.tls_config(tls.load()?).context("configuring TLS")?;
        }
        if let Some(age) = options.max_connection_age {
            builder = builder.max_connection_age(age);
        }
        let router = builder
            .http2_max_pending_accept_reset_streams(Some(options.http2_max_pending_reset_streams))
            .http2_keepalive_interval(Some(options.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(options.http2_keepalive_timeout))
            .max_concurrent_streams(options.max_concurrent_streams)
            .initial_connection_window_size(options.http2_connection_window)
            .initial_stream_window_size(options.http2_stream_window)
            .layer(AccessLayer::new(options.tokens.clone()))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(judge)
            .add_service(models)
            .add_optional_service(training_service);
        let task = tokio::spawn(router.serve_with_incoming_shutdown(
            super::accept::incoming(listener),
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
            engine_failed: watch::channel(None).0,
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

    /// Loads the model `spec` names (a directory, GGUF file or hub id; off the async threads:
    /// reading weights blocks), then [`Self::add_model`]s it.
    pub async fn load_model(
        &self,
        spec: &str,
        options: JudgeModelOptions,
    ) -> Result<Arc<JudgeModel>> {
        let spec = spec.to_string();
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
        report_judging(&self.health, ServingStatus::Serving).await;
        tracing::info!(model = model.name(), family = %model.family(), "SERVING");
        self.watch_engine(&model);
        Ok(model)
    }

    /// When `model`'s engine stops for good: NOT_SERVING everywhere (liveness included, so the
    /// orchestrator restarts the process) and [`Self::run_until`] returns the failure.
    fn watch_engine(&self, model: &Arc<JudgeModel>) {
        let (fault, health) = (model.engine.fault().clone(), self.health.clone());
        let (failed, name) = (self.engine_failed.clone(), model.name().to_string());
        tokio::spawn(async move {
            let reason = fault.wait().await.to_string();
            tracing::error!(model = %name, %reason, "engine failed: NOT_SERVING, stopping");
            report_judging(&health, ServingStatus::NotServing).await;
            health
                .set_service_status(LIVENESS_SERVICE, ServingStatus::NotServing)
                .await;
            failed.send_replace(Some(format!("model {name}: {reason}")));
        });
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
    ///
    /// When a served engine dies instead, new work is refused, in-flight calls get a moment to
    /// receive their UNAVAILABLE, and this returns the failure (the process should exit non-zero).
    pub async fn run_until(mut self, signal: impl std::future::Future<Output = ()>) -> Result<()> {
        let mut engine_failed = self.engine_failed.subscribe();
        let engine_failure = tokio::select! {
            result = &mut self.task => return result?.context("gRPC server failed"),
            _ = signal => None,
            reason = engine_failed.wait_for(Option::is_some) => {
                Some(reason.ok().and_then(|r| r.clone()).unwrap_or_default())
            }
        };
        if let Some(reason) = engine_failure {
            self.drain.begin();
            self.drain.wait_idle(ENGINE_FAILURE_FLUSH).await;
            self.drain_timeout = ENGINE_FAILURE_FLUSH;
            self.shutdown().await?;
            anyhow::bail!("the engine failed: {reason}");
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
        report_judging(&self.health, ServingStatus::NotServing).await;
        self.drain.begin();
        if !self.drain.wait_idle(self.drain_timeout).await {
            tracing::warn!(
                in_flight = self.drain.in_flight(),
                "drain timeout: stopping with judgments still running"
            );
        }
    }
}

/// Sets the overall status (readiness) and the judge and model services' to `status`.
async fn report_judging(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health
        .set_service_status(
            <JudgeServiceServer<JudgeApi> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
    health
        .set_service_status(
            <ModelServiceServer<ModelApi> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
}
