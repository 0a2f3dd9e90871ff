//! API keys. Keys are `ash_` + 32 random bytes (base64url) and only their SHA-256 is stored:
//! with 256 bits of entropy a fast hash is enough, and lookups stay O(1). A key given in
//! `ASH_API_KEY` is accepted as-is and compared in constant time. On first start, with no
//! key anywhere, one is generated, written to `<data>/initial-api-key` (0600) and shown once.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use ash_plugin_host::{AuthRequest, Decision};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{ApiError, AppState, ServerConfig, StartError};

/// The id the key in `ASH_API_KEY` is listed under.
pub(crate) const ENV_KEY_ID: &str = "env";

/// File the first generated key is written to, inside the data dir.
pub const INITIAL_KEY_FILE: &str = "initial-api-key";

pub struct Keys {
    env_key: Option<[u8; 32]>,
    /// The key in `ASH_API_KEY` as key lists show it (since this server started with it).
    pub(crate) env_listed: Option<ash_core::ApiKey>,
}

impl Keys {
    pub(crate) async fn bootstrap(
        store: &ash_store::Store,
        config: &ServerConfig,
    ) -> Result<(Self, Option<String>), StartError> {
        if let Some(key) = &config.api_key {
            return Ok((
                Self {
                    env_key: Some(digest(key)),
                    env_listed: Some(ash_core::ApiKey {
                        id: ENV_KEY_ID.into(),
                        label: "ASH_API_KEY (environment variable)".into(),
                        key_prefix: format!("{}••••", prefix(key)),
                        created_at: ash_runtime::now(),
                    }),
                },
                None,
            ));
        }
        if store.has_api_keys().await? {
            return Ok((Self::none(), None));
        }
        let (key, hash) = mint();
        let path = config.runtime.data_dir.join(INITIAL_KEY_FILE);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| file.write_all(format!("{key}\n").as_bytes()));
        written.map_err(|source| StartError::DataDir {
            path: path.display().to_string(),
            source,
        })?;
        store
            .insert_api_key(&hash, "auto-generated", &prefix(&key))
            .await?;
        Ok((Self::none(), Some(key)))
    }
}

impl Keys {
    /// No key is accepted (a runner's routes are behind the cluster token instead).
    pub(crate) fn none() -> Self {
        Self {
            env_key: None,
            env_listed: None,
        }
    }
}

/// A new key and the hash it is stored under.
pub(crate) fn mint() -> (String, String) {
    let key = format!("ash_{}", token());
    let hash = hex(&digest(&key));
    (key, hash)
}

/// What a key list shows of a key: its first 8 characters, fewer for a short key (at most a
/// quarter of it), so a listing never gives a key away.
pub(crate) fn prefix(key: &str) -> String {
    let shown = (key.chars().count() / 4).min(8);
    key.chars().take(shown).collect()
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The auth chain: a valid `Authorization: Bearer <api key>` lets the request through;
/// otherwise each authenticator plugin in turn may allow or deny it. One that fails refuses
/// it (503: authentication fails closed); when none claims it, the API key's error stands.
pub(crate) async fn require_key(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let unauthorized = |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, message);
    let bearer = match request.headers().get(header::AUTHORIZATION) {
        None => Err("Missing Authorization header"),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .filter(|k| !k.is_empty() && !k.contains(' '))
            .ok_or("Invalid Authorization header format: use 'Bearer <api key>'"),
    };
    if let Ok(key) = bearer {
        if accepted(&state, key).await?.is_some() {
            return Ok(next.run(request).await);
        }
    }
    // The dashboard's own requests carry its sign-in cookie instead of a key.
    if request.headers().get(header::AUTHORIZATION).is_none() {
        if let Some(token) = crate::dashboard::cookie(request.headers()) {
            crate::dashboard::check(&state, &token, request.method(), request.headers()).await?;
            return Ok(next.run(request).await);
        }
    }
    if state.runtime.plugins.has_authenticators() {
        let shown = AuthRequest {
            method: request.method().to_string(),
            path: request.uri().path().to_owned(),
            headers: request
                .headers()
                .iter()
                .filter_map(|(name, value)| {
                    Some((name.to_string(), value.to_str().ok()?.to_owned()))
                })
                .collect(),
        };
        // Plugin calls block, bounded by each plugin's deadline.
        let started = std::time::Instant::now();
        let decision = tokio::task::block_in_place(|| state.runtime.plugins.authenticate(&shown));
        state
            .runtime
            .metrics
            .plugin_auth
            .observe(started.elapsed().as_secs_f64());
        match decision {
            Ok(Decision::Allow(principal)) => {
                tracing::debug!(subject = %principal.subject, "request authenticated by a plugin");
                return Ok(next.run(request).await);
            }
            Ok(Decision::Deny(reason)) => {
                state.runtime.metrics.auth_failures.inc();
                return Err(unauthorized(&reason));
            }
            Ok(Decision::Abstain) => {}
            Err(failed) => {
                state.runtime.metrics.auth_failures.inc();
                return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, failed));
            }
        }
    }
    state.runtime.metrics.auth_failures.inc();
    Err(unauthorized(bearer.err().unwrap_or("Invalid API key")))
}

/// The hash (hex) `key` is known by when it is an accepted API key.
pub(crate) async fn accepted(state: &AppState, key: &str) -> Result<Option<String>, ApiError> {
    let hash = hex(&digest(key));
    Ok(still_accepted(state, &hash).await?.then_some(hash))
}

/// The key with this hash (hex) is accepted: the one in `ASH_API_KEY`, or a stored one not
/// deleted.
pub(crate) async fn still_accepted(state: &AppState, hash: &str) -> Result<bool, ApiError> {
    let env_match = state
        .keys
        .env_key
        .is_some_and(|env| bool::from(hex(&env).as_bytes().ct_eq(hash.as_bytes())));
    Ok(env_match || state.store.api_key_tenant(hash).await?.is_some())
}

/// A new random token: 32 bytes, base64url.
pub(crate) fn token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The SHA-256 (hex) a token is stored under.
pub(crate) fn token_hash(token: &str) -> String {
    hex(&digest(token))
}

/// The request carries `Authorization: Bearer <token>` (compared in constant time).
pub(crate) fn bearer_is(headers: &axum::http::HeaderMap, token: &str) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "));
    given.is_some_and(|given| bool::from(digest(given).ct_eq(&digest(token))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_long_random_and_prefixed() {
        let ((a, _), (b, _)) = (mint(), mint());
        assert!(a.starts_with("ash_") && a.len() == 4 + 43, "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn a_listing_shows_at_most_a_quarter_of_a_key() {
        assert_eq!(
            prefix("ash_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"),
            "ash_abcd"
        );
        assert_eq!(prefix("0123456789ab"), "012");
        assert_eq!(prefix("abc"), "");
    }

    #[test]
    fn stored_hash_is_sha256_hex() {
        assert_eq!(
            hex(&digest("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
