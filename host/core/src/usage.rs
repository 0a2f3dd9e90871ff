//! What a turn used, as the backends report it: tokens from the `result` message's `usage`
//! (the Claude agent SDK's shape, which every backend speaks), tool calls counted in its
//! `assistant` messages, one message, and the seconds the turn took. Kept as one record per
//! turn; the API shows it as one usage event per kind.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{AgentName, SessionId};

/// A kind of usage event, as the API names it (`eventType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UsageKind {
    InputTokens,
    OutputTokens,
    CacheCreationTokens,
    CacheReadTokens,
    ToolCall,
    Message,
    ComputeSeconds,
}

impl UsageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InputTokens => "input_tokens",
            Self::OutputTokens => "output_tokens",
            Self::CacheCreationTokens => "cache_creation_tokens",
            Self::CacheReadTokens => "cache_read_tokens",
            Self::ToolCall => "tool_call",
            Self::Message => "message",
            Self::ComputeSeconds => "compute_seconds",
        }
    }
}

/// The counts of one turn, or of many added up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageCounts {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_tokens: u64,
    pub cache_read_tokens: u64,
    pub tool_calls: u64,
    pub messages: u64,
    pub compute_seconds: f64,
}

/// The most tokens or tool calls one report may add: a larger number is a backend's garbage,
/// not usage.
const MAX_REPORTED: u64 = 1 << 40;

impl UsageCounts {
    /// Counts what one message of the agent reports: a `result`'s `usage`, an `assistant`
    /// message's `tool_use` blocks. Anything malformed counts nothing.
    pub fn add_reported(&mut self, message: &Value) {
        let count = |v: &Value| v.as_u64().filter(|n| *n <= MAX_REPORTED).unwrap_or(0);
        match message.get("type").and_then(Value::as_str) {
            Some("result") => {
                let usage = &message["usage"];
                self.input_tokens += count(&usage["input_tokens"]);
                self.output_tokens += count(&usage["output_tokens"]);
                self.cache_creation_tokens += count(&usage["cache_creation_input_tokens"]);
                self.cache_read_tokens += count(&usage["cache_read_input_tokens"]);
            }
            Some("assistant") => {
                let blocks = message["message"]["content"].as_array();
                let tools = blocks
                    .into_iter()
                    .flatten()
                    .filter(|b| b["type"] == "tool_use")
                    .count();
                self.tool_calls += tools as u64;
            }
            _ => {}
        }
    }

    pub fn add(&mut self, other: &UsageCounts) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cache_creation_tokens += other.cache_creation_tokens;
        self.cache_read_tokens += other.cache_read_tokens;
        self.tool_calls += other.tool_calls;
        self.messages += other.messages;
        self.compute_seconds += other.compute_seconds;
    }

    /// Each kind with its value, the ones at zero left out (but a turn's message).
    pub fn events(&self) -> Vec<(UsageKind, f64)> {
        let all = [
            (UsageKind::InputTokens, self.input_tokens as f64),
            (UsageKind::OutputTokens, self.output_tokens as f64),
            (
                UsageKind::CacheCreationTokens,
                self.cache_creation_tokens as f64,
            ),
            (UsageKind::CacheReadTokens, self.cache_read_tokens as f64),
            (UsageKind::ToolCall, self.tool_calls as f64),
            (UsageKind::Message, self.messages as f64),
            (UsageKind::ComputeSeconds, self.compute_seconds),
        ];
        all.into_iter().filter(|(_, value)| *value > 0.0).collect()
    }
}

/// One turn's usage, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TurnUsage {
    pub id: String,
    pub tenant_id: String,
    pub session_id: SessionId,
    pub agent_name: AgentName,
    pub counts: UsageCounts,
    pub created_at: String,
}

/// One usage event, as `GET /api/usage` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageEvent {
    /// The turn's record id and the kind, `<id>:<eventType>`.
    pub id: String,
    pub tenant_id: String,
    #[schema(value_type = String, format = Uuid)]
    pub session_id: SessionId,
    #[schema(value_type = String)]
    pub agent_name: AgentName,
    pub event_type: UsageKind,
    pub value: f64,
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl TurnUsage {
    /// Its events, one per kind it counted.
    pub fn events(&self) -> impl Iterator<Item = UsageEvent> + '_ {
        self.counts
            .events()
            .into_iter()
            .map(|(kind, value)| UsageEvent {
                id: format!("{}:{}", self.id, kind.as_str()),
                tenant_id: self.tenant_id.clone(),
                session_id: self.session_id,
                agent_name: self.agent_name.clone(),
                event_type: kind,
                value,
                created_at: self.created_at.clone(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reports_are_counted_and_garbage_counts_nothing() {
        let mut counts = UsageCounts::default();
        counts.add_reported(&json!({"type": "result", "usage": {"input_tokens": 12,
            "output_tokens": 5, "cache_read_input_tokens": 3, "cache_creation_input_tokens": 2}}));
        counts.add_reported(&json!({"type": "assistant", "message": {"content": [
            {"type": "text", "text": "x"}, {"type": "tool_use", "id": "t", "name": "Bash"},
            {"type": "tool_use", "id": "u", "name": "Read"}]}}));
        for garbage in [
            json!({"type": "result", "usage": {"input_tokens": -4, "output_tokens": "9"}}),
            json!({"type": "result", "usage": {"input_tokens": 1u64 << 50}}),
            json!({"type": "result", "usage": [1, 2]}),
            json!({"type": "assistant", "message": {"content": "tool_use"}}),
            json!({"type": 7}),
            json!("result"),
        ] {
            counts.add_reported(&garbage);
        }
        assert_eq!(
            counts,
            UsageCounts {
                input_tokens: 12,
                output_tokens: 5,
                cache_creation_tokens: 2,
                cache_read_tokens: 3,
                tool_calls: 2,
                ..UsageCounts::default()
            }
        );
        let kinds: Vec<UsageKind> = counts.events().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            kinds,
            [
                UsageKind::InputTokens,
                UsageKind::OutputTokens,
                UsageKind::CacheCreationTokens,
                UsageKind::CacheReadTokens,
                UsageKind::ToolCall
            ]
        );
    }
}
