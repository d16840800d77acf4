//! How rmr1's own clients (`rmr1 judge`, `rmr1 eval --addr`, `rmr1 train`) reach a server:
//! plaintext for `http://`, TLS for `https://` (the public web roots, or a private CA), a client
//! certificate for mutual TLS, and a bearer token for a server started with `--auth-tokens`.

use anyhow::{Context, Result};
use std::path::PathBuf;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Credentials and trust for reaching a server. The default is plaintext without a token.
#[derive(Debug, Clone, Default)]
pub struct RemoteAccess {
    /// PEM certificates to trust for `https://` instead of the public web roots.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate chain and key (PEM), for servers that require mutual TLS.
    pub client_identity: Option<(PathBuf, PathBuf)>,
    /// Sent as `authorization: Bearer <token>`.
    pub token: Option<String>,
}

/// Adds the bearer token, when there is one, to every call.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A connection to a server, with the caller's token on every call.
pub type RemoteChannel = InterceptedService<Channel, BearerToken>;

impl RemoteAccess {
    /// The endpoint for `addr`, with TLS when it is `https://`.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint> {
        let endpoint = Endpoint::from_shared(addr.to_string())
            .with_context(|| format!("{addr:?} is not a URL (e.g. http://127.0.0.1:50051)"))?;
        if !addr.starts_with("https://") {
            if self.tls_ca.is_some() || self.client_identity.is_some() {
                anyhow::bail!("TLS settings were given but {addr} is not an https:// address");
            }
            return Ok(endpoint);
        }
        let mut tls = ClientTlsConfig::new();
        tls = match &self.tls_ca {
            Some(path) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("reading the CA certificate {}", path.display()))?;
                tls.ca_certificate(Certificate::from_pem(pem))
            }
            None => tls.with_webpki_roots(),
        };
        if let Some((cert, key)) = &self.client_identity {
            let read = |path: &PathBuf| {
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))
            };
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint.tls_config(tls).context("configuring TLS")
    }

    /// Connects to `addr`.
    pub async fn connect(&self, addr: &str) -> Result<RemoteChannel> {
        let channel = self
            .endpoint(addr)?
            .connect()
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        Ok(self.intercept(channel))
    }

    /// `channel` with this access's token on every call.
    pub fn intercept(&self, channel: Channel) -> RemoteChannel {
        let token = self.token.as_ref().map(|t| {
            format!("Bearer {t}")
                .parse()
                .expect("checked to be visible ASCII when read")
        });
        InterceptedService::new(channel, BearerToken(token))
    }
}

/// Checks a token read from a file or the environment: one line of visible ASCII.
pub fn parse_token(text: &str) -> Result<String> {
    let token = text.trim();
    if token.is_empty() {
        anyhow::bail!("the token is empty");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        anyhow::bail!("a token is one word of visible ASCII characters");
    }
    Ok(token.to_string())
}
