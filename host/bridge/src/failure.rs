//! How a turn that calls a model fails: a message for people, and, when the model endpoint
//! answered, its HTTP status and a hint of what to check — the host passes both on in the
//! turn's `error` event.

use ash_protocol::Event;

use crate::Events;

pub(crate) struct Failure {
    pub message: String,
    pub status: Option<u16>,
    pub hint: Option<String>,
}

impl Failure {
    /// The endpoint answered `status`; `key_env` is where the agent's key comes from.
    pub fn upstream(message: String, status: u16, key_env: &str) -> Self {
        Self {
            message,
            status: Some(status),
            hint: Some(hint(status, key_env)),
        }
    }

    pub fn into_event(self, id: String) -> Event {
        Event::Error {
            id,
            error: self.message,
            status: self.status,
            hint: self.hint,
        }
    }
}

/// Sends how turn `id` ended: `done`, or an `error` (which the host follows with `done`).
pub(crate) async fn end_turn(events: &Events, id: String, outcome: Result<(), Failure>) {
    let end = match outcome {
        Ok(()) => Event::Done { id },
        Err(failure) => failure.into_event(id),
    };
    let _ = events.send(end).await;
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self {
            message,
            status: None,
            hint: None,
        }
    }
}

/// What to check for an error status.
fn hint(status: u16, key_env: &str) -> String {
    match status {
        401 | 403 => format!(
            "check the API key in {key_env}, in the agent's env, the session's extraEnv or its credential"
        ),
        404 => "check the agent's base_url and model".into(),
        429 => "rate limited: wait, then send the message again".into(),
        502 | 504 => {
            "the host could not reach the endpoint: check base_url and the host's network".into()
        }
        500..=599 => "the endpoint failed: send the message again later".into(),
        _ => "check the request the agent's settings make".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_statuses_say_what_to_check() {
        assert!(hint(401, "OPENAI_API_KEY").contains("OPENAI_API_KEY"));
        assert!(hint(429, "K").contains("rate limited"));
        assert!(hint(503, "K").contains("later"));
    }

    #[test]
    fn an_upstream_failure_carries_status_and_hint() {
        let event = Failure::upstream("no".into(), 401, "ANTHROPIC_API_KEY").into_event("7".into());
        let Event::Error {
            id, status, hint, ..
        } = event
        else {
            panic!("not an error")
        };
        assert_eq!((id.as_str(), status), ("7", Some(401)));
        assert!(hint.unwrap().contains("ANTHROPIC_API_KEY"));
    }
}
