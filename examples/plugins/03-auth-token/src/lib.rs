//! Example 3: an authenticator sees each request Ash's own API keys did not accept, and
//! allows it (naming who made it), denies it, or abstains so the next one decides. This one
//! accepts one shared token (config `token`) in the `X-Example-Token` header.
//!
//! What it shows: the headers capability (the plugin is shown only the headers its manifest
//! lists) and the three answers. A failing authenticator refuses the request: auth fails
//! closed. For real deployments see `plugins/auth-jwt`.

wit_bindgen::generate!({
    path: ["../../../wit/host", "../../../wit/auth"],
    world: "ash:auth/authenticator@0.1.0",
    generate_all,
});

use ash::auth::types::{Decision, Principal, Request};
use ash::host::config;
use exports::ash::auth::authenticate::Guest;

struct Token;

impl Guest for Token {
    fn authenticate(request: Request) -> Decision {
        let Some((_, given)) = request
            .headers
            .iter()
            .find(|(name, _)| name == "x-example-token")
        else {
            // Not our kind of credential: let the next authenticator (or the API key) decide.
            return Decision::Abstain;
        };
        match config::get("token") {
            Some(token) if !token.is_empty() && same(given.as_bytes(), token.as_bytes()) => {
                Decision::Allow(Principal {
                    subject: config::get("subject").unwrap_or_else(|| "example".into()),
                    claims: Vec::new(),
                })
            }
            _ => Decision::Deny("invalid X-Example-Token".into()),
        }
    }
}

/// Compares without stopping at the first difference, so timing does not leak the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |diff, (x, y)| diff | (x ^ y)) == 0
}

export!(Token);
