//! Client-side readiness: what a CLI or harness asks a server before sending work — is it up,
//! and has it finished loading its model (gRPC health SERVING)?

use super::remote::RemoteAccess;
use anyhow::{bail, Result};
use std::time::{Duration, Instant};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The server's overall health, or `None` when it cannot be reached.
pub async fn health(addr: &str, access: &RemoteAccess) -> Result<Option<ServingStatus>> {
    let endpoint = access.endpoint(addr)?;
    let Ok(channel) = endpoint.connect().await else {
        return Ok(None);
    };
    Ok(HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()
        .and_then(|r| ServingStatus::try_from(r.into_inner().status).ok()))
}

/// Waits up to `seconds` for `addr` to report SERVING; with 0, checks once. The error says
/// plainly whether the server was unreachable or still loading.
pub async fn wait_until_serving(addr: &str, access: &RemoteAccess, seconds: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let status = health(addr, access).await?;
        if status == Some(ServingStatus::Serving) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            match status {
                None => bail!("cannot reach a server at {addr}"),
                Some(_) if seconds == 0 => bail!(
                    "the server at {addr} is still loading its model (health NOT_SERVING); \
                     pass --wait SECONDS to wait for it"
                ),
                Some(_) => bail!(
                    "the server at {addr} did not finish loading its model within {seconds} s \
                     (health NOT_SERVING)"
                ),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
