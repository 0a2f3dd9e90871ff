//! An authenticator for bearer JSON Web Tokens (RFC 7519) signed with HS256 or RS256.
//!
//! A request whose bearer credential is not shaped like a JWT is left to the next
//! authenticator (`abstain`), so Ash's own API keys keep working. A JWT is allowed only when
//! its `alg` is one a key is configured for — never `none`, and never HS256 with the RSA key
//! as the secret — its signature verifies, `exp` is in the future and `nbf` in the past (with
//! `leeway_seconds`), and `iss`/`aud` match when configured. Anything else is denied with a
//! reason that names the check, never the token.

wit_bindgen::generate!({
    path: ["../../wit/host", "../../wit/auth"],
    world: "ash:auth/authenticator@0.1.0",
    generate_all,
});

use ash::auth::types::{Decision, Principal, Request};
use std::sync::OnceLock;

use ash::host::config;
use ash::host::log::{log, Level};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use exports::ash::auth::authenticate::Guest;
use hmac::{Hmac, Mac};
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use serde_json::Value;
use sha2::Sha256;

/// The longest token looked at.
const MAX_TOKEN: usize = 8 * 1024;

struct Jwt;

impl Guest for Jwt {
    fn authenticate(request: Request) -> Decision {
        let token = request
            .headers
            .iter()
            .find(|(name, _)| name == "authorization")
            .and_then(|(_, value)| value.strip_prefix("Bearer "));
        match token {
            Some(token) if looks_like_jwt(token) => match verify(token) {
                Ok(principal) => Decision::Allow(principal),
                Err(reason) => Decision::Deny(reason),
            },
            _ => Decision::Abstain,
        }
    }
}

export!(Jwt);

fn looks_like_jwt(token: &str) -> bool {
    token.len() <= MAX_TOKEN
        && token.split('.').count() == 3
        && token.starts_with("eyJ")
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn verify(token: &str) -> Result<Principal, String> {
    let (signed, signature) = token.rsplit_once('.').ok_or("malformed token")?;
    let (header, claims) = signed.split_once('.').ok_or("malformed token")?;
    let header = decode_json(header).ok_or("malformed token header")?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| "malformed token signature")?;
    match header["alg"].as_str() {
        Some("HS256") => {
            let secret = config::get("hs256_secret").ok_or("HS256 tokens are not accepted")?;
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
                .map_err(|_| "HS256 tokens are not accepted")?;
            mac.update(signed.as_bytes());
            mac.verify_slice(&signature)
                .map_err(|_| "invalid token signature")?;
        }
        Some("RS256") => {
            let key = rs256_key()
                .as_ref()
                .ok_or("RS256 tokens are not accepted")?;
            let signature =
                Signature::try_from(signature.as_slice()).map_err(|_| "invalid token signature")?;
            key.verify(signed.as_bytes(), &signature)
                .map_err(|_| "invalid token signature")?;
        }
        Some(alg) => return Err(format!("token algorithm {alg} is not accepted")),
        None => return Err("token header names no algorithm".into()),
    }
    let claims = decode_json(claims).ok_or("malformed token claims")?;
    check_claims(&claims)?;
    let subject = claims["sub"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or("token has no subject (sub)")?;
    let mut facts = Vec::new();
    for name in ["iss", "tenant", "scope"] {
        if let Some(value) = claims[name].as_str() {
            facts.push((name.to_owned(), value.to_owned()));
        }
    }
    Ok(Principal {
        subject: subject.to_owned(),
        claims: facts,
    })
}

/// The RS256 key, parsed once per instance (the config does not change under it).
fn rs256_key() -> &'static Option<VerifyingKey<Sha256>> {
    static KEY: OnceLock<Option<VerifyingKey<Sha256>>> = OnceLock::new();
    KEY.get_or_init(|| {
        let pem = config::get("rs256_public_key")?;
        match rsa::RsaPublicKey::from_public_key_pem(pem.trim()) {
            Ok(key) => Some(VerifyingKey::new(key)),
            Err(e) => {
                log(
                    Level::Error,
                    &format!("rs256_public_key is not a PEM public key: {e}"),
                );
                None
            }
        }
    })
}

fn check_claims(claims: &Value) -> Result<(), String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let leeway = config::get("leeway_seconds")
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or(60);
    match claims["exp"].as_i64() {
        None => return Err("token has no expiry (exp)".into()),
        Some(exp) if exp + leeway <= now => return Err("token expired".into()),
        Some(_) => {}
    }
    if claims["nbf"].as_i64().is_some_and(|nbf| nbf - leeway > now) {
        return Err("token not valid yet (nbf)".into());
    }
    if let Some(issuer) = config::get("issuer") {
        if claims["iss"].as_str() != Some(issuer.as_str()) {
            return Err("token issuer (iss) not accepted".into());
        }
    }
    if let Some(audience) = config::get("audience") {
        let matches = match &claims["aud"] {
            Value::String(aud) => *aud == audience,
            Value::Array(auds) => auds.iter().any(|a| a.as_str() == Some(audience.as_str())),
            _ => false,
        };
        if !matches {
            return Err("token audience (aud) not accepted".into());
        }
    }
    Ok(())
}

fn decode_json(part: &str) -> Option<Value> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice::<Value>(&bytes)
        .ok()
        .filter(Value::is_object)
}
