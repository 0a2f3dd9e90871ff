//! Credentials: model-provider keys stored for sessions to use by id (`credentialId`), so a
//! client never has to pass a key with every session.
//!
//! Keys are encrypted at rest with AES-256-GCM under a key derived (HKDF-SHA256, a random
//! salt per credential) from the server's `ASH_CREDENTIAL_KEY`; the credential's id is bound
//! in as associated data, so a sealed key cannot be moved to another row. Without
//! `ASH_CREDENTIAL_KEY` the routes answer 503 and say how to set it. A key is decrypted only
//! when a session's sandbox starts; it is never returned by the API, and for backends that
//! reach their model through the host's proxy it never enters the sandbox either.

use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use ash_core::{Credential, CredentialType};
use ash_store::SealedKey;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::Json;
use crate::{ApiError, AppState, StartError};

/// The shortest `ASH_CREDENTIAL_KEY` accepted.
const MIN_MASTER_KEY: usize = 32;
/// The longest key and label stored.
const MAX_KEY: usize = 16 * 1024;
const MAX_LABEL: usize = 255;
const TAG: usize = 16;

/// Seals and opens credential keys with the server's master key.
pub struct Sealer {
    master: Vec<u8>,
}

impl Sealer {
    /// `None` when no master key is configured (credentials are off).
    pub(crate) fn new(master: Option<&str>) -> Result<Option<Self>, StartError> {
        let Some(master) = master else {
            return Ok(None);
        };
        if master.len() < MIN_MASTER_KEY {
            return Err(StartError::Config(format!(
                "ASH_CREDENTIAL_KEY must be at least {MIN_MASTER_KEY} characters; make one with: openssl rand -base64 32"
            )));
        }
        Ok(Some(Self {
            master: master.as_bytes().to_vec(),
        }))
    }

    fn cipher(&self, salt: &[u8]) -> Aes256Gcm {
        let mut key = [0u8; 32];
        hkdf::Hkdf::<sha2::Sha256>::new(Some(salt), &self.master)
            .expand(b"ash credential v1", &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 length");
        Aes256Gcm::new(&key.into())
    }

    fn seal(&self, id: &str, key: &str) -> SealedKey {
        let (mut salt, mut nonce) = ([0u8; 16], [0u8; 12]);
        getrandom::fill(&mut salt).expect("the OS random source works");
        getrandom::fill(&mut nonce).expect("the OS random source works");
        let sealed = self
            .cipher(&salt)
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: key.as_bytes(),
                    aad: id.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of a bounded key cannot fail");
        let (ciphertext, tag) = sealed.split_at(sealed.len() - TAG);
        SealedKey {
            ciphertext: B64.encode(ciphertext),
            nonce: B64.encode(nonce),
            tag: B64.encode(tag),
            salt: B64.encode(salt),
        }
    }

    /// The key, or why it cannot be had (a different master key, a tampered row).
    fn open(&self, id: &str, sealed: &SealedKey) -> Result<String, String> {
        let decode = |field: &str| {
            B64.decode(field)
                .map_err(|_| "a stored field is not base64")
        };
        let mut message = decode(&sealed.ciphertext)?;
        message.extend(decode(&sealed.tag)?);
        let nonce = decode(&sealed.nonce)?;
        if nonce.len() != 12 {
            return Err("the stored nonce is not 12 bytes".into());
        }
        let plain = self
            .cipher(&decode(&sealed.salt)?)
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &message,
                    aad: id.as_bytes(),
                },
            )
            .map_err(|_| "it cannot be decrypted: ASH_CREDENTIAL_KEY is not the key it was stored with, or the row was changed")?;
        String::from_utf8(plain).map_err(|_| "the decrypted key is not UTF-8".into())
    }
}

fn sealer(state: &AppState) -> Result<&Sealer, ApiError> {
    state.sealer.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "credentials are off: start the server with ASH_CREDENTIAL_KEY set (openssl rand -base64 32)",
        )
    })
}

/// The variable and key a session's sandbox gets from its credential.
pub(crate) async fn env_for(
    state: &AppState,
    id: &str,
) -> Result<(&'static str, String), ApiError> {
    let gone = || {
        ApiError::bad_request(format!(
            "the session's credential {id} does not exist or is inactive; create the session again with another credentialId"
        ))
    };
    let (credential, sealed) = state.store.get_credential(id).await?.ok_or_else(gone)?;
    if !credential.active {
        return Err(gone());
    }
    let key = sealer(state)?.open(id, &sealed).map_err(|why| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("credential {id} cannot be used: {why}"),
        )
    })?;
    if let Err(e) = state.store.touch_credential(id).await {
        tracing::warn!("cannot record the use of credential {id}: {e}");
    }
    Ok((credential.kind.env_var(), key))
}

pub(crate) fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(remove))
}

/// A key to store: `type` is `anthropic`, `openai` or `custom` (given to sessions as
/// `ANTHROPIC_API_KEY`, `OPENAI_API_KEY`, `ASH_CUSTOM_API_KEY`).
#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct CreateCredentialBody {
    #[serde(rename = "type")]
    kind: CredentialType,
    #[schema(min_length = 1, max_length = 16384)]
    key: String,
    #[schema(max_length = 255)]
    label: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct CredentialReply {
    credential: Credential,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct CredentialList {
    credentials: Vec<Credential>,
}

#[utoipa::path(post, path = "/api/credentials", tag = "credentials", request_body = CreateCredentialBody,
    responses((status = 201, body = CredentialReply), (status = 400, body = crate::openapi::ErrorBody), (status = 503, body = crate::openapi::ErrorBody)))]
pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    Json(body): Json<CreateCredentialBody>,
) -> Result<(StatusCode, Json<CredentialReply>), ApiError> {
    let sealer = sealer(&state)?;
    if body.key.is_empty() || body.key.len() > MAX_KEY || body.key.contains(['\0', '\n']) {
        return Err(ApiError::bad_request(format!(
            "key must be 1-{MAX_KEY} bytes on one line"
        )));
    }
    let label = body.label.unwrap_or_default();
    if label.len() > MAX_LABEL {
        return Err(ApiError::bad_request(format!(
            "label must be at most {MAX_LABEL} bytes"
        )));
    }
    let credential = Credential {
        id: uuid::Uuid::new_v4().to_string(),
        kind: body.kind,
        label,
        active: true,
        created_at: crate::sessions::now(),
        last_used_at: None,
    };
    let sealed = sealer.seal(&credential.id, &body.key);
    state.store.insert_credential(&credential, &sealed).await?;
    tracing::info!(credential = %credential.id, kind = credential.kind.as_str(), "credential stored");
    Ok((StatusCode::CREATED, Json(CredentialReply { credential })))
}

#[utoipa::path(get, path = "/api/credentials", tag = "credentials",
    responses((status = 200, body = CredentialList)))]
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
) -> Result<Json<CredentialList>, ApiError> {
    Ok(Json(CredentialList {
        credentials: state.store.list_credentials().await?,
    }))
}

#[utoipa::path(delete, path = "/api/credentials/{id}", tag = "credentials", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = crate::openapi::ErrorBody)))]
pub(crate) async fn remove(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<StatusCode, ApiError> {
    if state.store.delete_credential(&id).await? {
        tracing::info!(credential = %id, "credential deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("Credential not found"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_only_with_its_master_key_and_id() {
        let sealer = Sealer::new(Some(&"m".repeat(32))).unwrap().unwrap();
        let sealed = sealer.seal("c1", "sk-secret");
        assert!(!format!("{sealed:?}").contains("sk-secret"));
        assert_eq!(sealer.open("c1", &sealed).unwrap(), "sk-secret");
        assert!(sealer.open("c2", &sealed).is_err(), "bound to its id");
        let other = Sealer::new(Some(&"n".repeat(32))).unwrap().unwrap();
        assert!(other.open("c1", &sealed).is_err());
        let again = sealer.seal("c1", "sk-secret");
        assert_ne!(
            again.ciphertext, sealed.ciphertext,
            "a fresh salt and nonce each time"
        );
    }

    #[test]
    fn a_short_master_key_is_refused() {
        assert!(Sealer::new(Some("short")).is_err());
        assert!(Sealer::new(None).unwrap().is_none());
    }
}
