//! The executor `rmr1 serve` runs jobs with: the trainer, on the device the judge model uses.

use super::executor::TrainExecutor;
use super::trainer::Trainer;
use candle_core::Device;
use std::sync::Arc;

/// The executor the server uses for training jobs.
pub fn default_executor(device: Device) -> Arc<dyn TrainExecutor> {
    Arc::new(Trainer::new(device))
}
