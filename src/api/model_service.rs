//! `ModelService`: what is loaded.

use super::proto::model_service_server::ModelService;
use super::proto::{ListModelsRequest, ListModelsResponse, ModelInfo};
use super::registry::ModelRegistry;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct ModelApi {
    pub registry: Arc<ModelRegistry>,
}

#[tonic::async_trait]
impl ModelService for ModelApi {
    async fn list_models(
        &self,
        _request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        let models = self
            .registry
            .list()
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let d = &m.description;
                ModelInfo {
                    name: d.name.clone(),
                    family: d.family.as_str().into(),
                    architecture: d.architecture.clone(),
                    context_length: d.context_length as u32,
                    dtype: d.dtype.clone(),
                    quantization: d.quantization.clone(),
                    source: d.source.clone(),
                    is_default: i == 0,
                    manifest: d.manifest.clone().unwrap_or_default(),
                }
            })
            .collect();
        Ok(Response::new(ListModelsResponse { models }))
    }
}
