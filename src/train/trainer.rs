//! The trainer behind the job runner: runs a job's stage on one device.

use super::executor::{JobContext, RunOutcome, TrainError, TrainExecutor};
use super::spec::{TaskSpec, TrainSpec};
use candle_core::Device;

pub struct Trainer {
    device: Device,
}

impl Trainer {
    pub fn new(device: Device) -> Self {
        Self { device }
    }
}

impl TrainExecutor for Trainer {
    fn run(&self, spec: &TrainSpec, ctx: &dyn JobContext) -> Result<RunOutcome, TrainError> {
        match &spec.task {
            TaskSpec::Sft(sft) => super::sft::run(spec, sft, ctx, &self.device),
            TaskSpec::Grpo(grpo) => super::grpo::run(spec, grpo, ctx, &self.device),
        }
    }
}
