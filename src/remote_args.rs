//! Command-line flags for reaching a server, shared by `rmr1 judge`, `rmr1 eval --addr` and
//! `rmr1 train`.

use crate::api::remote::{parse_token, RemoteAccess};
use anyhow::{Context, Result};
use std::path::PathBuf;

/// The environment variable a bearer token may come from instead of --token-file.
pub const TOKEN_VAR: &str = "RMR1_TOKEN";

#[derive(clap::Args, Debug, Clone, Default)]
pub struct RemoteArgs {
    /// For an https:// address: PEM certificates to trust instead of the public web roots (a
    /// private CA).
    #[arg(long, global = true)]
    pub tls_ca: Option<PathBuf>,
    /// For a server that requires mutual TLS: this client's certificate chain (PEM).
    #[arg(long, global = true, requires = "tls_client_key")]
    pub tls_client_cert: Option<PathBuf>,
    /// This client's private key (PEM).
    #[arg(long, global = true, requires = "tls_client_cert")]
    pub tls_client_key: Option<PathBuf>,
    /// A file holding the bearer token for a server started with --auth-tokens; default: the
    /// RMR1_TOKEN environment variable. (No token on the command line: it would show in `ps`.)
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
}

impl RemoteArgs {
    pub fn access(&self) -> Result<RemoteAccess> {
        let token = match &self.token_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the token file {}", path.display()))?;
                Some(parse_token(&text).with_context(|| format!("{}", path.display()))?)
            }
            None => match std::env::var(TOKEN_VAR) {
                Ok(text) => Some(parse_token(&text).context(TOKEN_VAR)?),
                Err(_) => None,
            },
        };
        Ok(RemoteAccess {
            tls_ca: self.tls_ca.clone(),
            client_identity: self
                .tls_client_cert
                .clone()
                .zip(self.tls_client_key.clone()),
            token,
        })
    }
}
