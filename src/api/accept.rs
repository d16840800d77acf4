//! The listener's accept loop, made safe at the file-descriptor limit.
//!
//! tonic retries a failed `accept` at once. When the process is out of file descriptors the
//! pending connection stays in the backlog, so `accept` fails again immediately: the loop spins a
//! core and never gets to the connections that would free descriptors. Here a resource error
//! (EMFILE, ENFILE, ENOBUFS, ENOMEM) backs off before the next try, and says so in the log once
//! per episode; errors that concern one connection only (it was reset before we took it) are
//! skipped at once.

use futures::Stream;
use std::io;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// How long to wait after a resource error before accepting again. Long enough that a flood of
/// pending connections costs no CPU, short enough that service resumes promptly once
/// descriptors are free.
const RESOURCE_BACKOFF: Duration = Duration::from_millis(100);

/// Errors about one incoming connection only: take the next one at once.
fn concerns_one_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Accepted connections (Nagle off: small gRPC frames must not wait for ACKs), never an error.
pub fn incoming(listener: TcpListener) -> impl Stream<Item = io::Result<TcpStream>> + Send {
    futures::stream::unfold(listener, |listener| async move {
        let mut starved = false;
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    if starved {
                        tracing::info!("accepting connections again");
                    }
                    let _ = stream.set_nodelay(true);
                    return Some((Ok(stream), listener));
                }
                Err(error) if concerns_one_connection(&error) => continue,
                Err(error) => {
                    if !starved {
                        tracing::warn!(
                            %error,
                            "cannot accept connections (out of file descriptors or memory?); \
                             retrying every 100 ms"
                        );
                        starved = true;
                    }
                    tokio::time::sleep(RESOURCE_BACKOFF).await;
                }
            }
        }
    })
}
