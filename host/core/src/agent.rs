use std::collections::BTreeMap;
use std::path::{Component, Path};

use ash_protocol::Backend;
use serde::{Deserialize, Serialize};

use crate::CoreError;

/// The agent's runtime settings file, at the root of the agent folder.
pub const MANIFEST_FILE: &str = "ash.toml";
/// `ash.toml` larger than this is rejected unread.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;

/// A deployed agent, as the REST API shows it (`env` values are never shown).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Agent {
    #[schema(format = Uuid)]
    pub id: String,
    #[schema(value_type = String)]
    pub name: AgentName,
    pub tenant_id: String,
    pub version: i64,
    /// Host folder the agent is copied from when a sandbox starts.
    pub path: String,
    /// Shown with every value replaced by `***`.
    #[serde(serialize_with = "redacted", skip_deserializing)]
    pub env: BTreeMap<String, String>,
    /// Free-form settings of the agent's clients (`GET /api/agents/:name/config`); Ash reads
    /// `preWarmCount` of it. Not shown with the agent, as in the reference API.
    #[serde(skip)]
    pub config: serde_json::Map<String, serde_json::Value>,
    /// The number of its active named version (`/api/agents/:name/versions`), whose system
    /// prompt new sessions start with.
    pub active_version: Option<i64>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

fn redacted<S: serde::Serializer>(env: &BTreeMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(env.keys().map(|k| (k, "***")))
}

/// The most an agent's config may hold, as JSON.
pub const MAX_AGENT_CONFIG_BYTES: usize = 64 * 1024;
/// The most warm sandboxes an agent may ask for (`pool.prewarm`, `preWarmCount`).
pub const MAX_PREWARM: u32 = 64;

impl Agent {
    /// The warm sandboxes its config asks for (`preWarmCount`), over its `ash.toml`'s.
    pub fn prewarm_override(&self) -> Option<u32> {
        let count = self.config.get("preWarmCount")?.as_u64()?;
        u32::try_from(count).ok().filter(|n| *n <= MAX_PREWARM)
    }
}

/// Checks an agent config as it would be stored: an object of at most
/// [`MAX_AGENT_CONFIG_BYTES`], whose `preWarmCount`, if any, is 0-[`MAX_PREWARM`].
pub fn check_agent_config(
    config: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), CoreError> {
    let bad = |why: String| Err(CoreError::InvalidConfig(why));
    if serde_json::to_string(config).map_or(0, |s| s.len()) > MAX_AGENT_CONFIG_BYTES {
        return bad(format!(
            "an agent's config must be at most {MAX_AGENT_CONFIG_BYTES} bytes of JSON"
        ));
    }
    match config.get("preWarmCount") {
        Some(n) if n.as_u64().is_none_or(|n| n > u64::from(MAX_PREWARM)) => bad(format!(
            "preWarmCount must be a whole number 0-{MAX_PREWARM}"
        )),
        _ => Ok(()),
    }
}

/// Merges `patch` into an agent's config, key by key; a `null` removes the key.
pub fn merge_agent_config(
    config: &mut serde_json::Map<String, serde_json::Value>,
    patch: &serde_json::Map<String, serde_json::Value>,
) {
    for (key, value) in patch {
        match value {
            serde_json::Value::Null => config.remove(key),
            value => config.insert(key.clone(), value.clone()),
        };
    }
}

/// A named version of an agent (`/api/agents/:name/versions`): a system prompt with notes.
/// New sessions of the agent start with its active version's prompt as their `CLAUDE.md`
/// (a session's own `systemPrompt` comes first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentVersion {
    #[schema(format = Uuid)]
    pub id: String,
    pub tenant_id: String,
    #[schema(value_type = String)]
    pub agent_name: AgentName,
    pub version_number: i64,
    pub name: String,
    pub system_prompt: Option<String>,
    pub release_notes: Option<String>,
    /// Whether it is the agent's active version (the agent's record says which is).
    #[serde(default)]
    pub is_active: bool,
    /// Paths in the agent's folder the version names as its knowledge; kept for its clients.
    pub knowledge_files: Option<Vec<String>>,
    pub created_by: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

/// The most named versions one agent keeps.
pub const MAX_AGENT_VERSIONS: usize = 1000;
const MAX_VERSION_NAME: usize = 255;
const MAX_SYSTEM_PROMPT: usize = 1_000_000;
const MAX_RELEASE_NOTES: usize = 10_000;
const MAX_KNOWLEDGE_FILES: usize = 1000;

/// What a version is created or patched with; each field given replaces the version's.
#[derive(Debug, Default, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionFields {
    /// At most 255 bytes [default at create: `v<number>`].
    pub name: Option<String>,
    /// At most 1,000,000 bytes.
    pub system_prompt: Option<String>,
    /// At most 10,000 bytes.
    pub release_notes: Option<String>,
    /// At most 1,000 paths relative to the agent's folder.
    pub knowledge_files: Option<Vec<String>>,
}

impl VersionFields {
    pub fn check(&self) -> Result<(), CoreError> {
        let long = |field: &str, text: &Option<String>, max: usize| match text {
            Some(text) if text.len() > max => Err(CoreError::InvalidVersion(format!(
                "{field} must be at most {max} bytes"
            ))),
            _ => Ok(()),
        };
        long("name", &self.name, MAX_VERSION_NAME)?;
        long("systemPrompt", &self.system_prompt, MAX_SYSTEM_PROMPT)?;
        long("releaseNotes", &self.release_notes, MAX_RELEASE_NOTES)?;
        if let Some(files) = &self.knowledge_files {
            if files.len() > MAX_KNOWLEDGE_FILES {
                return Err(CoreError::InvalidVersion(format!(
                    "knowledgeFiles holds at most {MAX_KNOWLEDGE_FILES} paths"
                )));
            }
            for file in files {
                RelativePath::parse(file)?;
            }
        }
        Ok(())
    }

    /// Writes the fields given into `version`.
    pub fn apply(self, version: &mut AgentVersion) {
        if let Some(name) = self.name {
            version.name = name;
        }
        if self.system_prompt.is_some() {
            version.system_prompt = self.system_prompt;
        }
        if self.release_notes.is_some() {
            version.release_notes = self.release_notes;
        }
        if self.knowledge_files.is_some() {
            version.knowledge_files = self.knowledge_files;
        }
    }
}

/// An agent name: 1–255 characters of `[A-Za-z0-9_-]`, the reference API's pattern.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentName(String);

impl AgentName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AgentName {
    type Error = CoreError;
    fn try_from(name: String) -> Result<Self, CoreError> {
        let ok = (1..=255).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(name))
        } else {
            Err(CoreError::InvalidAgentName(name))
        }
    }
}

impl From<AgentName> for String {
    fn from(name: AgentName) -> String {
        name.0
    }
}

impl std::fmt::Display for AgentName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A path below some root that cannot name anything outside it: relative, no `..`, no
/// root or prefix, no empty name, at most 4096 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelativePath(String);

impl RelativePath {
    pub fn parse(raw: &str) -> Result<Self, CoreError> {
        let invalid = || CoreError::InvalidPath(raw.to_owned());
        if raw.is_empty() || raw.len() > 4096 || raw.contains('\0') {
            return Err(invalid());
        }
        let normal = Path::new(raw)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !normal
            || !Path::new(raw)
                .components()
                .any(|c| matches!(c, Component::Normal(_)))
        {
            return Err(invalid());
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_path(&self) -> &Path {
        Path::new(&self.0)
    }
}

/// The agent's `ash.toml`: which backend the bridge drives (a missing file means `echo`) and
/// the agent's own resource limits, each replacing the server's default.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentManifest {
    #[serde(default = "echo")]
    pub backend: Backend,
    #[serde(default)]
    pub limits: LimitOverrides,
    #[serde(default)]
    pub pool: PoolSettings,
    #[serde(default)]
    pub sandbox: SandboxRequests,
}

/// `[sandbox]` in `ash.toml`: what the agent needs beyond the sandbox's defaults. Each item
/// holds only where the operator grants it in the server's settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxRequests {
    /// Syscalls the sandbox's filter refuses that the agent needs (e.g. `ptrace` for a
    /// debugger); at most 16.
    #[serde(default)]
    pub syscalls: Vec<String>,
}

/// `[pool]` in `ash.toml`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSettings {
    /// Sandboxes kept started and waiting for new sessions of this agent (0–64).
    #[serde(default)]
    pub prewarm: u32,
}

/// `[limits]` in `ash.toml`; unset keys keep the server's defaults.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    pub memory_mb: Option<u64>,
    pub max_processes: Option<u64>,
    /// 100 is one core.
    pub cpu_percent: Option<u64>,
    pub file_size_mb: Option<u64>,
    pub open_files: Option<u64>,
}

impl LimitOverrides {
    fn check(&self) -> Result<(), CoreError> {
        let ranges = [
            ("memory_mb", self.memory_mb, 16, 1 << 20),
            ("max_processes", self.max_processes, 8, 100_000),
            ("cpu_percent", self.cpu_percent, 1, 100_000),
            ("file_size_mb", self.file_size_mb, 1, 1 << 20),
            ("open_files", self.open_files, 16, 1 << 20),
        ];
        for (name, value, low, high) in ranges {
            if value.is_some_and(|v| !(low..=high).contains(&v)) {
                return Err(CoreError::InvalidManifest(format!(
                    "limits.{name} must be {low}-{high}"
                )));
            }
        }
        Ok(())
    }
}

fn echo() -> Backend {
    Backend::Echo { delay_ms: 0 }
}

impl AgentManifest {
    /// Parses `ash.toml` text; `None` (no file) gives the defaults.
    pub fn parse(text: Option<&str>) -> Result<Self, CoreError> {
        let text = text.unwrap_or("");
        if text.len() > MAX_MANIFEST_BYTES {
            return Err(CoreError::InvalidManifest(format!(
                "larger than {MAX_MANIFEST_BYTES} bytes"
            )));
        }
        let manifest: Self =
            toml::from_str(text).map_err(|e| CoreError::InvalidManifest(e.message().to_owned()))?;
        manifest.limits.check()?;
        let names_ok = |n: &String| {
            !n.is_empty()
                && n.len() <= 32
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if manifest.sandbox.syscalls.len() > 16 || !manifest.sandbox.syscalls.iter().all(names_ok) {
            return Err(CoreError::InvalidManifest(
                "sandbox.syscalls takes at most 16 syscall names (lowercase, e.g. \"ptrace\")"
                    .into(),
            ));
        }
        if manifest.pool.prewarm > MAX_PREWARM {
            return Err(CoreError::InvalidManifest(
                "pool.prewarm must be 0-64".into(),
            ));
        }
        if let Backend::Command { argv } = &manifest.backend {
            if argv.first().is_none_or(|program| program.is_empty()) {
                return Err(CoreError::InvalidManifest(
                    "backend.argv needs a program to run".into(),
                ));
            }
        }
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_names_follow_the_reference_pattern() {
        assert!(AgentName::try_from("hello-agent_2".to_owned()).is_ok());
        for bad in ["", "a b", "../x", "é", &"a".repeat(256)] {
            assert!(
                AgentName::try_from(bad.to_owned()).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn relative_paths_cannot_leave_their_root() {
        for ok in ["CLAUDE.md", "a/b/c.txt", "./x", ".claude/settings.json"] {
            assert!(RelativePath::parse(ok).is_ok(), "{ok:?} refused");
        }
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a/..", ".", "a\0b"] {
            assert!(RelativePath::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn missing_manifest_means_echo() {
        assert_eq!(
            AgentManifest::parse(None).unwrap().backend,
            Backend::Echo { delay_ms: 0 }
        );
        let slow =
            AgentManifest::parse(Some("[backend]\nkind = \"echo\"\ndelay_ms = 5\n")).unwrap();
        assert_eq!(slow.backend, Backend::Echo { delay_ms: 5 });
    }

    #[test]
    fn command_backend_is_read_from_toml() {
        let m = AgentManifest::parse(Some(
            "[backend]\nkind = \"command\"\nargv = [\"./agent.sh\", \"-v\"]\n",
        ))
        .unwrap();
        assert_eq!(
            m.backend,
            Backend::Command {
                argv: vec!["./agent.sh".into(), "-v".into()]
            }
        );
    }

    #[test]
    fn limits_are_read_and_checked() {
        let m =
            AgentManifest::parse(Some("[limits]\nmemory_mb = 256\nmax_processes = 32\n")).unwrap();
        assert_eq!(
            (
                m.limits.memory_mb,
                m.limits.max_processes,
                m.limits.cpu_percent
            ),
            (Some(256), Some(32), None)
        );
        let err = AgentManifest::parse(Some("[limits]\nmemory_mb = 1\n")).unwrap_err();
        assert!(
            err.to_string().contains("limits.memory_mb must be 16-"),
            "{err}"
        );
        assert!(AgentManifest::parse(Some("[limits]\nswap = 1\n")).is_err());
    }

    #[test]
    fn bad_manifests_say_what_is_wrong() {
        let err = AgentManifest::parse(Some("[backend]\nkind = \"gpt\"\n")).unwrap_err();
        assert!(err.to_string().contains("unknown variant `gpt`"), "{err}");
        let err =
            AgentManifest::parse(Some("[backend]\nkind = \"command\"\nargv = []\n")).unwrap_err();
        assert!(err.to_string().contains("needs a program"), "{err}");
        assert!(AgentManifest::parse(Some("backend = 3 = 4")).is_err());
    }
}
