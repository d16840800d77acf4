//! The executor `rmr1 serve` runs jobs with. A placeholder until the trainer lands: it fails every
//! job with FAILED_PRECONDITION, so the job API can be deployed and exercised end to end first.

use super::executor::{JobContext, RunOutcome, TrainError, TrainErrorKind, TrainExecutor};
use super::spec::TrainSpec;
use std::sync::Arc;

/// The executor the server uses for training jobs.
pub fn default_executor() -> Arc<dyn TrainExecutor> {
    Arc::new(NotBuiltYet)
}

struct NotBuiltYet;

impl TrainExecutor for NotBuiltYet {
    fn run(&self, _spec: &TrainSpec, _ctx: &dyn JobContext) -> Result<RunOutcome, TrainError> {
        Err(TrainError::new(
            TrainErrorKind::FailedPrecondition,
            "trainer not built yet",
        ))
    }
}
