//! `ModelService`: what is loaded. Where it was loaded from is server-internal: callers other than
//! admins see a local path as its file or directory name only.

use super::access::Caller;
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
        request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        let caller = Caller::of(&request);
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
                    source: if caller.is_admin() {
                        d.source.clone()
                    } else {
                        public_source(&d.source)
                    },
                    is_default: i == 0,
                    manifest: d.manifest.clone().unwrap_or_default(),
                }
            })
            .collect();
        Ok(Response::new(ListModelsResponse { models }))
    }
}

/// A hub id as is; a local path as its last component (no directory layout of the server).
fn public_source(source: &str) -> String {
    let path = std::path::Path::new(source);
    let looks_local = path.is_absolute()
        || source.starts_with('.')
        || source.contains(std::path::MAIN_SEPARATOR) && path.exists()
        || source.contains('\\');
    if !looks_local {
        return source.to_string();
    }
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::public_source;

    #[test]
    fn local_paths_lose_their_directories_hub_ids_stay() {
        assert_eq!(public_source("/srv/models/judge-7b.gguf"), "judge-7b.gguf");
        assert_eq!(public_source("./models/tiny"), "tiny");
        assert_eq!(public_source("../m/x.gguf"), "x.gguf");
        assert_eq!(
            public_source("gaotang/RM-R1-Qwen2.5-Instruct-7B"),
            "gaotang/RM-R1-Qwen2.5-Instruct-7B"
        );
        assert_eq!(public_source("owner/name@rev"), "owner/name@rev");
    }
}
