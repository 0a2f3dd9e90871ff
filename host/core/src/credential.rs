use serde::{Deserialize, Serialize};

/// What a credential is for: each kind is given to a session's sandbox (or its model proxy)
/// as one environment variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CredentialType {
    Anthropic,
    Openai,
    Custom,
}

impl CredentialType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Anthropic => "anthropic",
            Self::Openai => "openai",
            Self::Custom => "custom",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [Self::Anthropic, Self::Openai, Self::Custom]
            .into_iter()
            .find(|kind| kind.as_str() == raw)
    }

    /// The variable the key is given as, as in the reference API.
    pub fn env_var(self) -> &'static str {
        match self {
            Self::Anthropic => "ANTHROPIC_API_KEY",
            Self::Openai => "OPENAI_API_KEY",
            Self::Custom => "ASH_CUSTOM_API_KEY",
        }
    }
}

/// A stored credential as the API shows it: never its key.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Credential {
    #[schema(format = Uuid)]
    pub id: String,
    #[serde(rename = "type")]
    pub kind: CredentialType,
    pub label: String,
    pub active: bool,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub last_used_at: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_name_their_variable() {
        for kind in [
            CredentialType::Anthropic,
            CredentialType::Openai,
            CredentialType::Custom,
        ] {
            assert_eq!(CredentialType::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(CredentialType::parse("bedrock"), None);
        assert_eq!(CredentialType::Openai.env_var(), "OPENAI_API_KEY");
    }
}

/// An API key as the API lists it: its id, label and first characters, never the key or its
/// hash.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKey {
    pub id: String,
    pub label: String,
    /// The key's first characters, then `••••`.
    #[schema(example = "ash_Xk3q••••")]
    pub key_prefix: String,
    #[schema(format = DateTime)]
    pub created_at: String,
}
