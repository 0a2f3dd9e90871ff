//! The escape suite: a hostile agent probes the walls of its real bwrap sandbox, with the
//! server run as root and as an unprivileged user. Every probe has a control: the same read,
//! write or syscall made where the wall does not stand (on the host, or on a process inside the
//! sandbox that the wall does not cover) succeeds, so each probe is shown able to fail.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;

use common::{is_root, Server, User};
use serde_json::json;

/// Runs each escape test twice: with the server as root, and as `nobody` (when the tests do
/// not run as root, the first is skipped and the second runs the server as the tests' user).
macro_rules! as_root_and_unprivileged {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn server_as_root() {
                if !super::is_root() {
                    eprintln!("skipped: a root server needs the tests to run as root");
                    return;
                }
                super::$name(super::User::Root).await
            }
            #[tokio::test]
            async fn server_unprivileged() {
                super::$name(super::User::Unprivileged).await
            }
        }
    )*};
}

as_root_and_unprivileged!(
    no_sandbox_process_is_root_on_the_host,
    kernel_knobs_cannot_be_written,
    kernel_surfaces_are_masked,
    the_host_keyring_is_out_of_reach,
    every_filtered_syscall_is_refused,
    namespaces_cannot_be_made_inside,
    no_file_can_become_setuid,
    the_bridge_socket_is_out_of_the_agent_s_reach,
    no_descriptor_of_the_server_s_launcher_reaches_the_sandbox,
    host_paths_are_not_in_the_sandbox_s_command_line_or_mounts,
    forks_and_snapshots_never_follow_a_link_the_agent_swaps_in,
);

/// Runs `command` in the session's sandbox; returns stdout (asserting it ran).
async fn exec(server: &Server, session: &str, command: &str) -> String {
    let out = server.exec(session, command).await;
    format!(
        "{}{}",
        out["stdout"].as_str().unwrap(),
        out["stderr"].as_str().unwrap()
    )
}

/// Runs `command` with `sh` on the host, as the test (root); returns stdout and stderr.
fn on_host(command: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", command])
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn no_sandbox_process_is_root_on_the_host(user: User) {
    let server = Server::start_as(user).await;
    let session = server.session("hello-agent").await;
    exec(&server, &session, "touch /workspace/made-by-agent; sleep 0").await;
    let owner = std::fs::metadata(server.workspace(&session).join("made-by-agent"))
        .unwrap()
        .uid();
    assert_ne!(owner, 0, "the agent's file is root's on the host");
    match user {
        User::Root => assert!(
            (1_000_000..1_065_536).contains(&owner),
            "a root server's sandbox runs as a uid of the range, not {owner}"
        ),
        // SAFETY: geteuid has no preconditions.
        User::Unprivileged if !is_root() => assert_eq!(owner, unsafe { libc::geteuid() }),
        User::Unprivileged => assert_eq!(owner, common::NOBODY),
    }
    // A second sandbox of a root server gets a uid of its own.
    let other = server.session("hello-agent").await;
    exec(&server, &other, "touch /workspace/made-by-agent").await;
    let other_owner = std::fs::metadata(server.workspace(&other).join("made-by-agent"))
        .unwrap()
        .uid();
    if user == User::Root {
        assert_ne!(other_owner, owner, "two sandboxes share a host uid");
    }
    // Control: a file the host's root makes in the same folder is root's.
    let control = server.workspace(&session).join("made-by-host");
    std::fs::write(&control, "").unwrap();
    if is_root() {
        assert_eq!(std::fs::metadata(&control).unwrap().uid(), 0);
    }
}

async fn kernel_knobs_cannot_be_written(user: User) {
    let server = Server::start_as(user).await;
    let session = server.session("hello-agent").await;
    // Same-value writes only: the host's settings never change.
    let probe = "for knob in kernel/core_pattern kernel/hostname vm/overcommit_memory; do \
                 v=$(cat /proc/sys/$knob); \
                 if printf '%s\\n' \"$v\" > /proc/sys/$knob; then echo \"$knob=written\"; else echo \"$knob=refused\"; fi; \
                 done 2>/dev/null";
    let inside = exec(&server, &session, probe).await;
    for knob in [
        "kernel/core_pattern",
        "kernel/hostname",
        "vm/overcommit_memory",
    ] {
        assert!(inside.contains(&format!("{knob}=refused")), "{inside}");
    }
    let why = exec(
        &server,
        &session,
        "cat /proc/sys/kernel/core_pattern > /proc/sys/kernel/core_pattern",
    )
    .await;
    assert!(why.contains("Read-only file system"), "{why}");
    // Control: the host's root writes the same value back.
    if is_root() {
        let host = on_host(&probe.replace("kernel/hostname ", ""));
        assert!(host.contains("kernel/core_pattern=written"), "{host}");
    }
}

async fn kernel_surfaces_are_masked(user: User) {
    let server = Server::start_as(user).await;
    let session = server.session("hello-agent").await;
    let probe = "for f in keys timer_list kmsg; do \
                 [ -e /proc/$f ] || continue; \
                 if ( exec 3< /proc/$f ) 2>/dev/null; then echo \"$f=read\"; else echo \"$f=masked\"; fi; \
                 done; \
                 if touch /proc/acpi/x 2>/dev/null; then echo acpi=writable; else echo acpi=masked; fi";
    let inside = exec(&server, &session, probe).await;
    assert!(!inside.contains("=read"), "{inside}");
    assert!(!inside.contains("writable"), "{inside}");
    // Control: on the host the same files open.
    let host = on_host(probe);
    let readable_by_root = if is_root() {
        &["keys", "timer_list", "kmsg"][..]
    } else {
        &["keys"]
    };
    for file in readable_by_root {
        if std::path::Path::new("/proc").join(file).exists() {
            assert!(host.contains(&format!("{file}=read")), "{host}");
        }
    }
}

/// Python's view of the raw keyring syscalls, for the probe and its control.
const KEYRING_PY: &str = r#"
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
SYS_add_key, SYS_keyctl = 248, 250
USER_KEYRING, KEYCTL_SEARCH, KEYCTL_READ, KEYCTL_INVALIDATE = -4, 10, 11, 21
def call(*args):
    ctypes.set_errno(0)
    r = libc.syscall(*[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    return r, ctypes.get_errno()
action, desc = sys.argv[1], sys.argv[2].encode()
if action == "add":
    r, e = call(SYS_add_key, b"user", desc, b"root-only-secret", 16, USER_KEYRING)
    print(f"add={r} errno={e}")
elif action == "read":
    r, e = call(SYS_keyctl, KEYCTL_SEARCH, USER_KEYRING, b"user", desc, 0)
    if r < 0:
        print(f"search=refused errno={e}")
    else:
        buf = ctypes.create_string_buffer(64)
        n, e = call(SYS_keyctl, KEYCTL_READ, r, buf, 64)
        print("read=" + buf.raw[:max(n, 0)].decode())
    r, e = call(SYS_add_key, b"user", desc + b"-inside", b"x", 1, USER_KEYRING)
    print(f"add={'refused' if r < 0 else 'made'} errno={e}")
elif action == "drop":
    r, e = call(SYS_keyctl, KEYCTL_SEARCH, USER_KEYRING, b"user", desc, 0)
    if r >= 0:
        call(SYS_keyctl, KEYCTL_INVALIDATE, r)
"#;

fn keyring(action: &str, desc: &str) -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", KEYRING_PY, action, desc])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn the_host_keyring_is_out_of_reach(user: User) {
    if !cfg!(target_arch = "x86_64") {
        return; // the probe's syscall numbers are x86_64's
    }
    let server = Server::start_as(user).await;
    let session = server.session("hello-agent").await;
    let desc = format!("ash-escape-{}", std::process::id());
    // Control: the host stores a key and reads it back through the same calls.
    assert!(!keyring("add", &desc).contains("add=-1"));
    assert!(keyring("read", &desc).contains("read=root-only-secret"));
    let script = format!(
        "python3 -c '{}' read {desc}",
        KEYRING_PY.replace('\'', "'\\''")
    );
    let inside = exec(&server, &session, &script).await;
    keyring("drop", &desc);
    assert!(!inside.contains("root-only-secret"), "{inside}");
    assert!(inside.contains("search=refused errno=1"), "{inside}");
    assert!(inside.contains("add=refused errno=1"), "{inside}");
}

/// Makes each syscall of the filter's list with harmless arguments (an invalid fd, an
/// unmapped address) and prints `name errno` for each.
fn syscall_probe() -> String {
    let calls: Vec<String> = ash_server::seccomp::BLOCKED
        .iter()
        .filter(|b| b.name != "vhangup")
        .map(|b| format!("({:?}, {})", b.name, b.nr))
        .collect();
    format!(
        r#"
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
for name, nr in [{}]:
    ctypes.set_errno(0)
    args = [ctypes.c_long(a) for a in (nr, -1, 8, 8, 8, 8, 8)]
    r = libc.syscall(*args)
    print(name, 0 if r >= 0 else ctypes.get_errno())
"#,
        calls.join(", ")
    )
}

fn errnos(report: &str) -> HashMap<String, i32> {
    report
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(name, errno)| Some((name.to_owned(), errno.trim().parse().ok()?)))
        .collect()
}

async fn every_filtered_syscall_is_refused(user: User) {
    let server = Server::start_as(user).await;
    let session = server.session("hello-agent").await;
    let probe = syscall_probe();
    let inside = errnos(
        &exec(
            &server,
            &session,
            &format!("python3 -c '{}'", probe.replace('\'', "'\\''")),
        )
        .await,
    );
    let host = errnos(&on_host(&format!(
        "python3 -c '{}'",
        probe.replace('\'', "'\\''")
    )));
    for blocked in ash_server::seccomp::BLOCKED
        .iter()
        .filter(|b| b.name != "vhangup")
    {
        let refused = match blocked.refusal {
            ash_server::seccomp::Refusal::Eperm => libc::EPERM,
            ash_server::seccomp::Refusal::Enosys => libc::ENOSYS,
        };
        assert_eq!(
            inside.get(blocked.name),
            Some(&refused),
            "{} inside",
            blocked.name
        );
        // Control: on the host the call reaches the kernel, which answers otherwise.
        assert_ne!(
            host.get(blocked.name),
            Some(&refused),
            "{} on the host",
            blocked.name
        );
    }
}

async fn namespaces_cannot_be_made_inside(user: User) {
    let server = Server::start_as(user).await;
    let session = server.session("hello-agent").await;
    let probe = "for ns in -U -m -n -p; do if unshare $ns true 2>/dev/null; then echo \"$ns=made\"; else echo \"$ns=refused\"; fi; done";
    let inside = exec(&server, &session, probe).await;
    assert!(!inside.contains("=made"), "{inside}");
    // Control: the host makes a user namespace with the same command.
    assert!(on_host(probe).contains("-U=made"));
}

async fn no_file_can_become_setuid(user: User) {
    let server = Server::start_as(user).await;
    let session = server.session("hello-agent").await;
    let probe = "cp /bin/true ./tool; \
                 if chmod u+s ./tool 2>/dev/null; then echo chmod=setuid; else echo chmod=refused; fi; \
                 if chmod g+s ./tool 2>/dev/null; then echo chgrp=setgid; else echo chgrp=refused; fi; \
                 python3 -c 'import os; os.open(\"made\", os.O_CREAT | os.O_WRONLY, 0o4755)' 2>/dev/null && echo open=setuid || echo open=refused; \
                 if mkdir -m 2775 shared 2>/dev/null; then echo mkdir=setgid; else echo mkdir=refused; fi";
    let inside = exec(&server, &session, probe).await;
    for refused in [
        "chmod=refused",
        "chgrp=refused",
        "open=refused",
        "mkdir=refused",
    ] {
        assert!(inside.contains(refused), "{inside}");
    }
    let workspace = server.workspace(&session);
    for name in ["tool", "made"] {
        if let Ok(meta) = std::fs::metadata(workspace.join(name)) {
            assert_eq!(meta.mode() & 0o6000, 0, "{name} is setuid on the host");
        }
    }
    // Control: on the host the same chmod makes a setuid file.
    let host = tempfile::tempdir().unwrap();
    let out = on_host(&format!(
        "cd {} && cp /bin/true tool && chmod u+s tool && stat -c %a tool",
        host.path().display()
    ));
    assert_eq!(out.trim(), "4755");
}

async fn the_bridge_socket_is_out_of_the_agent_s_reach(user: User) {
    let server = Server::start_as(user).await;
    let session = server.session("hello-agent").await;
    let probe = r#"
echo "fds=$(ls /proc/self/fd | tr '\n' ' ')"
if { printf '{"ev":"exec_result","id":"forged","exitCode":0}\n' >&3; } 2>/dev/null; then echo fd3=written; else echo fd3=closed; fi
bridge=$(for p in /proc/[0-9]*; do [ "$(tr -d '\0' < $p/cmdline 2>/dev/null)" = /ash/bridge ] && echo ${p#/proc/}; done | head -n1)
echo "bridge=$bridge"
if ls -l /proc/$bridge/fd/ > /dev/null 2>&1; then echo bridge_fds=listed; else echo bridge_fds=refused; fi
mkfifo /tmp/ready
sh -c 'exec 3< /workspace/CLAUDE.md; echo > /tmp/ready; exec sleep 30' &
read -r _ < /tmp/ready
if [ -n "$(readlink /proc/$!/fd/3)" ]; then echo control=listed; else echo control=refused; fi
kill $!
"#;
    let inside = exec(&server, &session, probe).await;
    let fds = inside
        .lines()
        .find_map(|l| l.strip_prefix("fds="))
        .unwrap()
        .split_whitespace()
        .filter(|fd| !["0", "1", "2"].contains(fd))
        .count();
    assert!(
        fds <= 1,
        "the agent holds descriptors beyond stdio: {inside}"
    );
    assert!(inside.contains("fd3=closed"), "{inside}");
    assert!(
        !inside.contains("bridge=\n"),
        "the bridge was not found: {inside}"
    );
    assert!(inside.contains("bridge_fds=refused"), "{inside}");
    // Control: the same look into a dumpable process of the agent's own lists its socket.
    assert!(inside.contains("control=listed"), "{inside}");
}

async fn no_descriptor_of_the_server_s_launcher_reaches_the_sandbox(user: User) {
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "launcher-secret").unwrap();
    std::fs::set_permissions(
        secret.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let file = std::fs::File::open(secret.path()).unwrap();
    let server = Server::start_as_with_inherited(user, &file).await;
    // Control: the server itself holds the launcher's descriptor.
    let held = std::fs::read_link(format!(
        "/proc/{}/fd/{}",
        server.pid(),
        common::INHERITED_FD
    ))
    .unwrap();
    assert_eq!(held, secret.path());
    let session = server.session("hello-agent").await;
    let inside = exec(
        &server,
        &session,
        "cat <&7 2>/dev/null || echo fd7=closed; ls /proc/self/fd",
    )
    .await;
    assert!(!inside.contains("launcher-secret"), "{inside}");
    assert!(inside.contains("fd7=closed"), "{inside}");
}

async fn host_paths_are_not_in_the_sandbox_s_command_line_or_mounts(user: User) {
    let server = Server::start_as(user).await;
    let session = server.session("hello-agent").await;
    let data = server.data_path().display().to_string();
    let bridge = common::BRIDGE;
    let cmdlines = exec(
        &server,
        &session,
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done",
    )
    .await;
    // Control: the command lines were read (bwrap's among them).
    assert!(cmdlines.contains("bwrap"), "{cmdlines}");
    assert!(!cmdlines.contains(&data), "{cmdlines}");
    assert!(!cmdlines.contains(bridge), "{cmdlines}");
    assert!(!cmdlines.contains(&session), "{cmdlines}");
    // A root server's sandboxes mount their workspace from a filesystem of its own and the
    // bridge from a copy in /run/ash, so their mount table names no host path either.
    if user == User::Root {
        let mounts = exec(&server, &session, "cat /proc/self/mountinfo").await;
        // Control: the table was read, the workspace's mount in it.
        assert!(mounts.contains(" /workspace "), "{mounts}");
        assert!(!mounts.contains(&data), "{mounts}");
        assert!(!mounts.contains(bridge), "{mounts}");
        assert!(!mounts.contains(&session), "{mounts}");
    }
}

#[tokio::test]
async fn a_workspace_is_stopped_at_its_byte_and_file_quota_and_others_keep_theirs() {
    if !is_root() {
        return; // quotas need a root server; the test below checks what doctor says then
    }
    let server = Server::start_with_env(&[
        ("ASH_SANDBOX_DISK_MB", "16"),
        ("ASH_SANDBOX_DISK_FILES", "1000"),
    ])
    .await;
    let full = server.session("hello-agent").await;
    let bytes = exec(
        &server,
        &full,
        "dd if=/dev/zero of=big bs=1M count=32 2>&1; rm -f big",
    )
    .await;
    assert!(bytes.contains("No space left on device"), "{bytes}");
    let files = exec(
        &server,
        &full,
        "mkdir many && cd many && i=0; while [ $i -lt 2000 ] && touch f$i 2>/dev/null; do i=$((i+1)); done; echo made=$i",
    )
    .await;
    let made: u32 = files
        .lines()
        .find_map(|l| l.strip_prefix("made="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count in {files:?}"));
    assert!(made < 1000, "{made} files made under a quota of 1000");
    // Another session's workspace has its own quota, untouched by the first.
    let other = server.session("hello-agent").await;
    let written = exec(
        &server,
        &other,
        "dd if=/dev/zero of=half bs=1M count=8 2>/dev/null && stat -c %s half",
    )
    .await;
    assert_eq!(written.trim(), "8388608");
    // Control: the same 32 MiB write on the host's disk goes through.
    let host = tempfile::tempdir().unwrap();
    let out = on_host(&format!(
        "dd if=/dev/zero of={}/big bs=1M count=32 2>&1 | tail -n 1",
        host.path().display()
    ));
    assert!(out.contains("33554432 bytes"), "{out}");
}

#[tokio::test]
async fn doctor_says_when_workspace_quotas_cannot_be_enforced() {
    let mut doctor = tokio::process::Command::new(common::ASH);
    doctor.arg("doctor").env("ASH_BRIDGE_BIN", common::BRIDGE);
    if is_root() {
        doctor.uid(common::NOBODY).gid(common::NOBODY);
    }
    let report = String::from_utf8_lossy(&doctor.output().await.unwrap().stdout).into_owned();
    assert!(
        report.contains("degraded workspace quotas: not enforced: needs a root server"),
        "{report}"
    );
}

/// A `command` agent that, from its first turn on, keeps swapping `swap` between a folder
/// and a link to `$SECRET_DIR` (a root-only host folder) as fast as it can.
const SWAPPING_AGENT: &str = r#"#!/bin/sh
while IFS= read -r line; do
  id=$(printf '%s\n' "$line" | sed -n 's/^{"cmd":"query","id":"\([^"]*\)".*/\1/p')
  [ -n "$id" ] || continue
  if [ ! -e started ]; then
    touch started
    ( while :; do
        rm -rf swap; mkdir swap; echo decoy > swap/key
        rm -rf swap; ln -s "$SECRET_DIR" swap
        rm -f file; echo decoy > file
        rm -f file; ln -s "$SECRET_DIR/key" file
      done ) > /dev/null 2>&1 &
  fi
  printf '{"ev":"done","id":"%s"}\n' "$id"
done
"#;

async fn forks_and_snapshots_never_follow_a_link_the_agent_swaps_in(user: User) {
    let server = Server::start_as(user).await;
    let secret = tempfile::tempdir().unwrap();
    std::fs::write(secret.path().join("key"), "root-only-host-secret").unwrap();
    std::fs::set_permissions(
        secret.path().join("key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let (status, body) = server
        .deploy(
            "swapper",
            &[
                ("ash.toml", common::COMMAND_TOML),
                ("agent.sh", SWAPPING_AGENT),
            ],
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = server
        .post(
            "/api/sessions",
            json!({"agent": "swapper", "extraEnv": {"SECRET_DIR": secret.path()}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let session = body["session"]["id"].as_str().unwrap().to_owned();
    server.message(&session, "start swapping").await;
    let mut copies = Vec::new();
    for round in 0..12 {
        if round % 3 == 2 {
            let (status, body) = server
                .post(&format!("/api/sessions/{session}/pause"), json!({}))
                .await;
            assert_eq!(status, 200, "{body}");
            copies.push(server.data_path().join("snapshots").join(&session));
            let (status, body) = server
                .post(&format!("/api/sessions/{session}/resume"), json!({}))
                .await;
            assert_eq!(status, 200, "{body}");
        } else {
            let (status, body) = server
                .post(&format!("/api/sessions/{session}/fork"), json!({}))
                .await;
            assert_eq!(status, 201, "{body}");
            let child = body["session"]["id"].as_str().unwrap();
            copies.push(server.workspace(child));
        }
    }
    // Control: on the host, through the agent's link, the secret is there to be copied.
    let swap = server.workspace(&session).join("swap");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let through_link = std::iter::from_fn(|| {
        std::thread::yield_now();
        (std::time::Instant::now() < deadline).then(|| {
            std::fs::symlink_metadata(&swap)
                .ok()
                .filter(|m| m.is_symlink())
                .and_then(|_| std::fs::read_to_string(swap.join("key")).ok())
        })
    })
    .flatten()
    .find(|text| text.contains("root-only-host-secret"));
    assert!(
        through_link.is_some(),
        "the agent's link never led to the secret"
    );
    for copy in copies {
        assert_no_secret(&copy);
    }
}

/// No file under `dir` (links never followed) holds the host secret.
fn assert_no_secret(dir: &std::path::Path) {
    let mut todo = vec![dir.to_path_buf()];
    while let Some(path) = todo.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            todo.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if meta.is_file() {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                !text.contains("root-only-host-secret"),
                "{} holds the host's secret",
                path.display()
            );
        }
    }
}

#[tokio::test]
async fn a_root_server_refuses_a_uid_range_that_maps_sandboxes_to_root_and_names_the_fix() {
    if !is_root() {
        return; // an unprivileged server never uses the range
    }
    let data = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(common::ASH)
        .args(["start", "--port", "0"])
        .env("ASH_DATA_DIR", data.path())
        .env("ASH_BRIDGE_BIN", common::BRIDGE)
        .env("ASH_SANDBOX_UIDS", "0:65536")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("holds uid 0"), "{stderr}");
    assert!(stderr.contains("sandbox_uids"), "{stderr}");
    // Control: with the default range, ash doctor finds sandboxes can run.
    let doctor = tokio::process::Command::new(common::ASH)
        .arg("doctor")
        .env("ASH_BRIDGE_BIN", common::BRIDGE)
        .output()
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        report.contains("ok       sandbox uids: each sandbox runs as a host uid of its own"),
        "{report}"
    );
}

async fn deploy(server: &Server, path: String) -> (u16, serde_json::Value) {
    server
        .post("/api/agents", json!({"name": "p", "path": path}))
        .await
}

#[tokio::test]
async fn path_mode_deploys_only_from_allowed_roots_and_never_the_data_dir() {
    let allowed = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    for dir in [allowed.path(), outside.path()] {
        std::fs::create_dir(dir.join("agent")).unwrap();
        std::fs::write(dir.join("agent/CLAUDE.md"), "# agent").unwrap();
    }
    std::os::unix::fs::symlink(
        outside.path().join("agent"),
        allowed.path().join("link-out"),
    )
    .unwrap();
    // Off by default for folders outside the bundled examples.
    let server = Server::start().await;
    let (status, body) = deploy(&server, outside.path().join("agent").display().to_string()).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("deploy_roots"),
        "{body}"
    );
    drop(server);

    // With a root allowed that also holds the data dir: still never the data dir.
    let data = tempfile::tempdir_in(allowed.path()).unwrap();
    let roots = allowed.path().display().to_string();
    let server = Server::start_in(data, &[("ASH_DEPLOY_ROOTS", &roots)]).await;
    let other = server.session("hello-agent").await;
    exec(&server, &other, "echo '# mine' > CLAUDE.md").await;
    for path in [
        server.workspace(&other).display().to_string(),
        server.data_path().display().to_string(),
        allowed.path().join("link-out").display().to_string(),
        outside.path().join("agent").display().to_string(),
    ] {
        let (status, body) = deploy(&server, path.clone()).await;
        assert_eq!(status, 403, "{path}: {body}");
    }
    // Control: a folder under the allowed root deploys.
    let (status, body) = deploy(&server, allowed.path().join("agent").display().to_string()).await;
    assert_eq!(status, 201, "{body}");
}

/// `ptrace(PTRACE_TRACEME)` and `keyctl(KEYCTL_GET_KEYRING_ID, @u)` from Python: `name errno`.
const GRANT_PROBE: &str = "python3 -c 'import ctypes; l = ctypes.CDLL(None, use_errno=True); \
    [print(n, 0 if l.syscall(nr, *a) >= 0 else ctypes.get_errno()) for n, nr, a in \
    ((\"ptrace\", 101, (0, 0, 0, 0)), (\"keyctl\", 250, (0, -4, 0)))]'";

#[tokio::test]
async fn an_agent_gets_a_refused_syscall_back_only_with_the_operator_s_grant() {
    if !cfg!(target_arch = "x86_64") {
        return; // the probe's syscall numbers are x86_64's
    }
    let manifest = "[backend]\nkind = \"echo\"\n\n[sandbox]\nsyscalls = [\"ptrace\"]\n";
    let files = [("CLAUDE.md", "# debugger"), ("ash.toml", manifest)];
    let strict = Server::start().await;
    let (status, body) = strict.deploy("debugger", &files).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("sandbox_grant_syscalls"));
    // Control: the same probe in an ordinary sandbox is refused both calls.
    let plain = strict.session("hello-agent").await;
    let refused = errnos(&exec(&strict, &plain, GRANT_PROBE).await);
    assert_eq!(refused.get("ptrace"), Some(&libc::EPERM));

    let granting = Server::start_with_env(&[("ASH_SANDBOX_GRANT_SYSCALLS", "ptrace")]).await;
    let (status, body) = granting.deploy("debugger", &files).await;
    assert_eq!(status, 201, "{body}");
    let session = granting.session("debugger").await;
    let granted = errnos(&exec(&granting, &session, GRANT_PROBE).await);
    assert_eq!(granted.get("ptrace"), Some(&0), "{granted:?}");
    assert_eq!(granted.get("keyctl"), Some(&libc::EPERM), "{granted:?}");
}
