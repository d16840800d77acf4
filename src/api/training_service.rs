//! `TrainingService`: training jobs over gRPC. Only mapping and status codes; the job layer
//! (`crate::train::jobs`) validates, persists, queues and runs.
//!
//! The job layer's calls are short SQLite transactions (and a few `stat`s on create), so they run
//! on the async threads; training itself runs on the runner's own thread.

use super::proto::training_service_server::TrainingService;
use super::proto::{
    CancelTrainJobRequest, CreateTrainJobRequest, GetTrainJobRequest, ListCheckpointsRequest,
    ListCheckpointsResponse, ListTrainJobsRequest, ListTrainJobsResponse, TrainJob, TrainJobEvent,
    WatchTrainJobRequest,
};
use super::status::from_jobs_error;
use super::training_convert as convert;
use crate::metrics as m;
use crate::train::store::JobFilter;
use crate::train::TrainJobs;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

pub struct TrainingApi {
    pub jobs: Arc<TrainJobs>,
}

fn record_rpc<T>(rpc: &'static str, result: Result<T, Status>) -> Result<Response<T>, Status> {
    let code = match &result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    metrics::counter!(m::RPC_REQUESTS, "rpc" => rpc, "code" => format!("{code:?}")).increment(1);
    result.map(Response::new)
}

fn invalid(e: crate::train::spec::SpecError) -> Status {
    Status::invalid_argument(e.to_string())
}

impl TrainingApi {
    fn create(&self, r: CreateTrainJobRequest) -> Result<TrainJob, Status> {
        let spec = r
            .spec
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("spec: is required"))?;
        let spec = convert::train_spec(spec).map_err(invalid)?;
        let job = self
            .jobs
            .create(&r.job_id, convert::labels(&r.labels), spec)
            .map_err(|e| from_jobs_error(&e))?;
        Ok(convert::job_proto(&job))
    }

    fn list(&self, r: ListTrainJobsRequest) -> Result<ListTrainJobsResponse, Status> {
        let mut states = Vec::new();
        for s in &r.states {
            states.push(convert::state_from_proto(*s).ok_or_else(|| {
                Status::invalid_argument(format!("states: {s} is not a job state"))
            })?);
        }
        let filter = JobFilter {
            states,
            labels: convert::labels(&r.labels),
        };
        let (jobs, next_page_token) = self
            .jobs
            .list(&filter, r.page_size as usize, &r.page_token)
            .map_err(|e| from_jobs_error(&e))?;
        Ok(ListTrainJobsResponse {
            jobs: jobs.iter().map(convert::job_proto).collect(),
            next_page_token,
        })
    }
}

#[tonic::async_trait]
impl TrainingService for TrainingApi {
    async fn create_train_job(
        &self,
        request: Request<CreateTrainJobRequest>,
    ) -> Result<Response<TrainJob>, Status> {
        record_rpc("CreateTrainJob", self.create(request.into_inner()))
    }

    async fn get_train_job(
        &self,
        request: Request<GetTrainJobRequest>,
    ) -> Result<Response<TrainJob>, Status> {
        let result = self
            .jobs
            .get(&request.into_inner().job_id)
            .map(|j| convert::job_proto(&j))
            .map_err(|e| from_jobs_error(&e));
        record_rpc("GetTrainJob", result)
    }

    async fn list_train_jobs(
        &self,
        request: Request<ListTrainJobsRequest>,
    ) -> Result<Response<ListTrainJobsResponse>, Status> {
        record_rpc("ListTrainJobs", self.list(request.into_inner()))
    }

    async fn cancel_train_job(
        &self,
        request: Request<CancelTrainJobRequest>,
    ) -> Result<Response<TrainJob>, Status> {
        let result = self
            .jobs
            .cancel(&request.into_inner().job_id)
            .map(|j| convert::job_proto(&j))
            .map_err(|e| from_jobs_error(&e));
        record_rpc("CancelTrainJob", result)
    }

    type WatchTrainJobStream = Pin<Box<dyn Stream<Item = Result<TrainJobEvent, Status>> + Send>>;

    async fn watch_train_job(
        &self,
        request: Request<WatchTrainJobRequest>,
    ) -> Result<Response<Self::WatchTrainJobStream>, Status> {
        let r = request.into_inner();
        let result = self
            .jobs
            .watch(&r.job_id, r.after_sequence)
            .map_err(|e| from_jobs_error(&e))
            .map(|rx| {
                let stream = ReceiverStream::new(rx).map(|item| {
                    item.map(|e| convert::event_proto(&e))
                        .map_err(|e| from_jobs_error(&e))
                });
                Box::pin(stream) as Self::WatchTrainJobStream
            });
        record_rpc("WatchTrainJob", result)
    }

    async fn list_checkpoints(
        &self,
        request: Request<ListCheckpointsRequest>,
    ) -> Result<Response<ListCheckpointsResponse>, Status> {
        let result = self
            .jobs
            .checkpoints(&request.into_inner().job_id)
            .map(|c| ListCheckpointsResponse {
                checkpoints: c.iter().map(convert::checkpoint_proto).collect(),
            })
            .map_err(|e| from_jobs_error(&e));
        record_rpc("ListCheckpoints", result)
    }
}
