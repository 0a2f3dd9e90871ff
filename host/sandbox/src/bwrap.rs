use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::limits::{apply_rlimits, Cgroups, Limits};
use crate::{SandboxError, SandboxHost};

/// The workspace's path inside every sandbox.
pub(crate) const WORKSPACE: &str = "/workspace";
/// The uid (and gid) the agent runs as inside the sandbox.
const SANDBOX_UID: u32 = 1000;
/// The fd number the bridge finds its socket on.
const BRIDGE_FD: i32 = 3;
/// Files from the host's `/etc` that programs commonly need and that hold no secrets.
const ETC_FILES: &[&str] = &[
    "/etc/ld.so.cache",
    "/etc/ssl/certs",
    "/etc/ca-certificates",
    "/etc/alternatives",
    "/etc/localtime",
];
/// Top-level names that are links into `/usr` on merged-/usr hosts, or directories on others.
const SYSTEM_DIRS: &[&str] = &["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

/// How the host lays out `/bin`, `/lib` and friends (links into `/usr`, or directories), as
/// bwrap arguments; read once, not on every sandbox start.
fn system_dirs() -> &'static [OsString] {
    static ARGS: std::sync::OnceLock<Vec<OsString>> = std::sync::OnceLock::new();
    ARGS.get_or_init(|| {
        let mut args = Vec::new();
        for dir in SYSTEM_DIRS {
            match std::fs::read_link(dir) {
                Ok(target) => {
                    args.extend([OsString::from("--symlink"), target.into(), (*dir).into()])
                }
                Err(_) if Path::new(dir).is_dir() => {
                    args.extend(["--ro-bind", dir, dir].map(OsString::from))
                }
                Err(_) => {}
            }
        }
        args
    })
}

/// The bwrap arguments for a sandbox whose workspace is `workspace` on the host, with the
/// folder of its model proxy's socket when it has one.
pub(crate) fn bwrap_args(bridge: &Path, workspace: &Path, proxy: Option<&Path>) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--hostname",
        "ash-sandbox",
    ]
    .iter()
    .map(Into::into)
    .collect();
    let uid = SANDBOX_UID.to_string();
    args.extend(["--uid", &uid, "--gid", &uid, "--ro-bind", "/usr", "/usr"].map(OsString::from));
    args.extend(system_dirs().iter().cloned());
    for file in ETC_FILES {
        args.extend(["--ro-bind-try", file, file].map(OsString::from));
    }
    args.extend(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"].map(OsString::from));
    args.extend([OsString::from("--bind"), workspace.into(), WORKSPACE.into()]);
    if let Some(dir) = proxy {
        args.extend([
            OsString::from("--ro-bind"),
            dir.into(),
            crate::proxy::GUEST_DIR.into(),
        ]);
    }
    args.extend([
        OsString::from("--ro-bind"),
        bridge.into(),
        "/ash/bridge".into(),
    ]);
    args.extend(["--chdir", WORKSPACE, "--", "/ash/bridge"].map(OsString::from));
    args
}

/// Starts bwrap with the bridge; returns the child and the host end of the bridge socket.
pub(crate) fn spawn(
    host: &SandboxHost,
    workspace: &Path,
    proxy: Option<&Path>,
    sandbox_id: &str,
    agent_env: &BTreeMap<String, String>,
    limits: Limits,
    cgroups: Option<&Cgroups>,
) -> Result<(tokio::process::Child, tokio::net::UnixStream), SandboxError> {
    let join = cgroups.map(Cgroups::join_fds).unwrap_or_default();
    let (ours, theirs) =
        std::os::unix::net::UnixStream::pair().map_err(|e| SandboxError::Start(e.to_string()))?;
    let theirs = OwnedFd::from(theirs);
    let their_fd = theirs.as_raw_fd();
    let mut command = tokio::process::Command::new(&host.bwrap);
    command
        .args(bwrap_args(&host.bridge, workspace, proxy))
        .env_clear()
        .envs(agent_env)
        .envs([
            ("PATH", "/usr/local/bin:/usr/bin:/bin"),
            ("HOME", WORKSPACE),
            ("LANG", "C.UTF-8"),
            ("ASH_WORKSPACE_DIR", WORKSPACE),
            ("ASH_SANDBOX_ID", sandbox_id),
            ("ASH_BRIDGE_FD", "3"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: between fork and exec we only make async-signal-safe calls (write, dup2, fcntl,
    // setrlimit) on fds and structs we own.
    unsafe {
        command.pre_exec(move || {
            // Join the sandbox's cgroups before exec, so bwrap and all it starts are inside.
            for fd in &join {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            apply_rlimits(&limits)?;
            if their_fd == BRIDGE_FD {
                let flags = libc::fcntl(BRIDGE_FD, libc::F_GETFD);
                if flags < 0 || libc::fcntl(BRIDGE_FD, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(their_fd, BRIDGE_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|source| SandboxError::Spawn {
        path: host.bwrap.display().to_string(),
        source,
    })?;
    drop(theirs);
    ours.set_nonblocking(true)
        .map_err(|e| SandboxError::Start(e.to_string()))?;
    let ours =
        tokio::net::UnixStream::from_std(ours).map_err(|e| SandboxError::Start(e.to_string()))?;
    Ok((child, ours))
}

/// Why a sandbox did not come up: kills it and returns its exit status and first stderr.
pub(crate) async fn failure(child: &mut tokio::process::Child) -> String {
    let _ = child.start_kill();
    let status = match tokio::time::timeout(Duration::from_secs(1), child.wait()).await {
        Ok(Ok(status)) => status.to_string(),
        _ => "did not exit".into(),
    };
    let mut stderr = String::new();
    if let Some(pipe) = child.stderr.take() {
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            pipe.take(4096).read_to_string(&mut stderr),
        )
        .await;
    }
    format!(
        "bridge did not become ready (bwrap {status}): {}",
        stderr.trim()
    )
}

/// Relays the sandbox's stderr to the server log, one capped line at a time.
pub(crate) fn log_stderr(child: &mut tokio::process::Child, sandbox_id: String) {
    let Some(pipe) = child.stderr.take() else {
        return;
    };
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe.take(64 * 1024 * 1024)).lines();
        while let Ok(Some(mut line)) = lines.next_line().await {
            line.truncate(line.floor_char_boundary(4096));
            tracing::debug!(sandbox = %sandbox_id, "{line}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(args: &[OsString]) -> Vec<(String, String)> {
        args.windows(2)
            .map(|w| (w[0].to_string_lossy().into(), w[1].to_string_lossy().into()))
            .collect()
    }

    #[test]
    fn sandbox_never_sees_the_host_root() {
        let args = bwrap_args(
            Path::new("/opt/ash-bridge"),
            Path::new("/data/sandboxes/x/workspace"),
            Some(Path::new("/data/sandboxes/x/run")),
        );
        let binds = pairs(&args);
        assert!(!binds
            .iter()
            .any(|(flag, src)| flag.contains("bind") && src == "/"));
        assert!(binds.contains(&("--bind".into(), "/data/sandboxes/x/workspace".into())));
        assert!(binds.contains(&("--ro-bind".into(), "/usr".into())));
        assert!(binds.contains(&("--ro-bind".into(), "/data/sandboxes/x/run".into())));
    }

    #[test]
    fn every_namespace_is_unshared_and_caps_dropped() {
        let args: Vec<String> = bwrap_args(Path::new("/b"), Path::new("/w"), None)
            .iter()
            .map(|a| a.to_string_lossy().into())
            .collect();
        for flag in [
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
        ] {
            assert!(args.contains(&flag.to_owned()), "{flag} missing");
        }
        let drop_at = args.iter().position(|a| a == "--cap-drop").unwrap();
        assert_eq!(args[drop_at + 1], "ALL");
        assert!(!args.iter().any(|a| a == "--share-net"));
    }
}
