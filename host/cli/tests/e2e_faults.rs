//! Faults the stream must survive, from the real binary: the store's disk running full (SQLite
//! in the data dir, or Postgres's tablespace), and a stop with clients attached.
//! Every frame a client saw with an `id:` must be the log's frame under that id, whatever failed.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ash_cli::sse::Frame;
use ash_store::conformance::TestSchema;
use common::{assistant_text, events, Server};
use serde_json::Value;

/// A tmpfs of a fixed size, mounted for one test (root only) and lazily unmounted after it.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u64) -> Option<Self> {
        if !common::is_root() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "ash-test"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs");
        Some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the disk to the last block with one file, and returns it.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        for chunk in [1 << 20, 4096, 1] {
            while file.write_all(&vec![7u8; chunk]).is_ok() {}
        }
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// The session's whole event log, by sequence.
async fn log_of(server: &Server, session: &str) -> BTreeMap<i64, (String, String)> {
    let mut log = BTreeMap::new();
    loop {
        let after = log.keys().next_back().copied().unwrap_or(0);
        let path = format!("/api/sessions/{session}/events?limit=1000&after={after}");
        let (status, page) = server.get(&path).await;
        assert_eq!(status, 200, "{page}");
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            return log;
        }
        for e in events {
            let data = e["data"].as_str().map_or("null".to_owned(), str::to_owned);
            let kind = e["type"].as_str().unwrap().to_owned();
            log.insert(e["sequence"].as_i64().unwrap(), (kind, data));
        }
    }
}

/// Every frame with an id is the log's frame under that id.
fn assert_seen_is_logged(seen: &[Frame], log: &BTreeMap<i64, (String, String)>) {
    for frame in seen {
        let Some(id) = &frame.id else { continue };
        let id: i64 = id.parse().unwrap();
        let logged = log.get(&id);
        assert_eq!(
            logged,
            Some(&(frame.event.clone(), frame.data.clone())),
            "the client saw id {id} as {} {}",
            frame.event,
            frame.data
        );
    }
}

fn names_the_full_disk(status: u16, body: &Value) {
    assert_eq!(status, 507, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("disk is full"), "{body}");
}

/// Runs each fault as two tests, `<fault>::sqlite` and `<fault>::postgres`.
macro_rules! on_both_stores {
    ($($fault:ident),* $(,)?) => {$(
        mod $fault {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$fault(super::Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$fault(super::Backend::Postgres).await;
            }
        }
    )*};
}

on_both_stores!(
    full_disk_refuses_writes_with_507_loses_nothing_and_recovers_by_itself,
    filling_up_mid_turn_ends_the_stream_without_a_false_id_and_closes_the_turn_later,
    a_stop_with_clients_attached_is_bounded_and_ends_turns_and_followers_cleanly,
    a_bridge_killed_after_the_last_frame_ends_the_turn_with_error_and_done,
    a_message_racing_a_stop_either_runs_or_gets_a_clear_answer,
    sigkills_mid_stream_lose_no_frame_a_client_saw,
);

/// Stops the server, then drops its Postgres schema, if it had one.
async fn finish(server: Server, schema: Option<TestSchema>) {
    drop(server);
    if let Some(schema) = schema {
        schema.drop().await;
    }
}

/// Which store a fault hits.
#[derive(Clone, Copy, PartialEq)]
enum Backend {
    /// The default SQLite file, in a data dir on the small disk.
    Sqlite,
    /// Postgres, its tables in a tablespace on the small disk (the data dir is not on it).
    Postgres,
}

/// A server whose store lives on a 64 MiB disk of its own; `None` when not root.
async fn on_a_small_disk(backend: Backend) -> Option<(Server, SmallDisk, Option<TestSchema>)> {
    let disk = SmallDisk::mount(64)?;
    // Workspaces as plain folders of the data dir, so an agent's files fill the same disk.
    let quotas_off = ("ASH_SANDBOX_DISK_MB", "0");
    Some(match backend {
        Backend::Sqlite => {
            let data = tempfile::tempdir_in(disk.path()).unwrap();
            (Server::start_in(data, &[quotas_off]).await, disk, None)
        }
        Backend::Postgres => {
            let location = disk.path().join("tablespace");
            std::fs::create_dir(&location).unwrap();
            let postgres = std::process::Command::new("id")
                .args(["-u", "postgres"])
                .output()
                .unwrap();
            let uid: u32 = String::from_utf8(postgres.stdout)
                .unwrap()
                .trim()
                .parse()
                .expect("a postgres user");
            std::os::unix::fs::chown(&location, Some(uid), None).unwrap();
            let schema = TestSchema::create_in(&location).await;
            let url = schema.url();
            let server =
                Server::start_with_env(&[quotas_off, ("ASH_DATABASE_URL", url.as_str())]).await;
            (server, disk, Some(schema))
        }
    })
}

async fn full_disk_refuses_writes_with_507_loses_nothing_and_recovers_by_itself(backend: Backend) {
    let Some((server, disk, schema)) = on_a_small_disk(backend).await else {
        return; // mounting a small filesystem takes root
    };
    let session = server.session("hello-agent").await;
    let mut seen = server.message(&session, "before").await;

    let filler = disk.fill();
    // Control: the disk is full for anyone.
    assert!(std::fs::write(disk.path().join("probe"), [0u8; 4096]).is_err());
    let big = "x".repeat(200_000);
    let mut refused = 0;
    for i in 0..12 {
        match server.try_message(&session, &format!("{i} {big}")).await {
            Ok(frames) => seen.extend(frames),
            Err((status, body)) => {
                names_the_full_disk(status, &body);
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "no write noticed the full disk");
    if backend == Backend::Sqlite {
        // The data dir is full too: new sessions and deploys are refused, saying why.
        let (status, body) = server
            .post("/api/sessions", serde_json::json!({"agent": "hello-agent"}))
            .await;
        names_the_full_disk(status, &body);
        let (status, body) = server.deploy("late", &[("CLAUDE.md", &big)]).await;
        names_the_full_disk(status, &body);
        // `/health` and `ash doctor` say the data dir's disk is (nearly) full.
        let (_, health) = server.get("/health").await;
        assert_eq!(health["disk"]["low"], true, "{health}");
        let doctor = std::process::Command::new(common::ASH)
            .arg("doctor")
            .env("ASH_DATA_DIR", server.data_path())
            .env("ASH_BRIDGE_BIN", common::BRIDGE)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&doctor.stdout);
        assert!(report.contains("degraded disk space"), "{report}");
    }
    // Reads go on.
    let (status, _) = server.get(&format!("/api/sessions/{session}")).await;
    assert_eq!(status, 200);

    // Space comes back: writes work again without a restart.
    std::fs::remove_file(filler).unwrap();
    let (_, health) = server.get("/health").await;
    assert_eq!(health["disk"]["low"], false, "{health}");
    let frames = server.message(&session, "after").await;
    assert!(
        assistant_text(&frames).starts_with("Echo: after"),
        "{frames:?}"
    );
    seen.extend(frames);
    let other = server.session("hello-agent").await;
    assert_eq!(
        assistant_text(&server.message(&other, "hi").await),
        "Echo: hi"
    );

    // Nothing a client saw was lost or renumbered, before or after a restart.
    assert_seen_is_logged(&seen, &log_of(&server, &session).await);
    let server = server.restart().await;
    let log = log_of(&server, &session).await;
    assert_seen_is_logged(&seen, &log);
    let ids: Vec<i64> = log.keys().copied().collect();
    assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>(), "gap-free");
    assert_eq!(
        log.values().last().unwrap().0,
        "done",
        "the last turn ended"
    );
    finish(server, schema).await;
}

/// A `command` agent whose turn says "started", waits for its `gate` (a FIFO in the
/// workspace), then sends eight messages of 300 kB; it answers interrupts at once.
const GATED_BIG_AGENT: &str = r#"#!/bin/sh
exec python3 -c '
import json, os, sys, threading
lock = threading.Lock()
def out(event):
    with lock:
        print(json.dumps(event), flush=True)
def say(id, text):
    out({"ev": "message", "id": id, "data": {"type": "assistant", "message": {"role": "assistant", "content": [{"type": "text", "text": text}]}}})
def turn(id):
    say(id, "started")
    with open("gate") as gate:
        gate.read()
    for _ in range(8):
        say(id, "x" * 300000)
    out({"ev": "done", "id": id})
if not os.path.exists("gate"):
    os.mkfifo("gate")
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd.get("cmd") == "query":
        threading.Thread(target=turn, args=(cmd["id"],), daemon=True).start()
    elif cmd.get("cmd") == "interrupt":
        out({"ev": "done", "id": cmd["id"]})
'
"#;

async fn filling_up_mid_turn_ends_the_stream_without_a_false_id_and_closes_the_turn_later(
    backend: Backend,
) {
    let Some((server, disk, schema)) = on_a_small_disk(backend).await else {
        return; // mounting a small filesystem takes root
    };
    let session = server.command_session("gated", GATED_BIG_AGENT).await;
    let mut stream = server
        .open_stream(&session, serde_json::json!({"content": "go"}))
        .await;
    let mut seen = Server::read_until(&mut stream, |f| f.event == "message").await;
    let last_logged = seen.last().unwrap().id.clone().unwrap();

    let filler = disk.fill();
    common::open_gate(&server, &session).await;
    let rest = Server::read_until(&mut stream, |f| f.event == "error").await;
    let error = rest.last().unwrap();
    assert_eq!(
        error.id, None,
        "a frame the log does not hold carries no id"
    );
    assert!(error.data.contains("disk is full"), "{error:?}");
    seen.extend(rest);
    assert!(stream.next().await.is_none(), "nothing follows the error");
    // Until the turn's end is in the log, the session takes nothing new, and says why.
    let (status, body) = server.try_message(&session, "more").await.unwrap_err();
    names_the_full_disk(status, &body);

    std::fs::remove_file(filler).unwrap();
    let mut log = server
        .open_log_stream(&session, Some(last_logged.parse().unwrap()))
        .await;
    let closing = Server::read_until(&mut log, |f| f.event == "done").await;
    assert_eq!(
        events(&closing),
        ["error", "done"],
        "the turn is closed in the log"
    );
    assert!(closing[0].id.is_some());
    seen.extend(closing);
    drop(log);

    let mut next = server
        .open_stream(&session, serde_json::json!({"content": "again"}))
        .await;
    seen.extend(Server::read_until(&mut next, |f| f.event == "message").await);
    common::open_gate(&server, &session).await;
    let frames = Server::read_until(&mut next, |f| f.event == "done").await;
    assert!(!events(&frames).contains(&"error"), "{:?}", events(&frames));
    seen.extend(frames);

    let server = server.restart().await;
    let log = log_of(&server, &session).await;
    assert_seen_is_logged(&seen, &log);
    let ids: Vec<i64> = log.keys().copied().collect();
    assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>(), "gap-free");
    finish(server, schema).await;
}

async fn a_stop_with_clients_attached_is_bounded_and_ends_turns_and_followers_cleanly(
    backend: Backend,
) {
    let (mut server, schema) = server_on(backend, &[("ASH_SHUTDOWN_GRACE_SECS", "2")]).await;
    // A turn in flight, its client attached; it never ends by itself.
    let busy = server.command_session("gated", common::GATED_AGENT).await;
    let mut turn = server
        .open_stream(&busy, serde_json::json!({"content": "go"}))
        .await;
    let mut seen = Server::read_until(&mut turn, |f| f.event == "message").await;
    // An idle follower of another session, shown live: it sees a turn sent meanwhile.
    let idle = server.session("hello-agent").await;
    let mut follower = server.open_log_stream(&idle, None).await;
    server.message(&idle, "hi").await;
    let live = Server::read_until(&mut follower, |f| f.event == "done").await;
    let last_seen = live.last().unwrap().id.clone().unwrap();

    let stopping = std::time::Instant::now();
    server.terminate();
    // Draining: a load balancer is told to go elsewhere, new work is refused, reads go on.
    let health = loop {
        let (status, health) = server.get("/health").await;
        if status == 503 {
            break health;
        }
        assert_eq!(status, 200, "{health}");
    };
    assert_eq!(health["status"], "draining", "{health}");
    let (status, body) = server
        .post("/api/sessions", serde_json::json!({"agent": "hello-agent"}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("shutting down"),
        "{body}"
    );
    let (status, _) = server.get(&format!("/api/sessions/{idle}")).await;
    assert_eq!(status, 200);

    // The running turn ends at the grace period's end, in the log: `error` + `done`, with ids.
    let end = Server::read_until(&mut turn, |f| f.event == "done").await;
    assert_eq!(events(&end), ["error", "done"]);
    assert!(
        end[0]
            .data
            .contains("the server shut down during this turn"),
        "{end:?}"
    );
    assert!(end.iter().all(|f| f.id.is_some()));
    seen.extend(end);
    assert!(
        turn.next().await.is_none(),
        "the turn's stream ends at done"
    );
    // The idle follower is told to reconnect, by a frame the log does not hold.
    let last = follower.next().await.unwrap().unwrap();
    assert_eq!(last.event, "shutdown", "{last:?}");
    assert_eq!(last.id, None);
    let said: Value = serde_json::from_str(&last.data).unwrap();
    assert_eq!(said["lastEventId"].to_string(), last_seen);
    assert!(follower.next().await.is_none(), "and its stream ends");

    let status = server.exited().await;
    assert!(status.success(), "{status}");
    let took = stopping.elapsed();
    // The grace period (2 s) and the last waits (5 s) bound it; idle followers used to hold
    // the server up until it was killed.
    assert!(
        took < std::time::Duration::from_secs(15),
        "the stop took {took:?}"
    );

    let server = server.restart().await;
    let log = log_of(&server, &busy).await;
    assert_seen_is_logged(&seen, &log);
    assert_eq!(log.values().last().unwrap().0, "done");
    finish(server, schema).await;
}

/// A server on the backend's store (a fresh Postgres schema when it is Postgres).
async fn server_on(backend: Backend, env: &[(&str, &str)]) -> (Server, Option<TestSchema>) {
    let schema = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(TestSchema::create().await),
    };
    let url = schema.as_ref().map(TestSchema::url);
    let mut env = env.to_vec();
    env.extend(url.as_deref().map(|url| ("ASH_DATABASE_URL", url)));
    (Server::start_with_env(&env).await, schema)
}

/// A `command` agent that sends one message, waits for its `gate`, then kills its own bridge
/// (its parent) instead of ending the turn: the bridge dies between a turn's last frame and
/// its `done`.
const KILLS_ITS_BRIDGE_BEFORE_DONE: &str = r#"#!/bin/sh
[ -p gate ] || mkfifo gate
while IFS= read -r line; do
  id=$(printf '%s\n' "$line" | sed -n 's/^{"cmd":"query","id":"\([^"]*\)".*/\1/p')
  [ -n "$id" ] || continue
  printf '{"ev":"message","id":"%s","data":{"type":"assistant","message":{"role":"assistant","content":[{"type":"text","text":"last"}]}}}\n' "$id"
  read -r _ < gate
  kill -9 "$PPID"
done
"#;

/// A `command` agent that ends each turn and kills its bridge at once, racing the `done`.
const KILLS_ITS_BRIDGE_AFTER_DONE: &str = r#"#!/bin/sh
while IFS= read -r line; do
  id=$(printf '%s\n' "$line" | sed -n 's/^{"cmd":"query","id":"\([^"]*\)".*/\1/p')
  [ -n "$id" ] || continue
  printf '{"ev":"message","id":"%s","data":{"type":"assistant","message":{"role":"assistant","content":[{"type":"text","text":"last"}]}}}\n{"ev":"done","id":"%s"}\n' "$id" "$id"
  kill -9 "$PPID"
done
"#;

async fn a_bridge_killed_after_the_last_frame_ends_the_turn_with_error_and_done(backend: Backend) {
    let (server, schema) = server_on(backend, &[]).await;
    // The kill lands after the last frame, before `done`: the window held open by the gate.
    let session = server
        .command_session("killer", KILLS_ITS_BRIDGE_BEFORE_DONE)
        .await;
    let mut stream = server
        .open_stream(&session, serde_json::json!({"content": "go"}))
        .await;
    let mut seen = Server::read_until(&mut stream, |f| f.event == "message").await;
    common::open_gate(&server, &session).await;
    let end = Server::read_until(&mut stream, |f| f.event == "done").await;
    assert_eq!(events(&end), ["error", "done"], "{end:?}");
    assert!(end[0].data.contains("the sandbox stopped during this turn"));
    seen.extend(end);
    assert!(stream.next().await.is_none());
    assert_seen_is_logged(&seen, &log_of(&server, &session).await);

    // The kill races the frames and the `done` before it (either may reach the host first):
    // each turn ends once, and the next gets a new sandbox.
    let racer = server
        .command_session("racer", KILLS_ITS_BRIDGE_AFTER_DONE)
        .await;
    for round in 0..10 {
        let frames = server.message(&racer, &format!("round {round}")).await;
        let kinds = events(&frames);
        assert_eq!(kinds.last(), Some(&"done"), "round {round}: {kinds:?}");
        assert_eq!(
            kinds.iter().filter(|k| **k == "done").count(),
            1,
            "{kinds:?}"
        );
    }
    let log = log_of(&server, &racer).await;
    let dones = log.values().filter(|(kind, _)| kind == "done").count();
    let starts = log
        .values()
        .filter(|(kind, _)| kind == "session_start")
        .count();
    assert_eq!((starts, dones), (10, 10), "every turn in the log ends once");
    finish(server, schema).await;
}

async fn a_message_racing_a_stop_either_runs_or_gets_a_clear_answer(backend: Backend) {
    let (server, schema) = server_on(backend, &[]).await;
    let session = server.session("hello-agent").await;
    let (mut ran, mut stopped) = (0, 0);
    for round in 0..30 {
        let stop_path = format!("/api/sessions/{session}/stop");
        let content = format!("round {round}");
        let (message, (stop, body)) = tokio::join!(
            server.try_message(&session, &content),
            server.post(&stop_path, serde_json::json!({})),
        );
        match &message {
            Ok(frames) => {
                assert!(
                    assistant_text(frames).starts_with(&format!("Echo: round {round}")),
                    "{frames:?}"
                );
                ran += 1;
            }
            Err((409, _)) => {}
            Err((400, body)) => assert_eq!(body["error"], "Session is stopped", "{body}"),
            Err(other) => panic!("round {round}: the message got {other:?}"),
        }
        assert!(
            matches!(stop, 200 | 409),
            "round {round}: the stop got {stop} {body}"
        );
        assert!(
            message.is_ok() || stop == 200,
            "round {round}: both were refused"
        );
        let (_, now) = server.get(&format!("/api/sessions/{session}")).await;
        let status = now["session"]["status"].as_str().unwrap();
        if stop == 200 {
            stopped += 1;
            assert_eq!(status, "stopped");
            // A resume racing another stop: each runs or gets a clear answer, and the session
            // ends up as the one that ran last left it.
            let resume_path = format!("/api/sessions/{session}/resume");
            let ((resumed, body), (again, _)) = tokio::join!(
                server.post(&resume_path, serde_json::json!({})),
                server.post(&stop_path, serde_json::json!({})),
            );
            assert!(
                matches!(resumed, 200 | 409),
                "round {round}: resume got {resumed} {body}"
            );
            assert!(
                matches!(again, 200 | 400 | 409),
                "round {round}: stop got {again}"
            );
            let (_, now) = server.get(&format!("/api/sessions/{session}")).await;
            if now["session"]["status"] == "stopped" {
                let (status, body) = server.post(&resume_path, serde_json::json!({})).await;
                assert_eq!(status, 200, "{body}");
            }
            let frames = server.message(&session, "still here").await;
            assert!(
                assistant_text(&frames).starts_with("Echo: still here"),
                "{frames:?}"
            );
        } else {
            assert_eq!(status, "active");
        }
    }
    // Both orders happened, so both were tested.
    assert!(ran > 0 && stopped > 0, "ran {ran}, stopped {stopped}");
    finish(server, schema).await;
}

/// A `command` agent whose turns stream messages until they are stopped.
const STREAMS_ON: &str = r#"#!/bin/sh
exec python3 -c '
import json, sys, threading
lock = threading.Lock()
def turn(id):
    n = 0
    while True:
        n += 1
        with lock:
            print(json.dumps({"ev": "message", "id": id, "data": {"type": "assistant", "message": {"role": "assistant", "content": [{"type": "text", "text": str(n)}]}}}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd.get("cmd") == "query":
        threading.Thread(target=turn, args=(cmd["id"],), daemon=True).start()
'
"#;

async fn sigkills_mid_stream_lose_no_frame_a_client_saw(backend: Backend) {
    let (mut server, schema) = server_on(backend, &[]).await;
    let session = server.command_session("streamer", STREAMS_ON).await;
    let mut seen = Vec::new();
    for round in 0..5 {
        let mut stream = server
            .open_stream(
                &session,
                serde_json::json!({"content": format!("round {round}")}),
            )
            .await;
        let mut count = 0;
        while count < 300 {
            let frame = stream.next().await.expect("the turn streams on").unwrap();
            assert!(frame.id.is_some(), "{frame:?}");
            seen.push(frame);
            count += 1;
        }
        server = server.crash_and_restart().await;
        // Each start closes the turn the kill cut off, so the next message is taken.
        let log = log_of(&server, &session).await;
        assert_seen_is_logged(&seen, &log);
        assert_eq!(log.values().last().unwrap().0, "done", "round {round}");
    }
    assert_eq!(
        seen.len(),
        1500,
        "frames acknowledged to the client and kept"
    );
    finish(server, schema).await;
}

#[tokio::test]
async fn garbage_fault_settings_stop_the_start_naming_the_setting() {
    for (name, value) in [
        ("ASH_SHUTDOWN_GRACE_SECS", "soon"),
        ("ASH_SHUTDOWN_GRACE_SECS", "-1"),
        ("ASH_SESSION_MAX_EVENT_MB", "lots"),
    ] {
        let stderr = common::start_fails(&[(name, value)]).await;
        assert!(
            stderr.contains(&format!("{name}={value:?} is not valid")),
            "{name}={value}: {stderr}"
        );
    }
}
