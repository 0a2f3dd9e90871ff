//! `/dashboard`: a web page to run Ash — agents and their versions, sessions with their live
//! stream and files, plugins, the pool and runners, the queue and usage — served from the
//! binary (`assets/dashboard/`: plain HTML, CSS and one ES module; no framework, nothing to
//! build or vendor). It calls the same REST API as any client.
//!
//! The API key never reaches the page. Signing in (`POST /dashboard/session` with a key)
//! makes a sign-in record in the store, under the SHA-256 of a random token that goes back in
//! a cookie: `HttpOnly` (no script reads it), `SameSite=Strict` (no other site's page sends
//! it) and `Secure` when the request came over TLS. The auth chain takes the cookie in place
//! of a key while the sign-in lasts (12 hours) and its key is not deleted. Every request
//! that changes something must also carry the sign-in's CSRF token in `X-CSRF-Token` (the
//! page learns it from `GET /dashboard/session`, which another site cannot read) and, when
//! the browser sends an `Origin`, come from this server's own origin.

use std::sync::Arc;

use ash_store::DashboardSession;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::auth;
use crate::error::Json;
use crate::{ApiError, AppState};

const PAGE: &str = include_str!("../assets/dashboard/index.html");
const SCRIPT: &str = include_str!("../assets/dashboard/app.js");
const STYLE: &str = include_str!("../assets/dashboard/app.css");
/// This server's scripts and styles only, requests to it only.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
/// The sign-in cookie.
const COOKIE: &str = "ash_dashboard";
/// How long a sign-in lasts.
const LIFETIME: chrono::Duration = chrono::Duration::hours(12);

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/dashboard",
            get(|| async { asset("text/html; charset=utf-8", PAGE) }),
        )
        .route(
            "/dashboard/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/dashboard/app.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route(
            "/dashboard/session",
            get(who).post(sign_in).delete(sign_out),
        )
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    crate::explorer::page_asset(kind, body, POLICY)
}

#[derive(Deserialize)]
struct SignIn {
    key: String,
}

/// What the page may know of its sign-in.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SignedIn {
    csrf_token: String,
    expires_at: String,
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, message)
}

fn forbidden(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, message)
}

/// `POST /dashboard/session {key}`: signs in with an API key.
async fn sign_in(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Json(body): Json<SignIn>,
) -> Result<Response, ApiError> {
    same_origin(&headers)?;
    let Some(key_hash) = auth::accepted(&state, body.key.trim()).await? else {
        state.runtime.metrics.auth_failures.inc();
        return Err(unauthorized("Invalid API key"));
    };
    let token = auth::token();
    let now = chrono::Utc::now();
    let time =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let session = DashboardSession {
        key_hash,
        csrf_token: auth::token(),
        created_at: time(now),
        expires_at: time(now + LIFETIME),
    };
    state
        .store
        .insert_dashboard_session(&auth::token_hash(&token), &session)
        .await?;
    let secure = if over_tls(&headers) { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        LIFETIME.num_seconds()
    );
    let reply = SignedIn {
        csrf_token: session.csrf_token,
        expires_at: session.expires_at,
    };
    let mut response = (StatusCode::CREATED, Json(reply)).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("a cookie of base64url is a header value"),
    );
    Ok(response)
}

/// `GET /dashboard/session`: the sign-in's CSRF token, or 401.
async fn who(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let token = cookie(&headers).ok_or_else(|| unauthorized("Not signed in"))?;
    let session = signed_in(&state, &token).await?;
    let reply = SignedIn {
        csrf_token: session.csrf_token,
        expires_at: session.expires_at,
    };
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(reply)).into_response())
}

/// `DELETE /dashboard/session`: signs out (with the CSRF token, as every change).
async fn sign_out(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = cookie(&headers).ok_or_else(|| unauthorized("Not signed in"))?;
    check(&state, &token, &method, &headers).await?;
    state
        .store
        .delete_dashboard_session(&auth::token_hash(&token))
        .await?;
    let gone = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&gone).expect("a plain header value"),
    );
    Ok(response)
}

/// The sign-in token in the request's cookie, if any.
pub(crate) fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|value| !value.is_empty())
}

/// The sign-in, while it lasts and its key is accepted.
async fn signed_in(state: &AppState, token: &str) -> Result<DashboardSession, ApiError> {
    let hash = auth::token_hash(token);
    let ended = || unauthorized("Your dashboard sign-in has ended; sign in again");
    let session = state
        .store
        .dashboard_session(&hash)
        .await?
        .ok_or_else(ended)?;
    if !auth::still_accepted(state, &session.key_hash).await? {
        state.store.delete_dashboard_session(&hash).await?;
        return Err(ended());
    }
    Ok(session)
}

/// Lets a request with the sign-in cookie through: the sign-in lasts, and a request that
/// changes something comes from this server's page (its origin, its CSRF token).
pub(crate) async fn check(
    state: &AppState,
    token: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let session = signed_in(state, token).await.inspect_err(|_| {
        state.runtime.metrics.auth_failures.inc();
    })?;
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    same_origin(headers)?;
    let sent = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !bool::from(sent.as_bytes().ct_eq(session.csrf_token.as_bytes())) {
        state.runtime.metrics.auth_failures.inc();
        return Err(forbidden(
            "a change made with the dashboard's sign-in needs its X-CSRF-Token",
        ));
    }
    Ok(())
}

/// A request whose `Origin` (when the browser sent one) is this server's.
fn same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let ours = host.is_some_and(|host| {
        let origin = origin.to_str().unwrap_or_default();
        origin == format!("http://{host}") || origin == format!("https://{host}")
    });
    if ours {
        Ok(())
    } else {
        Err(forbidden("a request from another site's page is refused"))
    }
}

/// The request came over TLS, as a proxy in front says (`X-Forwarded-Proto`, `Forwarded`).
fn over_tls(headers: &HeaderMap) -> bool {
    let said = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    said("x-forwarded-proto").is_some_and(|p| p.eq_ignore_ascii_case("https"))
        || said("forwarded").is_some_and(|f| f.to_ascii_lowercase().contains("proto=https"))
}
