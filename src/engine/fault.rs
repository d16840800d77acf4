//! When the engine cannot go on: which step failures are contained, which end the engine, and how
//! the rest of the process learns of it.
//!
//! A step that fails is contained when the failure concerns that step only: its sequences are
//! failed, the others go on (today's behaviour, `EngineCore::step`). The engine stops for good —
//! every request failed, the thread ended, [`EngineFault`] set — when it can no longer be trusted:
//! - the engine thread panicked (its state may be half-updated);
//! - a step failed on a GPU (CUDA errors are sticky: the context is unusable after one);
//! - steps failed [`MAX_CONSECUTIVE_FAILURES`] times in a row on the CPU (a persistent fault, not
//!   one bad batch).
//!
//! The server watches [`EngineFault`]: health goes NOT_SERVING and the process exits non-zero, so
//! the orchestrator restarts it instead of routing requests to an engine that fails them all.

use super::core::EngineCore;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::OnceLock;
use tokio::sync::Notify;

/// Failed steps in a row after which a CPU engine gives up.
pub const MAX_CONSECUTIVE_FAILURES: u32 = 3;

/// Set once, when the engine has stopped for good; says why.
#[derive(Debug, Default)]
pub struct EngineFault {
    message: OnceLock<String>,
    notify: Notify,
}

impl EngineFault {
    /// Why the engine stopped, once it has.
    pub fn get(&self) -> Option<&str> {
        self.message.get().map(String::as_str)
    }

    fn set(&self, message: String) {
        if self.message.set(message).is_ok() {
            self.notify.notify_waiters();
        }
    }

    /// Resolves when the engine stops for good, with the reason.
    pub async fn wait(&self) -> &str {
        loop {
            let notified = self.notify.notified();
            if let Some(message) = self.get() {
                return message;
            }
            notified.await;
        }
    }
}

/// A fault to inject, for tests of the containment above through the real binary: set
/// `RMR1_TEST_ENGINE_FAULT=<kind>:<trigger file>`; the fault fires at each step that starts while
/// the trigger file exists. Kinds: `panic` (the engine thread panics), `error` (the step fails
/// before the forward), `error-once` (as `error`, and the engine deletes the trigger file, so
/// exactly one step fails). Not set: no cost beyond one branch per step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Injection {
    kind: InjectedFault,
    trigger: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InjectedFault {
    Panic,
    Error,
    ErrorOnce,
}

const INJECTION_VAR: &str = "RMR1_TEST_ENGINE_FAULT";

impl Injection {
    pub fn from_env() -> Option<Self> {
        let spec = std::env::var(INJECTION_VAR).ok()?;
        let parsed = Self::parse(&spec);
        if parsed.is_none() {
            tracing::error!(%spec, "{INJECTION_VAR} is not <panic|error|error-once>:<file>; ignored");
        }
        parsed
    }

    fn parse(spec: &str) -> Option<Self> {
        let (kind, trigger) = spec.split_once(':')?;
        let kind = match kind {
            "panic" => InjectedFault::Panic,
            "error" => InjectedFault::Error,
            "error-once" => InjectedFault::ErrorOnce,
            _ => return None,
        };
        Some(Self {
            kind,
            trigger: PathBuf::from(trigger),
        })
    }

    /// Checked by `EngineCore::step` just before the forward, where a real device fault happens.
    pub fn fire(&self) -> anyhow::Result<()> {
        if !self.trigger.exists() {
            return Ok(());
        }
        match self.kind {
            InjectedFault::Panic => panic!("injected engine panic ({INJECTION_VAR})"),
            InjectedFault::Error => anyhow::bail!("injected step error ({INJECTION_VAR})"),
            InjectedFault::ErrorOnce => {
                let _ = std::fs::remove_file(&self.trigger);
                anyhow::bail!("injected step error ({INJECTION_VAR}, once)")
            }
        }
    }
}

/// Runs engine steps and decides, after each failure, whether the engine may go on.
#[derive(Default)]
pub(super) struct StepSupervisor {
    consecutive_failures: u32,
}

/// The engine may not step again; the message says why.
pub(super) struct Fatal(pub String);

impl StepSupervisor {
    /// One step of `core`, with failures contained or turned [`Fatal`].
    pub fn step(&mut self, core: &mut EngineCore) -> Result<(), Fatal> {
        match catch_unwind(AssertUnwindSafe(|| core.step())) {
            Ok(Ok(_)) => {
                self.consecutive_failures = 0;
                Ok(())
            }
            Ok(Err(error)) => {
                self.consecutive_failures += 1;
                if core.runs_on_gpu() {
                    return Err(Fatal(format!(
                        "an engine step failed on the GPU, whose state is now unknown: {error:#}"
                    )));
                }
                if self.consecutive_failures >= MAX_CONSECUTIVE_FAILURES {
                    return Err(Fatal(format!(
                        "{} engine steps failed in a row; the last: {error:#}",
                        self.consecutive_failures
                    )));
                }
                tracing::error!(
                    error = %format!("{error:#}"),
                    "engine step failed; its sequences were failed"
                );
                Ok(())
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                Err(Fatal(format!("the engine thread panicked: {what}")))
            }
        }
    }
}

/// Stops the engine for good: records why (first, so that callers whose requests fail next can
/// tell the engine is gone), then fails every request it holds.
pub(super) fn stop_for_good(core: &mut EngineCore, fault: &EngineFault, Fatal(reason): Fatal) {
    tracing::error!(%reason, "the engine has stopped; failing its requests");
    fault.set(reason.clone());
    let message = format!("the engine failed and stopped: {reason}");
    // After a panic the core may be half-updated; failing requests only sends on their channels,
    // and whatever cannot be sent is dropped with the core (the stream then just ends).
    let _ = catch_unwind(AssertUnwindSafe(|| core.fail_everything(&message)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injection_specs_parse() {
        let parsed = Injection::parse("error-once:/tmp/x").unwrap();
        assert_eq!(parsed.kind, InjectedFault::ErrorOnce);
        assert_eq!(parsed.trigger, PathBuf::from("/tmp/x"));
        assert_eq!(
            Injection::parse("panic:/a:b").unwrap().trigger,
            PathBuf::from("/a:b")
        );
        assert!(Injection::parse("explode:/tmp/x").is_none());
        assert!(Injection::parse("panic").is_none());
    }

    #[tokio::test]
    async fn the_fault_is_set_once_and_wakes_waiters() {
        let fault = std::sync::Arc::new(EngineFault::default());
        let waiter = {
            let fault = fault.clone();
            tokio::spawn(async move { fault.wait().await.to_string() })
        };
        tokio::task::yield_now().await;
        assert_eq!(fault.get(), None);
        fault.set("first".into());
        fault.set("second".into());
        assert_eq!(waiter.await.unwrap(), "first");
        assert_eq!(fault.get(), Some("first"));
    }
}
