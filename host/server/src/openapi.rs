//! The OpenAPI document, generated from the handlers and types (utoipa), served at
//! `/docs/json` and committed as `docs/openapi.json` (a test keeps the copy fresh).

use ash_core::{Agent, Message, Role, Session, SessionEvent, SessionStatus};
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// `{"agent": …}`
#[derive(Serialize, ToSchema)]
pub(crate) struct AgentReply {
    pub agent: Agent,
}

/// `{"agents": […]}`
#[derive(Serialize, ToSchema)]
pub(crate) struct AgentList {
    pub agents: Vec<Agent>,
}

/// `{"session": …}`
#[derive(Serialize, ToSchema)]
pub(crate) struct SessionReply {
    pub session: Session,
}

/// `{"sessions": […]}`, newest first.
#[derive(Serialize, ToSchema)]
pub(crate) struct SessionList {
    pub sessions: Vec<Session>,
}

/// `{"messages": […]}`, by sequence.
#[derive(Serialize, ToSchema)]
pub(crate) struct MessageList {
    pub messages: Vec<Message>,
}

/// `{"events": […]}`: entries of the session's event log, by sequence.
#[derive(Serialize, ToSchema)]
pub(crate) struct EventList {
    pub events: Vec<SessionEvent>,
}

/// `{"ok": true}`
#[derive(Serialize, ToSchema)]
pub(crate) struct Deleted {
    pub ok: bool,
}

/// Whether a running turn was stopped.
#[derive(Serialize, ToSchema)]
pub(crate) struct Interrupted {
    pub interrupted: bool,
}

/// Every error: what went wrong and what to do, with the HTTP status repeated.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ErrorBody {
    pub error: String,
    pub status_code: u16,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Ash", description = "Deploy AI agents and run each session in a sandbox. Paths and shapes follow the reference Ash API."),
    components(schemas(Role, SessionStatus)),
    security(("bearer" = [])),
    tags((name = "agents"), (name = "sessions"), (name = "credentials"), (name = "api-keys"), (name = "attachments"), (name = "health"))
)]
pub(crate) struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("An Ash API key"))
            .build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// Adds the errors every route can answer: 401 wherever a key is needed, 400 wherever a path
/// parameter is parsed, and the body errors (400 invalid, 413 too large, 415 not JSON, 422
/// wrong shape) wherever a body is read.
struct StandardErrors;

impl Modify for StandardErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |description: &str| {
            let content = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build();
            ResponseBuilder::new()
                .description(description)
                .content("application/json", content)
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.delete,
                &mut item.put,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                let public = operation
                    .security
                    .as_ref()
                    .is_some_and(|s| s.iter().all(|r| r == &Default::default()));
                let mut add = |code: &str, description: &str| {
                    operation
                        .responses
                        .responses
                        .entry(code.to_owned())
                        .or_insert_with(|| error(description).into());
                };
                if !public {
                    add("401", "Missing or invalid API key");
                }
                let in_path = |p: &utoipa::openapi::path::Parameter| {
                    p.parameter_in == utoipa::openapi::path::ParameterIn::Path
                };
                if operation.parameters.iter().flatten().any(in_path) {
                    add("400", "Invalid path parameter");
                }
                if operation.request_body.is_some() {
                    add("400", "Invalid request");
                    add("413", "Request body too large");
                    add("415", "Body is not JSON");
                    add("422", "Body does not have the expected shape");
                }
            }
        }
    }
}

/// The document as pretty JSON, as committed in `docs/openapi.json`: the paths each route
/// module registers with its routes, then the security scheme and the standard errors.
pub fn document() -> String {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let document = DOCUMENT.get_or_init(|| {
        let (keyed, public) = crate::routes();
        let mut openapi = ApiDoc::openapi();
        openapi.merge(keyed.into_openapi());
        openapi.merge(public.into_openapi());
        BearerAuth.modify(&mut openapi);
        StandardErrors.modify(&mut openapi);
        openapi
            .to_pretty_json()
            .expect("the OpenAPI document serialises")
    });
    document.clone()
}

/// `GET /docs/json`
pub(crate) async fn serve() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        document(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_committed_openapi_document_is_current() {
        let committed = include_str!("../../../docs/openapi.json");
        assert!(
            committed.trim_end() == super::document().trim_end(),
            "docs/openapi.json is stale: run `cargo run -p ash-cli --bin ash -- openapi > docs/openapi.json`"
        );
    }

    /// A query struct without `#[into_params(parameter_in = Query)]` is documented as a
    /// required path parameter, which clients then put in the path.
    #[test]
    fn every_path_parameter_is_in_its_path() {
        let document: serde_json::Value = serde_json::from_str(&super::document()).unwrap();
        let mut misplaced = Vec::new();
        for (path, operations) in document["paths"].as_object().unwrap() {
            for (method, operation) in operations.as_object().unwrap() {
                for parameter in operation["parameters"].as_array().into_iter().flatten() {
                    let name = parameter["name"].as_str().unwrap();
                    if parameter["in"] == "path" && !path.contains(&format!("{{{name}}}")) {
                        misplaced.push(format!("{method} {path}: {name}"));
                    }
                }
            }
        }
        assert!(
            misplaced.is_empty(),
            "query parameters documented in the path: {misplaced:?}"
        );
    }
}
