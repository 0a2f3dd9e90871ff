//! The MCP frontend at `/mcp`: Streamable HTTP, served by the official Rust MCP SDK (`rmcp`),
//! which does the protocol — version negotiation, `Mcp-Session-Id`, SSE responses and their
//! resumption — behind the same auth chain as REST. Its tools:
//!
//! - the registry's, each call going through the invoker
//!   ([`ash_runtime::Runtime::call_tool`]) like a REST call;
//! - `agent.<name>` for each agent: one turn of it, in a new session or a named one, its text
//!   streamed as `notifications/progress` when the client sends a progress token;
//! - `ash.sessions.list`, `ash.session.pause`, `.resume` and `.end`.

use std::sync::Arc;

use ash_runtime::{Caller, Missing, RuntimeError};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities,
    ServerConfig, Tool,
};
use rmcp::service::{NotificationContext, Peer, RequestContext, RoleServer};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, ServerHandler};
use serde_json::{json, Value};

use crate::AppState;

/// The MCP service, mounted at `/mcp` behind the auth chain, its bodies capped as REST's.
/// rmcp's loopback-only `Host` check is off: the server listens where the operator says, and
/// every request must carry a key (or a dashboard sign-in) first.
pub(crate) fn service(
    state: Arc<AppState>,
) -> StreamableHttpService<Frontend, LocalSessionManager> {
    let config = StreamableHttpServerConfig::default()
        .disable_allowed_hosts()
        .with_max_request_body_bytes(crate::BODY_LIMIT);
    StreamableHttpService::new(
        move || {
            Ok(Frontend {
                state: state.clone(),
            })
        },
        Arc::default(),
        config,
    )
}

/// The MCP sessions connected to this server, to tell of registry changes.
#[derive(Default)]
pub(crate) struct Clients(std::sync::Mutex<Vec<Peer<RoleServer>>>);

/// Sends `notifications/tools/list_changed` to every MCP session connected here, forgetting
/// the ones that went away. It does not wait for them.
pub(crate) fn tools_changed(state: &AppState) {
    let peers: Vec<Peer<RoleServer>> = {
        let mut peers = state.mcp_clients.0.lock().expect("lock");
        peers.retain(|peer| !peer.is_transport_closed());
        peers.clone()
    };
    if peers.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for peer in peers {
            if let Err(e) = peer.notify_tool_list_changed().await {
                tracing::debug!("an MCP session missed a tools/list_changed: {e}");
            }
        }
    });
}

/// One MCP session's handler.
#[derive(Clone)]
pub(crate) struct Frontend {
    state: Arc<AppState>,
}

impl ServerHandler for Frontend {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_tool_list_changed()
            .build();
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new("ash", env!("CARGO_PKG_VERSION")))
            .with_instructions("Ash: the tools of this server's registry.")
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        let mut peers = self.state.mcp_clients.0.lock().expect("lock");
        peers.retain(|peer| !peer.is_transport_closed());
        peers.push(context.peer);
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let tools = self
            .state
            .store
            .list_tools()
            .await
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        let agents = self
            .state
            .store
            .list_agents()
            .await
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        let mut listed: Vec<Tool> = tools
            .into_iter()
            .map(|tool| mcp_tool(tool.name, tool.description, tool.input_schema))
            .collect();
        for agent in agents {
            let description = format!(
                "Send a message to the Ash agent {} and get its reply: in a new session, or in sessionId's to go on with it. The reply's text streams as progress.",
                agent.name
            );
            let schema = json!({"type": "object", "required": ["message"], "properties": {
                "message": {"type": "string", "minLength": 1, "maxLength": 500_000},
                "sessionId": {"type": "string", "format": "uuid"}}});
            listed.push(mcp_tool(
                format!("{AGENT_TOOL}{}", agent.name),
                description,
                schema,
            ));
        }
        let session = json!({"type": "object", "required": ["sessionId"],
            "properties": {"sessionId": {"type": "string", "format": "uuid"}}});
        listed.push(mcp_tool(
            "ash.sessions.list".into(),
            "List Ash sessions, of one agent if given.".into(),
            json!({"type": "object", "properties": {"agent": {"type": "string"}}}),
        ));
        for (action, what) in [
            ("pause", "Pause an Ash session (its workspace is kept)."),
            ("resume", "Resume a paused or stopped Ash session."),
            ("end", "End an Ash session: its sandbox and files go."),
        ] {
            listed.push(mcp_tool(
                format!("ash.session.{action}"),
                what.into(),
                session.clone(),
            ));
        }
        Ok(ListToolsResult::with_all_items(listed))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let arguments = serde_json::Value::Object(request.arguments.unwrap_or_default());
        if let Some(agent) = request.name.strip_prefix(AGENT_TOOL) {
            return self.ask(agent, &arguments, &context).await.map(Into::into);
        }
        if let Some(action) = request.name.strip_prefix("ash.") {
            return self.manage(action, &arguments).await.map(Into::into);
        }
        let caller = Caller {
            via: "mcp",
            session: None,
        };
        let called = self
            .state
            .runtime
            .call_tool(&request.name, arguments, &caller)
            .await;
        let output = called.map_err(protocol_error)?;
        let text = match &output.result {
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        let content = vec![ContentBlock::text(text)];
        Ok(match output.is_error {
            true => CallToolResult::error(content),
            false => CallToolResult::success(content),
        }
        .into())
    }
}

/// The prefix of the tools that are agents.
const AGENT_TOOL: &str = "agent.";

fn mcp_tool(name: String, description: String, schema: Value) -> Tool {
    let schema = match schema {
        Value::Object(schema) => schema,
        _ => serde_json::Map::new(),
    };
    Tool::new(name, description, Arc::new(schema))
}

/// A refusal as the protocol says it: an unknown tool, bad arguments and a missing session
/// are invalid params; a plugin's refusal an invalid request.
fn protocol_error(e: RuntimeError) -> ErrorData {
    match e {
        RuntimeError::NotFound(_) | RuntimeError::Invalid(_) | RuntimeError::Core(_) => {
            ErrorData::invalid_params(e.to_string(), None)
        }
        RuntimeError::Forbidden(_) => ErrorData::invalid_request(e.to_string(), None),
        e => ErrorData::internal_error(e.to_string(), None),
    }
}

fn text_argument<'a>(arguments: &'a Value, name: &str) -> Result<Option<&'a str>, ErrorData> {
    match arguments.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(ErrorData::invalid_params(
            format!("arguments break the input schema at /{name}: not a string"),
            None,
        )),
    }
}

impl Frontend {
    /// One turn of `agent`: in a new session, or in `sessionId`'s; its text streamed as
    /// progress to a client that sent a progress token.
    async fn ask(
        &self,
        agent: &str,
        arguments: &Value,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let runtime = &self.state.runtime;
        let message = text_argument(arguments, "message")?
            .filter(|m| !m.trim().is_empty())
            .ok_or_else(|| {
                ErrorData::invalid_params(
                    "arguments break the input schema at /message: a message is required",
                    None,
                )
            })?;
        let session = text_argument(arguments, "sessionId")?;
        let token = context.meta.get_progress_token();
        let options = ash_protocol::QueryOptions {
            include_partial_messages: token.is_some(),
            ..ash_protocol::QueryOptions::default()
        };
        let (deltas, mut said) = tokio::sync::mpsc::unbounded_channel::<String>();
        let peer = context.peer.clone();
        let forward = tokio::spawn(async move {
            let Some(token) = token else { return };
            let mut progress = 0.0;
            while let Some(text) = said.recv().await {
                progress += 1.0;
                let note =
                    ProgressNotificationParam::new(token.clone(), progress).with_message(text);
                if peer.notify_progress(note).await.is_err() {
                    return;
                }
            }
        });
        let asked = runtime
            .ask_agent(agent, session, message.to_owned(), options, |delta| {
                let _ = deltas.send(delta.to_owned());
            })
            .await;
        drop(deltas);
        let _ = forward.await;
        let (id, answer) = asked.map_err(protocol_error)?;
        let reply = json!({"sessionId": id, "reply": answer.text, "error": answer.error});
        Ok(match answer.error {
            Some(_) => CallToolResult::structured_error(reply),
            None => CallToolResult::structured(reply),
        })
    }

    /// The session tools: `sessions.list`, `session.pause`, `.resume`, `.end`.
    async fn manage(&self, action: &str, arguments: &Value) -> Result<CallToolResult, ErrorData> {
        let runtime = &self.state.runtime;
        if action == "sessions.list" {
            let agent = text_argument(arguments, "agent")?
                .map(|a| ash_core::AgentName::try_from(a.to_owned()))
                .transpose()
                .map_err(|e| ErrorData::invalid_params(e.to_string(), None))?;
            let sessions = self
                .state
                .store
                .list_sessions(agent.as_ref())
                .await
                .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
            return Ok(CallToolResult::structured(json!({ "sessions": sessions })));
        }
        let id = text_argument(arguments, "sessionId")?.ok_or_else(|| {
            ErrorData::invalid_params(
                "arguments break the input schema at /sessionId: required",
                None,
            )
        })?;
        let session = match action {
            "session.pause" => runtime.pause(id).await,
            "session.resume" => runtime.resume(id).await,
            "session.end" => runtime.end(id).await,
            _ => Err(RuntimeError::NotFound(Missing::Tool)),
        }
        .map_err(protocol_error)?;
        Ok(CallToolResult::structured(json!({ "session": session })))
    }
}
