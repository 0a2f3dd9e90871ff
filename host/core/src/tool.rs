//! Tools of the registry (`/api/tools`): a name, a description, the JSON Schema its arguments
//! must meet, and what runs it: an `http` connector (a request built from the arguments, to
//! hosts the tool allows, with a credential the host adds), or an `agent` (one turn of an Ash
//! agent).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::CoreError;

/// The longest a tool may take, and its default.
pub const MAX_TOOL_TIMEOUT_MS: u64 = 300_000;
pub const DEFAULT_TOOL_TIMEOUT_MS: u64 = 30_000;
/// The largest result a tool may give, and its default.
pub const MAX_TOOL_RESULT_BYTES: u64 = 16 << 20;
pub const DEFAULT_TOOL_RESULT_BYTES: u64 = 1 << 20;
/// Caps on what a tool's record holds.
const MAX_DESCRIPTION: usize = 8 * 1024;
const MAX_SCHEMA_BYTES: usize = 64 * 1024;
const MAX_HEADERS: usize = 32;

/// A tool, as the registry keeps and shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tool {
    /// 1–128 characters of `[A-Za-z0-9_.-]`.
    pub name: String,
    /// 1 when made, one more at each change.
    #[serde(default)]
    pub version: i64,
    pub description: String,
    /// The JSON Schema the arguments must meet (an object schema).
    #[schema(value_type = Object)]
    pub input_schema: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub output_schema: Option<Value>,
    #[serde(flatten)]
    pub kind: ToolKind,
    /// Milliseconds a call may take [default: 30000, at most 300000].
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Bytes a result may hold [default: 1 MiB, at most 16 MiB].
    #[serde(default = "default_result_bytes")]
    pub max_result_bytes: u64,
    #[serde(default)]
    #[schema(format = DateTime)]
    pub created_at: String,
    #[serde(default)]
    #[schema(format = DateTime)]
    pub updated_at: String,
}

fn default_timeout() -> u64 {
    DEFAULT_TOOL_TIMEOUT_MS
}

fn default_result_bytes() -> u64 {
    DEFAULT_TOOL_RESULT_BYTES
}

/// What runs a tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ToolKind {
    Http { http: HttpConnector },
    Agent { agent: AgentTool },
}

impl ToolKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Http { .. } => "http",
            Self::Agent { .. } => "agent",
        }
    }
}

/// One turn of an Ash agent: in a new session, or in the one the `sessionId` argument names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentTool {
    /// The agent's name.
    pub name: String,
    /// The message, where `{arg}` takes that argument [default: the `message` argument].
    pub prompt: Option<String>,
}

/// An outbound HTTP request made from a call's arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpConnector {
    /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE` [default: `POST`].
    #[serde(default = "default_method")]
    pub method: String,
    /// `http(s)://host/path`, where `{arg}` in the path or query takes that argument
    /// (percent-encoded). The scheme and host cannot come from arguments.
    pub url: String,
    /// Headers sent as given.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Send the arguments as the JSON body [default: true for `POST`, `PUT`, `PATCH`].
    pub send_arguments: Option<bool>,
    /// Hosts the request may go to; [default: the URL's own host].
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    /// A stored credential (`/api/credentials`) whose key the host adds to the request.
    pub credential: Option<CredentialHeader>,
    /// A JSON pointer into the response's JSON body: the result is what it points at.
    pub result_pointer: Option<String>,
}

fn default_method() -> String {
    "POST".into()
}

/// Where a credential's key goes: header `header` = `prefix` + the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialHeader {
    pub id: String,
    /// [default: `Authorization`]
    #[serde(default = "default_credential_header")]
    pub header: String,
    /// [default: `Bearer `]
    #[serde(default = "default_credential_prefix")]
    pub prefix: String,
}

fn default_credential_header() -> String {
    "Authorization".into()
}

fn default_credential_prefix() -> String {
    "Bearer ".into()
}

/// Checks a tool name: 1–128 characters of `[A-Za-z0-9_.-]`.
pub fn check_tool_name(name: &str) -> Result<(), CoreError> {
    let ok = (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !ok {
        return Err(CoreError::InvalidTool(format!(
            "name {name:?} must be 1-128 characters of A-Z, a-z, 0-9, '_', '-' and '.'"
        )));
    }
    // Names the MCP frontend gives its own tools: the agents, and session management.
    if name.starts_with("agent.") || name.starts_with("ash.") {
        return Err(CoreError::InvalidTool(format!(
            "name {name:?}: names starting with agent. or ash. are Ash's own"
        )));
    }
    Ok(())
}

impl Tool {
    /// Checks what the record holds (the schema compiling is the invoker's check).
    pub fn check(&self) -> Result<(), CoreError> {
        let bad = |why: String| Err(CoreError::InvalidTool(why));
        check_tool_name(&self.name)?;
        if self.description.len() > MAX_DESCRIPTION {
            return bad(format!(
                "description must be at most {MAX_DESCRIPTION} bytes"
            ));
        }
        for (what, schema) in [
            ("inputSchema", Some(&self.input_schema)),
            ("outputSchema", self.output_schema.as_ref()),
        ] {
            let Some(schema) = schema else { continue };
            if !schema.is_object() {
                return bad(format!("{what} must be a JSON Schema object"));
            }
            if schema.to_string().len() > MAX_SCHEMA_BYTES {
                return bad(format!("{what} must be at most {MAX_SCHEMA_BYTES} bytes"));
            }
        }
        if !(1..=MAX_TOOL_TIMEOUT_MS).contains(&self.timeout_ms) {
            return bad(format!("timeoutMs must be 1-{MAX_TOOL_TIMEOUT_MS}"));
        }
        if !(1..=MAX_TOOL_RESULT_BYTES).contains(&self.max_result_bytes) {
            return bad(format!("maxResultBytes must be 1-{MAX_TOOL_RESULT_BYTES}"));
        }
        match &self.kind {
            ToolKind::Http { http } => http.check(),
            ToolKind::Agent { agent } => {
                crate::AgentName::try_from(agent.name.clone())?;
                match &agent.prompt {
                    Some(prompt) if prompt.len() > MAX_DESCRIPTION => bad(format!(
                        "agent.prompt must be at most {MAX_DESCRIPTION} bytes"
                    )),
                    _ => Ok(()),
                }
            }
        }
    }
}

impl HttpConnector {
    fn check(&self) -> Result<(), CoreError> {
        let bad = |why: String| Err(CoreError::InvalidTool(why));
        if !matches!(
            self.method.as_str(),
            "GET" | "POST" | "PUT" | "PATCH" | "DELETE"
        ) {
            return bad(format!(
                "http.method {:?} must be GET, POST, PUT, PATCH or DELETE",
                self.method
            ));
        }
        self.host()?;
        if self.headers.len() > MAX_HEADERS {
            return bad(format!("http.headers holds at most {MAX_HEADERS}"));
        }
        for (name, value) in &self.headers {
            let token =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !token || value.chars().any(char::is_control) || value.len() > 8192 {
                return bad(format!(
                    "http.headers: {name:?} is not a header name and value"
                ));
            }
        }
        if let Some(pointer) = &self.result_pointer {
            if !pointer.is_empty() && !pointer.starts_with('/') {
                return bad("http.resultPointer must be a JSON pointer (\"/a/b\")".into());
            }
        }
        Ok(())
    }

    /// The URL's host, which no argument may change: `http(s)://` and an authority without
    /// `{`.
    pub fn host(&self) -> Result<String, CoreError> {
        let bad = || {
            CoreError::InvalidTool(format!(
                "http.url {:?} must be http(s)://host/…, with arguments only in its path or query",
                self.url
            ))
        };
        let rest = self
            .url
            .strip_prefix("https://")
            .or_else(|| self.url.strip_prefix("http://"))
            .ok_or_else(bad)?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.is_empty() || authority.contains(['{', '}', '@']) {
            return Err(bad());
        }
        let host = match authority.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => authority,
        };
        Ok(host.trim_matches(['[', ']']).to_ascii_lowercase())
    }

    /// Whether the arguments go as the JSON body.
    pub fn sends_arguments(&self) -> bool {
        self.send_arguments
            .unwrap_or(matches!(self.method.as_str(), "POST" | "PUT" | "PATCH"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(url: &str) -> HttpConnector {
        HttpConnector {
            method: "GET".into(),
            url: url.into(),
            headers: BTreeMap::new(),
            send_arguments: None,
            allow_hosts: Vec::new(),
            credential: None,
            result_pointer: None,
        }
    }

    #[test]
    fn arguments_cannot_choose_the_host() {
        assert_eq!(
            http("http://127.0.0.1:8080/a/{x}?q={y}").host().unwrap(),
            "127.0.0.1"
        );
        assert_eq!(
            http("https://API.example.com/v1").host().unwrap(),
            "api.example.com"
        );
        for url in [
            "http://{host}/a",
            "http://example.com{x}/a",
            "ftp://example.com/",
            "http://user@example.com/",
            "example.com/a",
            "http:///a",
        ] {
            assert!(http(url).host().is_err(), "{url}");
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(check_tool_name("weather.get-now_2").is_ok());
        for name in [
            "",
            "a b",
            "a/b",
            &"x".repeat(129),
            "agent.x",
            "ash.sessions.list",
        ] {
            assert!(check_tool_name(name).is_err(), "{name}");
        }
    }
}
