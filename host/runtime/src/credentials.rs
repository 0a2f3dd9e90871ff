//! Credentials: model-provider keys stored for sessions to use by id (`credentialId`), so a
//! client never has to pass a key with every session.
//!
//! Keys are encrypted at rest with AES-256-GCM under a key derived (HKDF-SHA256, a random
//! salt per credential) from the server's `ASH_CREDENTIAL_KEY`; the credential's id is bound
//! in as associated data, so a sealed key cannot be moved to another row. Without
//! `ASH_CREDENTIAL_KEY` the routes answer 503 and say how to set it. A key is decrypted only
//! when a session's sandbox starts; it is never returned by the API, and for backends that
//! reach their model through the host's proxy it never enters the sandbox either.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use ash_store::SealedKey;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use crate::{OpenError, Runtime, RuntimeError};

/// The shortest `ASH_CREDENTIAL_KEY` accepted.
const MIN_MASTER_KEY: usize = 32;
const TAG: usize = 16;

/// Seals and opens credential keys with the server's master key.
pub struct Sealer {
    master: Vec<u8>,
}

impl Sealer {
    /// `None` when no master key is configured (credentials are off).
    pub fn new(master: Option<&str>) -> Result<Option<Self>, OpenError> {
        let Some(master) = master else {
            return Ok(None);
        };
        if master.len() < MIN_MASTER_KEY {
            return Err(OpenError::Config(format!(
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

    /// The key sealed for the credential `id`.
    pub fn seal(&self, id: &str, key: &str) -> SealedKey {
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

impl Runtime {
    /// The sealer, or why credentials cannot be used on this server.
    pub fn sealer(&self) -> Result<&Sealer, RuntimeError> {
        self.sealer.as_ref().ok_or_else(|| {
            RuntimeError::Unavailable(
                "credentials are off: start the server with ASH_CREDENTIAL_KEY set (openssl rand -base64 32)".into(),
            )
        })
    }

    /// The variable and key a session's sandbox gets from its credential.
    pub(crate) async fn credential_env(
        &self,
        id: &str,
    ) -> Result<(&'static str, String), RuntimeError> {
        let (kind, key) = self.open_credential(id).await?.ok_or_else(|| {
            RuntimeError::invalid(format!(
                "the session's credential {id} does not exist or is inactive; create the session again with another credentialId"
            ))
        })?;
        Ok((kind.env_var(), key))
    }

    /// A stored credential's type and key (its use recorded); `None` when it does not exist
    /// or is inactive.
    pub(crate) async fn open_credential(
        &self,
        id: &str,
    ) -> Result<Option<(ash_core::CredentialType, String)>, RuntimeError> {
        let Some((credential, sealed)) = self.store.get_credential(id).await? else {
            return Ok(None);
        };
        if !credential.active {
            return Ok(None);
        }
        let key = self.sealer()?.open(id, &sealed).map_err(|why| {
            RuntimeError::Unavailable(format!("credential {id} cannot be used: {why}"))
        })?;
        if let Err(e) = self.store.touch_credential(id).await {
            tracing::warn!("cannot record the use of credential {id}: {e}");
        }
        Ok(Some((credential.kind, key)))
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
