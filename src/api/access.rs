//! Who is calling, and may they: a tower layer in front of every gRPC service.
//!
//! Every request leaves this layer with a [`Caller`] in its extensions: the authenticated token's
//! name and role when bearer tokens are configured, the TLS client certificate's fingerprint under
//! mutual TLS, else the peer's IP address. The judge uses it to share the engine fairly between
//! clients; the model service uses the role to decide what it may reveal.
//!
//! With a token file, every call except the standard health check needs `authorization: Bearer
//! <token>`: role `judge` may call the judge and model services, role `admin` everything (training
//! jobs included). A missing or unknown token is UNAUTHENTICATED, a known token on a service its
//! role does not cover PERMISSION_DENIED. Tokens are kept as SHA-256 digests and compared in
//! constant time, all of them on every call, so neither timing nor early exit tells a guess apart.

use sha2::{Digest, Sha256};
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Judge and model services.
    Judge,
    /// Everything, training jobs and filesystem paths included.
    Admin,
}

impl Role {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "judge" => Some(Self::Judge),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Judge => "judge",
            Self::Admin => "admin",
        })
    }
}

/// The caller of one request, as established by [`AccessLayer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Stable per client, for fair scheduling: `token:<name>`, `cert:<fingerprint>`, `ip:<addr>`,
    /// or `local` when the transport says nothing (in-process calls).
    pub identity: Arc<str>,
    /// The token's role; `None` when no token file is configured.
    pub role: Option<Role>,
}

impl Caller {
    /// Admins see server internals (filesystem paths). Without authentication nobody is one.
    pub fn is_admin(&self) -> bool {
        self.role == Some(Role::Admin)
    }

    /// The caller of a request that went through [`AccessLayer`] (`local` otherwise).
    pub fn of<T>(request: &tonic::Request<T>) -> Caller {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or_else(|| Caller {
                identity: "local".into(),
                role: None,
            })
    }
}

struct Token {
    name: String,
    role: Role,
    digest: [u8; 32],
}

/// The bearer tokens a server accepts, read from a file of lines `<role> <token> [<name>]`
/// (`#` starts a comment). The name identifies the client in logs and for fair scheduling;
/// by default it is the role and the first 8 hex digits of the token's SHA-256.
pub struct TokenTable {
    tokens: Vec<Token>,
}

impl fmt::Debug for TokenTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the digests.
        f.debug_struct("TokenTable")
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Equal without a data-dependent branch: the time does not depend on where they differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl TokenTable {
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading the token file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("token file {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut tokens: Vec<Token> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (role, token, name) = match fields[..] {
                [role, token] => (role, token, None),
                [role, token, name] => (role, token, Some(name)),
                _ => anyhow::bail!(
                    "line {}: expected `<role> <token> [<name>]`, got {} fields",
                    i + 1,
                    fields.len()
                ),
            };
            let role = Role::parse(role).ok_or_else(|| {
                anyhow::anyhow!("line {}: role {role:?} is not judge or admin", i + 1)
            })?;
            if token.len() < 16 {
                anyhow::bail!(
                    "line {}: tokens must be at least 16 characters (a random 32-byte hex string \
                     is a good one)",
                    i + 1
                );
            }
            let digest = digest(token.as_bytes());
            let name = name.map(str::to_string).unwrap_or_else(|| {
                let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
                format!("{role}-{hex}")
            });
            if tokens.iter().any(|t| t.digest == digest) {
                anyhow::bail!("line {}: this token appears twice", i + 1);
            }
            if tokens.iter().any(|t| t.name == name) {
                anyhow::bail!("line {}: the name {name:?} appears twice", i + 1);
            }
            tokens.push(Token { name, role, digest });
        }
        if tokens.is_empty() {
            anyhow::bail!("no tokens (every call would be refused)");
        }
        Ok(Self { tokens })
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The token's name and role. Compares against every token, whatever matches.
    fn lookup(&self, presented: &str) -> Option<(&str, Role)> {
        let presented = digest(presented.as_bytes());
        let mut found = None;
        for token in &self.tokens {
            if constant_time_eq(&token.digest, &presented) {
                found = Some((token.name.as_str(), token.role));
            }
        }
        found
    }
}

/// The role a gRPC method needs; `None`: open to everyone (health probes).
fn required_role(path: &str) -> Option<Role> {
    let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match service {
        "grpc.health.v1.Health" => None,
        "rmr1.v1.TrainingService" => Some(Role::Admin),
        // Judge and model services, reflection, and unknown paths (answered UNIMPLEMENTED).
        _ => Some(Role::Judge),
    }
}

/// Tells callers apart and, with a token table, authenticates and authorizes them.
#[derive(Clone, Default)]
pub struct AccessLayer {
    tokens: Option<Arc<TokenTable>>,
}

impl AccessLayer {
    pub fn new(tokens: Option<Arc<TokenTable>>) -> Self {
        Self { tokens }
    }
}

impl<S> tower::Layer<S> for AccessLayer {
    type Service = Access<S>;

    fn layer(&self, inner: S) -> Access<S> {
        Access {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Access<S> {
    inner: S,
    tokens: Option<Arc<TokenTable>>,
}

/// The peer's address and, under mutual TLS, its certificate's fingerprint.
fn transport_identity<B>(request: &http::Request<B>) -> Arc<str> {
    let extensions = request.extensions();
    if let Some(tls) = extensions.get::<TlsConnectInfo<TcpConnectInfo>>() {
        if let Some(leaf) = tls.peer_certs().as_ref().and_then(|certs| certs.first()) {
            let fingerprint: String = Sha256::digest(leaf.as_ref())[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            return format!("cert:{fingerprint}").into();
        }
        if let Some(addr) = tls.get_ref().remote_addr() {
            return ip_identity(addr.ip());
        }
    }
    match extensions
        .get::<TcpConnectInfo>()
        .and_then(|info| info.remote_addr())
    {
        Some(addr) => ip_identity(addr.ip()),
        None => "local".into(),
    }
}

/// The IP, not the port: a client with many connections is still one client.
fn ip_identity(ip: IpAddr) -> Arc<str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    format!("ip:{ip}").into()
}

impl<S> Access<S> {
    fn admit<B>(&self, request: &http::Request<B>) -> Result<Caller, Status> {
        let transport = transport_identity(request);
        let Some(tokens) = &self.tokens else {
            return Ok(Caller {
                identity: transport,
                role: None,
            });
        };
        let needed = required_role(request.uri().path());
        let presented = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(presented) = presented else {
            return match needed {
                None => Ok(Caller {
                    identity: transport,
                    role: None,
                }),
                Some(_) => Err(Status::unauthenticated(
                    "this server requires `authorization: Bearer <token>` metadata",
                )),
            };
        };
        let Some((name, role)) = tokens.lookup(presented) else {
            return Err(Status::unauthenticated("the bearer token is not accepted"));
        };
        if needed.is_some_and(|needed| role < needed) {
            return Err(Status::permission_denied(format!(
                "token {name:?} has role {role}; {} needs role {}",
                request.uri().path(),
                needed.expect("checked above")
            )));
        }
        Ok(Caller {
            identity: format!("token:{name}").into(),
            role: Some(role),
        })
    }
}

impl<S, B> tower::Service<http::Request<B>> for Access<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = futures::future::Either<
        S::Future,
        futures::future::Ready<Result<Self::Response, Self::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match self.admit(&request) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                futures::future::Either::Left(self.inner.call(request))
            }
            Err(status) => {
                tracing::info!(path = request.uri().path(), %status, "call refused");
                futures::future::Either::Right(futures::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JUDGE: &str = "judge-token-0123456789abcdef";
    const ADMIN: &str = "admin-token-0123456789abcdef";

    fn table() -> TokenTable {
        TokenTable::parse(&format!(
            "# comment\n\njudge {JUDGE} rlhf-loop  # trailing comment\nadmin {ADMIN}\n"
        ))
        .unwrap()
    }

    fn request(path: &str, token: Option<&str>) -> http::Request<()> {
        let mut builder = http::Request::builder().uri(path);
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        builder.body(()).unwrap()
    }

    fn admit(path: &str, token: Option<&str>) -> Result<Caller, tonic::Code> {
        let access = Access {
            inner: (),
            tokens: Some(Arc::new(table())),
        };
        access.admit(&request(path, token)).map_err(|s| s.code())
    }

    #[test]
    fn roles_cover_their_services() {
        let judge = "/rmr1.v1.JudgeService/Judge";
        let train = "/rmr1.v1.TrainingService/CreateJob";
        let health = "/grpc.health.v1.Health/Check";
        let caller = admit(judge, Some(JUDGE)).unwrap();
        assert_eq!(&*caller.identity, "token:rlhf-loop");
        assert_eq!(caller.role, Some(Role::Judge));
        assert!(!caller.is_admin());
        assert!(admit(judge, Some(ADMIN)).unwrap().is_admin());
        assert_eq!(
            admit(train, Some(JUDGE)),
            Err(tonic::Code::PermissionDenied)
        );
        assert!(admit(train, Some(ADMIN)).is_ok());
        assert_eq!(admit(judge, None), Err(tonic::Code::Unauthenticated));
        assert_eq!(
            admit(judge, Some("judge-token-0123456789abcdeX")),
            Err(tonic::Code::Unauthenticated)
        );
        assert!(admit(health, None).is_ok());
        // A default name: role and digest prefix, never the token itself.
        let admin = admit(train, Some(ADMIN)).unwrap();
        assert!(admin.identity.starts_with("token:admin-"), "{admin:?}");
        assert!(!admin.identity.contains("0123456789"));
    }

    #[test]
    fn bad_token_files_are_refused_with_the_line() {
        for (text, needle) in [
            ("root 0123456789abcdef0", "line 1: role \"root\""),
            ("judge short", "at least 16"),
            ("judge a b c", "got 4 fields"),
            ("\n# only comments\n", "no tokens"),
            (
                "judge 0123456789abcdef0\nadmin 0123456789abcdef0",
                "appears twice",
            ),
        ] {
            let error = TokenTable::parse(text).unwrap_err().to_string();
            assert!(error.contains(needle), "{text:?}: {error}");
        }
    }

    #[test]
    fn without_tokens_everyone_is_an_anonymous_peer() {
        let access = Access {
            inner: (),
            tokens: None,
        };
        let caller = access
            .admit(&request("/rmr1.v1.TrainingService/CreateJob", None))
            .unwrap();
        assert_eq!(&*caller.identity, "local");
        assert!(!caller.is_admin());
        assert_eq!(
            ip_identity("::ffff:127.0.0.2".parse().unwrap()).as_ref(),
            "ip:127.0.0.2"
        );
    }
}
