//! Graceful drain: once a shutdown begins, new judgments (calls and batch items) are refused with
//! UNAVAILABLE while the ones already running finish, up to a deadline. Every judgment holds an
//! [`InFlight`] guard while it runs, so the server knows when it is idle.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tonic::Status;

#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    /// Woken when draining begins.
    began: Notify,
    /// Woken when the last in-flight judgment ends.
    idle: Notify,
}

/// One running judgment; dropping it ends it.
#[derive(Debug)]
pub struct InFlight(Arc<Drain>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The status of work refused because the server is draining.
pub fn shutting_down() -> Status {
    Status::unavailable("the server is shutting down; send this request to another replica")
}

impl Drain {
    /// Registers a new judgment, or refuses it once draining has begun.
    pub fn enter(self: &Arc<Self>) -> Result<InFlight, Status> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(self.clone());
        if self.is_draining() {
            return Err(shutting_down());
        }
        Ok(guard)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Starts draining: from now on [`Self::enter`] refuses.
    pub fn begin(&self) {
        self.draining.store(true, Ordering::Release);
        self.began.notify_waiters();
    }

    /// Resolves once draining has begun.
    pub async fn began(&self) {
        loop {
            let notified = self.began.notified();
            if self.is_draining() {
                return;
            }
            notified.await;
        }
    }

    /// Waits until no judgment runs, or `timeout` passes; true when idle.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.idle.notified();
            if self.in_flight() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.in_flight() == 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_after_begin_and_reports_idle() {
        let drain = Arc::new(Drain::default());
        let a = drain.enter().unwrap();
        drain.begin();
        assert_eq!(drain.enter().unwrap_err().code(), tonic::Code::Unavailable);
        assert_eq!(drain.in_flight(), 1);
        assert!(!drain.wait_idle(Duration::from_millis(20)).await);
        let waiter = {
            let drain = drain.clone();
            tokio::spawn(async move { drain.wait_idle(Duration::from_secs(5)).await })
        };
        drop(a);
        assert!(waiter.await.unwrap());
        drain.began().await;
    }
}
