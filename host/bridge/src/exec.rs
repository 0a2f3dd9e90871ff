//! `exec`: one shell command in the workspace, with a timeout and capped output. The command
//! runs in its own process group, so a timeout kills everything it started.

use std::process::Stdio;
use std::time::Duration;

use ash_protocol::Event;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::Events;

/// Output kept per stream; the rest is read and dropped so the command never blocks on it.
const MAX_OUTPUT: usize = 1024 * 1024;
/// Exit code reported for a command killed at its timeout, as `timeout(1)` does.
const TIMED_OUT: i32 = 124;

pub(crate) async fn run(id: String, command: String, timeout_ms: u64, events: Events) {
    let spawned = tokio::process::Command::new("/bin/sh")
        .args(["-c", &command])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let _ = events
                .send(Event::error(id, format!("cannot run /bin/sh: {e}")))
                .await;
            return;
        }
    };
    let group = child.id().map(|pid| pid as i32);
    let stdout = tokio::spawn(read_capped(child.stdout.take().expect("piped")));
    let stderr = tokio::spawn(read_capped(child.stderr.take().expect("piped")));
    let (exit_code, timed_out) =
        match tokio::time::timeout(Duration::from_millis(timeout_ms), child.wait()).await {
            Ok(Ok(status)) => (exit_code(status), false),
            Ok(Err(_)) => (-1, false),
            Err(_) => {
                if let Some(group) = group {
                    // SAFETY: signals the process group this task created; no memory is touched.
                    unsafe { libc::kill(-group, libc::SIGKILL) };
                }
                let _ = child.wait().await;
                (TIMED_OUT, true)
            }
        };
    // A background process the command left behind may hold the pipes open: stop reading soon.
    let drained = |reader: tokio::task::JoinHandle<(String, bool)>| async move {
        tokio::time::timeout(Duration::from_secs(1), reader)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
    };
    let (stdout, out_cut) = drained(stdout).await;
    let (stderr, err_cut) = drained(stderr).await;
    let result = Event::ExecResult {
        id,
        exit_code,
        stdout,
        stderr,
        timed_out,
        truncated: out_cut || err_cut,
    };
    let _ = events.send(result).await;
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// Reads a stream to its end, keeping the first [`MAX_OUTPUT`] bytes; `true` if any was dropped.
async fn read_capped(mut pipe: impl AsyncRead + Unpin) -> (String, bool) {
    let mut kept = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut truncated = false;
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..n.min(room)]);
                truncated |= n > room;
            }
        }
    }
    (String::from_utf8_lossy(&kept).into_owned(), truncated)
}
