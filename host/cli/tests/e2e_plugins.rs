//! WebAssembly plugins loaded by the real server: first-party plugins built from `plugins/`
//! by `scripts/build-plugins.sh` (the test command runs it first).

mod common;

use common::{assistant_text, plugin, start_with, streamed_text, ASH};
use serde_json::Value;

fn redact_settings() -> String {
    format!(
        "[[plugins]]\npath = {:?}\n[plugins.config]\npatterns = \"ACME-[0-9]{{6}}\"\n",
        plugin("transform-redact")
    )
}

#[tokio::test]
async fn a_secret_in_an_agent_reply_is_redacted_in_the_stream_and_in_storage() {
    let server = start_with(&redact_settings()).await;
    let session = server.session("hello-agent").await;
    let secret = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345";
    let frames = server
        .message(&session, &format!("keep {secret} and ACME-123456 safe"))
        .await;
    let streamed = streamed_text(&frames);
    assert_eq!(streamed, "Echo: keep [REDACTED] and [REDACTED] safe");
    assert_eq!(assistant_text(&frames), streamed);

    let (_, messages) = server
        .get(&format!("/api/sessions/{session}/messages"))
        .await;
    let assistant: Vec<&Value> = messages["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "assistant")
        .collect();
    assert!(!assistant.is_empty());
    for message in assistant {
        let content = message["content"].as_str().unwrap();
        assert!(
            !content.contains(secret) && !content.contains("ACME-123456"),
            "{content}"
        );
    }
    let (_, events) = server.get(&format!("/api/sessions/{session}/events")).await;
    let log = events.to_string();
    assert!(log.contains("[REDACTED]"), "{log}");
    assert!(!log.contains("ACME-123456"), "{log}");

    let (_, health) = server.get("/health").await;
    let plugins = &health["plugins"];
    assert_eq!(plugins[0]["id"], "transform-redact", "{health}");
    assert_eq!(plugins[0]["quarantined"], false);
    assert_eq!(plugins[0]["failures"], 0);
    assert!(plugins[0]["calls"].as_u64().unwrap() > 0);
    assert!(server
        .metrics()
        .await
        .contains("ash_plugin_failures{plugin=\"transform-redact\"} 0"));
}

#[tokio::test]
async fn a_plugin_whose_digest_does_not_match_stops_the_start_with_the_reason() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("settings.toml");
    let settings = format!(
        "[[plugins]]\npath = {:?}\nsha256 = \"{}\"\n",
        plugin("transform-redact"),
        "0".repeat(64)
    );
    std::fs::write(&file, settings).unwrap();
    let out = std::process::Command::new(ASH)
        .args(["start", "--port", "0"])
        .env("ASH_DATA_DIR", data.path())
        .env("ASH_CONFIG", &file)
        .env("ASH_BRIDGE_BIN", common::BRIDGE)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SHA-256") && stderr.contains("transform-redact"),
        "{stderr}"
    );
}

#[tokio::test]
async fn plugin_check_accepts_a_built_plugin_and_names_what_is_wrong_with_others() {
    let ok = std::process::Command::new(ASH)
        .args(["plugin", "check"])
        .arg(plugin("transform-redact"))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("ash:observe/transformer@0.1.0"));

    let broken = tempfile::tempdir().unwrap();
    let cases = [
        ("plugin.toml", "id = \"x\"\n"),
        (
            "plugin.toml",
            "id = \"x\"\nversion = \"1\"\nkind = \"transform\"\nworld = \"ash:observe/observer@0.1.0\"\ncomponent = \"x.wasm\"\n",
        ),
        (
            "plugin.toml",
            "id = \"x\"\nversion = \"1\"\nkind = \"transform\"\nworld = \"ash:observe/transformer@0.1.0\"\ncomponent = \"x.wasm\"\n",
        ),
    ];
    std::fs::write(broken.path().join("x.wasm"), b"\0asm garbage").unwrap();
    for (file, text) in cases {
        std::fs::write(broken.path().join(file), text).unwrap();
        let out = std::process::Command::new(ASH)
            .args(["plugin", "check"])
            .arg(broken.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{text}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("ash: "),
            "{text}"
        );
    }
}

fn hostile_settings(mode: &str, on_failure: &str) -> String {
    format!(
        "[[plugins]]\npath = {:?}\non_failure = \"{on_failure}\"\n[plugins.config]\nmode = \"{mode}\"\n",
        plugin("test-hostile")
    )
}

#[tokio::test]
async fn hostile_transformers_fail_closed_get_quarantined_and_the_server_keeps_serving() {
    for (mode, why) in [
        ("loop", "deadline"),
        ("memory", "memory"),
        ("trap", "trapped"),
        ("huge", "the limit is"),
        ("nested", "not JSON"),
        ("not-json", "not JSON"),
    ] {
        let server = start_with(&hostile_settings(mode, "drop")).await;
        let session = server.session("hello-agent").await;
        for _ in 0..2 {
            let frames = server.message(&session, "hello").await;
            assert_eq!(
                frames.last().map(|f| f.event.as_str()),
                Some("done"),
                "{mode}"
            );
            assert!(
                !frames
                    .iter()
                    .any(|f| f.event == "message" || f.event == "text_delta"),
                "{mode}: an unchecked agent message reached the client"
            );
        }
        let (status, health) = server.get("/health").await;
        assert_eq!(status, 200);
        let plugin = &health["plugins"][0];
        assert_eq!(plugin["quarantined"], true, "{mode}: {health}");
        assert_eq!(
            plugin["calls"], 5,
            "{mode}: a quarantined plugin is not called again"
        );
        let error = plugin["lastError"].as_str().unwrap();
        assert!(error.contains(why), "{mode}: {error}");
        let metrics = server.metrics().await;
        assert!(metrics.contains("ash_plugin_quarantined{plugin=\"test-hostile\"} 1"));
        let withheld = metrics
            .lines()
            .find_map(|l| l.strip_prefix("ash_plugin_withheld_total "))
            .and_then(|v| v.parse::<u64>().ok());
        assert!(withheld > Some(0), "{mode}: withheld messages are counted");
    }
}

#[tokio::test]
async fn a_failing_transformer_set_to_pass_lets_events_through_unchanged() {
    let server = start_with(&hostile_settings("trap", "pass")).await;
    let session = server.session("hello-agent").await;
    let frames = server.message(&session, "hello").await;
    assert_eq!(assistant_text(&frames), "Echo: hello");
}

#[tokio::test]
async fn a_plugin_reaches_no_env_files_or_sockets() {
    let server = start_with(&hostile_settings("snoop", "drop")).await;
    let session = server.session("hello-agent").await;
    let frames = server.message(&session, "hello").await;
    let reached: Value = frames
        .iter()
        .find(|f| f.event == "message")
        .map(|f| serde_json::from_str(&f.data).unwrap())
        .expect("the snoop report");
    assert_eq!(
        reached,
        serde_json::json!({"env": 0, "args": 0, "file": false, "dir": false, "data": false, "socket": false})
    );
}

fn cached_files(data: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(data.join("plugin-cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

#[tokio::test]
async fn compiled_plugins_are_kept_for_the_next_start_and_a_bad_cache_file_is_compiled_again() {
    use std::os::unix::fs::PermissionsExt;
    let server = start_with(&redact_settings()).await;
    let data = server.data_path().to_owned();
    let cached = cached_files(&data);
    assert_eq!(cached.len(), 1, "{cached:?}");
    let mode = std::fs::metadata(data.join("plugin-cache"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);

    let (dir, key) = server.stop().await;
    std::fs::write(&cached[0], b"not compiled code").unwrap();
    std::fs::write(data.join("plugin-cache/stale.cwasm"), b"old").unwrap();
    let settings = dir.path().join("settings.toml");
    let mut server =
        common::Server::start_in(dir, &[("ASH_CONFIG", settings.to_str().unwrap())]).await;
    server.key = key;
    let session = server.session("hello-agent").await;
    let frames = server
        .message(&session, "sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345")
        .await;
    assert_eq!(streamed_text(&frames), "Echo: [REDACTED]");
    assert_eq!(cached_files(&data), cached, "the stale file is gone");
    assert!(
        std::fs::metadata(&cached[0]).unwrap().len() > 1000,
        "compiled again"
    );
}
