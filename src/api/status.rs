//! The one place where failures become gRPC status codes.

use crate::engine::SubmitError;
use crate::judge::pipeline::JudgeError;
use crate::train::JobsError;
use tonic::{Code, Status};

pub fn from_judge_error(error: &JudgeError) -> Status {
    let code = match error {
        JudgeError::InvalidInput(_) => Code::InvalidArgument,
        JudgeError::Render(_) => Code::Internal,
        JudgeError::Submit { error, .. } => submit_code(error),
        JudgeError::Engine(_) => Code::Internal,
        JudgeError::EngineFailed(_) => Code::Unavailable,
        JudgeError::TooLong { .. } => Code::InvalidArgument,
    };
    let message = match error {
        JudgeError::Submit {
            error: SubmitError::PromptTooLong { prompt, max },
            order,
        } => format!(
            "the rendered judge prompt{} has {prompt} tokens; the model's context is {max} tokens \
             (prompt and judgment must fit in it)",
            if *order == 1 { " (swapped order)" } else { "" }
        ),
        other => other.to_string(),
    };
    Status::new(code, message)
}

fn submit_code(error: &SubmitError) -> Code {
    match error {
        SubmitError::EmptyPrompt
        | SubmitError::PromptTooLong { .. }
        | SubmitError::InvalidParams(_) => Code::InvalidArgument,
        SubmitError::QueueFull(_) | SubmitError::ClientQueueFull { .. } => Code::ResourceExhausted,
        // Our tokenizer produced an id the model does not have: a server configuration fault.
        SubmitError::UnknownToken(..) => Code::Internal,
        SubmitError::EngineStopped => Code::Unavailable,
    }
}

pub fn from_jobs_error(error: &JobsError) -> Status {
    let code = match error {
        JobsError::InvalidArgument(_) => Code::InvalidArgument,
        JobsError::NotFound(_) => Code::NotFound,
        JobsError::AlreadyExists(_) => Code::AlreadyExists,
        JobsError::FailedPrecondition(_) => Code::FailedPrecondition,
        JobsError::Unavailable(_) => Code::Unavailable,
        JobsError::Internal(_) => Code::Internal,
    };
    Status::new(code, error.to_string())
}
