//! The HTTP client the CLI uses; finds the server URL and API key by itself.
//!
//! URL: `--server`, else `ASH_SERVER_URL`, else the config file's `server_url`, else
//! `http://localhost:4100`. Key: `ASH_API_KEY`, else the config file's `api_key`, else the
//! key the local server generated on first start (`<data dir>/initial-api-key`).

use std::path::PathBuf;

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::Value;

use crate::sse;

pub const DEFAULT_URL: &str = "http://localhost:4100";

/// `~/.config/ash/config.toml` (or `$XDG_CONFIG_HOME/ash/config.toml`).
pub fn config_path() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("ash").join("config.toml"))
}

/// The default data dir: `ASH_DATA_DIR`, else `~/.local/share/ash`.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("ASH_DATA_DIR")
        .map(PathBuf::from)
        .or_else(|| dirs::data_dir().map(|d| d.join("ash")))
        .unwrap_or_else(|| PathBuf::from("ash-data"))
}

#[derive(Deserialize, Default)]
struct ConfigFile {
    server_url: Option<String>,
    api_key: Option<String>,
}

/// A client bound to one server and key.
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Client {
    /// A client for the server at `base`, sending `key` as the bearer token.
    pub fn new(base: &str, key: Option<String>) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_owned(),
            key,
        }
    }

    /// Finds the server and key as the module docs describe.
    pub fn discover(server: Option<String>) -> anyhow::Result<Self> {
        let file: ConfigFile = match config_path().filter(|p| p.exists()) {
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => ConfigFile::default(),
        };
        let base = server
            .or_else(|| std::env::var("ASH_SERVER_URL").ok())
            .or(file.server_url)
            .unwrap_or_else(|| DEFAULT_URL.to_owned());
        let key = std::env::var("ASH_API_KEY")
            .ok()
            .or(file.api_key)
            .or_else(|| std::fs::read_to_string(default_data_dir().join("initial-api-key")).ok())
            .map(|k| k.trim().to_owned());
        Ok(Self::new(&base, key))
    }

    /// A request to `path` on the server, with the key.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// Sends a request and returns its JSON body, or the server's error message.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = self.checked(request).await?;
        Ok(response.json().await.unwrap_or(Value::Null))
    }

    /// Sends a request; a failure status becomes an error with the server's message.
    async fn checked(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the Ash server at {}", self.base))?;
        let status = response.status();
        if !status.is_success() {
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let message = body["error"].as_str().unwrap_or("no error message");
            bail!("{status}: {message}");
        }
        Ok(response)
    }

    /// Fetches a body that is not JSON (a file, a tar.gz), or the server's error message.
    pub async fn download(&self, path: &str) -> anyhow::Result<bytes::Bytes> {
        let response = self
            .checked(self.request(reqwest::Method::GET, path))
            .await?;
        Ok(response.bytes().await?)
    }

    /// Opens the session's live stream after log sequence `after`.
    pub async fn stream(
        &self,
        session: &str,
        after: i64,
    ) -> anyhow::Result<
        sse::Reader<impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin>,
    > {
        let path = format!("/api/sessions/{session}/stream?after={after}");
        let response = self
            .request(reqwest::Method::GET, &path)
            .send()
            .await
            .with_context(|| format!("cannot reach the Ash server at {}", self.base))?;
        let status = response.status();
        if !status.is_success() {
            bail!("{status}: cannot open the stream");
        }
        Ok(sse::Reader::new(response.bytes_stream()))
    }

    /// Sends a message and returns the reader of its SSE reply.
    pub async fn send_message(
        &self,
        session: &str,
        body: &Value,
    ) -> anyhow::Result<
        sse::Reader<impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin>,
    > {
        let path = format!("/api/sessions/{session}/messages");
        let response = self
            .request(reqwest::Method::POST, &path)
            .json(body)
            .send()
            .await
            .with_context(|| format!("cannot reach the Ash server at {}", self.base))?;
        let status = response.status();
        if !status.is_success() {
            let body: Value = response.json().await.unwrap_or(Value::Null);
            bail!(
                "{status}: {}",
                body.get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("no error message")
            );
        }
        Ok(sse::Reader::new(response.bytes_stream()))
    }
}
