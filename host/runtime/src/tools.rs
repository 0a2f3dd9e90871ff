//! The invoker: every tool call, from every frontend (REST, MCP), goes through
//! [`Runtime::call_tool`]. It finds the tool, checks the arguments against its input schema
//! (errors name the JSON pointer), runs the `tool-pre-invoke` transformers (which may rewrite
//! or refuse the call) and tells the observers, runs the tool under its timeout and result
//! cap, tells the observers of `tool-post-invoke`, and counts the call by outcome.
//!
//! An `http` tool is a request built from the arguments to a host the tool allows, with a
//! stored credential's key added on the host: the key never appears in a result (any echo of
//! it is masked), an event or a log. An `agent` tool is one turn of an Ash agent, in a new
//! session or the one its `sessionId` argument names; its result is `{sessionId, reply}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ash_core::{AgentTool, HookPoint, HttpConnector, Tool, ToolKind};
use serde_json::Value;

use crate::{Missing, Runtime, RuntimeError};

/// Who calls a tool, as the observers are told.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The frontend: `rest`, `mcp`.
    pub via: &'static str,
    /// The session calling, for a tool called from inside a sandbox.
    pub session: Option<ash_core::SessionId>,
}

/// A call's result: the tool's output, or the error it ended with (a tool error, not a
/// refusal: those are [`RuntimeError`]s).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutput {
    pub result: Value,
    pub is_error: bool,
}

impl ToolOutput {
    fn failed(why: impl Into<String>) -> Self {
        Self {
            result: Value::String(why.into()),
            is_error: true,
        }
    }
}

/// How a call ended, as `ash_tool_calls_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Error,
    Invalid,
    Timeout,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Invalid => "invalid",
            Self::Timeout => "timeout",
        }
    }
}

/// Compiled input schemas, by tool name and version.
#[derive(Default)]
pub(crate) struct Schemas(Mutex<HashMap<String, (i64, Arc<jsonschema::Validator>)>>);

/// Compiles a schema, or says why it is not one.
pub fn compile_schema(schema: &Value) -> Result<jsonschema::Validator, RuntimeError> {
    jsonschema::validator_for(schema)
        .map_err(|e| RuntimeError::invalid(format!("inputSchema is not a valid JSON Schema: {e}")))
}

impl Runtime {
    /// Checks a tool before it is stored: its record and its schema.
    pub fn check_tool(&self, tool: &Tool) -> Result<(), RuntimeError> {
        tool.check()?;
        compile_schema(&tool.input_schema)?;
        if let Some(output) = &tool.output_schema {
            compile_schema(output)?;
        }
        Ok(())
    }

    /// Calls the tool `name` with `arguments`.
    pub async fn call_tool(
        self: &Arc<Self>,
        name: &str,
        arguments: Value,
        caller: &Caller,
    ) -> Result<ToolOutput, RuntimeError> {
        let started = Instant::now();
        let tool = self
            .store
            .get_tool(name)
            .await?
            .ok_or(RuntimeError::NotFound(Missing::Tool))?;
        let counted = |outcome: Outcome| {
            let metrics = &self.metrics;
            metrics
                .tool_calls
                .with_label_values(&[name, outcome.as_str()])
                .inc();
            metrics
                .tool_seconds
                .with_label_values(&[name])
                .observe(started.elapsed().as_secs_f64());
        };
        let arguments = match self.checked_arguments(&tool, arguments, caller) {
            Ok(arguments) => arguments,
            Err(e) => {
                counted(Outcome::Invalid);
                return Err(e);
            }
        };
        let limit = Duration::from_millis(tool.timeout_ms);
        let run = async {
            match &tool.kind {
                ToolKind::Http { http } => {
                    self.call_http(http, &arguments, tool.max_result_bytes)
                        .await
                }
                ToolKind::Agent { agent } => self.call_agent(agent, &arguments).await,
            }
        };
        let (output, outcome) = match tokio::time::timeout(limit, run).await {
            Ok(output) if output.is_error => (output, Outcome::Error),
            Ok(output) => (output, Outcome::Ok),
            Err(_) => (
                ToolOutput::failed(format!(
                    "the tool did not answer within its timeout of {} ms",
                    tool.timeout_ms
                )),
                Outcome::Timeout,
            ),
        };
        counted(outcome);
        self.tell(HookPoint::ToolPostInvoke, &tool.name, caller, || {
            serde_json::json!({"tool": tool.name, "outcome": outcome.as_str(),
                "ms": started.elapsed().as_millis() as u64, "via": caller.via})
            .to_string()
        });
        let ms = started.elapsed().as_millis() as u64;
        if self.config.tool_log_payloads {
            let (arguments, result) = (cut(&arguments), cut(&output.result));
            tracing::info!(tool = %tool.name, via = caller.via, outcome = outcome.as_str(), ms, %arguments, %result, "tool called");
        } else {
            tracing::info!(tool = %tool.name, via = caller.via, outcome = outcome.as_str(), ms, "tool called");
        }
        Ok(output)
    }

    /// The arguments after the schema check and the `tool-pre-invoke` transformers.
    fn checked_arguments(
        &self,
        tool: &Tool,
        arguments: Value,
        caller: &Caller,
    ) -> Result<Value, RuntimeError> {
        let validator = self.validator(tool)?;
        if let Some(error) = validator.iter_errors(&arguments).next() {
            let at = error.instance_path().to_string();
            let at = if at.is_empty() { "/".to_owned() } else { at };
            return Err(RuntimeError::invalid(format!(
                "arguments break the input schema of {} at {at}: {error}",
                tool.name
            )));
        }
        let mut arguments = arguments;
        if self.plugins.has_transformers() {
            let event = self.tool_event(
                HookPoint::ToolPreInvoke,
                &tool.name,
                caller,
                arguments.to_string(),
            );
            // Plugin calls block, bounded by each plugin's deadline.
            match tokio::task::block_in_place(|| self.plugins.transform(event)) {
                ash_plugin_host::Transformed::Keep => {}
                ash_plugin_host::Transformed::Replace(rewritten) => arguments = rewritten,
                ash_plugin_host::Transformed::Drop => {
                    return Err(RuntimeError::Forbidden(format!(
                        "a plugin refused the call of {}",
                        tool.name
                    )))
                }
            }
        }
        self.tell(HookPoint::ToolPreInvoke, &tool.name, caller, || {
            serde_json::json!({"tool": tool.name, "via": caller.via}).to_string()
        });
        Ok(arguments)
    }

    /// The tool's compiled input schema, compiled once per version.
    fn validator(&self, tool: &Tool) -> Result<Arc<jsonschema::Validator>, RuntimeError> {
        let mut compiled = self.schemas.0.lock().expect("lock");
        if let Some((version, validator)) = compiled.get(&tool.name) {
            if *version == tool.version {
                return Ok(validator.clone());
            }
        }
        let validator = Arc::new(compile_schema(&tool.input_schema)?);
        compiled.insert(tool.name.clone(), (tool.version, validator.clone()));
        Ok(validator)
    }

    fn tool_event(
        &self,
        hook: HookPoint,
        tool: &str,
        caller: &Caller,
        data: String,
    ) -> ash_plugin_host::Event {
        ash_plugin_host::Event {
            hook: hook.as_str().to_owned(),
            session_id: caller.session.map(|s| s.to_string()).unwrap_or_default(),
            agent: String::new(),
            name: tool.to_owned(),
            data,
            at_ms: chrono::Utc::now().timestamp_millis().max(0) as u64,
        }
    }

    /// Tells the observers; `data` is only built when one is loaded. Arguments and results
    /// are not in it.
    fn tell(&self, hook: HookPoint, tool: &str, caller: &Caller, data: impl FnOnce() -> String) {
        if self.plugins.has_observers() {
            self.plugins
                .observe(&self.tool_event(hook, tool, caller, data()));
        }
    }

    /// Runs an `http` tool: the request from the arguments, the response read up to the cap.
    async fn call_http(&self, http: &HttpConnector, arguments: &Value, cap: u64) -> ToolOutput {
        match self.request(http, arguments, cap).await {
            Ok(output) => output,
            Err(e) => ToolOutput::failed(e),
        }
    }

    async fn request(
        &self,
        http: &HttpConnector,
        arguments: &Value,
        cap: u64,
    ) -> Result<ToolOutput, String> {
        let url = expand(&http.url, arguments, percent_encode)?;
        let host = http.host().map_err(|e| e.to_string())?;
        let allowed = if http.allow_hosts.is_empty() {
            std::slice::from_ref(&host)
        } else {
            &http.allow_hosts[..]
        };
        if !allowed.iter().any(|a| host_matches(a, &host)) {
            return Err(format!("host {host} is not among the tool's allowHosts"));
        }
        let method =
            reqwest::Method::from_bytes(http.method.as_bytes()).map_err(|e| e.to_string())?;
        let mut request = self.http.request(method, &url);
        for (name, value) in &http.headers {
            request = request.header(name, value);
        }
        let mut secret = None;
        if let Some(credential) = &http.credential {
            let key = self
                .credential_key(&credential.id)
                .await
                .map_err(|e| e.to_string())?;
            request = request.header(&credential.header, format!("{}{key}", credential.prefix));
            secret = Some(key);
        }
        if http.sends_arguments() {
            request = request.json(arguments);
        }
        let mask = |text: String| match &secret {
            Some(key) if !key.is_empty() => text.replace(key.as_str(), "[credential]"),
            _ => text,
        };
        let mut response = request
            .send()
            .await
            .map_err(|e| mask(format!("the request to {host} failed: {}", without_url(&e))))?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| {
            mask(format!(
                "the response from {host} broke off: {}",
                without_url(&e)
            ))
        })? {
            if (body.len() + chunk.len()) as u64 > cap {
                return Err(format!(
                    "the response from {host} is larger than the tool's maxResultBytes ({cap})"
                ));
            }
            body.extend_from_slice(&chunk);
        }
        let text = mask(String::from_utf8_lossy(&body).into_owned());
        if !status.is_success() {
            let quoted: String = text.chars().take(300).collect();
            return Err(format!("{host} answered {status}: {quoted}"));
        }
        let result = match serde_json::from_str::<Value>(&text) {
            Ok(json) => match &http.result_pointer {
                Some(pointer) => json.pointer(pointer).cloned().ok_or_else(|| {
                    format!("the response has nothing at resultPointer {pointer}")
                })?,
                None => json,
            },
            Err(_) if http.result_pointer.is_some() => {
                return Err(format!("{host} answered with a body that is not JSON"))
            }
            Err(_) => Value::String(text),
        };
        Ok(ToolOutput {
            result,
            is_error: false,
        })
    }

    /// Runs an `agent` tool: one turn, in a new session or the named one. A turn still running
    /// at the tool's timeout goes on in its session.
    async fn call_agent(self: &Arc<Self>, tool: &AgentTool, arguments: &Value) -> ToolOutput {
        let message = match &tool.prompt {
            Some(prompt) => expand(prompt, arguments, str::to_owned),
            None => match arguments.get("message") {
                Some(Value::String(message)) => Ok(message.clone()),
                _ => Err("the tool needs a message argument".to_owned()),
            },
        };
        let message = match message {
            Ok(message) => message,
            Err(why) => return ToolOutput::failed(why),
        };
        let session = arguments.get("sessionId").and_then(Value::as_str);
        let options = ash_protocol::QueryOptions::default();
        match self
            .ask_agent(&tool.name, session, message, options, |_| {})
            .await
        {
            Ok((id, answer)) => ToolOutput {
                is_error: answer.error.is_some(),
                result: serde_json::json!({"sessionId": id, "reply": answer.text, "error": answer.error}),
            },
            Err(e) => ToolOutput::failed(e.to_string()),
        }
    }

    /// A stored credential's key, for a tool's request.
    async fn credential_key(&self, id: &str) -> Result<String, RuntimeError> {
        let opened = self.open_credential(id).await?;
        let (_, key) = opened.ok_or_else(|| {
            RuntimeError::invalid(format!(
                "the tool's credential {id} does not exist or is inactive"
            ))
        })?;
        Ok(key)
    }
}

/// The template with each `{name}` replaced by that argument, through `encode`.
fn expand(template: &str, arguments: &Value, encode: fn(&str) -> String) -> Result<String, String> {
    let mut url = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        url.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .ok_or("the url template has an unclosed {")?;
        let name = &rest[open + 1..open + close];
        let value = match arguments.get(name) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => return Err(format!("the tool needs argument {name}")),
            Some(other) => other.to_string(),
        };
        url.push_str(&encode(&value));
        rest = &rest[open + close + 1..];
    }
    url.push_str(rest);
    Ok(url)
}

fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A value as JSON text, cut at 4 KiB, for the log.
fn cut(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(4096) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

/// `example.com`, or `*.example.com` for its subdomains.
fn host_matches(allowed: &str, host: &str) -> bool {
    let allowed = allowed.to_ascii_lowercase();
    match allowed.strip_prefix("*.") {
        Some(domain) => host.ends_with(&format!(".{domain}")),
        None => allowed == host,
    }
}

/// A request error without its URL (which may hold arguments).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "bad body"
    } else {
        "request failed"
    };
    kind.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn arguments_fill_the_url_percent_encoded() {
        let args = json!({"city": "São Paulo/../x", "n": 3});
        assert_eq!(
            expand("http://h/w/{city}?n={n}", &args, percent_encode).unwrap(),
            "http://h/w/S%C3%A3o%20Paulo%2F..%2Fx?n=3"
        );
        assert_eq!(
            expand("Weather in {city}", &args, str::to_owned).unwrap(),
            "Weather in São Paulo/../x"
        );
        assert!(expand("http://h/{missing}", &args, percent_encode).is_err());
        assert!(expand("http://h/{open", &args, percent_encode).is_err());
    }

    #[test]
    fn hosts_match_exactly_or_as_subdomains() {
        assert!(host_matches("api.example.com", "api.example.com"));
        assert!(host_matches("*.example.com", "api.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "evilexample.com"));
        assert!(!host_matches("example.com", "example.com.evil"));
    }
}
