//! The MCP frontend at `/mcp`: Streamable HTTP, served by the official Rust MCP SDK (`rmcp`),
//! which does the protocol — version negotiation, `Mcp-Session-Id`, SSE responses and their
//! resumption — behind the same auth chain as REST. Its tools are the registry's, each call
//! going through the invoker ([`ash_runtime::Runtime::call_tool`]) like a REST call.

use std::sync::Arc;

use ash_runtime::{Caller, Missing, RuntimeError};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{NotificationContext, Peer, RequestContext, RoleServer};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, ServerHandler};

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
        let listed = tools
            .into_iter()
            .map(|tool| {
                let schema = match tool.input_schema {
                    serde_json::Value::Object(schema) => schema,
                    _ => serde_json::Map::new(),
                };
                Tool::new(tool.name, tool.description, Arc::new(schema))
            })
            .collect();
        Ok(ListToolsResult::with_all_items(listed))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let arguments = serde_json::Value::Object(request.arguments.unwrap_or_default());
        let caller = Caller {
            via: "mcp",
            session: None,
        };
        let called = self
            .state
            .runtime
            .call_tool(&request.name, arguments, &caller)
            .await;
        let output = match called {
            Ok(output) => output,
            // The protocol's own errors: an unknown tool and bad arguments are invalid params.
            Err(e @ (RuntimeError::NotFound(Missing::Tool) | RuntimeError::Invalid(_))) => {
                return Err(ErrorData::invalid_params(e.to_string(), None))
            }
            Err(e @ RuntimeError::Forbidden(_)) => {
                return Err(ErrorData::invalid_request(e.to_string(), None))
            }
            Err(e) => return Err(ErrorData::internal_error(e.to_string(), None)),
        };
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
