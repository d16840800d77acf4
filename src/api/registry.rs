//! The models this server judges with, by name. Owned by the server; services only read it.

use crate::judge::judge_model::JudgeModel;
use std::sync::{Arc, RwLock};
use tonic::Status;

#[derive(Default)]
pub struct ModelRegistry {
    /// The first model is the default for requests that name none.
    models: RwLock<Vec<Arc<JudgeModel>>>,
}

impl ModelRegistry {
    pub fn add(&self, model: Arc<JudgeModel>) {
        self.models.write().expect("registry lock").push(model);
    }

    pub fn list(&self) -> Vec<Arc<JudgeModel>> {
        self.models.read().expect("registry lock").clone()
    }

    /// `name` may be the served name, the `--model` source, or the manifest's hub id; empty
    /// selects the default model.
    pub fn get(&self, name: &str) -> Result<Arc<JudgeModel>, Status> {
        let models = self.models.read().expect("registry lock");
        if models.is_empty() {
            return Err(Status::unavailable(
                "no model is loaded yet; retry when health is SERVING",
            ));
        }
        if name.is_empty() {
            return Ok(models[0].clone());
        }
        models
            .iter()
            .find(|m| {
                let d = &m.description;
                d.name == name || d.source == name || d.manifest.as_deref() == Some(name)
            })
            .cloned()
            .ok_or_else(|| {
                let served: Vec<&str> = models.iter().map(|m| m.name()).collect();
                Status::not_found(format!(
                    "model {name:?} is not served here; served: {}",
                    served.join(", ")
                ))
            })
    }
}
