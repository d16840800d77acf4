//! The gRPC server's settings: connection limits, TLS and authentication. Plain data: the CLI maps
//! its flags onto it, tests and embedders build it directly.

use super::access::TokenTable;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// Connection-level limits of the gRPC server (HTTP/2 and message sizes). Plain data: the CLI maps
/// its flags onto it, tests and embedders build it directly.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Largest request message. A judge request is two replies and a conversation; anything larger
    /// is refused (RESOURCE_EXHAUSTED) before it is decoded, let alone tokenized.
    pub max_request_bytes: usize,
    /// Streams a client may reset before the server accepted them, per connection, before the
    /// HTTP/2 layer answers with GOAWAY. h2's default (20) lets one burst of short client deadlines
    /// kill every call sharing the connection; rapid-reset floods are still bounded.
    pub http2_max_pending_reset_streams: usize,
    /// Ping an idle connection this often, and drop it when a ping goes unanswered for
    /// `http2_keepalive_timeout`: dead peers do not hold connections (and file descriptors).
    pub http2_keepalive_interval: std::time::Duration,
    pub http2_keepalive_timeout: std::time::Duration,
    /// Concurrent streams per connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 flow-control windows, bytes. The connection window also sets h2's budget for DATA
    /// frame overhead (half of it): with the 64 KiB default, a client sending a few thousand small
    /// `JudgeBatch` items ahead got the connection closed (`too_many_data_frames`).
    pub http2_connection_window: u32,
    pub http2_stream_window: u32,
    /// On shutdown, how long running judgments may take to finish before the server stops anyway.
    pub drain_timeout: std::time::Duration,
    /// After this long a connection is asked to go away (GOAWAY; its running calls finish, the
    /// client reconnects for new ones). Idle connections do not hold descriptors forever, and
    /// clients re-resolve and spread over replicas added since they connected. `None`: never.
    pub max_connection_age: Option<std::time::Duration>,
    /// TLS (and, with a client CA, mutual TLS) from PEM files; `None`: plaintext.
    pub tls: Option<TlsFiles>,
    /// Bearer tokens with roles (see `access`); `None`: no authentication.
    pub tokens: Option<Arc<TokenTable>>,
}

/// PEM files for TLS.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    /// The server's certificate chain.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Reads the files into tonic's TLS configuration.
    pub fn load(&self) -> Result<ServerTlsConfig> {
        let read = |path: &Path, what: &str| {
            std::fs::read(path)
                .with_context(|| format!("reading the TLS {what} {}", path.display()))
        };
        let identity = Identity::from_pem(
            read(&self.cert, "certificate")?,
            read(&self.key, "private key")?,
        );
        let mut config = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca {
            config = config.client_ca_root(Certificate::from_pem(read(ca, "client CA")?));
        }
        Ok(config)
    }
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            max_request_bytes: 16 << 20,
            http2_max_pending_reset_streams: 1024,
            http2_keepalive_interval: std::time::Duration::from_secs(30),
            http2_keepalive_timeout: std::time::Duration::from_secs(20),
            max_concurrent_streams: 1024,
            http2_connection_window: 16 << 20,
            http2_stream_window: 4 << 20,
            drain_timeout: std::time::Duration::from_secs(30),
            max_connection_age: Some(std::time::Duration::from_secs(30 * 60)),
            tls: None,
            tokens: None,
        }
    }
}
