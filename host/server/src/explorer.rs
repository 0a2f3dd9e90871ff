//! `/docs`: the API explorer — Swagger UI over this server's own OpenAPI document
//! (`/docs/json`) — served from the binary. Its assets are vendored
//! (`scripts/vendor-swagger-ui.sh`, `assets/swagger-ui/VERSION`), so it works offline, and a
//! content security policy keeps the page to this server alone. Public, like the document.

use std::sync::Arc;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::AppState;

const PAGE: &str = include_str!("../assets/explorer.html");
const START: &str = include_str!("../assets/explorer.js");
const BUNDLE: &str = include_str!("../assets/swagger-ui/swagger-ui-bundle.js");
const STYLE: &str = include_str!("../assets/swagger-ui/swagger-ui.css");
/// Scripts and styles from this server only (Swagger UI sets inline styles); requests to it
/// only.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/docs",
            get(|| async { asset("text/html; charset=utf-8", PAGE) }),
        )
        .route(
            "/docs/explorer.js",
            get(|| async { asset("text/javascript; charset=utf-8", START) }),
        )
        .route(
            "/docs/swagger-ui-bundle.js",
            get(|| async { asset("text/javascript; charset=utf-8", BUNDLE) }),
        )
        .route(
            "/docs/swagger-ui.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    page_asset(kind, body, POLICY)
}

/// A file of a page the binary serves (`/docs`, `/dashboard`), under its content security
/// policy, never sniffed, checked again at each load.
pub(crate) fn page_asset(kind: &'static str, body: &'static str, policy: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CONTENT_SECURITY_POLICY, policy),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
