//! The model proxy: how a sandbox without network reaches a model endpoint without ever
//! holding its key. The host listens on a Unix socket in the sandbox's own folder, bound into
//! the sandbox (read-only) at [`MODEL_SOCKET`]; each request that comes in is sent on to the
//! agent's endpoint with the key added, and the answer streamed back as it arrives.
//!
//! Only `POST` to the backend's own API paths is forwarded (403 otherwise), bodies are
//! capped, and only the API's own headers (`content-type`, `accept`, and for Anthropic
//! `anthropic-version` and `anthropic-beta`) are passed on — the sandbox's own
//! `authorization` or `x-api-key` never is: the proxy reaches one endpoint, for one sandbox,
//! with one key, and lives exactly as long as its sandbox.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::SandboxError;

/// The largest request body the proxy forwards.
const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;
/// Connections a sandbox may hold open to the proxy at once.
const MAX_CONNECTIONS: usize = 16;
/// The socket's file name in the folder bound in as `/run/ash`.
pub(crate) const SOCKET_NAME: &str = "model.sock";

/// Where a proxy sends what it is given, and the key it adds.
#[derive(Clone)]
pub struct Upstream {
    /// The endpoint, e.g. `https://api.openai.com/v1`; request paths are appended.
    pub base_url: String,
    pub key: String,
    pub api: Api,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base_url", &self.base_url)
            .field("key", &"***")
            .field("api", &self.api)
            .finish()
    }
}

/// The model API a proxy speaks: the paths it forwards (the backend's own calls, so the key
/// cannot be spent on the endpoint's other routes), how the key is sent, and which of the
/// sandbox's headers go along.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// OpenAI chat completions; the key as `Authorization: Bearer`.
    OpenaiChat,
    /// Anthropic Messages (what Claude Code calls); the key as `x-api-key`.
    AnthropicMessages,
}

impl Api {
    fn paths(self) -> &'static [&'static str] {
        match self {
            Api::OpenaiChat => &["/chat/completions"],
            Api::AnthropicMessages => &["/v1/messages", "/v1/messages/count_tokens"],
        }
    }

    fn headers(self) -> &'static [&'static str] {
        match self {
            Api::OpenaiChat => &["content-type", "accept"],
            Api::AnthropicMessages => &[
                "content-type",
                "accept",
                "anthropic-version",
                "anthropic-beta",
            ],
        }
    }
}

/// A running proxy; dropping it stops it.
pub struct Proxy {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

impl Proxy {
    /// Listens on `<dir>/model.sock` (a fresh one) and serves until dropped. The folder and
    /// the socket belong to the sandbox's uid (`uid`, else the server's own) and no one else.
    pub fn start(dir: &Path, upstream: Upstream, uid: Option<u32>) -> Result<Self, SandboxError> {
        use std::os::unix::fs::PermissionsExt;
        let fail =
            |e: std::io::Error| SandboxError::Start(format!("cannot start the model proxy: {e}"));
        let owned = |path: &Path, mode| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
            match uid {
                Some(uid) => std::os::unix::fs::lchown(path, Some(uid), Some(uid)),
                None => Ok(()),
            }
        };
        std::fs::create_dir_all(dir).map_err(fail)?;
        owned(dir, 0o700).map_err(fail)?;
        let path = dir.join(SOCKET_NAME);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(fail(e)),
            _ => {}
        }
        let listener = tokio::net::UnixListener::bind(&path).map_err(fail)?;
        owned(&path, 0o600).map_err(fail)?;
        let client = client()?;
        let upstream = Arc::new(upstream);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    continue; // too many at once: dropped, the sandbox sees a closed connection
                };
                let (client, upstream) = (client.clone(), upstream.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        forward(client.clone(), upstream.clone(), request)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    drop(slot);
                });
            }
        });
        Ok(Self { task })
    }
}

/// One HTTP client for every proxy: its TLS roots are loaded once, not at each sandbox start,
/// and connections to an endpoint are pooled across sandboxes.
fn client() -> Result<reqwest::Client, SandboxError> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    if let Some(client) = CLIENT.get() {
        return Ok(client.clone());
    }
    let client = reqwest::Client::builder()
        .build()
        .map_err(|e| SandboxError::Start(format!("cannot start the model proxy: {e}")))?;
    Ok(CLIENT.get_or_init(|| client).clone())
}

/// Sends one request on to the upstream with the key; never fails as a service: every
/// problem is an HTTP answer the bridge can report.
async fn forward(
    client: reqwest::Client,
    upstream: Arc<Upstream>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let api = upstream.api;
    let path = request.uri().path();
    if request.method() != hyper::Method::POST || !api.paths().contains(&path) {
        let message = format!(
            "the model proxy forwards only POST {}",
            api.paths().join(", ")
        );
        return Ok(answer(StatusCode::FORBIDDEN, &message));
    }
    let url = match request.uri().query() {
        Some(query) => format!("{}{path}?{query}", upstream.base_url.trim_end_matches('/')),
        None => format!("{}{path}", upstream.base_url.trim_end_matches('/')),
    };
    let headers: Vec<_> = api
        .headers()
        .iter()
        .filter_map(|name| Some((*name, request.headers().get(*name)?.clone())))
        .collect();
    let body = match Limited::new(request.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return Ok(answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request is over the model proxy's 16 MiB cap",
            ))
        }
    };
    let mut outgoing = client.post(&url).body(body);
    outgoing = match api {
        Api::OpenaiChat => outgoing.bearer_auth(&upstream.key),
        Api::AnthropicMessages => outgoing.header("x-api-key", &upstream.key),
    };
    for (name, value) in headers {
        outgoing = outgoing.header(name, value);
    }
    let response = match outgoing.send().await {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!("model proxy: cannot reach {}: {e}", upstream.base_url);
            return Ok(answer(
                StatusCode::BAD_GATEWAY,
                &format!("the host cannot reach {}: {e}", upstream.base_url),
            ));
        }
    };
    let mut reply = Response::builder().status(response.status().as_u16());
    if let Some(value) = response.headers().get("content-type") {
        reply = reply.header("content-type", value.as_bytes());
    }
    let frames = response
        .bytes_stream()
        .map_ok(Frame::data)
        .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>);
    Ok(reply
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .unwrap_or_else(|_| {
            answer(
                StatusCode::BAD_GATEWAY,
                "the endpoint's answer could not be passed on",
            )
        }))
}

fn answer(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": { "message": message } }).to_string();
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
}

/// The folder holding the proxy's socket inside the sandbox.
pub(crate) const GUEST_DIR: &str = "/run/ash";

#[cfg(test)]
mod tests {
    use super::*;
    use ash_protocol::MODEL_SOCKET;

    #[test]
    fn the_socket_is_where_the_bridge_looks() {
        assert_eq!(format!("{GUEST_DIR}/{SOCKET_NAME}"), MODEL_SOCKET);
    }

    #[test]
    fn the_key_is_never_printed() {
        let upstream = Upstream {
            base_url: "https://x".into(),
            key: "sk-secret".into(),
            api: Api::OpenaiChat,
        };
        assert!(!format!("{upstream:?}").contains("sk-secret"));
    }
}
