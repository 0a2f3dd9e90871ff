//! A hostile agent probes its real bwrap sandbox and reports what it could reach.

mod common;

use std::collections::HashMap;

use common::{assistant_text, Server};
use serde_json::json;

/// Answers every query with `key=value` pairs describing what the sandbox lets it do.
const PROBE_AGENT: &str = r#"#!/bin/sh
probe() {
  r="uid=$(id -u)"
  r="$r cap=$(sed -n 's/^CapEff:[[:space:]]*//p' /proc/self/status)"
  if [ -e "$HOST_DATA_DIR" ]; then r="$r data=visible"; else r="$r data=hidden"; fi
  if [ -e "$OTHER_WS" ]; then r="$r other=visible"; else r="$r other=hidden"; fi
  if env | grep -q hunter2; then r="$r secret=leaked"; else r="$r secret=absent"; fi
  r="$r ifaces=$(grep -c ':' /proc/net/dev)"
  if touch /usr/probe 2>/dev/null; then r="$r usr=writable"; else r="$r usr=readonly"; fi
  if touch /workspace/made-inside 2>/dev/null; then r="$r workspace=writable"; else r="$r workspace=readonly"; fi
  if kill -0 "$HOST_PID" 2>/dev/null; then r="$r signal=delivered"; else r="$r signal=refused"; fi
  if [ -e /etc/passwd ] || [ -e /root ] || [ -e /home ]; then r="$r hostroot=visible"; else r="$r hostroot=hidden"; fi
  r="$r procs=$(ls /proc | grep -c '^[0-9]')"
  r="$r hostname=$(cat /proc/sys/kernel/hostname)"
  echo "$r"
}
while IFS= read -r line; do
  id=$(printf '%s\n' "$line" | sed -n 's/^{"cmd":"query","id":"\([^"]*\)".*/\1/p')
  [ -n "$id" ] || continue
  printf '{"ev":"message","id":"%s","data":{"type":"assistant","message":{"role":"assistant","content":[{"type":"text","text":"%s"}]}}}\n' "$id" "$(probe)"
  printf '{"ev":"done","id":"%s"}\n' "$id"
done
"#;

#[tokio::test]
async fn a_session_cannot_reach_the_data_dir_other_sessions_host_env_network_or_host_processes() {
    let server = Server::start_with_env(&[("ASH_TEST_HOST_SECRET", "hunter2")]).await;
    let (status, body) = server
        .deploy(
            "probe",
            &[
                ("ash.toml", common::COMMAND_TOML),
                ("agent.sh", PROBE_AGENT),
            ],
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let other = server.session("hello-agent").await;
    let env = json!({
        "HOST_DATA_DIR": server.data_path(),
        "OTHER_WS": server.workspace(&other),
        "HOST_PID": server.pid().to_string(),
    });
    let (status, body) = server
        .post("/api/sessions", json!({"agent": "probe", "extraEnv": env}))
        .await;
    assert_eq!(status, 201, "{body}");
    let session = body["session"]["id"].as_str().unwrap().to_owned();
    let report = assistant_text(&server.message(&session, "probe").await);
    let facts: HashMap<&str, &str> = report
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let expect = [
        ("uid", "1000"),
        ("cap", "0000000000000000"),
        ("data", "hidden"),
        ("other", "hidden"),
        ("secret", "absent"),
        ("ifaces", "1"),
        ("usr", "readonly"),
        ("workspace", "writable"),
        ("signal", "refused"),
        ("hostroot", "hidden"),
        ("hostname", "ash-sandbox"),
    ];
    for (key, want) in expect {
        assert_eq!(
            facts.get(key).copied(),
            Some(want),
            "{key} in report {report:?}"
        );
    }
    let procs: u32 = facts["procs"].parse().unwrap();
    assert!(procs < 10, "sandbox sees {procs} processes: {report}");
    assert!(server.workspace(&session).join("made-inside").exists());
    assert!(
        server.workspace(&other).exists(),
        "the other session's workspace should exist on the host"
    );
}
