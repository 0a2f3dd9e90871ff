use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::limits::{apply_rlimits, Cgroups};
use crate::users::{STAGE_BRIDGE, STAGE_RUN, STAGE_WORKSPACE};
use crate::{SandboxError, SandboxHost};

/// The workspace's path inside every sandbox.
pub(crate) const WORKSPACE: &str = "/workspace";
/// Where the bridge binary sits inside every sandbox.
const BRIDGE_IN_SANDBOX: &str = "/ash/bridge";
/// The uid (and gid) the agent runs as inside the sandbox.
const SANDBOX_UID: u32 = 1000;
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

/// What `/proc` shows of the kernel, as container runtimes have it: these folders read-only
/// (`sys` holds every sysctl, some of them guarded by no capability check)…
const PROC_READ_ONLY: &[&str] = &["sys", "bus", "fs", "irq"];
/// …these files masked (a bind of `/dev/null` on a `nodev` mount: opening them fails)…
const PROC_MASKED_FILES: &[&str] = &[
    "kcore",
    "keys",
    "key-users",
    "kmsg",
    "latency_stats",
    "sched_debug",
    "sysrq-trigger",
    "timer_list",
    "timer_stats",
];
/// …and these folders replaced by an empty read-only one.
const PROC_MASKED_DIRS: &[&str] = &["acpi", "asound", "scsi"];

/// The bwrap arguments that harden `/proc`, for the entries this kernel has (a bind onto a
/// missing entry would fail the start); read once.
fn proc_walls() -> &'static [OsString] {
    static ARGS: std::sync::OnceLock<Vec<OsString>> = std::sync::OnceLock::new();
    ARGS.get_or_init(|| {
        let exists = |name: &&&str| Path::new("/proc").join(name).exists();
        let mut args = Vec::new();
        for name in PROC_READ_ONLY.iter().filter(exists) {
            let path = format!("/proc/{name}");
            args.extend(["--ro-bind", &path, &path].map(OsString::from));
        }
        for name in PROC_MASKED_FILES.iter().filter(exists) {
            args.extend(["--ro-bind", "/dev/null", &format!("/proc/{name}")].map(OsString::from));
        }
        for name in PROC_MASKED_DIRS.iter().filter(exists) {
            let path = format!("/proc/{name}");
            args.extend(["--tmpfs", &path, "--remount-ro", &path].map(OsString::from));
        }
        args
    })
}

/// Where bwrap finds what it binds into the sandbox.
pub(crate) struct Sources<'a> {
    pub bridge: &'a Path,
    pub workspace: &'a Path,
    /// The folder of the sandbox's model-proxy socket, when it has one.
    pub proxy: Option<&'a Path>,
}

/// The bwrap options for a sandbox (the command, `/ash/bridge`, follows them on bwrap's own
/// command line).
pub(crate) fn bwrap_args(sources: &Sources<'_>) -> Vec<OsString> {
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
    args.extend(["--proc", "/proc"].map(OsString::from));
    args.extend(proc_walls().iter().cloned());
    args.extend(["--dev", "/dev", "--tmpfs", "/tmp"].map(OsString::from));
    args.extend([
        OsString::from("--bind"),
        sources.workspace.into(),
        WORKSPACE.into(),
    ]);
    if let Some(dir) = sources.proxy {
        args.extend([
            OsString::from("--ro-bind"),
            dir.into(),
            crate::proxy::GUEST_DIR.into(),
        ]);
    }
    args.extend([
        OsString::from("--ro-bind"),
        sources.bridge.into(),
        BRIDGE_IN_SANDBOX.into(),
    ]);
    args.extend(["--chdir", WORKSPACE].map(OsString::from));
    args
}

/// A memfd holding `bytes`, positioned at its start: how bwrap gets its arguments
/// (`--args`, so the sandbox's `/proc/1/cmdline` reads `bwrap --args 4` and shows no host
/// path) and its seccomp programs. A fresh one per sandbox: bwrap reads it to the end.
fn memfd(bytes: &[u8]) -> Result<OwnedFd, SandboxError> {
    use std::io::{Seek, Write};
    let fail = |e: std::io::Error| SandboxError::Start(format!("cannot pass bwrap its setup: {e}"));
    let fd = rustix::fs::memfd_create("ash-bwrap", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| fail(e.into()))?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes).map_err(fail)?;
    file.rewind().map_err(fail)?;
    Ok(file.into())
}

/// The arguments as `--args` reads them: each one NUL-terminated.
fn nul_terminated(args: &[OsString]) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let mut bytes = Vec::new();
    for arg in args {
        bytes.extend_from_slice(arg.as_bytes());
        bytes.push(0);
    }
    bytes
}

/// Starts bwrap with the bridge; returns the child and the host end of the bridge socket.
/// With `uid` (the server is root) bwrap starts as that uid, after the host paths are bound
/// onto the staging mount points in a mount namespace of the sandbox's own.
/// bwrap gets exactly four descriptors beyond stdio: the bridge socket (3), its arguments
/// (4) and its two seccomp programs (5, 6); every other descriptor the server holds,
/// inherited from its own launcher or not, is closed before bwrap runs.
pub(crate) fn spawn(
    host: &SandboxHost,
    sources: Sources<'_>,
    uid: Option<u32>,
    spec: &crate::SandboxSpec<'_>,
    cgroups: Option<&Cgroups>,
) -> Result<(tokio::process::Child, tokio::net::UnixStream), SandboxError> {
    let limits = spec.limits;
    let join = cgroups.map(Cgroups::join_fds).unwrap_or_default();
    let (ours, theirs) =
        std::os::unix::net::UnixStream::pair().map_err(|e| SandboxError::Start(e.to_string()))?;
    let theirs = OwnedFd::from(theirs);
    let staged = uid.map(|_| Sources {
        bridge: Path::new(STAGE_BRIDGE),
        workspace: Path::new(STAGE_WORKSPACE),
        proxy: sources.proxy.map(|_| Path::new(STAGE_RUN)),
    });
    let args = memfd(&nul_terminated(&bwrap_args(
        staged.as_ref().unwrap_or(&sources),
    )))?;
    let programs = crate::seccomp::program_bytes(spec.syscalls);
    let filters = [memfd(&programs[0])?, memfd(&programs[1])?];
    let passed = [
        theirs.as_raw_fd(),
        args.as_raw_fd(),
        filters[0].as_raw_fd(),
        filters[1].as_raw_fd(),
    ];
    let switch = uid.map(|uid| UidSwitch::new(uid, &sources)).transpose()?;
    let mut command = tokio::process::Command::new(&host.bwrap);
    command
        .args([
            "--add-seccomp-fd",
            "5",
            "--add-seccomp-fd",
            "6",
            "--args",
            "4",
        ])
        .args(["--", BRIDGE_IN_SANDBOX])
        .env_clear()
        .envs(spec.env)
        .envs([
            ("PATH", "/usr/local/bin:/usr/bin:/bin"),
            ("HOME", WORKSPACE),
            ("LANG", "C.UTF-8"),
            ("ASH_WORKSPACE_DIR", WORKSPACE),
            ("ASH_SANDBOX_ID", spec.id),
            ("ASH_BRIDGE_FD", "3"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // The kernel counts processes per uid: with a uid of its own the sandbox gets a process
    // rlimit too, just above the cgroup's limit where there is one (so the cgroup, which
    // reports the hit, stops a fork bomb first).
    let nproc = switch.is_some().then(|| match cgroups {
        Some(_) => limits.max_processes + 16,
        None => limits.max_processes,
    });
    // SAFETY: between fork and exec we only make async-signal-safe calls (write, setrlimit,
    // unshare, mount, set*id, fcntl, dup2, close_range) on fds, strings and structs prepared
    // before the fork.
    unsafe {
        command.pre_exec(move || {
            // Join the sandbox's cgroups before exec, so bwrap and all it starts are inside.
            for fd in &join {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Before the rlimits: the server may hold more descriptors than a sandbox may.
            hand_over(&passed)?;
            apply_rlimits(&limits, nproc)?;
            match &switch {
                Some(switch) => switch.apply(),
                None => Ok(()),
            }
        });
    }
    let child = command.spawn().map_err(|source| SandboxError::Spawn {
        path: host.bwrap.display().to_string(),
        source,
    })?;
    drop((theirs, args, filters));
    ours.set_nonblocking(true)
        .map_err(|e| SandboxError::Start(e.to_string()))?;
    let ours =
        tokio::net::UnixStream::from_std(ours).map_err(|e| SandboxError::Start(e.to_string()))?;
    Ok((child, ours))
}

/// Puts `fds` at 3, 4, 5… (without close-on-exec) and closes every other descriptor above 2.
/// Runs between fork and exec.
fn hand_over(fds: &[i32; 4]) -> std::io::Result<()> {
    let check = |result: i32| {
        if result < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(result)
        }
    };
    let first_free = 3 + fds.len() as i32;
    let mut moved = [0; 4];
    // SAFETY: fcntl, dup2 and close_range on descriptors of this (forked) process.
    unsafe {
        for (slot, fd) in moved.iter_mut().zip(fds) {
            *slot = check(libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, first_free))?;
        }
        for (target, fd) in (3..).zip(moved) {
            check(libc::dup2(fd, target))?;
        }
        check(libc::syscall(libc::SYS_close_range, first_free as u32, u32::MAX, 0) as i32)?;
    }
    Ok(())
}

/// What the forked child does to become the sandbox's own uid: a private mount namespace with
/// the host paths bound onto the staging mount points, then no groups, gid and uid `uid`.
struct UidSwitch {
    uid: u32,
    binds: Vec<(CString, CString)>,
}

impl UidSwitch {
    fn new(uid: u32, sources: &Sources<'_>) -> Result<Self, SandboxError> {
        let c = |path: &Path| {
            crate::disk::c_path(path)
                .map_err(|e| SandboxError::Start(format!("{}: {e}", path.display())))
        };
        let mut binds = vec![
            (c(sources.workspace)?, c(Path::new(STAGE_WORKSPACE))?),
            (c(sources.bridge)?, c(Path::new(STAGE_BRIDGE))?),
        ];
        if let Some(dir) = sources.proxy {
            binds.push((c(dir)?, c(Path::new(STAGE_RUN))?));
        }
        Ok(Self { uid, binds })
    }

    /// Runs between fork and exec.
    fn apply(&self) -> std::io::Result<()> {
        let check = |result: i32| {
            if result == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        let none = std::ptr::null();
        // SAFETY: each call reads only the C strings and values prepared before the fork.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // Nothing mounted here may reach the host's mount table.
            check(libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_SLAVE,
                none.cast(),
            ))?;
            for (source, target) in &self.binds {
                check(libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    none,
                    libc::MS_BIND,
                    none.cast(),
                ))?;
            }
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setresgid(self.uid, self.uid, self.uid))?;
            check(libc::setresuid(self.uid, self.uid, self.uid))?;
        }
        Ok(())
    }
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

/// Relays the sandbox's stderr to the server log and the sandbox's own, one capped line at
/// a time.
pub(crate) fn log_stderr(
    child: &mut tokio::process::Child,
    sandbox_id: String,
    logs: std::sync::Arc<crate::logs::Logs>,
) {
    let Some(pipe) = child.stderr.take() else {
        return;
    };
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe.take(64 * 1024 * 1024)).lines();
        while let Ok(Some(mut line)) = lines.next_line().await {
            line.truncate(line.floor_char_boundary(crate::logs::MAX_LINE));
            tracing::debug!(sandbox = %sandbox_id, "{line}");
            logs.push(ash_core::LogLevel::Stderr, &line);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter().map(|a| a.to_string_lossy().into()).collect()
    }

    fn pairs(args: &[OsString]) -> Vec<(String, String)> {
        args.windows(2)
            .map(|w| (w[0].to_string_lossy().into(), w[1].to_string_lossy().into()))
            .collect()
    }

    #[test]
    fn sandbox_never_sees_the_host_root() {
        let args = bwrap_args(&Sources {
            bridge: Path::new("/opt/ash-bridge"),
            workspace: Path::new("/data/sandboxes/x/workspace"),
            proxy: Some(Path::new("/data/sandboxes/x/run")),
        });
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
        let args = strings(&bwrap_args(&Sources {
            bridge: Path::new("/b"),
            workspace: Path::new("/w"),
            proxy: None,
        }));
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

    #[test]
    fn proc_sys_is_read_only_and_kernel_files_masked_after_proc_is_mounted() {
        let args = strings(&bwrap_args(&Sources {
            bridge: Path::new("/b"),
            workspace: Path::new("/w"),
            proxy: None,
        }));
        let proc_at = args.iter().position(|a| a == "--proc").unwrap();
        let sys_at = args.iter().position(|a| a == "/proc/sys").unwrap();
        assert!(sys_at > proc_at);
        assert_eq!(
            (args[sys_at - 1].as_str(), args[sys_at + 1].as_str()),
            ("--ro-bind", "/proc/sys")
        );
        if Path::new("/proc/keys").exists() {
            let keys_at = args.iter().position(|a| a == "/proc/keys").unwrap();
            assert_eq!(args[keys_at - 1], "/dev/null");
        }
    }

    #[test]
    fn arguments_are_passed_nul_terminated() {
        assert_eq!(
            nul_terminated(&["--proc".into(), "/proc".into()]),
            b"--proc\0/proc\0"
        );
    }
}
